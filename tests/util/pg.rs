//! A throwaway PostgreSQL server per test, from Debian's `postgresql` package: a cluster
//! made once per test run with `initdb` (SCRAM, as PostgreSQL 15 defaults to) and copied
//! for each test, started in the test's own network namespace on 127.0.0.1 and on a Unix
//! socket in the test's scratch dir, as the `postgres` user; with TLS from a CA made once
//! with `openssl`. SmolVM 0.0.29's own schema is created in database `smolvm`, and a
//! world's SQLite rows can be moved into it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::run::Reaped;
use super::world::{Scratch, World};

pub const USER: &str = "ci";
/// The password, with characters a URL must escape (`@`, `:`, `/`, `%`).
pub const PASSWORD: &str = "s3@cr:et/%pw";
pub const PASSWORD_URL: &str = "s3%40cr%3Aet%2F%25pw";
pub const PORT: u16 = 5432;

/// SmolVM 0.0.29's `PostgresStateManager._init_schema`, verbatim.
pub const SCHEMA_029: &str = "
CREATE TABLE IF NOT EXISTS vms (id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL, network TEXT,
    pid INTEGER, socket_path TEXT, display TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_vms_status ON vms(status);
CREATE TABLE IF NOT EXISTS ip_leases (ip TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE, tap_device TEXT NOT NULL,
    created_at TEXT NOT NULL, FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_ip_leases_vm_id ON ip_leases(vm_id);
CREATE TABLE IF NOT EXISTS ssh_forwards (vm_id TEXT PRIMARY KEY, host_port INTEGER NOT NULL UNIQUE,
    guest_port INTEGER NOT NULL, created_at TEXT NOT NULL, FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_vm_id ON ssh_forwards(vm_id);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_host_port ON ssh_forwards(host_port);
CREATE TABLE IF NOT EXISTS vsock_cids (vm_id TEXT PRIMARY KEY, guest_cid BIGINT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_vsock_cids_vm_id ON vsock_cids(vm_id);
CREATE TABLE IF NOT EXISTS tap_allocations (vm_id TEXT PRIMARY KEY, tap_device TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL, bridge_name TEXT, created_at TEXT NOT NULL,
    FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_tap_allocations_tap_device ON tap_allocations(tap_device);
CREATE TABLE IF NOT EXISTS browser_sessions (session_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL, status TEXT NOT NULL, cdp_url TEXT, live_url TEXT, vnc_url TEXT, debug_port INTEGER,
    vnc_port INTEGER, profile_id TEXT, expires_at TEXT, artifacts_dir TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (snapshot_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL,
    snapshot_path TEXT NOT NULL, mem_file_path TEXT NOT NULL, disk_path TEXT NOT NULL, backend TEXT,
    artifacts TEXT, vm_config TEXT NOT NULL, network_config TEXT NOT NULL, created_at TEXT NOT NULL,
    snapshot_type TEXT, restored BOOLEAN DEFAULT FALSE, restored_vm_id TEXT);
CREATE INDEX IF NOT EXISTS idx_snapshots_vm_id ON snapshots(vm_id);
";

/// Debian's server binaries (the newest version installed).
fn bindir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql package (ci/setup installs it)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server in /usr/lib/postgresql")
}

/// The uid and gid the server runs as (initdb refuses root): `postgres`, else nobody.
fn server_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .map_or((65534, 65534), |f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
}

fn as_server(cmd: &mut Command) -> &mut Command {
    let (uid, gid) = server_user();
    cmd.uid(uid).gid(gid)
}

fn chown_r(path: &Path) {
    let (uid, gid) = server_user();
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// One initialised cluster for the whole run, copied per test.
fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smolvm-it-pg-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), PASSWORD).unwrap();
        chown_r(&dir);
        let out = as_server(Command::new(bindir().join("initdb")).args([
            "-D",
            dir.join("data").to_str().unwrap(),
            "-U",
            USER,
            "--pwfile",
            dir.join("pw").to_str().unwrap(),
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ]))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A CA and a server certificate it signed (for `localhost` and 127.0.0.1), once per run.
pub fn certs() -> &'static Path {
    static C: OnceLock<PathBuf> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("smolvm-it-pg-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ssl = |args: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("openssl {args}"))
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ssl("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=smolvm-test-ca");
        ssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost");
        std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        ssl("x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext");
        // A self-signed CA certificate as a server's own (rustls refuses it, libpq does not).
        ssl("req -x509 -newkey rsa:2048 -nodes -keyout self.key -out self.crt -days 2 -subj /CN=localhost \
             -addext subjectAltName=DNS:localhost,IP:127.0.0.1");
        dir
    })
}

/// What the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub tls: bool,
    /// Every statement in the server's log (`log_statement = all`).
    pub log: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tls: true,
            log: false,
        }
    }
}

/// A running server in this test's network namespace, stopped when dropped.
pub struct Pg {
    pub dir: Scratch,
    pub sock: PathBuf,
    server: Option<Reaped>,
}

impl Pg {
    pub fn start(cfg: Config) -> Pg {
        let dir = Scratch::new("pg");
        let data = dir.0.join("data");
        let sock = dir.0.join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        let out = Command::new("cp")
            .arg("-a")
            .arg(template().join("data"))
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {PORT}\nunix_socket_directories = '{}'\nfsync = off\n",
            sock.display()
        );
        if cfg.tls {
            for f in ["server.crt", "server.key"] {
                std::fs::copy(certs().join(f), data.join(f)).unwrap();
            }
            conf.push_str("ssl = on\n");
        }
        if cfg.log {
            conf.push_str("log_statement = 'all'\nlog_min_messages = 'info'\n");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        chown_r(&dir.0);
        std::fs::set_permissions(
            data.join("server.key").as_path(),
            std::fs::Permissions::from_mode(0o600),
        )
        .or_else(|e| if cfg.tls { Err(e) } else { Ok(()) })
        .unwrap();
        let log = std::fs::File::create(dir.0.join("server.log")).unwrap();
        let child = as_server(Command::new(bindir().join("postgres")).arg("-D").arg(&data))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Pg {
            dir,
            sock,
            server: Some(Reaped(child)),
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !pg.sock.join(format!(".s.PGSQL.{PORT}")).exists() || !pg.ready() {
            assert!(
                Instant::now() < until,
                "the server did not start: {}",
                pg.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg.psql("postgres", "CREATE DATABASE smolvm");
        pg.sql(SCHEMA_029);
        pg
    }

    fn ready(&self) -> bool {
        self.psql_cmd("postgres", "SELECT 1")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn psql_cmd(&self, db: &str, sql: &str) -> Command {
        let mut c = Command::new("psql");
        c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args(["-p", &PORT.to_string(), "-U", USER, "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env_remove("PGHOST");
        c
    }

    /// Runs SQL as the cluster's owner; panics with psql's output on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_cmd(db, sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SQL in database `smolvm`.
    pub fn sql(&self, sql: &str) -> String {
        self.psql("smolvm", sql)
    }

    /// Every row of SmolVM's tables, in a stable order: a byte-for-byte picture.
    pub fn rows(&self) -> String {
        let mut out = String::new();
        for t in [
            "vms",
            "ip_leases",
            "ssh_forwards",
            "vsock_cids",
            "tap_allocations",
            "browser_sessions",
            "snapshots",
        ] {
            out.push_str(&self.sql(&format!("SELECT '{t}', x::text FROM {t} x ORDER BY 2")));
        }
        out
    }

    pub fn ids(&self) -> Vec<String> {
        self.sql("SELECT id FROM vms ORDER BY id")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The server's log (with `Config::log`, every statement).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    /// The URL over the Unix socket, the password in it (percent-encoded).
    pub fn url(&self) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD_URL}@/smolvm?host={}&port={PORT}",
            self.sock.display()
        )
    }

    /// Gives the server another certificate and key from `certs()` (`self`), reloaded.
    pub fn use_cert(&self, name: &str) {
        let data = self.dir.0.join("data");
        for ext in ["crt", "key"] {
            std::fs::copy(
                certs().join(format!("{name}.{ext}")),
                data.join(format!("server.{ext}")),
            )
            .unwrap();
        }
        chown_r(&data);
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        self.sql("SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Sends `sig` (`STOP`, `CONT`) to the server and all its processes.
    pub fn signal(&self, sig: &str) {
        if let Some(s) = &self.server {
            let pid = s.id().to_string();
            let _ = Command::new("pkill")
                .args([&format!("-{sig}"), "-P", &pid])
                .status();
            let _ = Command::new("kill").args([&format!("-{sig}"), &pid]).status();
        }
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        self.signal("CONT");
        if let Some(mut s) = self.server.take() {
            let _ = Command::new("kill").arg("-INT").arg(s.id().to_string()).status();
            let _ = s.0.wait();
        }
    }

    /// Moves a world's SQLite rows into the server, as SmolVM with
    /// `SMOLVM_DATABASE_URL` would have written them, and removes the SQLite DB.
    pub fn take_rows_of(&self, w: &World) {
        let c = w.conn();
        let mut sql = String::new();
        for (table, cols) in [
            (
                "vms",
                "id, status, config, network, pid, socket_path, created_at, updated_at",
            ),
            ("ip_leases", "ip, vm_id, tap_device, created_at"),
            ("ssh_forwards", "vm_id, host_port, guest_port, created_at"),
        ] {
            let n = cols.split(", ").count();
            let mut s = c.prepare(&format!("SELECT {cols} FROM {table}")).unwrap();
            let mut rows = s.query([]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                let values: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''"))
                        }
                        _ => "NULL".to_string(),
                    })
                    .collect();
                sql.push_str(&format!(
                    "INSERT INTO {table} ({cols}) VALUES ({});\n",
                    values.join(", ")
                ));
            }
        }
        drop(c);
        if !sql.is_empty() {
            self.sql(&sql);
        }
        std::fs::remove_file(&w.db).unwrap();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

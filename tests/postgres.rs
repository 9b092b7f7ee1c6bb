//! SmolVM 0.0.8–0.0.29's state in PostgreSQL (`SMOLVM_DATABASE_URL`), against a real
//! server in the test's own network namespace: this host's stale VMs go whole, another
//! host's rows (nothing here names them) are byte-identical afterwards and the process
//! at their pid is never signalled, every way of naming the server SmolVM accepts works,
//! every failure is named, changes nothing and never shows the password.

use std::process::Command;

use crate::util::pg::{self, PASSWORD, PASSWORD_URL, Pg};
use crate::util::{Reaped, Run, VmSpec, World, has_link, pid_alive, sh};

/// The binary on `w` with SmolVM's PostgreSQL URL in its environment.
fn with_url(w: &World, url: &str, args: &[&str]) -> Run {
    Run::from(w.cmd(args).env("SMOLVM_DATABASE_URL", url).output().unwrap())
}

fn assert_no_secret(r: &Run) {
    for s in [PASSWORD, PASSWORD_URL, "s3@cr"] {
        assert!(
            !r.stdout.contains(s) && !r.stderr.contains(s),
            "the password shows:\n{}{}",
            r.stdout,
            r.stderr
        );
    }
}

/// Another host's rows, written as SmolVM on that host would: a running VM whose pid
/// here is an unrelated live process of ours, a `vm-` VM (a `--prefix` match), a running
/// VM whose pid here is no process at all, and one on a TAP name this host also has
/// (an orphan of its own): nothing here names any of them.
fn add_other_hosts_rows(pg: &Pg, live_pid: u32) {
    let now = crate::util::now_iso(0);
    let vm = |id: &str, status: &str, pid: &str, octet: u32| {
        format!(
            "INSERT INTO vms (id, status, config, network, pid, socket_path, created_at, updated_at) VALUES \
             ('{id}', '{status}', '{{\"vm_id\":\"{id}\",\"backend\":\"firecracker\"}}', \
             '{{\"guest_ip\":\"172.16.0.{octet}\",\"tap_device\":\"tap{octet}\",\"ssh_host_port\":{port}}}', {pid}, \
             '/tmp/fc-{id}.sock', '{now}', '{now}');
             INSERT INTO ip_leases VALUES ('172.16.0.{octet}', '{id}', 'tap{octet}', '{now}');
             INSERT INTO ssh_forwards VALUES ('{id}', {port}, 22, '{now}');
             INSERT INTO vsock_cids VALUES ('{id}', {cid}, '{now}');",
            port = 2200 + octet,
            cid = 100 + octet
        )
    };
    pg.sql(
        &[
            vm("sbx-remote", "running", &live_pid.to_string(), 9),
            vm("vm-remote01", "created", "NULL", 10),
            vm(
                "sbx-remotedead",
                "running",
                &crate::util::dead_pid().to_string(),
                11,
            ),
            vm("sbx-weak", "running", &crate::util::dead_pid().to_string(), 7),
        ]
        .concat(),
    );
}

const OTHERS: [&str; 4] = ["sbx-remote", "vm-remote01", "sbx-remotedead", "sbx-weak"];

fn others_rows(pg: &Pg) -> String {
    let ids = OTHERS.map(|i| format!("'{i}'")).join(",");
    let mut out = String::new();
    for t in ["vms", "ip_leases", "ssh_forwards", "vsock_cids"] {
        let key = if t == "vms" { "id" } else { "vm_id" };
        out.push_str(&pg.sql(&format!(
            "SELECT x::text FROM {t} x WHERE {key} IN ({ids}) ORDER BY 1"
        )));
    }
    out
}

/// A sleeping process, standing at the pid another host's row records.
fn unrelated() -> Reaped {
    Reaped(Command::new("sleep").arg("1000").spawn().unwrap())
}

#[test]
fn this_hosts_stale_vms_go_and_another_hosts_rows_are_never_touched() {
    let Some(mut w) = World::new("pg-hosts") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    w.add(VmSpec::new("sbx-keep", "stopped", 3));
    w.add(VmSpec::running("sbx-live", 4));
    // This host's own orphan TAP, named like another host's VM's.
    sh("ip tuntap add tap7 mode tap");
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    let bystander = unrelated();
    add_other_hosts_rows(&pg, bystander.id());
    let theirs = others_rows(&pg);
    let url = pg.url();

    let r = with_url(&w, &url, &[]);
    r.expect(
        0,
        "Reconciled stale VMs: sbx-crash\nTargets (1):\n  - sbx-crash\nDeleted: sbx-crash\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains(&format!(
            "state DB: postgresql://ci:***@/smolvm?host={}&port=5432 (SmolVM, PostgreSQL at socket",
            pg.sock.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("4 VMs of the shared PostgreSQL state are not this host's, or cannot be told"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("sbx-weak: its row is in a DB other hosts share, and TAP tap7 is here"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("no state DB found"), "{}", r.stderr);
    assert_no_secret(&r);
    assert_eq!(
        pg.ids(),
        [
            "sbx-keep",
            "sbx-live",
            "sbx-remote",
            "sbx-remotedead",
            "sbx-weak",
            "vm-remote01"
        ]
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM ip_leases WHERE vm_id = 'sbx-crash'")
            .trim(),
        "0"
    );
    assert!(!has_link("tap2") && !w.data.join("disks/sbx-crash.ext4").exists());
    assert!(has_link("tap3") && has_link("tap4") && has_link("tap7"));
    assert_eq!(others_rows(&pg), theirs);
    assert!(pid_alive(bystander.id()));

    // --all takes every VM of this host's, and still nothing of the others'.
    let r = with_url(&w, &url, &["--all", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        doc["other_hosts"],
        serde_json::json!(["sbx-remote", "vm-remote01", "sbx-remotedead", "sbx-weak"])
    );
    assert_eq!(doc["summary"]["deleted"], 2);
    assert_eq!(doc["state_dbs"][0]["family"], "SmolVM");
    assert!(w.reap("sbx-live"), "the live VM's VMM was not stopped");
    assert_eq!(
        pg.ids(),
        ["sbx-remote", "sbx-remotedead", "sbx-weak", "vm-remote01"]
    );
    assert_eq!(others_rows(&pg), theirs);
    assert!(pid_alive(bystander.id()) && has_link("tap7"));
    assert!(!has_link("tap3") && !has_link("tap4"));
    let r = with_url(&w, &url, &["--check", "--all"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // Told the DB is this host's alone, the rows nothing here names are this host's
    // leftovers: they go, with the orphan TAP, and the process at a recorded pid, which
    // is no VMM of theirs, is still never signalled.
    let r = with_url(&w, &url, &["--all", "--database-is-local"]);
    r.expect(
        0,
        "Reconciled stale VMs: sbx-remote, sbx-remotedead, sbx-weak\nTargets (4):\n  - sbx-remote\n  - vm-remote01\n  \
         - sbx-remotedead\n  - sbx-weak\nDeleted: sbx-remote\nDeleted: vm-remote01\nDeleted: sbx-remotedead\n\
         Deleted: sbx-weak\nCleanup complete.\n",
    );
    assert!(pg.ids().is_empty() && !has_link("tap7"));
    assert_eq!(pg.sql("SELECT count(*) FROM ip_leases").trim(), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM vsock_cids").trim(), "0");
    assert!(pid_alive(bystander.id()));
}

/// `--dry-run` and `--check` read in a read-only transaction and write nothing: not even
/// the stale mark SmolVM's own reconcile writes (0.0.8 did, even under `--dry-run`).
#[test]
fn dry_run_and_check_read_only_and_change_nothing() {
    let Some(mut w) = World::new("pg-dry") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    w.add(VmSpec::new("vm-target1", "created", 3));
    let pg = Pg::start(pg::Config { tls: true, log: true });
    pg.take_rows_of(&w);
    let rows = pg.rows();
    let world = w.snapshot();
    let url = pg.url();
    let r = with_url(&w, &url, &["--dry-run"]);
    r.expect(
        0,
        "Reconciled stale VMs: sbx-crash\nTargets (2):\n  - sbx-crash\n  - vm-target1\nDry run complete. No changes made.\n",
    );
    let r = with_url(&w, &url, &["--check"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(pg.rows(), rows);
    w.snapshot().assert_same(&world);
    let log = pg.server_log();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("execute <unnamed>:")).collect();
    assert_eq!(
        ours.iter()
            .filter(|l| l.ends_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            .count(),
        2,
        "{log}"
    );
    assert!(
        !ours.iter().any(|l| l.contains("DELETE") || l.contains("UPDATE")),
        "{log}"
    );
    // The cleanup itself deletes, every VM in one statement (each row only if unchanged).
    with_url(&w, &url, &[]).expect(
        0,
        "Reconciled stale VMs: sbx-crash\nTargets (2):\n  - sbx-crash\n  - vm-target1\nDeleted: sbx-crash\n\
         Deleted: vm-target1\nCleanup complete.\n",
    );
    assert!(pg.ids().is_empty());
    assert_eq!(pg.server_log().matches("DELETE FROM vms v USING t").count(), 1);
}

/// One way of naming the server: the URL, the environment beside it, what to expect.
struct Case {
    url: String,
    env: Vec<(&'static str, String)>,
    want: String,
}

impl Case {
    fn new(url: impl Into<String>, want: impl Into<String>) -> Case {
        Case {
            url: url.into(),
            env: Vec::new(),
            want: want.into(),
        }
    }

    fn env(mut self, k: &'static str, v: impl Into<String>) -> Case {
        self.env.push((k, v.into()));
        self
    }

    /// The binary on `w` with this URL, only this environment's libpq variables.
    fn run(&self, w: &World, args: &[&str]) -> Run {
        let mut c = w.cmd(args);
        c.env("SMOLVM_DATABASE_URL", &self.url).env_remove("PGPASSWORD");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }
}

/// A password file others may read: libpq ignores it, and so does cleanup.
fn open_pgpass(w: &World) -> std::path::PathBuf {
    let pgpass = w.scratch.0.join("pgpass-open");
    std::fs::write(&pgpass, format!("*:*:*:*:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    pgpass
}

fn failures(pg: &Pg, pgpass: &std::path::Path) -> Vec<Case> {
    let sock = pg.sock.display().to_string();
    let tcp = |tail: &str| format!("postgresql://ci:{PASSWORD_URL}@{tail}");
    vec![
        Case::new(
            format!("postgresql://ci:wrong{PASSWORD_URL}@127.0.0.1:5432/smolvm"),
            "password authentication failed for user \"ci\"",
        ),
        Case::new(tcp("127.0.0.1:5432/nosuchdb"), "database \"nosuchdb\" does not exist"),
        Case::new(
            tcp("127.0.0.1:5999/smolvm"),
            "cannot connect to the server at 127.0.0.1:5999: Connection refused",
        ),
        Case::new(
            tcp(&format!("/smolvm?host={sock}-gone")),
            format!("cannot connect to the server on socket {sock}-gone/.s.PGSQL.5432: No such file or directory"),
        ),
        Case::new(
            tcp("127.0.0.1:5432/smolvm?sslmode=bogus"),
            "bad URL: invalid sslmode value: \"bogus\"",
        ),
        Case::new(tcp("127.0.0.1:99999/smolvm"), "bad URL: invalid port number: \"99999\""),
        Case::new(
            "postgresql://ci@127.0.0.1:5432/smolvm",
            format!(
                "the server asks for a password for user \"ci\" and none was given (in the URL, PGPASSWORD or {})",
                pgpass.display()
            ),
        )
        .env("PGPASSFILE", pgpass.display().to_string()),
        Case::new(
            tcp(&format!(
                "localhost:5432/smolvm?sslmode=verify-full&sslrootcert={}",
                pg::certs().join("server.crt").display()
            )),
            "TLS with the server at localhost:5432 failed: invalid peer certificate: UnknownIssuer",
        ),
    ]
}

/// Each way the server cannot be used is named, exits 1, changes nothing on the host or
/// in the DB, and never shows the password (stdout, stderr, `--json`).
#[test]
fn every_failure_is_named_changes_nothing_and_hides_the_password() {
    let Some(mut w) = World::new("pg-errors") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    let pgpass = open_pgpass(&w);
    let rows = pg.rows();
    let world = w.snapshot();
    for case in failures(&pg, &pgpass) {
        let (url, why) = (&case.url, &case.want);
        for args in [
            &[][..],
            &["--dry-run"][..],
            &["--check", "--all"][..],
            &["--all", "--json"][..],
        ] {
            let r = case.run(&w, args);
            assert_eq!(r.code, 1, "{url} {args:?}: {}{}", r.stdout, r.stderr);
            let said = if args.contains(&"--json") {
                let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                assert_eq!(doc["summary"]["deleted"], 0);
                doc["incomplete"][0].as_str().unwrap().to_string()
            } else {
                r.stdout.clone()
            };
            assert!(
                said.contains(why.as_str()),
                "{url} {args:?}: wanted {why:?}:\n{}{}",
                r.stdout,
                r.stderr
            );
            assert!(said.contains("nothing was changed"), "{}", r.stdout);
            if args.is_empty() {
                // One line: what could not be done with which DB, why, and that nothing changed.
                let head = format!(
                    "Cleanup incomplete: cannot {} SmolVM's state in PostgreSQL (SMOLVM_DATABASE_URL={}): ",
                    if why.starts_with("bad URL") {
                        "use"
                    } else {
                        "connect to"
                    },
                    pg_shown(url)
                );
                assert!(r.stdout.starts_with(&head), "{}", r.stdout);
                assert!(r.stdout.ends_with(
                    "; nothing was changed (the VMs whose rows are there cannot be told from leftovers)\n"
                ));
                assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
            }
            assert_no_secret(&r);
        }
    }
    // The open password file was ignored, and said so.
    let r = Case::new("postgresql://ci@127.0.0.1:5432/smolvm", "")
        .env("PGPASSFILE", pgpass.display().to_string())
        .run(&w, &[]);
    assert!(r.stderr.contains("has group or world access"), "{}", r.stderr);
    assert_eq!(pg.rows(), rows);
    w.snapshot().assert_same(&world);
}

/// The URL as the binary shows it: the user-info password hidden.
fn pg_shown(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(s, rest)| Some((s, rest.split_once('@')?)))
    {
        Some((scheme, (user, host))) if user.contains(':') => {
            format!("{scheme}://{}:***@{host}", user.split(':').next().unwrap())
        }
        _ => url.to_string(),
    }
}

/// Logins by MD5 and by cleartext password, as older servers were set up.
fn add_md5_and_password_logins(pg: &Pg) {
    pg.sql(
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5pw'; \
         CREATE ROLE pwuser LOGIN PASSWORD 'plainpw'; GRANT ALL ON ALL TABLES IN SCHEMA public TO md5user, pwuser",
    );
    let hba = pg.dir.0.join("data/pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all md5user 127.0.0.1/32 md5\nhost all pwuser 127.0.0.1/32 password\n{rest}"),
    )
    .unwrap();
    pg.sql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// Password files as libpq reads them (0600, `:` escaped): one for TCP at `PGPASSFILE`'s
/// path (returned), one at `~/.pgpass` for the socket (`World::cmd` sets HOME).
fn password_files(w: &World, pg: &Pg) -> std::path::PathBuf {
    let escaped = PASSWORD.replace('\\', "\\\\").replace(':', "\\:");
    let passfile = w.scratch.0.join("pgpass");
    let sock = pg.sock.display();
    for (path, line) in [
        (passfile.clone(), format!("127.0.0.1:5432:smolvm:ci:{escaped}\n")),
        (
            w.scratch.0.join(".pgpass"),
            format!("{sock}:5432:smolvm:ci:{escaped}\n"),
        ),
    ] {
        std::fs::write(&path, line).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    passfile
}

fn url_forms(pg: &Pg, passfile: &std::path::Path) -> Vec<Case> {
    let sock = pg.sock.display().to_string();
    let ca = pg::certs().join("ca.crt").display().to_string();
    let tcp = |tail: &str| format!("postgresql://ci:{PASSWORD_URL}@{tail}");
    let tls = "127.0.0.1:5432, TLS";
    vec![
        Case::new(tcp("127.0.0.1:5432/smolvm"), tls),
        Case::new(format!("postgres://ci:{PASSWORD_URL}@127.0.0.1/smolvm"), tls),
        Case::new(tcp(&format!("/smolvm?host={sock}")), "socket"),
        Case::new(
            tcp(&format!("{}:5432/smolvm", sock.replace('/', "%2F"))),
            "socket",
        ),
        Case::new("postgresql://ci@127.0.0.1/smolvm", tls).env("PGPASSWORD", PASSWORD),
        Case::new("postgresql://ci@127.0.0.1/smolvm", tls).env("PGPASSFILE", passfile.display().to_string()),
        Case::new(format!("postgresql://ci@/smolvm?host={sock}"), "socket"),
        Case::new(
            format!("postgresql://ci@127.0.0.1/smolvm?password={PASSWORD_URL}"),
            tls,
        ),
        Case::new("postgresql:///smolvm", "socket")
            .env("PGHOST", sock.clone())
            .env("PGPORT", "5432")
            .env("PGUSER", "ci")
            .env("PGPASSWORD", PASSWORD),
        Case::new(tcp("127.0.0.1/smolvm?sslmode=require"), tls),
        Case::new(tcp("127.0.0.1/smolvm?sslmode=disable"), "127.0.0.1:5432)"),
        Case::new(
            tcp(&format!("localhost/smolvm?sslmode=verify-full&sslrootcert={ca}")),
            "localhost:5432, TLS",
        ),
        Case::new(
            tcp(&format!(
                "127.0.0.1/smolvm?sslmode=verify-full&sslrootcert={ca}&channel_binding=require"
            )),
            tls,
        ),
        Case::new(
            tcp(&format!(
                "db.invalid/smolvm?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"
            )),
            "db.invalid:5432, TLS",
        ),
        Case::new(
            "postgresql://md5user:md5pw@127.0.0.1/smolvm?sslmode=disable",
            "127.0.0.1:5432)",
        ),
        Case::new("postgresql://pwuser:plainpw@127.0.0.1/smolvm", tls),
    ]
}

/// Every way SmolVM's users name the server, as libpq reads it: TCP with a
/// percent-encoded password, `postgres://`, a Unix socket as `?host=` or as an encoded
/// host, the password from `PGPASSWORD`, `PGPASSFILE`, `~/.pgpass` or `?password=`,
/// `postgresql:///db` with `PGHOST`/`PGPORT`/`PGUSER`, TLS (`require`, `verify-full`,
/// `verify-ca` by `hostaddr`, channel binding), and MD5 and cleartext logins.
#[test]
fn every_url_form_smolvm_accepts_reads_the_rows() {
    let Some(mut w) = World::new("pg-urls") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    add_md5_and_password_logins(&pg);
    let passfile = password_files(&w, &pg);
    for case in url_forms(&pg, &passfile) {
        let r = case.run(&w, &["--dry-run"]);
        r.expect(
            0,
            "Reconciled stale VMs: sbx-crash\nTargets (1):\n  - sbx-crash\nDry run complete. No changes made.\n",
        );
        assert!(
            r.stderr
                .contains(&format!("(SmolVM, PostgreSQL at {}", case.want)),
            "{}: {}",
            case.url,
            r.stderr
        );
        assert_no_secret(&r);
    }
    // The same refusals libpq makes: a name the certificate does not carry under
    // verify-full, channel binding demanded without TLS.
    let ca = pg::certs().join("ca.crt").display().to_string();
    for case in [
        Case::new(
            format!(
                "postgresql://ci:{PASSWORD_URL}@db.invalid/smolvm?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"
            ),
            "TLS with the server at db.invalid:5432 failed: invalid peer certificate: certificate not valid for name",
        ),
        Case::new(
            format!(
                "postgresql://ci:{PASSWORD_URL}@127.0.0.1/smolvm?sslmode=disable&channel_binding=require"
            ),
            "channel_binding=require, but the session is not encrypted (TLS), so SCRAM cannot be bound to it",
        ),
    ] {
        let r = case.run(&w, &["--dry-run"]);
        assert_eq!(r.code, 1);
        assert!(r.stdout.contains(&case.want), "{}: {}", case.url, r.stdout);
    }
}

/// A server that does not do TLS: `prefer` goes on in the clear, `require` is refused
/// by name.
#[test]
fn a_server_without_tls_is_refused_only_when_tls_is_required() {
    let Some(mut w) = World::new("pg-notls") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    let pg = Pg::start(pg::Config {
        tls: false,
        log: false,
    });
    pg.take_rows_of(&w);
    let r = with_url(
        &w,
        &format!("postgresql://ci:{PASSWORD_URL}@127.0.0.1/smolvm"),
        &["--dry-run"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("PostgreSQL at 127.0.0.1:5432)"), "{}", r.stderr);
    let r = with_url(
        &w,
        &format!("postgresql://ci:{PASSWORD_URL}@127.0.0.1/smolvm?sslmode=require"),
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(
            "the server at 127.0.0.1:5432 does not accept TLS connections, and sslmode=require requires TLS"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(pg.ids(), ["sbx-crash"]);
    assert!(has_link("tap2"));
}

/// Where rustls differs from libpq: a self-signed CA certificate the server presents as
/// its own is refused under verify-full, named so the operator knows what to change.
#[test]
fn a_ca_certificate_as_the_servers_own_is_refused_by_name() {
    let Some(mut w) = World::new("pg-selfca") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    pg.use_cert("self");
    let ca = pg::certs().join("self.crt");
    let url = format!(
        "postgresql://ci:{PASSWORD_URL}@localhost/smolvm?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let r = with_url(&w, &url, &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(
            "TLS with the server at localhost:5432 failed: the server presents a CA certificate as its own, \
             which rustls refuses (libpq accepts it): give the server a certificate signed by that CA"
        ),
        "{}",
        r.stdout
    );
    // Encryption alone (require, no CA file) does not look at whose it is.
    let r = with_url(
        &w,
        &format!("postgresql://ci:{PASSWORD_URL}@localhost/smolvm?sslmode=require"),
        &["--dry-run"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(pg.ids(), ["sbx-crash"]);
}

/// A row that a table of the user's still refers to (a foreign key without cascade) or
/// a snapshot was taken of keeps its row, and its child rows with it; the others go.
#[test]
fn a_pinned_row_stays_whole_and_the_others_go() {
    let Some(mut w) = World::new("pg-pinned") else {
        return;
    };
    w.add(VmSpec::stale("sbx-pinned", 2));
    w.add(VmSpec::stale("sbx-snap", 3));
    w.add(VmSpec::stale("sbx-free", 4));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    pg.sql(
        "CREATE TABLE vm_leases (lease TEXT PRIMARY KEY, vm_id TEXT NOT NULL REFERENCES vms(id));
         INSERT INTO vm_leases VALUES ('l1', 'sbx-pinned');
         INSERT INTO snapshots (snapshot_id, vm_id, snapshot_path, mem_file_path, disk_path, vm_config, network_config, created_at)
             VALUES ('snap-1', 'sbx-snap', '', '', '', '{}', '{}', 'x');",
    );
    let r = with_url(&w, &pg.url(), &[]);
    r.expect(
        1,
        "Reconciled stale VMs: sbx-free, sbx-pinned, sbx-snap\nTargets (3):\n  - sbx-free\n  - sbx-pinned\n  - sbx-snap\n\
         Deleted: sbx-free\n\
         Failed:  sbx-pinned (its state row is still referred to by table vm_leases; row kept)\n\
         Failed:  sbx-snap (its state row is still referred to by table snapshots; row kept)\n\
         Cleanup completed with 2 failure(s).\n",
    );
    assert_eq!(pg.ids(), ["sbx-pinned", "sbx-snap"]);
    assert_eq!(
        pg.sql("SELECT vm_id FROM ip_leases ORDER BY 1"),
        "sbx-pinned\nsbx-snap\n"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM snapshots").trim(), "1");
    assert!(!has_link("tap2") && !has_link("tap4"));
}

/// SmolVM rewrites a row while the run waits for its VM's VMM to stop (a restart): that
/// row is kept as SmolVM wrote it, with its child rows, and the VM fails; the others in
/// the same statement go.
#[test]
fn a_row_smolvm_rewrites_during_the_run_is_kept() {
    let Some(mut w) = World::new("pg-changed") else {
        return;
    };
    w.add(VmSpec {
        proc: crate::util::Proc::IgnoresTerm,
        ..VmSpec::new("vm-restart", "running", 2)
    });
    w.add(VmSpec::stale("sbx-crash", 3));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    let run = w
        .cmd(&["--grace", "3s"])
        .env("SMOLVM_DATABASE_URL", pg.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the run waits out the VMM's grace, SmolVM writes the row again.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    pg.sql("UPDATE vms SET updated_at = 'restarted', status = 'running' WHERE id = 'vm-restart'");
    let r = Run::from(run.wait_with_output().unwrap());
    r.expect(
        1,
        "Reconciled stale VMs: sbx-crash\nTargets (2):\n  - sbx-crash\n  - vm-restart\nDeleted: sbx-crash\n\
         Failed:  vm-restart (its state row changed during cleanup (VM restarted?); row kept)\n\
         Cleanup completed with 1 failure(s).\n",
    );
    assert_eq!(pg.ids(), ["vm-restart"]);
    assert_eq!(pg.sql("SELECT updated_at FROM vms").trim(), "restarted");
    assert_eq!(pg.sql("SELECT vm_id FROM ip_leases").trim(), "vm-restart");
    w.reap("vm-restart");
}

/// A server that takes the connection and never answers (stopped, wedged) holds the run
/// no longer than `--timeout`: named, nothing changed.
#[test]
fn a_server_that_never_answers_is_bounded_by_the_timeout() {
    let Some(mut w) = World::new("pg-wedged") else {
        return;
    };
    w.add(VmSpec::stale("sbx-crash", 2));
    let pg = Pg::start(pg::Config::default());
    pg.take_rows_of(&w);
    let world = w.snapshot();
    pg.signal("STOP");
    for url in [
        pg.url(),
        format!("postgresql://ci:{PASSWORD_URL}@127.0.0.1/smolvm"),
    ] {
        let t = std::time::Instant::now();
        let r = with_url(&w, &url, &["--timeout", "2s"]);
        let took = t.elapsed();
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("did not answer within the run's --timeout")
                && r.stdout.contains("nothing was changed"),
            "{}",
            r.stdout
        );
        assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
    }
    pg.signal("CONT");
    w.snapshot().assert_same(&world);
    assert_eq!(pg.ids(), ["sbx-crash"]);
}

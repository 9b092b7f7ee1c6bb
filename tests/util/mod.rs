//! Test harness: a private network namespace per test, SmolVM-made state built the way
//! SmolVM 0.0.5 builds it (its schema and rows, `ip tuntap` TAPs, its nft tables and
//! commented rules through the `nft` CLI, files), stand-in VMM processes, and snapshots
//! of the world to compare before and after a run.

#![allow(dead_code)]

pub mod fake_vmm;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

pub const BIN: &str = env!("CARGO_BIN_EXE_smolvm-cleanup");
/// State the real SmolVM 0.0.5 wrote (its DB, and `nft -a list ruleset`, `ip -d link show`
/// and the file listing taken right after), kept in the repo so a clean clone tests alone.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smolvm-0.0.5");

/// Moves this test's thread into a new network namespace (children inherit it). Without
/// root the test fails, unless `SMOLVM_CLEANUP_ALLOW_SKIP=1` lets it skip: it then returns
/// false and says so past libtest's output capture, so a skip never reads as a pass.
pub fn enter_netns() -> bool {
    if !rustix::process::geteuid().is_root() {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        assert!(
            std::env::var("SMOLVM_CLEANUP_ALLOW_SKIP").is_ok_and(|v| v == "1"),
            "{name} creates TAPs, nft tables and processes and must run as root \
             (sudo ./ci/test), or be skipped explicitly with SMOLVM_CLEANUP_ALLOW_SKIP=1"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {name}");
        return false;
    }
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace; no
    // other thread's state or Rust invariant depends on it. libtest runs each test on
    // its own thread, so the namespace is this test's alone.
    #[allow(unsafe_code)]
    let r = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) };
    r.expect("unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
    true
}

/// Runs a shell command in this test's namespace; panics with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Feeds a script to `nft -f -`, as SmolVM does.
pub fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ruleset() -> String {
    sh("nft -a list ruleset")
}

/// Comments of every rule in the ruleset, sorted.
pub fn comments() -> Vec<String> {
    let mut v: Vec<String> = ruleset()
        .lines()
        .filter_map(|l| l.split("comment \"").nth(1))
        .map(|c| c[..c.find('"').unwrap()].to_string())
        .collect();
    v.sort();
    v
}

/// Deletes, with the nft CLI, every rule of SmolVM's chains whose comment matches.
pub fn delete_rules(matches: impl Fn(&str) -> bool) {
    let mut script = String::new();
    for (table, chain) in [
        ("ip smolvm_nat", "prerouting"),
        ("ip smolvm_nat", "output"),
        ("ip smolvm_nat", "postrouting"),
        ("inet smolvm_filter", "forward"),
    ] {
        for line in sh(&format!("nft -a list chain {table} {chain}")).lines() {
            let Some(comment) = line.split("comment \"").nth(1) else {
                continue;
            };
            if matches(&comment[..comment.find('"').unwrap()]) {
                let handle = line.rsplit("# handle ").next().unwrap().trim();
                script.push_str(&format!("delete rule {table} {chain} handle {handle}\n"));
            }
        }
    }
    nft(&script);
}

/// Holds an existing TAP open the way a VMM does (TUNSETIFF on /dev/net/tun): the kernel
/// then reports carrier on it. Dropping the file lets it go.
pub fn hold_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap(),
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq (name, flags) from the pointer, which points
    // to a live, correctly sized #[repr(C)] value for the duration of the call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f
}

/// Link names in this namespace, sorted.
pub fn links() -> Vec<String> {
    let mut v: Vec<String> = sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

pub fn has_link(name: &str) -> bool {
    links().iter().any(|l| l == name)
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !matches!(s[s.rfind(')').unwrap() + 2..].chars().next(), Some('Z' | 'X')))
}

/// A pid that was just in use and now is not (its process has exited and been reaped).
pub fn dead_pid() -> i64 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    i64::from(pid)
}

/// The world of SmolVM's own probe: a crashed VM, a stopped one, a protected `keepme`, a
/// running row with no pid, and (with `live`) a live VM first.
pub fn probe_world(tag: &str, live: bool) -> Option<World> {
    let mut w = World::new(tag)?;
    if live {
        w.add(VmSpec::running("vm-aaaa0001", 2));
    }
    w.add(VmSpec::stale("vm-bbbb0002", 3));
    w.add(VmSpec::new("vm-cccc0003", "stopped", 4));
    w.add(VmSpec::new("keepme", "created", 5));
    w.add(VmSpec::new("vm-dddd0004", "running", 6));
    Some(w)
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn now_iso(offset_secs: i64) -> String {
    let t =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap() + offset_secs;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S.000000+00:00"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The contract's first line for a user who is not root.
pub const NOT_ROOT: &str = "Warning: not running as root. Cleanup may fail for TAP/nftables resources.";
/// The first line for root without CAP_NET_ADMIN: which capability, and how to grant it.
pub const NO_NET_ADMIN: &str = "Warning: running as root without CAP_NET_ADMIN. Cleanup may fail for \
    TAP/nftables resources; grant it (docker run --cap-add NET_ADMIN, or \
    securityContext.capabilities.add: [\"NET_ADMIN\"] in Kubernetes).";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("smolvm-it-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const SCHEMA_005: &str = "
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL, network TEXT,
    pid INTEGER, socket_path TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ip_leases (
    ip TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE, tap_device TEXT NOT NULL, created_at TEXT NOT NULL,
    FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_vms_status ON vms(status);
CREATE INDEX IF NOT EXISTS idx_ip_leases_vm_id ON ip_leases(vm_id);
CREATE TABLE IF NOT EXISTS ssh_forwards (
    vm_id TEXT PRIMARY KEY, host_port INTEGER NOT NULL UNIQUE, guest_port INTEGER NOT NULL,
    created_at TEXT NOT NULL, FOREIGN KEY (vm_id) REFERENCES vms(id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_vm_id ON ssh_forwards(vm_id);
CREATE INDEX IF NOT EXISTS idx_ssh_forwards_host_port ON ssh_forwards(host_port);
";

/// The shared tables, base chains and global rules SmolVM 0.0.5 creates.
pub fn smolvm_base_nft(uplink: &str) -> String {
    format!(
        "table ip smolvm_nat {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"{uplink}\" counter masquerade comment \"smolvm:global:nat:masquerade:{uplink}\"
  }}
}}
table inet smolvm_filter {{
  chain forward {{ type filter hook forward priority filter; policy accept;
    ct state established,related counter accept comment \"smolvm:global:forward:established\"
    iifname \"tap*\" oifname \"tap*\" counter drop comment \"smolvm:global:forward:tap-isolation\"
  }}
}}
"
    )
}

/// SmolVM 0.0.5's per-VM rules: the TAP's forward rule and the four SSH-forward rules.
pub fn smolvm_vm_nft(id: &str, octet: u32, port: u32, uplink: &str) -> String {
    let ip = format!("172.16.0.{octet}");
    let tap = format!("tap{octet}");
    format!(
        "add rule inet smolvm_filter forward iifname \"{tap}\" oifname \"{uplink}\" counter accept comment \"smolvm:nat:tap:{tap}:to:{uplink}\"
add rule ip smolvm_nat prerouting iifname \"{uplink}\" tcp dport {port} counter dnat to {ip}:22 comment \"smolvm:{id}:ssh\"
add rule ip smolvm_nat output ip daddr 127.0.0.1 tcp dport {port} counter dnat to {ip}:22 comment \"smolvm:{id}:ssh\"
add rule ip smolvm_nat postrouting ip saddr 127.0.0.0/8 ip daddr {ip} tcp dport 22 counter snat to 172.16.0.1 comment \"smolvm:{id}:ssh\"
add rule inet smolvm_filter forward ip daddr {ip} tcp dport 22 ct state new,related,established counter accept comment \"smolvm:{id}:ssh\"
"
    )
}

/// How the VM's VMM looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// No process (created/stopped, or a crashed VM whose pid is recorded as given).
    None,
    /// A stand-in Firecracker that exits on SIGTERM.
    Firecracker,
    /// A stand-in Firecracker that ignores SIGTERM.
    IgnoresTerm,
    /// A stand-in QEMU started on the VM's disk.
    Qemu,
    /// A stand-in Firecracker run by another user (this uid).
    FirecrackerAs(u32),
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub id: String,
    pub status: &'static str,
    /// TAP `tap<octet>`, IP 172.16.0.<octet>; None: no network (QEMU usernet).
    pub octet: Option<u32>,
    pub proc: Proc,
    /// Recorded pid when `proc` is None (a dead or foreign pid).
    pub pid: Option<i64>,
    /// Seconds added to "now" for updated_at.
    pub updated_offset: i64,
    pub files: bool,
}

impl VmSpec {
    pub fn new(id: &str, status: &'static str, octet: u32) -> VmSpec {
        VmSpec {
            id: id.into(),
            status,
            octet: Some(octet),
            proc: Proc::None,
            pid: None,
            updated_offset: 0,
            files: true,
        }
    }

    /// A crashed VM: `running` with the pid of a process that is gone.
    pub fn stale(id: &str, octet: u32) -> VmSpec {
        VmSpec {
            pid: Some(dead_pid()),
            ..VmSpec::new(id, "running", octet)
        }
    }

    pub fn running(id: &str, octet: u32) -> VmSpec {
        VmSpec {
            proc: Proc::Firecracker,
            ..VmSpec::new(id, "running", octet)
        }
    }
}

/// One SmolVM-like host inside this test's netns: data dir, socket dir, state DB, nft.
pub struct World {
    pub scratch: Scratch,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub db: PathBuf,
    pub uplink: String,
    pub vmms: BTreeMap<String, Child>,
}

impl World {
    /// A namespace with an uplink, SmolVM's nft tables and an empty 0.0.5 DB.
    pub fn new(tag: &str) -> Option<World> {
        if !enter_netns() {
            return None;
        }
        let scratch = Scratch::new(tag);
        let data = scratch.0.join("data");
        let sock = scratch.0.join("sock");
        std::fs::create_dir_all(data.join("disks")).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        let db = data.join("smolvm.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_005).unwrap();
        drop(conn);
        sh(
            "ip link add uplink0 type veth peer name uplink0p && ip link set uplink0 up && ip link set uplink0p up",
        );
        nft(&smolvm_base_nft("uplink0"));
        Some(World {
            scratch,
            data,
            sock,
            db,
            uplink: "uplink0".into(),
            vmms: BTreeMap::new(),
        })
    }

    pub fn conn(&self) -> Connection {
        let c = Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        c
    }

    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.sock.join(format!("fc-{id}.sock"))
    }

    /// Creates a VM the way SmolVM 0.0.5 does: row, lease, SSH port, TAP (+address and
    /// route), nft rules, log and disk copy, and its VMM when asked.
    pub fn add(&mut self, spec: VmSpec) {
        let port = 2200 + spec.octet.unwrap_or(0) + 100 * u32::from(spec.octet.is_none());
        let tap = spec.octet.map(|o| format!("tap{o}"));
        let disk = self.data.join(format!("disks/{}.ext4", spec.id));
        let config = format!(
            r#"{{"vm_id":"{id}","vcpu_count":2,"mem_size_mib":512,"kernel_path":"/k","rootfs_path":"{disk}","extra_drives":[],"boot_args":"console=ttyS0","backend":"{backend}","disk_mode":"isolated","retain_disk_on_delete":false,"env_vars":{{}},"network_rate_limit_mbps":null}}"#,
            id = spec.id,
            disk = disk.display(),
            backend = if spec.proc == Proc::Qemu {
                "qemu"
            } else {
                "firecracker"
            },
        );
        let network = match spec.octet {
            Some(o) => format!(
                r#"{{"guest_ip":"172.16.0.{o}","gateway_ip":"172.16.0.1","netmask":"255.255.255.0","tap_device":"tap{o}","guest_mac":"AA:FC:00:00:00:{o:02X}","ssh_host_port":{port}}}"#
            ),
            None => format!(
                r#"{{"guest_ip":"10.0.2.15","gateway_ip":"10.0.2.2","netmask":"255.255.255.0","tap_device":"usernet","guest_mac":"AA:FC:00:00:00:01","ssh_host_port":{port}}}"#
            ),
        };
        if let Some(o) = spec.octet {
            sh(&format!(
                "ip tuntap add tap{o} mode tap && ip addr add 172.16.0.1/32 dev tap{o} && ip link set tap{o} up && ip route add 172.16.0.{o}/32 dev tap{o}"
            ));
            nft(&smolvm_vm_nft(&spec.id, o, port, &self.uplink));
        }
        if spec.files {
            std::fs::write(&disk, b"rootfs copy").unwrap();
            std::fs::write(self.data.join(format!("{}.log", spec.id)), b"vmm log").unwrap();
        }
        let pid = match spec.proc {
            Proc::None => spec.pid,
            p => {
                let child = fake_vmm::spawn(self, &spec.id, p);
                let pid = i64::from(child.id());
                self.vmms.insert(spec.id.clone(), child);
                Some(pid)
            }
        };
        let socket_path = matches!(
            spec.proc,
            Proc::Firecracker | Proc::IgnoresTerm | Proc::FirecrackerAs(_)
        )
        .then(|| self.socket_path(&spec.id).display().to_string());
        if spec.proc == Proc::None && spec.files && spec.status == "running" {
            // A crashed Firecracker leaves its API socket behind, unserved.
            let l = std::os::unix::net::UnixListener::bind(self.socket_path(&spec.id)).unwrap();
            drop(l);
        }
        let created = now_iso(spec.updated_offset - 1);
        let updated = now_iso(spec.updated_offset);
        let c = self.conn();
        c.execute(
            "INSERT INTO vms (id, status, config, network, pid, socket_path, created_at, updated_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
            params![spec.id, spec.status, config, network, pid, socket_path, created, updated],
        )
        .unwrap();
        c.execute(
            "INSERT INTO ssh_forwards (vm_id, host_port, guest_port, created_at) VALUES (?1,?2,22,?3)",
            params![spec.id, port, created],
        )
        .unwrap();
        if let (Some(o), Some(tap)) = (spec.octet, tap) {
            c.execute(
                "INSERT INTO ip_leases (ip, vm_id, tap_device, created_at) VALUES (?1,?2,?3,?4)",
                params![format!("172.16.0.{o}"), spec.id, tap, created],
            )
            .unwrap();
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(&[], args)
    }

    /// The binary run through `wrapper` (e.g. `setpriv --bounding-set=-net_admin`).
    pub fn cmd_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.arg("--state-dir")
            .arg(&self.data)
            .arg("--socket-dir")
            .arg(&self.sock)
            .args(args)
            .env_remove("SMOLVM_DATA_DIR")
            .env("HOME", &self.scratch.0);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run smolvm-cleanup"))
    }

    pub fn ids(&self) -> Vec<String> {
        let c = self.conn();
        let mut s = c.prepare("SELECT id FROM vms ORDER BY id").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    pub fn status(&self, id: &str) -> Option<(String, Option<i64>)> {
        self.conn()
            .query_row("SELECT status, pid FROM vms WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()
    }

    pub fn child_rows(&self, table: &str) -> Vec<String> {
        let c = self.conn();
        let mut s = c
            .prepare(&format!("SELECT vm_id FROM {table} ORDER BY vm_id"))
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Files under the data and socket dirs, relative, with their contents.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let ft = e.file_type().unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if ft.is_dir() {
                    out.insert(format!("{rel}/"), Vec::new());
                    walk(root, &p, out);
                } else if ft.is_file() {
                    out.insert(rel, std::fs::read(&p).unwrap());
                } else {
                    out.insert(rel, b"<special>".to_vec());
                }
            }
        }
        walk(&self.scratch.0, &self.scratch.0, &mut out);
        out
    }

    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            files: self.files(),
            ruleset: ruleset(),
            links: sh("ip -d link show"),
            live: self
                .vmms
                .iter_mut()
                .map(|(id, c)| (id.clone(), c.try_wait().unwrap().is_none()))
                .collect(),
        }
    }

    /// Reaps a stand-in VMM (cleanup killed it) and says whether it had exited by then.
    pub fn reap(&mut self, id: &str) -> bool {
        let mut c = self.vmms.remove(id).expect("no such stand-in VMM");
        let pid = c.id();
        let exited = !pid_alive(pid);
        let _ = c.kill();
        let _ = c.wait();
        exited
    }

    pub fn vmm_pid(&self, id: &str) -> u32 {
        self.vmms[id].id()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.vmms) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The world as a run could change it.
#[derive(PartialEq)]
pub struct Snapshot {
    pub files: BTreeMap<String, Vec<u8>>,
    pub ruleset: String,
    pub links: String,
    pub live: BTreeMap<String, bool>,
}

impl Snapshot {
    pub fn without_lock(mut self) -> Snapshot {
        self.files.retain(|k, _| !k.ends_with("smolvm-cleanup.lock"));
        self
    }

    /// Panics naming what differs (files by name, not by their bytes).
    #[track_caller]
    pub fn assert_same(&self, before: &Snapshot) {
        let changed: Vec<&String> = self
            .files
            .keys()
            .chain(before.files.keys())
            .filter(|k| self.files.get(*k) != before.files.get(*k))
            .collect();
        assert!(changed.is_empty(), "files changed: {changed:?}");
        assert_eq!(self.ruleset, before.ruleset, "nft ruleset changed");
        assert_eq!(self.links, before.links, "links changed");
        assert_eq!(self.live, before.live, "VMM processes changed");
    }
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32, stdout: &str) {
        if self.code != code || self.stdout != stdout {
            panic!(
                "\n--- expected (exit {code}) ---\n{stdout}--- got (exit {}) ---\n{}--- stderr ---\n{}",
                self.code, self.stdout, self.stderr
            );
        }
    }
}

//! The bottom of the house: plain data that flows between the stages (what discovery
//! observed, the inventory reconcile makes of it, the plan and the delete ops it carries)
//! and SmolVM's constants and name rules, which decide what SmolVM could have created.
//! Anything that fails these rules is hostile input: it is reported and never used to
//! build a path, a link name or an nft comment. Imports nothing from the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// SmolVM's VM id pattern (0.0.5+): `^[a-z0-9][a-z0-9_-]{0,62}[a-z0-9]$|^[a-z0-9]$`.
pub fn valid_vm_id(id: &str) -> bool {
    let b = id.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: u8| edge(c) || c == b'_' || c == b'-';
    match b.len() {
        1 => edge(b[0]),
        2..=64 => edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| inner(c)),
        _ => false,
    }
}

/// TAP names SmolVM creates: `tap<N>` (N from its IP pool, up to 65534) and bridge-mode
/// `svmb<8 hex>`. `eth0`, `lo` or `../x` from a DB row are refused.
pub fn valid_tap_name(name: &str) -> bool {
    if let Some(n) = name.strip_prefix("tap") {
        return (1..=5).contains(&n.len())
            && n.bytes().all(|c| c.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'));
    }
    if let Some(h) = name.strip_prefix("svmb") {
        return h.len() == 8
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    }
    false
}

/// `firecracker` (possibly a path), a QEMU system emulator, or libkrun's `krunvm` CLI
/// (SmolVM 0.0.9-0.0.20).
pub fn is_vmm_argv0(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base == "firecracker" || base.starts_with("qemu-system-") || base == "qemu-kvm" || base == "krunvm"
}

/// The paths a VMM's or sidecar's command line names, as SmolVM passes them: whole
/// arguments, and the parts of `--api-sock=/p`, QEMU's `file=/p,format=raw`,
/// `unix:/p,server` and swtpm's `dir=/p`. Only compared, never opened.
pub fn argv_paths(cmdline: &[String]) -> impl Iterator<Item = &std::path::Path> {
    cmdline.iter().skip(1).flat_map(|a| a.split(',')).map(|token| {
        let token = token.rsplit('=').next().unwrap_or(token);
        std::path::Path::new(token.strip_prefix("unix:").unwrap_or(token))
    })
}

/// What a process is to a VM, by its command line alone (which VM is `reconcile`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the guest: Firecracker, QEMU, `krunvm`, or the libkrun launcher SmolVM 0.0.21+
    /// (and Celesto) start as `python -m <project>.runtime._libkrun_launcher <json>`.
    Vmm,
    /// Runs beside the guest and dies with it: the `swtpm` TPM of a QEMU Windows guest
    /// (0.0.16+), the `ssh` tunnel of a port forward (0.0.19+, found by its recorded pid).
    Sidecar,
}

/// The role a command line gives a process, if it is one SmolVM starts.
pub fn vm_role(cmdline: &[String]) -> Option<Role> {
    let argv0 = cmdline.first()?;
    if is_vmm_argv0(argv0) {
        return Some(Role::Vmm);
    }
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if base == "swtpm" {
        return Some(Role::Sidecar);
    }
    let launcher = cmdline.windows(2).any(|w| {
        w[0] == "-m"
            && Project::ALL
                .iter()
                .any(|p| w[1] == format!("{}.runtime._libkrun_launcher", p.names().key))
    });
    (base.starts_with("python") && launcher).then_some(Role::Vmm)
}

/// `<id>.json`, `<id>.lock`, `<id>.operation.lock` in a forwards dir → id.
pub fn forward_file_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".operation.lock")
        .or_else(|| name.strip_suffix(".lock"))
        .or_else(|| name.strip_suffix(".json"))?;
    valid_vm_id(id).then_some(id)
}

/// `libkrun-<id>-<32 hex>.json` → id: the libkrun launcher's config (0.0.21+, in the
/// socket dir, never deleted by SmolVM).
pub fn libkrun_config_id(name: &str) -> Option<&str> {
    let stem = name.strip_prefix("libkrun-")?.strip_suffix(".json")?;
    let (id, hex) = stem.rsplit_once('-')?;
    let hex_ok = hex.len() == 32
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    (hex_ok && valid_vm_id(id)).then_some(id)
}

/// `<id>.ext4` / `<id>.qcow2` → id: a VM's disk in a data dir's `disks/`.
pub fn disk_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".ext4")
        .or_else(|| name.strip_suffix(".qcow2"))?;
    valid_vm_id(id).then_some(id)
}

/// The VM id an entry of a data dir carries by its name, by where it is (`sub`): `<id>.log`
/// (""), `disks/<id>.ext4|qcow2` and a disk's `<disk>.create-backup-<hex>` companion
/// (0.0.19+), `locks/<id>.create.lock|.snapshot.lock`, `firmware/<id>` and
/// `ssh-known-hosts/<id>.known_hosts`.
pub fn data_file_id<'a>(sub: &str, name: &'a str) -> Option<&'a str> {
    let id = match sub {
        "" => name.strip_suffix(".log"),
        "disks" => return disk_id(name.split_once(".create-backup-").map_or(name, |(disk, _)| disk)),
        "locks" => name
            .strip_suffix(".create.lock")
            .or_else(|| name.strip_suffix(".snapshot.lock")),
        "firmware" => Some(name),
        "ssh-known-hosts" => name.strip_suffix(".known_hosts"),
        _ => None,
    }?;
    valid_vm_id(id).then_some(id)
}

/// `172.16.0.2` as four bytes (a row's guest IP, a claim file's value); anything else is
/// None.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    s.parse::<std::net::Ipv4Addr>().ok().map(|ip| ip.octets())
}

/// The data dirs a VMM's command line names by SmolVM's layout: the `<dir>` of a disk
/// `<dir>/disks/<id>.ext4|qcow2` or of a path beneath `<dir>/firmware/<id>/`.
pub fn argv_homes(cmdline: &[String]) -> Vec<&std::path::Path> {
    let mut homes = Vec::new();
    for path in argv_paths(cmdline).filter(|p| p.is_absolute()) {
        let parent = path.parent();
        let disk = parent
            .filter(|d| d.file_name().is_some_and(|n| n == "disks"))
            .filter(|_| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(disk_id)
                    .is_some()
            })
            .and_then(|d| d.parent());
        let firmware = path
            .ancestors()
            .find(|a| {
                a.parent()
                    .and_then(|f| f.file_name())
                    .is_some_and(|n| n == "firmware")
                    && a.file_name().and_then(|n| n.to_str()).is_some_and(valid_vm_id)
            })
            .and_then(|a| a.parent()?.parent());
        for home in disk.into_iter().chain(firmware) {
            if !homes.contains(&home) {
                homes.push(home);
            }
        }
    }
    homes
}

/// The data dir of a VMM's log: SmolVM sends a VMM's stdout and stderr to
/// `<dir>/<id>.log`, so an absolute path of that form, for an id whose socket or launcher
/// config its command line names, is `<dir>` (any other `.log` is somebody else's).
pub fn log_home<'a>(target: &'a std::path::Path, cmdline: &[String]) -> Option<&'a std::path::Path> {
    let id = target.file_name()?.to_str()?.strip_suffix(".log")?;
    let named = argv_paths(cmdline)
        .filter_map(|p| p.file_name()?.to_str())
        .any(|n| socket_id(n).or_else(|| libkrun_config_id(n)) == Some(id));
    (target.is_absolute() && named && valid_vm_id(id))
        .then(|| target.parent())
        .flatten()
}

/// The data dir and name of a claim file, `<dir>/locks/resources/<kind>-<value>.lock`
/// with kind `tap`, `ip`, `ssh` or `vsock` (SmolVM 0.0.30+, Celesto).
pub fn claim_home(target: &std::path::Path) -> Option<(&std::path::Path, &str)> {
    let name = target.file_name()?.to_str()?;
    let (kind, value) = name.strip_suffix(".lock")?.split_once('-')?;
    if !matches!(kind, "tap" | "ip" | "ssh" | "vsock") || value.is_empty() || !target.is_absolute() {
        return None;
    }
    let resources = target.parent()?;
    let locks = resources.parent()?;
    let named = |p: &std::path::Path, n: &str| p.file_name().is_some_and(|f| f == n);
    (named(resources, "resources") && named(locks, "locks"))
        .then(|| Some((locks.parent()?, name)))
        .flatten()
}

/// The data dirs a process's environment (`/proc/PID/environ`) names: `CELESTO_DATA_DIR`
/// and `SMOLVM_DATA_DIR`, absolute values only (a relative one is relative to a cwd we
/// do not know).
pub fn env_homes(environ: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut homes: Vec<PathBuf> = Vec::new();
    for var in environ.split(|&b| b == 0) {
        let value = Project::ALL.iter().find_map(|p| {
            var.strip_prefix(p.names().data_dir_var.as_bytes())?
                .strip_prefix(b"=")
        });
        if let Some(v) = value.filter(|v| v.first() == Some(&b'/')) {
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(v));
            if !homes.contains(&dir) {
                homes.push(dir);
            }
        }
    }
    homes
}

/// `fc-<id>.sock` → id, for the socket names SmolVM uses.
pub fn socket_id(name: &str) -> Option<&str> {
    ["fc-", "qmp-", "vsock-"].iter().find_map(|p| {
        let id = name.strip_prefix(p)?.strip_suffix(".sock")?;
        valid_vm_id(id).then_some(id)
    })
}

pub const NFPROTO_INET: u8 = 1;

pub const NFPROTO_IPV4: u8 = 2;

/// The names SmolVM's code has shipped under: SmolVM (PyPI `smolvm` 0.0.x) and its
/// successor Celesto (PyPI `celesto` 0.1.x: the same code, its host state renamed).
/// Both draw from one TAP/IP pool and one socket namespace; everything else cleanup
/// matches by name comes from `Names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Project {
    #[default]
    SmolVM,
    Celesto,
}

/// One project's names for its host state.
#[derive(Debug)]
pub struct Names {
    /// As users read it: `SmolVM`, `Celesto`.
    pub title: &'static str,
    /// The directory name of its data dirs (`/var/lib/<key>`, `$XDG_STATE_HOME/<key>`).
    pub key: &'static str,
    /// The variable that names its data dir.
    pub data_dir_var: &'static str,
    pub db_file: &'static str,
    /// Its shared tables: `ip <nat>` and `inet <filter>`.
    pub nat: &'static str,
    pub filter: &'static str,
    /// `inet <policy><tap>`, one per TAP (SmolVM 0.0.32+).
    pub policy: &'static str,
    /// Its rule comments start with this.
    pub comment: &'static str,
    /// A bridge TAP's ifalias: `<bridge_alias><id>`.
    pub bridge_alias: &'static str,
}

const SMOLVM_NAMES: Names = Names {
    title: "SmolVM",
    key: "smolvm",
    data_dir_var: "SMOLVM_DATA_DIR",
    db_file: "smolvm.db",
    nat: "smolvm_nat",
    filter: "smolvm_filter",
    policy: "smolvm_policy_",
    comment: "smolvm:",
    bridge_alias: "smolvm-bridge:",
};

const CELESTO_NAMES: Names = Names {
    title: "Celesto",
    key: "celesto",
    data_dir_var: "CELESTO_DATA_DIR",
    db_file: "celesto.db",
    nat: "celesto_nat",
    filter: "celesto_filter",
    policy: "celesto_policy_",
    comment: "celesto:",
    bridge_alias: "celesto-bridge:",
};

impl Project {
    pub const ALL: [Project; 2] = [Project::SmolVM, Project::Celesto];

    pub fn names(self) -> &'static Names {
        match self {
            Project::SmolVM => &SMOLVM_NAMES,
            Project::Celesto => &CELESTO_NAMES,
        }
    }

    pub fn title(self) -> &'static str {
        self.names().title
    }

    /// Its two shared tables, (nfproto, name): its per-VM rules live only there.
    pub fn shared_tables(self) -> [(u8, &'static str); 2] {
        let n = self.names();
        [(NFPROTO_IPV4, n.nat), (NFPROTO_INET, n.filter)]
    }

    /// Whose shared table this is.
    pub fn of_shared_table(nfproto: u8, table: &str) -> Option<Project> {
        Project::ALL
            .into_iter()
            .find(|p| p.shared_tables().contains(&(nfproto, table)))
    }

    /// Whose per-TAP policy table this is, and the TAP it names.
    pub fn of_policy_table(nfproto: u8, table: &str) -> Option<(Project, &str)> {
        if nfproto != NFPROTO_INET {
            return None;
        }
        Project::ALL
            .into_iter()
            .find_map(|p| Some((p, table.strip_prefix(p.names().policy)?)))
    }

    /// Whose DB a file named `name` is (`celesto.db`; anything else is SmolVM's, the name
    /// `--db` has always been given).
    pub fn of_db_file(name: &str) -> Project {
        if name.starts_with(CELESTO_NAMES.key) {
            Project::Celesto
        } else {
            Project::SmolVM
        }
    }
}

/// The maps and sets SmolVM (0.0.8+) keeps in its two shared tables (Celesto's too).
pub const SHARED_SETS: [&str; 5] = [
    "dnat_ext",
    "dnat_local",
    "snat_return",
    "fwd_allow",
    "allowed_taps",
];

/// A `--prefix` must be something a valid id can start with.
pub fn valid_prefix(prefix: &str) -> bool {
    let b = prefix.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
    Error,
    Unknown,
}

impl Status {
    pub fn parse(s: &str) -> Status {
        match s {
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            "error" => Status::Error,
            _ => Status::Unknown,
        }
    }

    /// Rows whose VMM is supposed to be alive (or whose death was already noticed).
    pub fn expects_process(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Error)
    }
}

/// One row of `vms` with what the other tables and the JSON columns add, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of the state DB this row came from (`Observed::dbs`).
    pub db: usize,
    /// Whose DB that is.
    pub project: Project,
    pub id: String,
    pub status: Status,
    /// Raw `pid` column; absurd values are judged by the reconciler.
    pub pid: Option<i64>,
    pub socket_path: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// `updated_at` as Unix seconds, when SQLite could parse it.
    pub updated_unix: Option<f64>,
    pub created_unix: Option<f64>,
    /// TAP names from `network.tap_device`, `ip_leases` and `tap_allocations`, unvalidated.
    pub taps: Vec<String>,
    /// `config.retain_disk_on_delete`.
    pub retain_disk: bool,
    /// `config.backend` (`firecracker`, `qemu`, `libkrun`, …): which sockets its VMM serves.
    pub backend: Option<String>,
    /// `network.guest_ip`, when it is an IPv4 address.
    pub guest_ip: Option<[u8; 4]>,
    /// The SSH forward's host port (`ssh_forwards.host_port`, else `network.ssh_host_port`).
    pub host_port: Option<u16>,
    /// The SSH forward's guest port (`ssh_forwards.guest_port`; SmolVM's default is 22).
    pub guest_port: Option<u16>,
    /// `vsock_cids.guest_cid` (0.0.2x+).
    pub vsock_cid: Option<u32>,
    /// The ids of its `browser_sessions` rows (0.0.6+), unvalidated.
    pub browser_sessions: Vec<String>,
}

/// What the /proc we read can show of the host's processes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PidView {
    /// /proc belongs to a pid namespace other than the host's first one (a container
    /// without `--pid=host`): a VMM outside it is invisible, not gone.
    pub foreign: bool,
    /// When that namespace's first process started (Unix seconds): a pid a row recorded
    /// before then cannot be one of its processes.
    pub since_unix: Option<f64>,
}

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub pid: i32,
    /// State letter from /proc/PID/stat (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// Field 22 of /proc/PID/stat, clock ticks after boot: with the pid, the identity.
    pub start_ticks: u64,
    /// Start time as Unix seconds (derived from boot time; precise to ~10 ms).
    pub start_unix: f64,
    pub cmdline: Vec<String>,
    /// Its owner (the uid of its /proc directory): stopping another user's VMM takes CAP_KILL.
    pub uid: u32,
    /// The TAPs it holds open (read for VMM processes only).
    pub taps: Vec<String>,
    /// What its command line makes it (None: not a process SmolVM starts).
    pub role: Option<Role>,
    /// Whether it sees the host as we do (read for VMMs and sidecars only).
    pub view: View,
    /// The data dir it was started for, when something of it says (read for VMMs in our
    /// view only).
    pub home: Option<Home>,
}

impl ProcInfo {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether a process lives in our view of the host: our network namespace, and the
/// socket and data dirs its command line names are the very directories we read. Only a
/// process in our view can be a VM of ours; one we cannot inspect is never acted on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum View {
    #[default]
    Ours,
    /// Another container's or namespace's (why, for `-v`): its TAPs, sockets and disks are
    /// other objects than ours of the same names.
    Elsewhere(String),
    /// Its namespaces or root could not be read (why): cannot tell, so never acted on.
    Unknown(String),
}

/// The data dir a VMM was started for: parallel CI jobs on one runner share `/tmp` (so
/// every `fc-<id>.sock`) but each has its own `SMOLVM_DATA_DIR`, and a VMM of another
/// job's data dir is that job's to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub dir: PathBuf,
    pub by: HomeBy,
    /// It is one of this run's data dirs (the same directory, by device and inode).
    pub ours: bool,
}

/// What tells a VMM's data dir, most direct first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeBy {
    /// A disk (`<dir>/disks/<id>.*`) or firmware path (`<dir>/firmware/<id>/…`) on its
    /// command line (QEMU, swtpm).
    Argv,
    /// Its stdout or stderr is `<dir>/<id>.log`, where SmolVM sends every VMM's output.
    Log,
    /// `SMOLVM_DATA_DIR` or `CELESTO_DATA_DIR` in its environment (inherited from the
    /// process that started it).
    Env,
}

impl std::fmt::Display for HomeBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HomeBy::Argv => "by its command line",
            HomeBy::Log => "by its log",
            HomeBy::Env => "by its environment",
        })
    }
}

/// A claim file (`<dir>/locks/resources/<kind>-<value>.lock`) that a live process in our
/// network namespace holds in a data dir that is not this run's: what it claims (a TAP,
/// an IP) is that data dir's VM's, being made or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignClaim {
    pub dir: PathBuf,
    /// `tap-tap3.lock`, `ip-172.16.0.5.lock`, …
    pub name: String,
    pub pid: i32,
}

/// A network link from the rtnetlink dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub kind: Option<String>,
    /// IFLA_TUN_TYPE: 1 tun, 2 tap (only decoded for kind "tun").
    pub tun_type: Option<u8>,
    pub group: u32,
    pub alias: Option<String>,
    /// IFLA_CARRIER: a TAP has carrier while a process holds it open.
    pub carrier: bool,
    /// IFLA_TUN_OWNER: the user a persistent TAP was made for (`ip tuntap add … user
    /// alice`, as SmolVM makes them for the user it runs as); None when it has none.
    pub tun_owner: Option<u32>,
}

impl Link {
    /// Only a real TAP (kind tun, type tap) is ever ours to delete; when the kernel does
    /// not report the tun type, kind "tun" has to do.
    pub fn is_tap(&self) -> bool {
        self.kind.as_deref() == Some("tun") && self.tun_type.is_none_or(|t| t == 2)
    }
}

/// An nf_tables rule from the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// 4-byte values the rule compares against or loads (`cmp`, `immediate`): the guest
    /// IP of a SmolVM SSH rule is among them, which ties the rule's VM to its TAP.
    pub ipv4: Vec<[u8; 4]>,
}

impl Rule {
    /// Whose shared table holds it.
    pub fn project(&self) -> Option<Project> {
        Project::of_shared_table(self.family, &self.table)
    }
}

/// An nf_tables chain from the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: u8,
    pub table: String,
    pub name: String,
}

/// An nf_tables set or map from the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub family: u8,
    pub table: String,
    pub name: String,
}

/// One element of a set or map, its key and (for a map) its value as the kernel gave
/// them: a delete replays these bytes, never a re-encoding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    pub family: u8,
    pub table: String,
    pub set: String,
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
}

/// What an element of SmolVM's maps and sets (0.0.8+) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemMeaning {
    /// `dnat_ext`/`dnat_local`: `host port : guest ip . guest port`.
    Forward { port: u16, ip: [u8; 4], guest_port: u16 },
    /// `snat_return`/`fwd_allow`: `guest ip . guest port`.
    Guest { ip: [u8; 4], port: u16 },
    /// `allowed_taps`: a TAP name.
    Tap(String),
    /// Not one of SmolVM's sets, or bytes that do not fit it.
    Other,
}

impl Elem {
    /// Reads the element by the set it is in. Concatenated values are laid out in 4-byte
    /// registers (`172.16.0.2 . 22` is 4 bytes of address, then the port in the first 2
    /// bytes of the next 4), and a TAP name is NUL-padded.
    pub fn meaning(&self) -> ElemMeaning {
        let port = |b: &[u8], at: usize| b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
        let ip = |b: &[u8], at: usize| b.get(at..at + 4).and_then(|p| <[u8; 4]>::try_from(p).ok());
        let Some(project) = self.project() else {
            return ElemMeaning::Other;
        };
        let n = project.names();
        let (nat, filter) = (
            self.family == NFPROTO_IPV4 && self.table == n.nat,
            self.family == NFPROTO_INET && self.table == n.filter,
        );
        match self.set.as_str() {
            "dnat_ext" | "dnat_local" if nat => {
                let data = self.data.as_deref().unwrap_or_default();
                match (port(&self.key, 0), ip(data, 0), port(data, 4)) {
                    (Some(port), Some(ip), Some(guest_port)) => ElemMeaning::Forward { port, ip, guest_port },
                    _ => ElemMeaning::Other,
                }
            }
            "snat_return" if nat => Elem::guest(ip(&self.key, 0), port(&self.key, 4)),
            "fwd_allow" if filter => Elem::guest(ip(&self.key, 0), port(&self.key, 4)),
            "allowed_taps" if filter => {
                let end = self.key.iter().position(|&b| b == 0).unwrap_or(self.key.len());
                match std::str::from_utf8(&self.key[..end]) {
                    Ok(tap) if valid_tap_name(tap) => ElemMeaning::Tap(tap.to_string()),
                    _ => ElemMeaning::Other,
                }
            }
            _ => ElemMeaning::Other,
        }
    }

    fn guest(ip: Option<[u8; 4]>, port: Option<u16>) -> ElemMeaning {
        match (ip, port) {
            (Some(ip), Some(port)) => ElemMeaning::Guest { ip, port },
            _ => ElemMeaning::Other,
        }
    }

    /// Whose shared table holds it.
    pub fn project(&self) -> Option<Project> {
        Project::of_shared_table(self.family, &self.table)
    }
}

/// An nf_tables table from the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: u8,
    pub name: String,
}

/// The nf_tables objects of SmolVM's and Celesto's as one dump shows them: every table,
/// and the chains (when asked), rules, sets and set elements of each one's shared tables.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NftState {
    pub tables: Vec<Table>,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
    pub sets: Vec<Set>,
    pub elems: Vec<Elem>,
}

/// A file cleanup may remove: a path relative to a directory it trusts (the data dir or
/// the socket dir). Only `root` may be reached through a symlink; `rel` never is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileRef {
    pub root: PathBuf,
    pub rel: String,
    /// A directory SmolVM made for the VM, removed with what it holds.
    pub tree: bool,
}

impl FileRef {
    pub fn new(root: &std::path::Path, rel: impl Into<String>) -> FileRef {
        FileRef {
            root: root.to_path_buf(),
            rel: rel.into(),
            tree: false,
        }
    }

    pub fn tree(root: &std::path::Path, rel: impl Into<String>) -> FileRef {
        FileRef {
            tree: true,
            ..FileRef::new(root, rel)
        }
    }

    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }
}

/// A process we proved to be a VM's VMM: the pid plus the start time that proof saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmm {
    pub pid: i32,
    pub start_ticks: u64,
}

/// A deletion the caller wants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Rule {
        family: u8,
        table: String,
        chain: String,
        handle: u64,
    },
    /// A chain, only if empty (NLM_F_NONREC: EBUSY otherwise).
    Chain { family: u8, table: String, name: String },
    /// A table; `recursive` deletes its chains and rules with it, otherwise it must be
    /// empty (NLM_F_NONREC: EBUSY otherwise).
    Table {
        family: u8,
        name: String,
        recursive: bool,
    },
    /// One element of a set or map, by the key bytes the dump gave.
    Elem {
        family: u8,
        table: String,
        set: String,
        key: Vec<u8>,
    },
    /// A set or map, only if empty (NLM_F_NONREC: EBUSY otherwise).
    Set { family: u8, table: String, name: String },
}

impl Op {
    pub fn for_elem(e: &Elem) -> Op {
        Op::Elem {
            family: e.family,
            table: e.table.clone(),
            set: e.set.clone(),
            key: e.key.clone(),
        }
    }

    pub fn for_rule(r: &Rule) -> Op {
        Op::Rule {
            family: r.family,
            table: r.table.clone(),
            chain: r.chain.clone(),
            handle: r.handle,
        }
    }
}

/// Why a VM is stale (its `Display` is the text `-v` and `--json` show).
#[derive(Debug, Clone, PartialEq)]
pub enum Stale {
    NoPid,
    /// A pid no VMM can have (0, 1, negative, too large, our own).
    AbsurdPid(i64),
    Gone(i32),
    Zombie(i32),
    /// The pid belongs to a process that is not this VM's VMM (argv[0] given).
    OtherProcess(i32, String),
    /// The process at the pid started after the row was written.
    PidReused(i32),
    /// A row expects a VMM and none was found.
    NoVmm,
    /// Only the host shows this VM.
    NoRow,
    /// Only a rule names this TAP.
    TapNoRow,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::NoPid => write!(f, "no VMM pid recorded"),
            Stale::AbsurdPid(raw) => write!(f, "recorded pid {raw} cannot be a VMM"),
            Stale::Gone(pid) => write!(f, "VMM pid {pid} is gone"),
            Stale::Zombie(pid) => write!(f, "VMM pid {pid} is a zombie"),
            Stale::OtherProcess(pid, argv0) => write!(f, "pid {pid} is now another process ({argv0:?})"),
            Stale::PidReused(pid) => write!(f, "pid {pid} started after the row was written (pid reused)"),
            Stale::NoVmm => write!(f, "VMM is gone"),
            Stale::NoRow => write!(f, "no state row"),
            Stale::TapNoRow => write!(f, "no state row names this TAP"),
        }
    }
}

/// What shows a VM alive when no VMM of its own can be proven (or, for a VM with no row,
/// its running VMM).
#[derive(Debug, Clone, PartialEq)]
pub enum Life {
    Served(PathBuf),
    TapHeld(String),
    LockHeld(PathBuf),
    Vmm(i32),
}

impl fmt::Display for Life {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Life::Served(p) => write!(f, "{} is served", p.display()),
            Life::TapHeld(tap) => write!(f, "TAP {tap} is held open"),
            Life::LockHeld(p) => write!(f, "{} is held (a create in progress)", p.display()),
            Life::Vmm(pid) => write!(f, "VMM pid {pid} is running"),
        }
    }
}

/// Why a VM must not be touched even when it is a target (the `Failed:` reason).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A VMM naming the VM started after its row was last written: a VM starting.
    StartedLate(i32),
    /// Something alive that is not an identified VMM uses the VM's socket, TAP or lock.
    Unidentified(Life),
    /// Its VMM cannot be seen from this pid namespace.
    OutOfView,
    /// A VMM that names it runs in another view of the host, or one we cannot inspect
    /// (pid, why): whose VM it runs cannot be told.
    OtherView(i32, String),
    /// A VMM names its id, which another DB's VM has too, and nothing it names tells
    /// which of the two it runs.
    Ambiguous(i32),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::StartedLate(pid) => write!(
                f,
                "VMM pid {pid} started after its state row was last written (VM starting?); not touched"
            ),
            Refusal::Unidentified(life) => {
                match life {
                    Life::Served(p) => write!(f, "{} is still served", p.display())?,
                    other => write!(f, "{other}")?,
                }
                write!(f, " by a process that is not a VMM we can identify; not touched")
            }
            Refusal::OutOfView => write!(f, "its VMM is not visible from this pid namespace; not touched"),
            Refusal::OtherView(pid, why) => write!(f, "VMM pid {pid} names it, but {why}; not touched"),
            Refusal::Ambiguous(pid) => write!(
                f,
                "VMM pid {pid} names its id, which another data dir's VM has too, and nothing tells whose it is; not touched"
            ),
        }
    }
}

/// Everything discovery saw, as plain data.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub rows: Vec<Row>,
    /// Rows of other SmolVM data dirs (read only): their VMs are not this run's to judge,
    /// and their resources are never leftovers.
    pub other_rows: Vec<Row>,
    /// The data dir of each state DB, indexed by `Row::db`.
    pub db_dirs: Vec<PathBuf>,
    /// Every data dir in use.
    pub data_dirs: Vec<PathBuf>,
    pub socket_dir: PathBuf,
    /// The processes at pids that rows record (a pid with no process is absent).
    pub procs: BTreeMap<i32, ProcInfo>,
    /// Every process that looks like a VMM or a sidecar of one (`ProcInfo::role`).
    pub vmms: Vec<ProcInfo>,
    pub links: Vec<Link>,
    /// Rules of SmolVM's tables.
    pub rules: Vec<Rule>,
    /// Elements of the maps and sets in SmolVM's tables (0.0.8+).
    pub elems: Vec<Elem>,
    pub tables: Vec<Table>,
    /// Socket files that a live process still accepts connections on.
    pub served: BTreeSet<PathBuf>,
    /// A socket we may not connect to (another user's): whether it is served is unknown.
    pub probes_denied: bool,
    /// `locks/<id>.create.lock` files that a live process holds (a create in progress).
    pub held_locks: BTreeSet<PathBuf>,
    /// Who holds each of those (the holders' uids; empty when none could be named).
    pub lock_holders: BTreeMap<PathBuf, Vec<u32>>,
    /// Claim files held in data dirs that are not this run's.
    pub foreign_claims: Vec<ForeignClaim>,
    /// Who owns each data dir whose state was read (this run's and the others'): a row's
    /// VM is that user's, and a TAP SmolVM made for a user none of them belongs to is
    /// another data dir's, so it is no leftover.
    pub dir_owners: BTreeMap<PathBuf, u32>,
    /// Which processes the /proc we read can show.
    pub pid_view: PidView,
    /// Names in the socket dir (one readdir).
    pub socket_names: Vec<String>,
    /// What each data dir holds (one readdir of it and of its `disks/`).
    pub data_listing: Vec<DirListing>,
    /// The port-forward state in the users' homes.
    pub forwards: Vec<ForwardsListing>,
    /// Who owns the files listed above that no row's id names (`FileRef::path`): a VM
    /// with no row takes a file only when the same owner (or root) made what names it.
    pub owners: std::collections::HashMap<PathBuf, u32>,
    /// A state DB exists but could not be read for a reason other than corruption
    /// (locked, permissions): a host resource with no row may then be a hidden row's, so
    /// no rowless leftover is touched.
    pub rows_incomplete: bool,
    pub own_pid: i32,
}

/// One port forward of a VM (`~/.smolvm/forwards/<id>.json`, 0.0.19+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest_port: u16,
    /// The `ssh -L 127.0.0.1:<host>:127.0.0.1:<guest>` tunnel's pid, when it has one.
    pub pid: Option<i32>,
}

/// A forwards directory (`~/.smolvm/forwards`, `~/.celesto/forwards`) as listed: its
/// file names (`<id>.json`, `<id>.lock`, `<id>.operation.lock`) and each JSON's forwards.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ForwardsListing {
    pub dir: PathBuf,
    /// Who owns the directory: the user whose home it is in.
    pub owner: Option<u32>,
    pub names: Vec<String>,
    pub records: Vec<ForwardsRecord>,
}

/// One `<id>.json` of a forwards dir.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardsRecord {
    pub id: String,
    /// When it was last written (Unix seconds): its writer sets this, so it proves an age
    /// only together with its owner.
    pub written: f64,
    pub owner: u32,
    pub forwards: Vec<Forward>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct DirListing {
    pub dir: PathBuf,
    pub top: Vec<String>,
    pub disks: Vec<String>,
    /// `locks/<id>.create.lock` (SmolVM 0.0.19+) and `locks/<id>.snapshot.lock` (0.0.27+) names.
    pub locks: Vec<String>,
    /// `locks/resources/{ip,ssh,vsock,tap}-<value>.lock` names (the SDK's claims, 0.0.30+).
    pub resource_locks: Vec<String>,
    /// `firmware/<id>` directory names (QEMU UEFI variables).
    pub firmware: Vec<String>,
    /// `ssh-known-hosts/<id>.known_hosts` names (Celesto 0.1.9+, never deleted by it).
    pub known_hosts: Vec<String>,
    /// `browser-sessions/<session id>` directory names (0.0.6+).
    pub browser_sessions: Vec<String>,
}

impl DirListing {
    /// The listings whose names carry a VM id (`data_file_id`), each with where it is.
    pub fn by_sub(&self) -> [(&'static str, &[String]); 5] {
        [
            ("ssh-known-hosts", &self.known_hosts),
            ("firmware", &self.firmware),
            ("locks", &self.locks),
            ("", &self.top),
            ("disks", &self.disks),
        ]
    }
}

/// One VM (a state DB's id, or an id only the host shows) with every resource that is
/// provably its own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vm {
    pub id: String,
    /// Whose it is, when another VM has the same id (another project's or data dir's
    /// DB): shown after the id (`sbx-tesla (Celesto)`).
    pub label: Option<String>,
    /// Whose VM it is: its rows' projects; for a VM with no row, the projects whose
    /// objects name it (all, when only a shared name such as a socket does). Only these
    /// projects' nft objects are attributed to it.
    pub projects: Vec<Project>,
    /// Indexes into `Observed::rows`.
    pub rows: Vec<usize>,
    pub status: Option<Status>,
    /// Why the VM is stale, when it is.
    pub stale: Option<Stale>,
    /// Rows to mark `error`/pid NULL as SmolVM's reconcile does (indexes into rows).
    pub mark: Vec<usize>,
    pub vmms: Vec<Vmm>,
    /// Processes beside its VMM (swtpm, a port forward's ssh tunnel), proven its own:
    /// stopped with it, never a sign that it lives.
    pub sidecars: Vec<Vmm>,
    /// Why this VM must not be touched even when targeted.
    pub refuse: Option<Refusal>,
    /// TAP names the VM owns (valid names; present or not).
    pub tap_names: Vec<String>,
    /// Indexes into `Observed::links` of its TAPs that exist.
    pub taps: Vec<usize>,
    /// Indexes into `Observed::rules`.
    pub rules: Vec<usize>,
    /// Indexes into `Observed::tables` (per-TAP policy tables of newer SmolVM).
    pub tables: Vec<usize>,
    /// Indexes into `Observed::elems` (its entries in SmolVM's maps and sets).
    pub elems: Vec<usize>,
    pub files: Vec<FileRef>,
    /// No state row describes it: only the host does.
    pub rowless: bool,
    /// Why a VM with no proven VMM counts as alive (not stale): a served socket, a held
    /// TAP or create lock; for a rowless VM also its running VMM.
    pub live: Option<Life>,
    /// Its VMM cannot be judged from this pid namespace: neither stale nor a `--prefix`
    /// target, and never touched.
    pub out_of_view: bool,
    /// A row says its VMM should be running (running, paused, error).
    pub expects_vmm: bool,
    /// When its row was created (Unix seconds; the oldest row when several DBs have one).
    pub created_unix: Option<f64>,
}

impl Vm {
    /// The id as the output shows it: with its label where the id is shared.
    pub fn shown(&self) -> String {
        match &self.label {
            Some(l) => format!("{} ({l})", self.id),
            None => self.id.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub vms: Vec<Vm>,
    /// Hostile or inconsistent input, for stderr.
    pub warnings: Vec<String>,
    /// Things left alone that are not in `vms` (rows with hostile ids, held TAPs): while
    /// any remains, the shared nft tables of its projects (`kept_projects`) stay.
    pub kept: usize,
    pub kept_projects: BTreeSet<Project>,
    /// Files named like a VM's log or disk that no row and nothing only SmolVM makes
    /// corroborates: a user's `backup.log` is no VM, so these are never touched.
    pub unattributed: Vec<FileRef>,
    /// SDK claim files no process holds and no row or VM has: some gone SDK VM's.
    pub free_claims: Vec<FileRef>,
    /// VMMs that name a VM with no row but whose view of the host could not be read:
    /// nothing they name is touched, and a check of everything is not complete.
    pub uninspected: Vec<String>,
}

/// A state row to delete or mark, as it was read: its DB (index into the opened DBs),
/// id, and the stamp that proves it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    pub db: usize,
    pub id: String,
    pub updated_at: Option<String>,
}

/// A TAP to delete, as the link dump showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRef {
    pub index: i32,
    pub name: String,
}

/// A target as apply runs it: every resource resolved to a name, handle or path, none
/// of them an index into what discovery saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub id: String,
    pub stale: Option<Stale>,
    /// Touch nothing of it: the target fails with this reason.
    pub refuse: Option<Refusal>,
    /// Its VMM and sidecar processes, stopped first.
    pub vmms: Vec<Vmm>,
    /// TAP names it owns; those not in `taps` are already gone.
    pub tap_names: Vec<String>,
    pub taps: Vec<TapRef>,
    /// Its nft rules (`Op::Rule`) and per-TAP policy tables (`Op::Table`, recursive).
    pub nft: Vec<Op>,
    pub files: Vec<FileRef>,
    pub rows: Vec<RowRef>,
    /// Rows to mark `error`/pid NULL if the target fails.
    pub marks: Vec<RowRef>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Stale VM ids, sorted (the `Reconciled stale VMs:` line).
    pub stale: Vec<String>,
    /// Targets in output order, each trimmed to what it may delete.
    pub targets: Vec<Target>,
    /// VMs (and other SmolVM things) that stay after this run if every target goes.
    pub remaining: usize,
    /// The projects those belong to: a project's shared tables stay while it has any.
    pub kept_projects: BTreeSet<Project>,
    /// Link groups in use on the host: the TAP batch delete needs one that is not.
    pub link_groups: Vec<u32>,
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_names_a_data_dir() {
        let argv: Vec<String> = [
            "qemu-system-x86_64",
            "-drive",
            "file=/ci/b/disks/vm-1.qcow2,if=virtio",
            "-chardev",
            "socket,path=/ci/b/firmware/vm-1/swtpm/swtpm-sock",
            "-qmp",
            "unix:/tmp/qmp-vm-1.sock,server=on,wait=off",
            "-kernel",
            "/images/disks/vmlinux",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(argv_homes(&argv), [std::path::Path::new("/ci/b")]);
        let fc: Vec<String> = ["firecracker", "--api-sock", "/tmp/fc-vm-1.sock"]
            .map(String::from)
            .to_vec();
        assert!(argv_homes(&fc).is_empty());
        let p = std::path::Path::new;
        assert_eq!(log_home(p("/ci/b/vm-1.log"), &fc), Some(p("/ci/b")));
        assert_eq!(log_home(p("/ci/b/vm-2.log"), &fc), None, "another id's log");
        assert_eq!(log_home(p("/tmp/ci-output.log"), &fc), None);
        assert_eq!(log_home(p("/dev/null"), &fc), None);
        assert_eq!(log_home(p("rel/vm-1.log"), &fc), None);
        assert_eq!(
            claim_home(p("/ci/b/locks/resources/tap-tap3.lock")),
            Some((p("/ci/b"), "tap-tap3.lock"))
        );
        assert_eq!(claim_home(p("/ci/b/locks/vm-1.create.lock")), None);
        assert_eq!(claim_home(p("/ci/b/other/resources/ip-1.2.3.4.lock")), None);
        assert_eq!(claim_home(p("/ci/b/locks/resources/disk-x.lock")), None);
        let env = b"HOME=/root\0SMOLVM_DATA_DIR=/ci/b\0CELESTO_DATA_DIR=rel\0SMOLVM_DATA_DIRX=/no\0";
        assert_eq!(env_homes(env), [PathBuf::from("/ci/b")]);
        assert_eq!(parse_ipv4("172.16.0.7"), Some([172, 16, 0, 7]));
        assert_eq!(parse_ipv4("172.16.0"), None);
    }

    #[test]
    fn vm_ids() {
        for ok in ["vm-0a1b2c3d", "web-server", "a", "sbx-tesla", "x_1", "0"] {
            assert!(valid_vm_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "vm/../x",
            "vm 1",
            "vm.1",
            &"a".repeat(65),
            "é",
        ] {
            assert!(!valid_vm_id(bad), "{bad}");
        }
        assert!(valid_vm_id(&"a".repeat(64)));
    }

    #[test]
    fn tap_names() {
        for ok in ["tap2", "tap254", "tap65534", "tap0", "svmb0a1b2c3d"] {
            assert!(valid_tap_name(ok), "{ok}");
        }
        for bad in [
            "eth0",
            "lo",
            "../x",
            "tap",
            "tap02",
            "tap123456",
            "tap1 ",
            "svmb0A1B2C3D",
            "svmb123",
            "tapx",
        ] {
            assert!(!valid_tap_name(bad), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("vm-"));
        assert!(valid_prefix("sbx"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("-x"));
        assert!(!valid_prefix("VM"));
        assert!(!valid_prefix("vm/"));
    }

    #[test]
    fn tap_kind() {
        let mut l = Link {
            index: 3,
            name: "tap3".into(),
            kind: Some("tun".into()),
            tun_type: Some(2),
            group: 0,
            alias: None,
            carrier: false,
            tun_owner: None,
        };
        assert!(l.is_tap());
        l.tun_type = Some(1);
        assert!(!l.is_tap());
        l.tun_type = None;
        assert!(l.is_tap());
        l.kind = Some("veth".into());
        assert!(!l.is_tap());
    }

    #[test]
    fn roles_and_libkrun_configs() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            vm_role(&cmd(&[
                "/usr/bin/krunvm",
                "run",
                "--rootfs",
                "/d/disks/vm-1.ext4"
            ])),
            Some(Role::Vmm)
        );
        let launcher = cmd(&[
            "/v/bin/python3",
            "-m",
            "celesto.runtime._libkrun_launcher",
            "/tmp/x.json",
        ]);
        assert_eq!(vm_role(&launcher), Some(Role::Vmm));
        let other = cmd(&["/v/bin/python3", "-m", "mytool.runtime._libkrun_launcher"]);
        assert_eq!(vm_role(&other), None);
        assert_eq!(vm_role(&cmd(&["/usr/bin/swtpm", "socket"])), Some(Role::Sidecar));
        assert_eq!(vm_role(&cmd(&["sleep", "1"])), None);
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            libkrun_config_id(&format!("libkrun-sbx-a-b-{hex}.json")),
            Some("sbx-a-b")
        );
        assert_eq!(libkrun_config_id("libkrun-sbx-a-0123.json"), None);
        assert_eq!(libkrun_config_id(&format!("libkrun-../x-{hex}.json")), None);
    }

    #[test]
    fn vmm_names() {
        assert!(is_vmm_argv0("firecracker"));
        assert!(is_vmm_argv0("/usr/local/bin/firecracker"));
        assert!(is_vmm_argv0("qemu-system-x86_64"));
        assert!(!is_vmm_argv0("firecracker-helper"));
        assert!(!is_vmm_argv0("sleep"));
    }
}

//! What discovery observed, as plain data: rows, processes and their views, links, nft
//! objects, files and port-forward state, gathered into one `Observed`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{NFPROTO_INET, NFPROTO_IPV4, Project, Role, valid_tap_name};

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
    /// Its command name (`qemu-system-x86`, `firecracker`): what is left to tell a VMM by
    /// once it is exiting and its command line is gone.
    pub comm: String,
    /// Killed a moment ago and still exiting (its threads may still hold its TAP).
    pub exiting: bool,
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

/// Everything discovery saw, as plain data.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub rows: Vec<Row>,
    /// Rows of other SmolVM data dirs (read only): their VMs are not this run's to judge,
    /// and their resources are never leftovers.
    pub other_rows: Vec<Row>,
    /// The data dir of each state DB, indexed by `Row::db`.
    pub db_dirs: Vec<PathBuf>,
    /// State DBs other hosts may write to as well (SmolVM's PostgreSQL, unless the run
    /// was told it is this host's alone), by `Row::db`: a row there is this host's only
    /// when something on this host names its VM.
    pub shared_dbs: BTreeSet<usize>,
    /// Data dirs on a network filesystem (NFS, CIFS, …): other hosts may write there too,
    /// so a file there does not show that a VM is this host's.
    pub remote_dirs: BTreeSet<PathBuf>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! What reconcile makes of the observations: the VMs (with their rows, VMMs, network
//! objects and files), why each is stale, what shows it alive, and why one must not be
//! touched.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use super::{FileRef, Project, Status};

/// A process we proved to be a VM's VMM: the pid plus the start time that proof saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmm {
    pub pid: i32,
    pub start_ticks: u64,
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
    /// Its VMM was killed a moment ago and is still exiting (waited for, never left).
    Exiting(i32),
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
            Stale::Exiting(pid) => write!(f, "VMM pid {pid} is exiting"),
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
    /// Its VMM, killed a moment ago and still exiting: no sign of life (what it still
    /// holds is its own), waited for before its TAP and files go.
    pub exiting: Vec<Vmm>,
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
    /// Its rows are in a DB other hosts share and nothing on this host names it: another
    /// host's VM, or one that cannot be told. Never a target, never touched.
    pub other_host: bool,
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
    /// VMs of a shared DB that nothing on this host names (`Vm::other_host`), as shown.
    pub other_hosts: Vec<String>,
    /// VMMs that name a VM with no row but whose view of the host could not be read:
    /// nothing they name is touched, and a check of everything is not complete.
    pub uninspected: Vec<String>,
}

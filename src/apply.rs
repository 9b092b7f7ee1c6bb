//! Runs a plan against the system, one phase per resource kind across all targets:
//! processes, then TAPs and nft rules (each in its own thread) while the files of VMs with
//! a local row are removed and their rows deleted in a transaction left open, then the
//! other files, then the rows committed. Each phase is batched (one signal round, one
//! link batch, nft batches, one DB transaction) and confirmed from a fresh dump. A target
//! that fails a phase is skipped by the later ones, and its state row survives for the
//! next run; "already gone" counts as done.
//!
//! Longer than ~500 lines: one section per phase, in the order they run, sharing the
//! per-target failure bookkeeping that decides what the later phases skip.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::fmt;

use crate::error::{Error, Fault, is_gone};
use crate::files::{Removal, Remover};
use crate::model::{NftState, Op, Plan, Project, Refusal, RowRef};
use crate::netlink::{self, link, nft};
use crate::process::{self, Stopped, Timing};
use crate::procfs::Procfs;
use crate::state::{RowOutcome, Stamped, Store, iso8601_utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Process,
    Tap,
    Nft,
    Files,
    Row,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Process => "process",
            StepKind::Tap => "tap",
            StepKind::Nft => "nft",
            StepKind::Files => "files",
            StepKind::Row => "row",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Removed,
    AlreadyGone,
    /// Nothing of this kind to do, or not attempted after an earlier failure.
    Skipped,
    Failed,
}

impl StepState {
    pub fn name(self) -> &'static str {
        match self {
            StepState::Removed => "removed",
            StepState::AlreadyGone => "already_gone",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }
}

/// Why a step failed: the system's refusal (errno or SQLite code kept), reconcile's
/// refusal to touch the VM, or cleanup's own reasons to stop short.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Error(Error),
    Refused(Refusal),
    /// SIGINT/SIGTERM came before this step.
    Interrupted,
    /// SmolVM rewrote the row after we read it.
    RowChanged,
    /// A row of this table still refers to the VM's row.
    RowPinned(String),
    /// Something SmolVM does not leave is at one of its paths (a symlink, a directory, …),
    /// or its directory is behind a symlink that is not followed: the whole sentence.
    FileRefused(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "{e}"),
            Failure::Refused(r) => write!(f, "{r}"),
            Failure::Interrupted => write!(f, "interrupted before this step; state row kept"),
            Failure::RowChanged => write!(
                f,
                "its state row changed during cleanup (VM restarted?); row kept"
            ),
            Failure::FileRefused(why) => write!(f, "{why}"),
            Failure::RowPinned(table) => {
                write!(f, "its state row is still referred to by table {table}; row kept")
            }
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub state: StepState,
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: String,
    pub steps: Vec<Step>,
}

impl Outcome {
    /// The first failure, which is the reason reported for the target.
    pub fn error(&self) -> Option<&Failure> {
        self.steps.iter().find_map(|s| s.error.as_ref())
    }
}

/// Removed when anything was removed, already gone when everything was.
fn done(removed_any: bool) -> StepState {
    if removed_any {
        StepState::Removed
    } else {
        StepState::AlreadyGone
    }
}

pub struct Env<'a> {
    pub procfs: &'a Procfs,
    /// The data and socket dirs as discovery opened them: files go only through these.
    pub roots: &'a crate::files::Roots,
    pub dbs: &'a [Option<Store>],
    pub timing: Timing,
    pub link_error: Option<&'a Error>,
    pub nft_error: Option<&'a Error>,
    /// Files and rows may go while the kernel deletes TAPs: the run has every capability
    /// it needs. Without one, the kernel is likely to refuse, and a VM whose TAP stays
    /// keeps all it has.
    pub overlap: bool,
    /// Set by SIGINT/SIGTERM: finish the phase in progress, start no other.
    pub stop: &'a AtomicBool,
    pub warn: &'a mut dyn FnMut(String),
    /// Told of each step as soon as its phase is over (target index, step).
    pub on_step: &'a mut dyn FnMut(usize, &Step),
    /// Each phase's time.
    pub laps: &'a mut crate::report::Laps,
}

struct Run<'p> {
    plan: &'p Plan,
    out: Vec<Outcome>,
    failed: Vec<bool>,
}

impl<'p> Run<'p> {
    fn live(&self) -> Vec<usize> {
        (0..self.out.len()).filter(|&i| !self.failed[i]).collect()
    }

    /// Has target `i` a step of this kind yet?
    fn has(&self, i: usize, kind: StepKind) -> bool {
        self.out[i].steps.iter().any(|s| s.kind == kind)
    }

    fn step(&mut self, i: usize, kind: StepKind, state: StepState) {
        self.out[i].steps.push(Step {
            kind,
            state,
            error: None,
        });
    }

    fn fail(&mut self, i: usize, kind: StepKind, why: impl Into<Failure>) {
        self.out[i].steps.push(Step {
            kind,
            state: StepState::Failed,
            error: Some(why.into()),
        });
        self.failed[i] = true;
    }

    /// The rows of the targets still live, by DB: (target, row), in target order.
    fn live_rows(&self) -> BTreeMap<usize, Vec<(usize, &'p RowRef)>> {
        let plan = self.plan;
        let mut by_db: BTreeMap<usize, Vec<(usize, &'p RowRef)>> = BTreeMap::new();
        for i in self.live() {
            for r in &plan.targets[i].rows {
                by_db.entry(r.db).or_default().push((i, r));
            }
        }
        by_db
    }

    /// Phases a failed target did not reach are recorded as skipped.
    fn finish(mut self) -> Vec<Outcome> {
        let all = [
            StepKind::Process,
            StepKind::Tap,
            StepKind::Nft,
            StepKind::Files,
            StepKind::Row,
        ];
        for o in &mut self.out {
            for k in all {
                if !o.steps.iter().any(|s| s.kind == k) {
                    o.steps.push(Step {
                        kind: k,
                        state: StepState::Skipped,
                        error: None,
                    });
                }
            }
            o.steps.sort_by_key(|s| all.iter().position(|k| *k == s.kind));
        }
        self.out
    }
}

pub fn apply(plan: &Plan, env: &mut Env<'_>) -> Vec<Outcome> {
    let mut run = Run {
        plan,
        out: plan
            .targets
            .iter()
            .map(|t| Outcome {
                id: t.id.clone(),
                steps: Vec::new(),
            })
            .collect(),
        failed: vec![false; plan.targets.len()],
    };
    for (i, t) in plan.targets.iter().enumerate() {
        if let Some(why) = &t.refuse {
            run.fail(i, StepKind::Process, Failure::Refused(why.clone()));
        }
    }
    let mut told = vec![0; run.out.len()];
    let mut tell = |run: &Run<'_>, env: &mut Env<'_>| {
        for (i, o) in run.out.iter().enumerate() {
            for s in &o.steps[told[i]..] {
                (env.on_step)(i, s);
            }
            told[i] = o.steps.len();
        }
    };
    let mut open = OpenRows::new();
    let phases = [
        (StepKind::Process, "apply.processes"),
        (StepKind::Tap, "apply.network"),
        (StepKind::Files, "apply.files"),
    ];
    for (kind, name) in phases {
        if env.stop.load(Ordering::SeqCst) {
            for i in run.live() {
                if !run.has(i, kind) {
                    run.fail(i, kind, Failure::Interrupted);
                }
            }
            break;
        }
        match kind {
            StepKind::Process => stop_processes(&mut run, env),
            StepKind::Tap => open = delete_network(&mut run, env),
            _ => {
                let late: Vec<usize> = run
                    .live()
                    .into_iter()
                    .filter(|&i| !run.has(i, StepKind::Files))
                    .collect();
                remove_files(&mut run, env, &late);
            }
        }
        env.laps.lap(name);
        tell(&run, env);
    }
    if env.stop.load(Ordering::SeqCst) {
        for i in run.live() {
            run.fail(i, StepKind::Row, Failure::Interrupted);
        }
    }
    // Always, even after an interrupt: it writes whole outcomes only.
    finish_rows(&mut run, env, open);
    env.laps.lap("apply.rows");
    tell(&run, env);
    run.finish()
}

fn stop_processes(run: &mut Run<'_>, env: &mut Env<'_>) {
    let mut vmms = Vec::new();
    let mut owner = Vec::new();
    for i in run.live() {
        for v in &run.plan.targets[i].vmms {
            vmms.push(*v);
            owner.push(i);
        }
    }
    let results = process::stop_all(env.procfs, &vmms, env.timing);
    let mut per: BTreeMap<usize, Vec<Result<Stopped, Error>>> = BTreeMap::new();
    for (i, r) in owner.into_iter().zip(results) {
        per.entry(i).or_default().push(r);
    }
    for i in run.live() {
        match per.remove(&i) {
            None => run.step(i, StepKind::Process, StepState::Skipped),
            Some(rs) => {
                if let Some(e) = rs.iter().find_map(|r| r.as_ref().err()) {
                    run.fail(i, StepKind::Process, e.clone());
                } else if rs.iter().any(|r| matches!(r, Ok(Stopped::Exited))) {
                    run.step(i, StepKind::Process, StepState::Removed);
                } else {
                    run.step(i, StepKind::Process, StepState::AlreadyGone);
                }
            }
        }
    }
}

/// The TAP deletions for the targets still live: the links to delete, and the outcomes
/// already known without asking the kernel (no TAP, already gone, links not listable).
struct TapWork {
    indexes: Vec<i32>,
    /// Targets with links to delete.
    pending: Vec<usize>,
    decided: Vec<(usize, Result<StepState, Error>)>,
}

fn tap_work(run: &Run<'_>, env: &Env<'_>) -> TapWork {
    let mut w = TapWork {
        indexes: Vec::new(),
        pending: Vec::new(),
        decided: Vec::new(),
    };
    for i in run.live() {
        let t = &run.plan.targets[i];
        if t.tap_names.is_empty() {
            w.decided.push((i, Ok(StepState::Skipped)));
        } else if let Some(e) = env.link_error {
            w.decided.push((i, Err(e.clone())));
        } else if t.taps.is_empty() {
            w.decided.push((i, Ok(StepState::AlreadyGone)));
        } else {
            w.indexes.extend(t.taps.iter().map(|l| l.index));
            w.pending.push(i);
        }
    }
    w
}

/// Deletes the links in one batch and confirms each target's from a fresh dump: one
/// result per pending target.
fn tap_run(plan: &Plan, w: &TapWork, deadline: Instant) -> Vec<Result<StepState, Error>> {
    if w.indexes.is_empty() {
        return Vec::new();
    }
    let mut sock = match netlink::Socket::route(deadline) {
        Ok(s) => s,
        Err(e) => {
            let e = Error::sys("open an rtnetlink socket", e);
            return vec![Err(e); w.pending.len()];
        }
    };
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7);
    let results = link::delete_many(&mut sock, &plan.link_groups, &w.indexes, seed);
    let by_index: BTreeMap<i32, Result<(), Fault>> = w.indexes.iter().copied().zip(results).collect();
    let after: Result<BTreeSet<(i32, String)>, _> =
        link::dump(&mut sock).map(|now| now.into_iter().map(|l| (l.index, l.name)).collect());
    let mut out = Vec::with_capacity(w.pending.len());
    for &i in &w.pending {
        let mut why = None;
        let mut removed = false;
        for l in &plan.targets[i].taps {
            let action = || format!("delete TAP device {}", l.name);
            match by_index.get(&l.index) {
                Some(Err(e)) if !is_gone(*e) => why = Some(Error::sys(action(), *e)),
                answer => match &after {
                    Ok(now) if now.contains(&(l.index, l.name.clone())) => {
                        why = Some(Error::msg(action(), "it is still present after the delete"))
                    }
                    Ok(_) => removed |= matches!(answer, Some(Ok(()))),
                    Err(e) => {
                        why = Some(Error::sys(
                            format!("confirm deletion of TAP device {}", l.name),
                            *e,
                        ))
                    }
                },
            }
            if why.is_some() {
                break;
            }
        }
        out.push(match why {
            Some(e) => Err(e),
            None => Ok(done(removed)),
        });
    }
    out
}

fn tap_record(run: &mut Run<'_>, w: TapWork, results: Vec<Result<StepState, Error>>) {
    let pending = w.pending.into_iter().zip(results);
    for (i, r) in w.decided.into_iter().chain(pending) {
        match r {
            Ok(state) => run.step(i, StepKind::Tap, state),
            Err(e) => run.fail(i, StepKind::Tap, e),
        }
    }
}

/// The nft deletions for the targets still live: ops to send, and the outcomes already
/// known without sending anything (nothing to delete, or the rules could not be listed).
#[derive(Default)]
struct NftWork {
    ops: Vec<Op>,
    /// Target index of each op.
    owner: Vec<usize>,
    /// Targets with ops.
    pending: Vec<usize>,
    decided: Vec<(usize, Result<(), Error>)>,
}

fn nft_work(run: &Run<'_>, env: &Env<'_>) -> NftWork {
    let mut w = NftWork {
        ops: Vec::new(),
        owner: Vec::new(),
        pending: Vec::new(),
        decided: Vec::new(),
    };
    for i in run.live() {
        let t = &run.plan.targets[i];
        if let Some(e) = env.nft_error {
            w.decided.push((i, Err(e.clone())));
            continue;
        }
        if t.nft.is_empty() {
            w.decided.push((i, Ok(())));
            continue;
        }
        w.pending.push(i);
        for op in &t.nft {
            w.ops.push(op.clone());
            w.owner.push(i);
        }
    }
    w
}

/// What the nft deletions did: the first error of each target that has one, and the
/// targets of which something was really deleted (not found already gone).
#[derive(Default)]
struct NftDone {
    errors: BTreeMap<usize, Error>,
    removed: BTreeSet<usize>,
}

/// Sends the deletions and confirms them from a fresh dump (an ACK is no proof when a
/// batch can be rolled back).
fn nft_run(w: &NftWork, deadline: Instant) -> NftDone {
    let mut out = NftDone::default();
    if w.ops.is_empty() {
        return out;
    }
    let first_err = &mut out.errors;
    let mut sock = netlink::Socket::netfilter(deadline);
    let results = match &mut sock {
        Ok(sock) => nft::delete(sock, &w.ops, deadline),
        Err(e) => vec![Err(Fault::from(*e)); w.ops.len()],
    };
    for ((op, r), &i) in w.ops.iter().zip(&results).zip(&w.owner) {
        match r {
            Ok(()) => {
                out.removed.insert(i);
            }
            Err(e) if is_gone(*e) => {}
            Err(e) => {
                first_err.entry(i).or_insert_with(|| Error::sys(describe(op), *e));
            }
        }
    }
    match sock
        .map_err(Fault::from)
        .and_then(|mut sock| nft::dump_shared(&mut sock))
    {
        Ok(now) => {
            let mut present: BTreeSet<Op> = now.rules.iter().map(Op::for_rule).collect();
            present.extend(now.elems.iter().map(Op::for_elem));
            let tables: BTreeSet<(u8, &str)> =
                now.tables.iter().map(|t| (t.family, t.name.as_str())).collect();
            for (op, &i) in w.ops.iter().zip(&w.owner) {
                let present = match op {
                    Op::Rule { .. } | Op::Elem { .. } => present.contains(op),
                    Op::Table { family, name, .. } => tables.contains(&(*family, name.as_str())),
                    Op::Chain { .. } | Op::Set { .. } => false,
                };
                if present {
                    first_err
                        .entry(i)
                        .or_insert_with(|| Error::msg(describe(op), "it is still present after the delete"));
                }
            }
        }
        Err(e) => {
            for &i in &w.pending {
                first_err
                    .entry(i)
                    .or_insert_with(|| Error::sys("confirm deletion of nftables rules", e));
            }
        }
    }
    out
}

fn nft_record(run: &mut Run<'_>, w: NftWork, mut done_: NftDone) {
    for (i, r) in w.decided {
        match r {
            Ok(()) => run.step(i, StepKind::Nft, StepState::Skipped),
            Err(e) => run.fail(i, StepKind::Nft, e),
        }
    }
    for i in w.pending {
        match done_.errors.remove(&i) {
            Some(e) => run.fail(i, StepKind::Nft, e),
            None => run.step(i, StepKind::Nft, done(done_.removed.contains(&i))),
        }
    }
}

/// Each SQLite DB's row deletes, made while the kernel deletes TAPs and held uncommitted
/// until every result is in: the DB's index, the pending transaction, and the targets
/// whose rows it deleted (in order).
type OpenRows<'d> = BTreeMap<usize, (crate::state::Pending<'d>, Vec<usize>)>;

/// TAPs and nft rules at once, each in its own thread: two independent kernel subsystems,
/// and the TAP batch spends most of its time waiting for RCU grace periods. Meanwhile
/// this thread removes the files of the targets whose local row stays as the evidence
/// should their TAP fail, and deletes the rows in transactions left open. A target whose
/// TAP fails is reported with the TAP's error either way (its rules or files going early
/// do no harm: a later run finds the TAP through its row).
fn delete_network<'d>(run: &mut Run<'_>, env: &mut Env<'d>) -> OpenRows<'d> {
    let tap_w = tap_work(run, env);
    let deadline = env.timing.deadline;
    let plan = run.plan;
    let early: Vec<usize> = run
        .live()
        .into_iter()
        .filter(|&i| files_early(plan, env, i))
        .collect();
    // The TAP batch is the longest: it starts first, and the nft work is made meanwhile.
    let mut nft_w = NftWork::default();
    let nft_slot = &mut nft_w;
    let tap_ref = &tap_w;
    let (taps, nfts, open) = std::thread::scope(|s| {
        // Until it runs, this thread waits: a new thread is often queued on the other CPU,
        // which under nested virtualisation takes 1-4 ms to wake from idle, while waiting
        // here lets it run on this CPU at once. The work below, which the TAP results do
        // not wait for, takes the wake-up instead.
        let (started, on_start) = std::sync::mpsc::channel::<()>();
        let tap_job = s.spawn(move || {
            let _ = started.send(());
            tap_run(plan, tap_ref, deadline)
        });
        let _ = on_start.recv();
        *nft_slot = nft_work(run, env);
        let nft_ref: &NftWork = nft_slot;
        let nft_job = s.spawn(move || nft_run(nft_ref, deadline));
        remove_files(run, env, &early);
        let open = open_rows(run, env);
        (tap_job.join(), nft_job.join(), open)
    });
    let worker_failed = |what: &str| Error::msg(what, "the worker thread failed");
    let taps = taps.unwrap_or_else(|_| vec![Err(worker_failed("delete TAP devices")); tap_w.pending.len()]);
    let nfts = nfts.unwrap_or_else(|_| NftDone {
        errors: nft_w
            .pending
            .iter()
            .map(|&i| (i, worker_failed("delete nftables rules")))
            .collect(),
        removed: BTreeSet::new(),
    });
    tap_record(run, tap_w, taps);
    nft_record(run, nft_w, nfts);
    open
}

/// Whose files may go before their TAP is known gone: with the privilege to delete it, a
/// target whose rows are all in a local SQLite DB, so that its row, kept when the TAP
/// then fails, still names the VM to the next run. A row-less VM's files, or a shared DB's row whose files are what says it
/// is this host's, are the evidence the next run needs: those go only after.
fn files_early(plan: &Plan, env: &Env<'_>, i: usize) -> bool {
    let rows = &plan.targets[i].rows;
    env.overlap
        && !rows.is_empty()
        && rows
            .iter()
            .all(|r| matches!(env.dbs.get(r.db), Some(Some(Store::Sqlite(_)))))
}

/// Deletes, in a transaction per SQLite DB left open, the rows of the targets still live.
/// A DB that cannot start one is left to `finish_rows`, which says why.
fn open_rows<'d>(run: &Run<'_>, env: &Env<'d>) -> OpenRows<'d> {
    let mut open = OpenRows::new();
    if !env.overlap {
        return open;
    }
    let dbs: &'d [Option<Store>] = env.dbs;
    for (db, rows) in run.live_rows() {
        if let Some(Some(Store::Sqlite(conn))) = dbs.get(db) {
            let stamped: Vec<Stamped<'_>> = rows.iter().map(|&(_, r)| row_arg(r)).collect();
            if let Ok(pending) = conn.delete_open(&stamped) {
                open.insert(db, (pending, rows.iter().map(|&(i, _)| i).collect()));
            }
        }
    }
    open
}

fn describe(op: &Op) -> String {
    match op {
        Op::Rule {
            table, chain, handle, ..
        } => format!("delete nftables rule {table} {chain} handle {handle}"),
        Op::Chain { table, name, .. } => format!("delete nftables chain {table} {name}"),
        Op::Table { name, .. } => format!("delete nftables table {name}"),
        Op::Elem { table, set, .. } => format!("delete an element of nftables set {table} {set}"),
        Op::Set { table, name, .. } => format!("delete nftables set {table} {name}"),
    }
}

fn remove_files(run: &mut Run<'_>, env: &Env<'_>, targets: &[usize]) {
    let mut remover = Remover::new(env.roots);
    for &i in targets {
        let t = &run.plan.targets[i];
        let mut removed = false;
        let mut err: Option<Failure> = None;
        for f in &t.files {
            match remover.remove(f) {
                Ok(Removal::Deleted) => removed = true,
                Ok(Removal::AlreadyGone) => {}
                // Not what SmolVM leaves: left alone, and the VM is not done (its row stays,
                // so --check and the next run see the same).
                Ok(Removal::Refused(why)) => {
                    err.get_or_insert(Failure::FileRefused(why));
                }
                Err(e) => {
                    err = Some(e.into());
                    break;
                }
            }
        }
        match err {
            Some(e) => run.fail(i, StepKind::Files, e),
            None => run.step(i, StepKind::Files, done(removed)),
        }
    }
}

/// The last step, one transaction per DB: deletes the rows of every target whose
/// resources are all gone, and marks the stale rows of the others `error`/pid NULL as
/// SmolVM's reconcile does, so a row that outlives this run reads truthfully.
fn finish_rows(run: &mut Run<'_>, env: &mut Env<'_>, mut open: OpenRows<'_>) {
    // Per DB: (target, row) pairs to delete, and rows to mark.
    #[derive(Default)]
    struct Work<'p> {
        deletes: Vec<(usize, &'p RowRef)>,
        marks: Vec<&'p RowRef>,
    }
    let plan = run.plan;
    let mut by_db: BTreeMap<usize, Work<'_>> = run
        .live_rows()
        .into_iter()
        .map(|(db, deletes)| {
            (
                db,
                Work {
                    deletes,
                    marks: Vec::new(),
                },
            )
        })
        .collect();
    for (t, _) in plan
        .targets
        .iter()
        .zip(&run.failed)
        .filter(|&(_, &failed)| failed)
    {
        for r in &t.marks {
            by_db.entry(r.db).or_default().marks.push(r);
        }
    }
    for i in run.live() {
        if run.plan.targets[i].rows.is_empty() {
            run.step(i, StepKind::Row, StepState::Skipped);
        }
    }
    let now = iso8601_utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let mut states: BTreeMap<usize, Vec<Result<RowOutcome, Error>>> = BTreeMap::new();
    for (db, Work { deletes, marks }) in by_db {
        let del: Vec<Stamped<'_>> = deletes.iter().map(|&(_, r)| row_arg(r)).collect();
        let mark: Vec<Stamped<'_>> = marks.iter().map(|&r| row_arg(r)).collect();
        let owners: Vec<usize> = deletes.iter().map(|&(i, _)| i).collect();
        let res = match (open.remove(&db), env.dbs.get(db)) {
            // Every row deleted early may go: commit them with the marks.
            (Some((pending, early)), _) if early == owners => pending.commit(&mark, &now),
            // Some target failed since: its row stays, so the early deletes are rolled
            // back (by the drop) and the rows that may go are deleted again.
            (pending, Some(Some(conn))) => {
                drop(pending);
                conn.finish(&del, &mark, &now)
            }
            _ => Err(Error::msg("update the state DB", "it is not open")),
        };
        if let (Err(e), true) = (&res, deletes.is_empty()) {
            (env.warn)(format!("{e}; stale rows keep their status"));
        }
        for (k, &(i, _)) in deletes.iter().enumerate() {
            let r = match &res {
                Ok(v) => Ok(v[k].clone()),
                Err(e) => Err(e.clone()),
            };
            states.entry(i).or_default().push(r);
        }
    }
    for (i, rs) in states {
        let failed = rs.iter().find_map(|r| match r {
            Err(e) | Ok(RowOutcome::Failed(e)) => Some(e),
            _ => None,
        });
        if let Some(e) = failed {
            run.fail(i, StepKind::Row, e.clone());
        } else if let Some(table) = rs.iter().find_map(|r| match r {
            Ok(RowOutcome::Pinned(t)) => Some(t.clone()),
            _ => None,
        }) {
            run.fail(i, StepKind::Row, Failure::RowPinned(table));
        } else if rs.iter().any(|r| matches!(r, Ok(RowOutcome::Changed))) {
            run.fail(i, StepKind::Row, Failure::RowChanged);
        } else if rs.iter().any(|r| matches!(r, Ok(RowOutcome::Deleted))) {
            run.step(i, StepKind::Row, StepState::Removed);
        } else {
            run.step(i, StepKind::Row, StepState::AlreadyGone);
        }
    }
}

/// A row as `Store::finish` takes it: its id and the stamp that proves it unchanged.
fn row_arg(r: &RowRef) -> Stamped<'_> {
    (r.id.as_str(), r.updated_at.as_deref())
}

/// The shared teardown's decision for one project, from a dump taken after the VMs went:
/// the batch to run, or why none may run (that is `plan::shared_teardown`).
pub type Teardown = fn(&NftState, Project) -> Result<Vec<Op>, String>;

/// Why a project's shared tables stay: the decision refused (something not the
/// project's, or a VM's, is still in them), or the kernel did not do it.
#[derive(Debug)]
pub enum Shared {
    Refused(Error),
    Failed(Error),
}

/// With `--all`, once the project has no VM left: removes its shared nft rules, maps and
/// sets, base chains and tables in one all-or-nothing batch, as `decide` says from a
/// fresh dump. Ok(false) when there was nothing to remove.
pub fn remove_shared(deadline: Instant, project: Project, decide: Teardown) -> Result<bool, Shared> {
    let action = format!("remove {}'s shared nftables tables", project.title());
    let err = |e: Fault| Shared::Failed(Error::sys(action.clone(), e));
    let mut sock = netlink::Socket::netfilter(deadline).map_err(|e| err(e.into()))?;
    let now = nft::dump_shared(&mut sock).map_err(err)?;
    let ops = decide(&now, project).map_err(|why| Shared::Refused(Error::msg(action.clone(), why)))?;
    if ops.is_empty() {
        return Ok(false);
    }
    nft::delete_atomic(&mut sock, &ops).map_err(err)?;
    let left = nft::dump_tables(&mut sock).map_err(err)?;
    if left
        .iter()
        .any(|t| Project::of_shared_table(t.family, &t.name) == Some(project))
    {
        return Err(Shared::Failed(Error::msg(
            action,
            "they are still present after the delete",
        )));
    }
    Ok(true)
}

/// The deadline-bounded timing for a run started at `start`.
pub fn timing(start: Instant, grace: std::time::Duration, timeout: std::time::Duration) -> Timing {
    Timing {
        grace,
        kill_wait: std::time::Duration::from_secs(2),
        deadline: start + timeout,
    }
}

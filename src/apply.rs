//! Runs a plan against the system, one phase per resource kind across all targets:
//! processes, then TAPs, then nft rules, then files, then state rows. Each phase is
//! batched (one signal round, one link batch, nft batches, one DB transaction) and
//! confirmed from a fresh dump. A target that fails a phase is skipped by the later ones,
//! so its state row survives for the next run; "already gone" counts as done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::Error;
use crate::files::{self, Removal};
use crate::netlink::{self, link, nft};
use crate::plan::Plan;
use crate::process::{self, Stopped, Timing};
use crate::procfs::Procfs;
use crate::reconcile::Observed;
use crate::state::{Db, RowOutcome, iso8601_utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Process,
    Tap,
    Nft,
    Files,
    Row,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Removed,
    AlreadyGone,
    /// Nothing of this kind to do, or not attempted after an earlier failure.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub state: StepState,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: String,
    pub steps: Vec<Step>,
}

impl Outcome {
    /// The first failure, which is the reason reported for the target.
    pub fn error(&self) -> Option<&str> {
        self.steps.iter().find_map(|s| s.error.as_deref())
    }
}

pub struct Env<'a> {
    pub procfs: &'a Procfs,
    pub dbs: &'a [Option<Db>],
    pub timing: Timing,
    pub link_error: Option<&'a Error>,
    pub nft_error: Option<&'a Error>,
    /// Set by SIGINT/SIGTERM: finish the phase in progress, start no other.
    pub stop: &'a AtomicBool,
    pub warn: &'a mut dyn FnMut(String),
}

struct Run<'p> {
    plan: &'p Plan,
    out: Vec<Outcome>,
    failed: Vec<bool>,
}

impl Run<'_> {
    fn live(&self) -> Vec<usize> {
        (0..self.out.len()).filter(|&i| !self.failed[i]).collect()
    }

    fn step(&mut self, i: usize, kind: StepKind, state: StepState) {
        self.out[i].steps.push(Step {
            kind,
            state,
            error: None,
        });
    }

    fn fail(&mut self, i: usize, kind: StepKind, why: String) {
        self.out[i].steps.push(Step {
            kind,
            state: StepState::Failed,
            error: Some(why),
        });
        self.failed[i] = true;
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

pub fn apply(plan: &Plan, obs: &Observed, env: &mut Env<'_>) -> Vec<Outcome> {
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
    if env.stop.load(Ordering::SeqCst) {
        for i in run.live() {
            run.fail(
                i,
                StepKind::Process,
                "interrupted before this step; state row kept".into(),
            );
        }
        return run.finish();
    }
    let updated = mark_stale(plan, obs, env);
    for (i, t) in plan.targets.iter().enumerate() {
        if let Some(why) = &t.refuse {
            run.fail(i, StepKind::Process, why.clone());
        }
    }
    type Phase = fn(&mut Run<'_>, &Observed, &mut Env<'_>, &BTreeMap<usize, Option<String>>);
    let phases: [(StepKind, Phase); 5] = [
        (StepKind::Process, |r, o, e, _| stop_processes(r, o, e)),
        (StepKind::Tap, |r, o, e, _| delete_taps(r, o, e)),
        (StepKind::Nft, |r, o, e, _| delete_rules(r, o, e)),
        (StepKind::Files, |r, _, e, _| remove_files(r, e)),
        (StepKind::Row, delete_rows),
    ];
    for (kind, phase) in phases {
        if env.stop.load(Ordering::SeqCst) {
            for i in run.live() {
                run.fail(i, kind, "interrupted before this step; state row kept".into());
            }
            break;
        }
        phase(&mut run, obs, env, &updated);
    }
    run.finish()
}

/// Marks stale rows `error`/pid NULL as SmolVM's reconcile does, so a row that outlives
/// this run (a failed target) reads truthfully. Returns each touched row's new
/// `updated_at`, which the final delete is conditioned on.
fn mark_stale(plan: &Plan, obs: &Observed, env: &mut Env<'_>) -> BTreeMap<usize, Option<String>> {
    let mut updated = BTreeMap::new();
    let mut by_db: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for t in &plan.targets {
        for &ri in &t.mark {
            by_db.entry(obs.rows[ri].db).or_default().push(ri);
        }
    }
    let now = iso8601_utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for (db, rows) in by_db {
        let Some(Some(conn)) = env.dbs.get(db) else {
            continue;
        };
        let args: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|&ri| (obs.rows[ri].id.as_str(), obs.rows[ri].updated_at.as_deref()))
            .collect();
        match conn.mark_stale(&args, &now) {
            Ok(res) => {
                for (ri, new) in rows.into_iter().zip(res) {
                    if new.is_some() {
                        updated.insert(ri, new);
                    }
                }
            }
            Err(e) => (env.warn)(format!("{e}; stale rows keep their status")),
        }
    }
    updated
}

fn stop_processes(run: &mut Run<'_>, _obs: &Observed, env: &mut Env<'_>) {
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
                    run.fail(i, StepKind::Process, e.to_string());
                } else if rs.iter().any(|r| matches!(r, Ok(Stopped::Exited))) {
                    run.step(i, StepKind::Process, StepState::Removed);
                } else {
                    run.step(i, StepKind::Process, StepState::AlreadyGone);
                }
            }
        }
    }
}

fn delete_taps(run: &mut Run<'_>, obs: &Observed, env: &mut Env<'_>) {
    let live: Vec<usize> = run.live();
    let mut indexes = Vec::new();
    for &i in &live {
        let t = &run.plan.targets[i];
        if t.tap_names.is_empty() {
            run.step(i, StepKind::Tap, StepState::Skipped);
        } else if let Some(e) = env.link_error {
            run.fail(i, StepKind::Tap, e.to_string());
        } else if t.taps.is_empty() {
            run.step(i, StepKind::Tap, StepState::AlreadyGone);
        } else {
            indexes.extend(t.taps.iter().map(|&li| obs.links[li].index));
        }
    }
    if indexes.is_empty() {
        return;
    }
    let pending: Vec<usize> = live
        .into_iter()
        .filter(|&i| run.out[i].steps.iter().all(|s| s.kind != StepKind::Tap))
        .collect();
    let mut sock = match netlink::Socket::route(env.timing.deadline) {
        Ok(s) => s,
        Err(e) => {
            for i in pending {
                run.fail(
                    i,
                    StepKind::Tap,
                    Error::errno("open an rtnetlink socket", e.raw_os_error()).to_string(),
                );
            }
            return;
        }
    };
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7);
    let results = link::delete_many(&mut sock, &obs.links, &indexes, seed);
    let by_index: BTreeMap<i32, rustix::io::Result<()>> = indexes.iter().copied().zip(results).collect();
    let after: Result<BTreeSet<(i32, String)>, _> =
        link::dump(&mut sock).map(|now| now.into_iter().map(|l| (l.index, l.name)).collect());
    for i in pending {
        let t = &run.plan.targets[i];
        let mut why = None;
        for &li in &t.taps {
            let l = &obs.links[li];
            let action = format!("delete TAP device {}", l.name);
            match by_index.get(&l.index) {
                Some(Err(e)) => why = Some(Error::errno(action, e.raw_os_error())),
                _ => match &after {
                    Ok(now) if now.contains(&(l.index, l.name.clone())) => {
                        why = Some(Error::msg(action, "it is still present after the delete"))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        why = Some(Error::errno(
                            format!("confirm deletion of TAP device {}", l.name),
                            e.raw_os_error(),
                        ))
                    }
                },
            }
            if why.is_some() {
                break;
            }
        }
        match why {
            Some(e) => run.fail(i, StepKind::Tap, e.to_string()),
            None => run.step(i, StepKind::Tap, StepState::Removed),
        }
    }
}

fn delete_rules(run: &mut Run<'_>, obs: &Observed, env: &mut Env<'_>) {
    let mut ops = Vec::new();
    let mut owner = Vec::new();
    let mut pending = Vec::new();
    for i in run.live() {
        let t = &run.plan.targets[i];
        if let Some(e) = env.nft_error {
            run.fail(i, StepKind::Nft, e.to_string());
            continue;
        }
        if t.rules.is_empty() && t.tables.is_empty() {
            run.step(i, StepKind::Nft, StepState::Skipped);
            continue;
        }
        pending.push(i);
        for &ri in &t.rules {
            ops.push(nft::Op::for_rule(&obs.rules[ri]));
            owner.push(i);
        }
        for &ti in &t.tables {
            let tb = &obs.tables[ti];
            // A per-TAP policy table holds only that TAP's chains and rules.
            ops.push(nft::Op::Table {
                family: tb.family,
                name: tb.name.clone(),
                recursive: true,
            });
            owner.push(i);
        }
    }
    if ops.is_empty() {
        return;
    }
    let deadline = env.timing.deadline;
    let results = match netlink::Socket::netfilter(deadline) {
        Ok(mut sock) => nft::delete(&mut sock, &ops, deadline),
        Err(e) => vec![Err(e); ops.len()],
    };
    let mut first_err: BTreeMap<usize, Error> = BTreeMap::new();
    for ((op, r), &i) in ops.iter().zip(&results).zip(&owner) {
        if let Err(e) = r {
            first_err
                .entry(i)
                .or_insert_with(|| Error::errno(describe(op), e.raw_os_error()));
        }
    }
    // Confirm from the kernel: an ACK is not proof when a batch can be rolled back.
    match crate::discover::dump_nft(deadline) {
        Ok((tables, rules)) => {
            let rules: BTreeSet<nft::Op> = rules.iter().map(nft::Op::for_rule).collect();
            let tables: BTreeSet<(u8, &str)> = tables.iter().map(|t| (t.family, t.name.as_str())).collect();
            for (op, &i) in ops.iter().zip(&owner) {
                let present = match op {
                    nft::Op::Rule { .. } => rules.contains(op),
                    nft::Op::Table { family, name, .. } => tables.contains(&(*family, name.as_str())),
                    nft::Op::Chain { .. } => false,
                };
                if present {
                    first_err
                        .entry(i)
                        .or_insert_with(|| Error::msg(describe(op), "it is still present after the delete"));
                }
            }
        }
        Err(e) => {
            for &i in &pending {
                first_err
                    .entry(i)
                    .or_insert_with(|| Error::errno("confirm deletion of nftables rules", e.raw_os_error()));
            }
        }
    }
    for i in pending {
        match first_err.remove(&i) {
            Some(e) => run.fail(i, StepKind::Nft, e.to_string()),
            None => run.step(i, StepKind::Nft, StepState::Removed),
        }
    }
}

fn describe(op: &nft::Op) -> String {
    match op {
        nft::Op::Rule {
            table, chain, handle, ..
        } => format!("delete nftables rule {table} {chain} handle {handle}"),
        nft::Op::Chain { table, name, .. } => format!("delete nftables chain {table} {name}"),
        nft::Op::Table { name, .. } => format!("delete nftables table {name}"),
    }
}

fn remove_files(run: &mut Run<'_>, env: &mut Env<'_>) {
    for i in run.live() {
        let t = &run.plan.targets[i];
        let mut removed = false;
        let mut err = None;
        for f in &t.files {
            match files::remove(f) {
                Ok(Removal::Deleted) => removed = true,
                Ok(Removal::AlreadyGone) => {}
                Ok(Removal::Refused(why)) => {
                    (env.warn)(format!("{}: not removing {}: {why}", t.id, f.path().display()));
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(e) => run.fail(i, StepKind::Files, e.to_string()),
            None if removed => run.step(i, StepKind::Files, StepState::Removed),
            None => run.step(i, StepKind::Files, StepState::AlreadyGone),
        }
    }
}

fn delete_rows(
    run: &mut Run<'_>,
    obs: &Observed,
    env: &mut Env<'_>,
    updated: &BTreeMap<usize, Option<String>>,
) {
    let mut by_db: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for i in run.live() {
        let t = &run.plan.targets[i];
        if t.rows.is_empty() {
            run.step(i, StepKind::Row, StepState::Skipped);
        }
        for &ri in &t.rows {
            by_db.entry(obs.rows[ri].db).or_default().push((i, ri));
        }
    }
    let mut states: BTreeMap<usize, Vec<Result<RowOutcome, String>>> = BTreeMap::new();
    for (db, items) in by_db {
        let args: Vec<(&str, Option<&str>)> = items
            .iter()
            .map(|&(_, ri)| {
                let stamp = match updated.get(&ri) {
                    Some(new) => new.as_deref(),
                    None => obs.rows[ri].updated_at.as_deref(),
                };
                (obs.rows[ri].id.as_str(), stamp)
            })
            .collect();
        let res = match env.dbs.get(db) {
            Some(Some(conn)) => conn.delete_rows(&args).map_err(|e| e.to_string()),
            _ => Err("the state DB is not open".to_string()),
        };
        for (k, &(i, _)) in items.iter().enumerate() {
            let r = match &res {
                Ok(v) => Ok(v[k].clone()),
                Err(e) => Err(e.clone()),
            };
            states.entry(i).or_default().push(r);
        }
    }
    for (i, rs) in states {
        if let Some(e) = rs.iter().find_map(|r| r.as_ref().err()) {
            run.fail(i, StepKind::Row, e.clone());
        } else if rs.iter().any(|r| matches!(r, Ok(RowOutcome::Changed))) {
            run.fail(
                i,
                StepKind::Row,
                "its state row changed during cleanup (VM restarted?); row kept".to_string(),
            );
        } else if rs.iter().any(|r| matches!(r, Ok(RowOutcome::Deleted))) {
            run.step(i, StepKind::Row, StepState::Removed);
        } else {
            run.step(i, StepKind::Row, StepState::AlreadyGone);
        }
    }
}

/// With `--all`, once no VM is left: removes SmolVM's shared nft rules, base chains and
/// tables in one all-or-nothing batch. Ok(false) when there was nothing to remove.
pub fn remove_shared(deadline: Instant) -> Result<bool, String> {
    let action = "remove SmolVM's shared nftables tables";
    let err = |e: rustix::io::Errno| Error::errno(action, e.raw_os_error()).to_string();
    let mut sock = netlink::Socket::netfilter(deadline).map_err(err)?;
    let tables = nft::dump_tables(&mut sock).map_err(err)?;
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for t in tables
        .iter()
        .filter(|t| crate::reconcile::is_smolvm_rule_table(t.family, &t.name))
    {
        chains.extend(nft::dump_chains(&mut sock, t.family, &t.name).map_err(err)?);
        rules.extend(nft::dump_rules(&mut sock, t.family, &t.name).map_err(err)?);
    }
    let ops = crate::plan::shared_teardown(&tables, &chains, &rules)
        .map_err(|why| Error::msg(action, why).to_string())?;
    if ops.is_empty() {
        return Ok(false);
    }
    nft::delete_atomic(&mut sock, &ops).map_err(err)?;
    let left = nft::dump_tables(&mut sock).map_err(err)?;
    if left
        .iter()
        .any(|t| crate::reconcile::is_smolvm_rule_table(t.family, &t.name))
    {
        return Err(Error::msg(action, "they are still present after the delete").to_string());
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

//! Pure: turns what was observed (rows, processes, links, rules, files) into one entry
//! per VM id with the resources that are provably that VM's, and decides which VMs are
//! stale. No I/O here, so every rule is unit-tested without root.
//!
//! A process is a VM's VMM only when its command line names the VM by a path of SmolVM's
//! (API or QMP socket, disk), it runs in our view of the host, and it started no later
//! than the row was last written; anything else at a recorded pid is someone else's
//! process that reused the pid.

mod hosts;
mod index;
mod network;
mod rowless;
mod rows;
mod tenants;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{FileRef, Inventory, Observed, ProcInfo, Project, View, Vm, valid_vm_id};

use index::Index;
use rowless::{Held, add_rowless, claimed};
use rows::{judge_life, judge_row_vm, out_of_view};
use tenants::Tenants;

/// Slack between a process's start time (from boot time + ticks) and the row's timestamp.
const START_SLACK_SECS: f64 = 1.0;

/// Builds the inventory: rows first (DB order), then VM ids that only the host shows
/// (sorted), then TAPs that only a SmolVM rule names (`orphan-<tap>`, sorted).
pub fn inventory(obs: &Observed) -> Inventory {
    let ix = Index::new(obs);
    let mut inv = Inventory::default();
    let by_id = add_rows(&mut inv, obs);
    for vm in &mut inv.vms {
        judge_row_vm(vm, obs, &ix, &mut inv.warnings);
    }
    hosts::leave_other_hosts(&mut inv, obs, &ix);
    // Which TAPs the VMs with a live VMM claim: held, they are those VMs' sign of life.
    let mut live_taps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for vm in inv.vms.iter().filter(|v| !v.vmms.is_empty()) {
        for tap in &vm.tap_names {
            live_taps.entry(tap.as_str()).or_default().insert(vm.id.as_str());
        }
    }
    let mut live_taps: BTreeMap<String, BTreeSet<String>> = live_taps
        .into_iter()
        .map(|(t, ids)| (t.to_string(), ids.into_iter().map(str::to_string).collect()))
        .collect();
    // The TAPs of rows' VMs that are not stale (alive, or stopped and protected): a VM
    // with no row never takes those.
    let row_held: BTreeSet<String> = inv
        .vms
        .iter()
        .filter(|v| v.stale.is_none())
        .flat_map(|v| v.tap_names.iter().cloned())
        .collect();
    // What a live VMM with no row holds is its own, whatever a dead row says (a SmolVM
    // SDK VM on the TAP a Celesto VM that died with the reboot was given).
    for (id, procs) in ix.vmms_by_id.iter().filter(|(id, _)| !by_id.contains_key(*id)) {
        for tap in procs
            .iter()
            .flat_map(|p| &p.taps)
            .filter(|t| !row_held.contains(*t))
        {
            live_taps.entry(tap.clone()).or_default().insert(id.clone());
        }
    }
    // Another data dir's live VMs hold theirs: no sign of life of ours, and never ours.
    let tenants = Tenants::of(obs, &ix);
    for tap in tenants.taps.keys() {
        live_taps.entry(tap.clone()).or_default().insert(String::new());
    }
    for vm in inv.vms.iter_mut().filter(|v| !v.other_host) {
        judge_life(vm, obs, &live_taps, &mut inv.warnings);
        tenants.leave(vm, obs, &mut inv.warnings);
    }
    out_of_view(&mut inv, obs);

    let claimed = claimed(obs);
    let evidence = rowless_evidence(&mut inv, obs, &ix, &by_id, &claimed, &tenants);
    let mut unattributed: Vec<FileRef> = ix
        .files_by_id
        .iter()
        .filter(|(id, _)| {
            !by_id.contains_key(**id) && !evidence.contains_key(**id) && !tenants.ids.contains_key(**id)
        })
        .flat_map(|(_, files)| files.iter().cloned())
        .collect();
    unattributed.sort();
    inv.unattributed = unattributed;
    if obs.rows_incomplete {
        if !evidence.is_empty() {
            inv.warnings.push(
                "a state DB could not be read: leftovers that no readable row names are left alone this run"
                    .into(),
            );
        }
        return inv;
    }
    let held = Held {
        row_held: &row_held,
        tenants: &tenants,
    };
    add_rowless(&mut inv, obs, &ix, &by_id, &evidence, &claimed, held);
    inv.unattributed.sort();
    inv
}

/// VM ids that something only SmolVM makes names (a VMM command line, a rule comment,
/// a socket, a create lock), with their VMMs, that no row of any data dir has and no VMM
/// of another view or data dir names. A log or disk name alone names no VM.
fn rowless_evidence<'a>(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'a>,
    by_id: &BTreeMap<String, usize>,
    claimed: &rowless::Claimed<'_>,
    tenants: &Tenants,
) -> BTreeMap<String, Vec<&'a ProcInfo>> {
    let mut evidence: BTreeMap<String, Vec<&ProcInfo>> = ix.vmms_by_id.clone();
    for id in ix.sidecars_by_id.keys() {
        evidence.entry(id.clone()).or_default();
    }
    // A bridge TAP's alias names a VM only when no row claims the TAP.
    let aliased = ix
        .taps_by_alias
        .iter()
        .filter(|(_, taps)| taps.iter().any(|t| !claimed.any.contains_key(t)))
        .map(|(id, _)| id);
    for &id in ix
        .rules_by_id
        .keys()
        .chain(ix.named_by_file.keys())
        .chain(aliased)
    {
        evidence.entry(id.to_string()).or_default();
    }
    // A VM that another data dir's row describes is that data dir's, not a leftover.
    let others: BTreeSet<&str> = obs.other_rows.iter().map(|r| r.id.as_str()).collect();
    evidence.retain(|id, _| !by_id.contains_key(id) && !others.contains(id.as_str()));
    // What a VMM we cannot inspect names may be its own: cannot tell, so never taken.
    for (id, procs) in ix
        .uninspected_by_id
        .iter()
        .filter(|(id, _)| !by_id.contains_key(*id))
    {
        evidence.remove(id);
        for p in procs {
            if let View::Unknown(why) = &p.view {
                let argv0 = p.cmdline.first().map_or("?", String::as_str);
                inv.uninspected
                    .push(format!("pid {} ({argv0}) names {id}, but {why}", p.pid));
            }
        }
    }
    // What a VMM started for another data dir names is that data dir's VM.
    for (id, why) in tenants.ids.iter().filter(|(id, _)| !by_id.contains_key(*id)) {
        if evidence.remove(id).is_some() {
            inv.warnings.push(format!(
                "{id}: {why}, not this run's; left alone (a cleanup of that data dir takes it)"
            ));
            inv.kept += 1;
        }
    }
    if !inv.uninspected.is_empty() {
        inv.warnings.push(format!(
            "not fully inspected, so left alone: {} (as root with CAP_SYS_PTRACE it can be read)",
            inv.uninspected.join("; ")
        ));
    }
    evidence
}

/// One VM per valid row id of each state DB, in DB order: a VM is (its DB's project and
/// data dir, id), so one id in SmolVM's and Celesto's DBs (both draw ids from one
/// generator and each checks only its own DB) is two VMs, each judged on its own and
/// labelled with its project (or data dir) wherever it is shown. A row with a hostile id
/// is refused and kept. Returns, per id, its first VM.
fn add_rows(inv: &mut Inventory, obs: &Observed) -> BTreeMap<String, usize> {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_db: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for (i, row) in obs.rows.iter().enumerate() {
        if !valid_vm_id(&row.id) {
            inv.warnings.push(format!(
                "refusing a state row whose id {:?} is not a SmolVM VM id; it is left as it is",
                row.id
            ));
            inv.kept += 1;
            inv.kept_projects.insert(row.project);
            continue;
        }
        let k = *by_db.entry((row.db, row.id.as_str())).or_insert_with(|| {
            inv.vms.push(Vm {
                id: row.id.clone(),
                status: Some(row.status),
                ..Vm::default()
            });
            inv.vms.len() - 1
        });
        by_id.entry(row.id.clone()).or_insert(k);
        inv.vms[k].rows.push(i);
    }
    label_shared_ids(inv, obs);
    by_id
}

/// Where one id stands for two VMs, each says whose it is: its project when theirs
/// differ (`sbx-tesla (Celesto)`), else its data dir.
fn label_shared_ids(inv: &mut Inventory, obs: &Observed) {
    let mut count: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, vm) in inv.vms.iter().enumerate() {
        count.entry(vm.id.as_str()).or_default().push(k);
    }
    let shared: Vec<Vec<usize>> = count.into_values().filter(|ks| ks.len() > 1).collect();
    for ks in &shared {
        let rows: Vec<&crate::model::Row> = ks.iter().map(|&k| &obs.rows[inv.vms[k].rows[0]]).collect();
        let projects: BTreeSet<Project> = rows.iter().map(|r| r.project).collect();
        for (&k, row) in ks.iter().zip(rows) {
            let label = if projects.len() == ks.len() {
                row.project.title().to_string()
            } else {
                obs.db_dirs
                    .get(row.db)
                    .map_or_else(|| row.project.title().to_string(), |d| d.display().to_string())
            };
            inv.vms[k].label = Some(label);
        }
    }
}

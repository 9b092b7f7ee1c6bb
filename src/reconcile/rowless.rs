//! Leftovers with no row: VM ids that something only SmolVM makes names, the TAPs their
//! rules or a bridge alias tie to them, and TAPs that only SmolVM's rules, policy tables
//! or elements name (`orphan-<tap>`).

use std::collections::{BTreeMap, BTreeSet};

use super::Index;
use super::network::{
    Claims, attach_claims, attach_elems_by_ip, attach_network, guest_ip_for_tap, tap_for_guest_ip,
};
use super::rows::signs_of_life;
use crate::model::{Inventory, Life, Observed, ProcInfo, Refusal, Stale, Vm, Vmm};

/// The VMs only the host shows (`evidence`, sorted), then the TAPs that only a SmolVM
/// rule names and no VM takes (`orphan-<tap>`, sorted).
pub(super) fn add_rowless(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'_>,
    by_id: &BTreeMap<String, usize>,
    evidence: &BTreeMap<String, Vec<&ProcInfo>>,
    claimed: &BTreeSet<&str>,
) {
    let ties = ties(obs, ix, by_id, claimed);
    let mut tied: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (tap, id) in &ties {
        tied.entry(id).or_default().push(tap.clone());
    }
    let row_ips: BTreeSet<[u8; 4]> = obs
        .rows
        .iter()
        .chain(&obs.other_rows)
        .filter_map(|r| r.guest_ip)
        .collect();
    for (id, vmms) in evidence {
        let vm = rowless_vm(
            id,
            vmms,
            tied.get(id.as_str()),
            obs,
            ix,
            &row_ips,
            &mut inv.warnings,
        );
        if vm.stale.is_none() {
            inv.warnings.push(format!(
                "{}: has no state row but is alive ({}); left alone (--all stops it)",
                vm.id,
                vm.live.as_ref().map_or_else(|| "?".to_string(), Life::to_string)
            ));
        }
        inv.vms.push(vm);
    }
    add_orphan_taps(inv, obs, ix, claimed, &ties, &row_ips);
}

/// The TAP names rows claim (this run's, and other data dirs'): never an orphan, never
/// tied to a VM with no row.
pub(super) fn claimed_taps(obs: &Observed) -> BTreeSet<&str> {
    obs.rows
        .iter()
        .chain(&obs.other_rows)
        .flat_map(|r| r.taps.iter().map(String::as_str))
        .collect()
}

/// TAPs tied to a VM with no row: the TAP of the guest IP its SSH rule carries, and a
/// bridge TAP whose alias names it.
fn ties<'a>(
    obs: &'a Observed,
    ix: &Index<'a>,
    by_id: &BTreeMap<String, usize>,
    claimed: &BTreeSet<&str>,
) -> BTreeMap<String, &'a str> {
    let mut ties: BTreeMap<String, &str> = BTreeMap::new();
    for (&id, rules) in ix.rules_by_id.iter().filter(|(id, _)| !by_id.contains_key(**id)) {
        let ips = rules.iter().flat_map(|&ri| &obs.rules[ri].ipv4);
        for tap in ips.filter_map(|ip| tap_for_guest_ip(*ip)) {
            if !claimed.contains(tap.as_str()) {
                ties.entry(tap).or_insert(id);
            }
        }
    }
    // A bridge TAP's alias names its VM.
    for (&id, taps) in ix
        .taps_by_alias
        .iter()
        .filter(|(id, _)| !by_id.contains_key(**id))
    {
        for tap in taps.iter().filter(|t| !claimed.contains(**t)) {
            ties.entry(tap.to_string()).or_insert(id);
        }
    }
    ties
}

/// A VM only the host shows, with the TAPs tied to it and what they and its id name.
fn rowless_vm(
    id: &str,
    vmms: &[&ProcInfo],
    tied: Option<&Vec<String>>,
    obs: &Observed,
    ix: &Index<'_>,
    row_ips: &BTreeSet<[u8; 4]>,
    warnings: &mut Vec<String>,
) -> Vm {
    {
        let mut vm = Vm {
            id: id.to_string(),
            rowless: true,
            tap_names: tied.cloned().unwrap_or_default(),
            vmms: vmms
                .iter()
                .map(|p| Vmm {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                })
                .collect(),
            ..Vm::default()
        };
        attach_network(&mut vm, obs, ix, warnings);
        let mut ips: BTreeSet<[u8; 4]> = vm.tap_names.iter().filter_map(|t| guest_ip_for_tap(t)).collect();
        for &ri in ix.rules_by_id.get(id).into_iter().flatten() {
            ips.extend(
                obs.rules[ri]
                    .ipv4
                    .iter()
                    .filter(|ip| tap_for_guest_ip(**ip).is_some()),
            );
        }
        attach_elems_by_ip(&mut vm, &ips, row_ips, ix);
        vm.files = ix.files_by_id.get(id).cloned().unwrap_or_default();
        let claims = Claims {
            ips: ips.difference(row_ips).copied().collect(),
            ..Claims::default()
        };
        attach_claims(&mut vm, &claims, &obs.data_dirs, ix);
        judge_rowless(&mut vm, obs);
        vm
    }
}

/// TAPs that only SmolVM's rules, policy tables or elements name and no VM takes:
/// `orphan-<tap>`, unless something alive holds the TAP or its claim.
fn add_orphan_taps(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'_>,
    claimed: &BTreeSet<&str>,
    ties: &BTreeMap<String, &str>,
    row_ips: &BTreeSet<[u8; 4]>,
) {
    // TAPs that only SmolVM's rules, policy tables or elements name, tied to no VM (an
    // element's guest IP names the TAP SmolVM gave that IP).
    let mut named: BTreeSet<String> = ix.rules_by_tap.keys().map(|t| t.to_string()).collect();
    named.extend(ix.table_by_tap.keys().map(|t| t.to_string()));
    named.extend(ix.elems_by_tap.keys().cloned());
    named.extend(
        ix.elems_by_ip
            .keys()
            .filter(|ip| !row_ips.contains(*ip))
            .filter_map(|ip| tap_for_guest_ip(*ip)),
    );
    let orphan_taps = named
        .iter()
        .filter(|tap| !claimed.contains(tap.as_str()) && !ties.contains_key(tap.as_str()));
    for tap in orphan_taps {
        let mut vm = Vm {
            id: format!("orphan-{tap}"),
            rowless: true,
            tap_names: vec![tap.to_string()],
            ..Vm::default()
        };
        attach_network(&mut vm, obs, ix, &mut inv.warnings);
        let ips: BTreeSet<[u8; 4]> = guest_ip_for_tap(tap).into_iter().collect();
        attach_elems_by_ip(&mut vm, &ips, row_ips, ix);
        let claims = Claims {
            ips: ips.difference(row_ips).copied().collect(),
            ..Claims::default()
        };
        attach_claims(&mut vm, &claims, &obs.data_dirs, ix);
        // A claim file a live SDK process holds: its VM lives, though no row names it.
        let held_claim = vm.files.iter().any(|f| obs.held_locks.contains(&f.path()));
        if vm.taps.iter().any(|&li| obs.links[li].carrier) || held_claim {
            inv.warnings.push(format!(
                "{tap}: a live process holds this TAP though no state row names it; left alone"
            ));
            inv.kept += 1;
            continue;
        }
        vm.stale = Some(Stale::TapNoRow);
        inv.vms.push(vm);
    }
}

/// A rowless VM is stale unless something shows it alive: its VMM (which `--all` may
/// stop), or a served socket / a TAP held open by a process we cannot identify.
pub(super) fn judge_rowless(vm: &mut Vm, obs: &Observed) {
    let life = signs_of_life(vm, obs);
    // A held create lock belongs to the create in progress, never to us.
    vm.files.retain(|f| !obs.held_locks.contains(&f.path()));
    if let Some(v) = vm.vmms.first() {
        vm.live = Some(Life::Vmm(v.pid));
        return;
    }
    match life {
        Some(life) => {
            vm.refuse = Some(Refusal::Unidentified(life.clone()));
            vm.live = Some(life);
        }
        None => vm.stale = Some(Stale::NoRow),
    }
}

//! Leftovers with no row: VM ids that something only SmolVM (or Celesto) makes names, the
//! TAPs their rules or a bridge alias tie to them, and TAPs that only the projects'
//! rules, policy tables or elements name (`orphan-<tap>`).
//!
//! A row claims its TAP and IP within its own project: a `smolvm_policy_tap2` is a
//! leftover when no SmolVM row has `tap2`, even while a Celesto VM does (it would drop
//! that VM's traffic). The TAP link itself is one for both: it stays while any row has it.

use std::collections::{BTreeMap, BTreeSet};

use super::Index;
use super::network::{
    Claims, attach_claims, attach_elems_by_ip, attach_links, attach_network, attach_tap_objects,
    guest_ip_for_tap, rule_tap, tap_for_guest_ip,
};
use super::rows::{Whose, signs_of_life};
use super::tenants::Tenants;
use crate::model::{
    ElemMeaning, FileRef, Inventory, Life, Observed, ProcInfo, Project, Refusal, Stale, Vm, Vmm,
    valid_tap_name,
};

/// What the rows (this run's and other data dirs') claim.
pub(super) struct Claimed<'a> {
    /// TAP names, within each row's project.
    by: BTreeSet<(Project, &'a str)>,
    /// TAP names, by the first row of any project that has each: never an orphan link,
    /// never tied to a VM with no row.
    pub(super) any: BTreeMap<&'a str, (Project, &'a str)>,
    /// Guest IPs, within each row's project: an element of that project carrying one is
    /// that row's VM's.
    ips: BTreeSet<(Project, [u8; 4])>,
    /// Guest IPs, SSH ports and vsock CIDs of any project: claim files (shared by both)
    /// for them are the rows'.
    any_ips: BTreeSet<[u8; 4]>,
    ports: BTreeSet<u16>,
    cids: BTreeSet<u32>,
}

pub(super) fn claimed(obs: &Observed) -> Claimed<'_> {
    let rows = obs.rows.iter().chain(&obs.other_rows);
    let mut c = Claimed {
        by: BTreeSet::new(),
        any: BTreeMap::new(),
        ips: BTreeSet::new(),
        any_ips: BTreeSet::new(),
        ports: BTreeSet::new(),
        cids: BTreeSet::new(),
    };
    for r in rows {
        for tap in &r.taps {
            c.by.insert((r.project, tap.as_str()));
            c.any.entry(tap.as_str()).or_insert((r.project, r.id.as_str()));
        }
        if let Some(ip) = r.guest_ip {
            c.ips.insert((r.project, ip));
            c.any_ips.insert(ip);
        }
        c.ports.extend(r.host_port);
        c.cids.extend(r.vsock_cid);
    }
    c
}

/// What holds TAPs apart from the rows' claims: the TAPs of rows' VMs that are not stale,
/// and other data dirs' live VMs.
#[derive(Clone, Copy)]
pub(super) struct Held<'a> {
    pub row_held: &'a BTreeSet<String>,
    pub tenants: &'a Tenants,
}

/// The VMs only the host shows (`evidence`, sorted), then the TAPs that only the
/// projects' objects name and no VM takes (`orphan-<tap>`, sorted).
pub(super) fn add_rowless(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'_>,
    by_id: &BTreeMap<String, usize>,
    evidence: &BTreeMap<String, Vec<&ProcInfo>>,
    claimed: &Claimed<'_>,
    held: Held<'_>,
) {
    let Held { row_held, tenants } = held;
    let ties = ties(obs, ix, by_id, claimed, row_held);
    let mut tied: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (tap, id) in &ties {
        tied.entry(id.as_str()).or_default().push(tap.clone());
    }
    let mut taken: BTreeSet<(Project, String)> = BTreeSet::new();
    for (id, vmms) in evidence {
        let mut vm = rowless_vm(id, vmms, tied.get(id.as_str()), obs, ix, claimed, inv);
        tenants.leave(&mut vm, obs, &mut inv.warnings);
        if vm.stale.is_none() {
            inv.warnings.push(format!(
                "{}: has no state row but is alive ({}); left alone (--all stops it)",
                vm.id,
                vm.live.as_ref().map_or_else(|| "?".to_string(), Life::to_string)
            ));
        }
        for &p in &vm.projects {
            taken.extend(vm.tap_names.iter().map(|t| (p, t.clone())));
        }
        inv.vms.push(vm);
    }
    add_orphan_taps(inv, obs, ix, claimed, &ties, &taken, tenants);
    free_claims(inv, obs, ix, claimed);
}

/// Claim files (`locks/resources/<kind>-<value>.lock`) that no process holds, whose value
/// no row has and that no VM took: an SDK VM took them whose owner process is gone (they
/// are empty and name no VM, and SmolVM never deletes them). Which one cannot be told,
/// so `plan` decides whether they can go. None while a lock in their data dir is held
/// (a create may be claiming).
fn free_claims(inv: &mut Inventory, obs: &Observed, ix: &Index<'_>, claimed: &Claimed<'_>) {
    let taken: BTreeSet<FileRef> = inv.vms.iter().flat_map(|v| v.files.iter().cloned()).collect();
    let a_rows = |name: &str| -> bool {
        let Some((kind, value)) = name.strip_suffix(".lock").and_then(|n| n.split_once('-')) else {
            return true;
        };
        match kind {
            "ip" => crate::model::parse_ipv4(value).is_none_or(|ip| claimed.any_ips.contains(&ip)),
            "ssh" => value.parse().map_or(true, |p: u16| claimed.ports.contains(&p)),
            "vsock" => value.parse().map_or(true, |c: u32| claimed.cids.contains(&c)),
            "tap" => claimed.any.contains_key(value),
            _ => true,
        }
    };
    for dir in &obs.data_dirs {
        if obs.held_locks.iter().any(|l| l.starts_with(dir)) {
            continue;
        }
        let mut free: Vec<FileRef> = ix
            .resource_locks
            .iter()
            .filter(|(name, dirs)| dirs.contains(&dir) && !a_rows(name))
            .map(|(name, _)| FileRef::new(dir, format!("locks/resources/{name}")))
            .filter(|f| !taken.contains(f) && !obs.held_locks.contains(&f.path()))
            .collect();
        free.sort();
        inv.free_claims.extend(free);
    }
}

/// TAPs tied to a VM with no row: the TAP its live VMM holds open (the holder decides,
/// unless a row's VM that is not stale has it), the TAP of the guest IP its SSH rule carries,
/// and a bridge TAP whose alias names it. Otherwise a TAP a row has is never tied.
fn ties(
    obs: &Observed,
    ix: &Index<'_>,
    by_id: &BTreeMap<String, usize>,
    claimed: &Claimed<'_>,
    row_held: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut ties: BTreeMap<String, String> = BTreeMap::new();
    // What its VMM holds (an SDK VM's TAP: no row, and 0.0.8+ rules name no VM).
    for (id, procs) in ix.vmms_by_id.iter().filter(|(id, _)| !by_id.contains_key(*id)) {
        for tap in procs.iter().flat_map(|p| &p.taps) {
            if valid_tap_name(tap) && !row_held.contains(tap) {
                ties.entry(tap.clone()).or_insert_with(|| id.clone());
            }
        }
    }
    let mut tie = |tap: &str, id: &str| {
        if valid_tap_name(tap) && !claimed.any.contains_key(tap) {
            ties.entry(tap.to_string()).or_insert_with(|| id.to_string());
        }
    };
    for (&id, rules) in ix.rules_by_id.iter().filter(|(id, _)| !by_id.contains_key(**id)) {
        let ips = rules.iter().flat_map(|&ri| &obs.rules[ri].ipv4);
        for tap in ips.filter_map(|ip| tap_for_guest_ip(*ip)) {
            tie(&tap, id);
        }
    }
    for (&id, taps) in ix
        .taps_by_alias
        .iter()
        .filter(|(id, _)| !by_id.contains_key(**id))
    {
        for tap in taps {
            tie(tap, id);
        }
    }
    ties
}

/// A VM only the host shows, with the TAPs tied to it and what they and its id name, in
/// the projects whose objects name it (both, when only a shared name such as a socket does).
fn rowless_vm(
    id: &str,
    vmms: &[&ProcInfo],
    tied: Option<&Vec<String>>,
    obs: &Observed,
    ix: &Index<'_>,
    claimed: &Claimed<'_>,
    inv: &mut Inventory,
) -> Vm {
    let projects: Vec<Project> = match ix.projects_by_id.get(id) {
        Some(p) if !p.is_empty() => p.iter().copied().collect(),
        _ => Project::ALL.to_vec(),
    };
    let mut vm = Vm {
        id: id.to_string(),
        projects,
        rowless: true,
        tap_names: tied.cloned().unwrap_or_default(),
        vmms: vmms
            .iter()
            .filter(|p| !p.exiting)
            .map(|p| Vmm {
                pid: p.pid,
                start_ticks: p.start_ticks,
            })
            .collect(),
        exiting: vmms
            .iter()
            .filter(|p| p.exiting)
            .map(|p| Vmm {
                pid: p.pid,
                start_ticks: p.start_ticks,
            })
            .collect(),
        sidecars: ix
            .sidecars_by_id
            .get(id)
            .into_iter()
            .flatten()
            .map(|p| Vmm {
                pid: p.pid,
                start_ticks: p.start_ticks,
            })
            .collect(),
        ..Vm::default()
    };
    attach_network(&mut vm, obs, ix, &mut inv.warnings);
    leave_rows_tap_objects(&mut vm, obs, claimed);
    let mut ips: BTreeSet<[u8; 4]> = vm.tap_names.iter().filter_map(|t| guest_ip_for_tap(t)).collect();
    for &ri in ix.rules_by_id.get(id).into_iter().flatten() {
        ips.extend(
            obs.rules[ri]
                .ipv4
                .iter()
                .filter(|ip| tap_for_guest_ip(**ip).is_some()),
        );
    }
    attach_elems_by_ip(&mut vm, &ips, &claimed.ips, ix);
    let (files, foreign) = own_files(id, vmms, obs, ix);
    vm.files = files;
    if !foreign.is_empty() {
        let list: Vec<String> = foreign.iter().map(|f| f.path().display().to_string()).collect();
        inv.warnings.push(format!(
            "{id}: no state row, and only a user's socket, lock or process names it: files of \
             other owners are not its, so they are left alone: {}",
            list.join(", ")
        ));
        inv.unattributed.extend(foreign);
    }
    let claims = Claims {
        ips: ips.difference(&claimed.any_ips).copied().collect(),
        ..Claims::default()
    };
    attach_claims(&mut vm, &claims, &obs.data_dirs, ix);
    judge_rowless(&mut vm, obs);
    vm
}

/// A TAP its VMM holds that a dead row of a project was given (a SmolVM SDK VM on the
/// TAP of a Celesto VM that died with the reboot): the holder takes the TAP and its own
/// project's per-TAP objects; that project's per-TAP objects are the row's VM's.
fn leave_rows_tap_objects(vm: &mut Vm, obs: &Observed, claimed: &Claimed<'_>) {
    let rows = |p: Project, tap: &str| claimed.by.contains(&(p, tap));
    vm.tables.retain(|&ti| {
        let t = &obs.tables[ti];
        Project::of_policy_table(t.family, &t.name).is_none_or(|(p, tap)| !rows(p, tap))
    });
    vm.elems.retain(|&ei| {
        let e = &obs.elems[ei];
        match (e.project(), e.meaning()) {
            (Some(p), ElemMeaning::Tap(tap)) => !rows(p, &tap),
            _ => true,
        }
    });
    vm.rules.retain(|&ri| {
        let r = &obs.rules[ri];
        let named = r.comment.as_deref().and_then(rule_tap);
        !matches!((r.project(), named), (Some(p), Some((_, tap))) if rows(p, tap))
    });
}

/// The files of a VM with no row (by the id their names carry) that what names the VM
/// vouches for, and the rest. Root's or the kernel's word (a rule comment, a bridge alias,
/// a root process or file) vouches for any; a user's socket, lock or process only for
/// that user's own files: anyone may bind `/tmp/fc-<name>.sock`, and that must not cost
/// root's `disks/<name>.ext4`.
fn own_files(id: &str, vmms: &[&ProcInfo], obs: &Observed, ix: &Index<'_>) -> (Vec<FileRef>, Vec<FileRef>) {
    let files = ix.files_by_id.get(id).cloned().unwrap_or_default();
    let vouchers = ix.named_by_file.get(id).map_or(&[][..], Vec::as_slice);
    let kernel = ix.rules_by_id.contains_key(id) || ix.taps_by_alias.contains_key(id);
    let mut owners: BTreeSet<u32> = vmms.iter().map(|p| p.uid).collect();
    owners.extend(ix.sidecars_by_id.get(id).into_iter().flatten().map(|p| p.uid));
    owners.extend(vouchers.iter().filter_map(|f| obs.owners.get(&f.path())));
    if kernel || owners.contains(&0) {
        return (files, Vec::new());
    }
    // What names it is its own, whoever made it.
    files
        .into_iter()
        .partition(|f| vouchers.contains(f) || obs.owners.get(&f.path()).is_some_and(|u| owners.contains(u)))
}

/// TAPs that only the projects' rules, policy tables or elements name, in projects where
/// no row and no VM with no row has them: `orphan-<tap>`, with the TAP link itself when
/// no row of any project has it, unless something alive holds the TAP or its claim.
fn add_orphan_taps(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'_>,
    claimed: &Claimed<'_>,
    ties: &BTreeMap<String, String>,
    taken: &BTreeSet<(Project, String)>,
    tenants: &Tenants,
) {
    // Per TAP, the projects whose objects name it (an element's guest IP names the TAP
    // SmolVM gave that IP).
    let mut named: BTreeMap<String, BTreeSet<Project>> = BTreeMap::new();
    let keys = ix
        .rules_by_tap
        .keys()
        .chain(ix.table_by_tap.keys())
        .chain(ix.elems_by_tap.keys());
    for &(p, tap) in keys {
        named.entry(tap.to_string()).or_default().insert(p);
    }
    for &(p, ip) in ix.elems_by_ip.keys().filter(|k| !claimed.ips.contains(k)) {
        if let Some(tap) = tap_for_guest_ip(ip) {
            named.entry(tap).or_default().insert(p);
        }
    }
    for (tap, projects) in named {
        let projects: Vec<Project> = projects
            .into_iter()
            .filter(|&p| !claimed.by.contains(&(p, tap.as_str())) && !taken.contains(&(p, tap.clone())))
            .collect();
        if projects.is_empty() {
            continue;
        }
        if let Some(why) = tenants.taps.get(tap.as_str()) {
            inv.warnings
                .push(format!("{tap}: {why}, not this run's; left alone"));
            if !tenants.held.contains(&tap) {
                inv.kept += 1;
            }
            inv.kept_projects.extend(projects);
            continue;
        }
        let owner = claimed.any.get(tap.as_str());
        let link_free = owner.is_none() && !ties.contains_key(tap.as_str());
        let mut vm = Vm {
            id: format!("orphan-{tap}"),
            projects: projects.clone(),
            rowless: true,
            tap_names: if link_free { vec![tap.clone()] } else { Vec::new() },
            ..Vm::default()
        };
        attach_links(&mut vm, obs, ix, &mut inv.warnings);
        attach_tap_objects(&mut vm, std::slice::from_ref(&tap), ix);
        let ips: BTreeSet<[u8; 4]> = guest_ip_for_tap(&tap).into_iter().collect();
        attach_elems_by_ip(&mut vm, &ips, &claimed.ips, ix);
        let claims = Claims {
            ips: ips.difference(&claimed.any_ips).copied().collect(),
            ..Claims::default()
        };
        attach_claims(&mut vm, &claims, &obs.data_dirs, ix);
        // A TAP SmolVM made for a user whose data dir this run did not read (root's
        // periodic run, and Alice's stopped VM): that DB may well have it.
        if let Some(owner) = vm
            .taps
            .iter()
            .find_map(|&li| obs.links[li].tun_owner)
            .filter(|&u| u != 0 && !obs.dir_owners.values().any(|&o| o == u))
        {
            inv.warnings.push(format!(
                "{tap}: made for uid {owner}, whose data dir this run did not read (no row \
                 of it can be seen); left alone (run cleanup as that user, or under sudo from it)"
            ));
            inv.kept += 1;
            inv.kept_projects.extend(projects);
            continue;
        }
        // A claim file a live SDK process holds: its VM lives, though no row names it.
        let held_claim = vm.files.iter().any(|f| obs.held_locks.contains(&f.path()));
        if vm.taps.iter().any(|&li| obs.links[li].carrier) || held_claim {
            inv.warnings.push(format!(
                "{tap}: a live process holds this TAP though no state row names it; left alone"
            ));
            inv.kept += 1;
            inv.kept_projects.extend(projects);
            continue;
        }
        if let Some((by, id)) = owner {
            let titles: Vec<&str> = projects.iter().map(|p| p.title()).collect();
            inv.warnings.push(format!(
                "{tap}: {} objects for it belong to no {} VM (a VM that is gone left them); they \
                 go, and the TAP stays with {}'s {id}",
                titles.join(" and "),
                titles.join(" or "),
                by.title()
            ));
        }
        vm.stale = Some(Stale::TapNoRow);
        inv.vms.push(vm);
    }
}

/// A rowless VM is stale unless something shows it alive: its VMM (which `--all` may
/// stop), or a served socket / a TAP held open by a process we cannot identify.
pub(super) fn judge_rowless(vm: &mut Vm, obs: &Observed) {
    let life = signs_of_life(vm, obs, &Whose::any(), |_| false);
    // A held create lock belongs to the create in progress, never to us.
    vm.files.retain(|f| !obs.held_locks.contains(&f.path()));
    if let Some(v) = vm.vmms.first() {
        vm.live = Some(Life::Vmm(v.pid));
        return;
    }
    // Its VMM is exiting: what it still holds is its own, and the run waits for it.
    if let Some(v) = vm.exiting.first() {
        vm.stale = Some(Stale::Exiting(v.pid));
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

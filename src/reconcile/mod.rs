//! Pure: turns what was observed (rows, processes, links, rules, files) into one entry
//! per VM id with the resources that are provably that VM's, and decides which VMs are
//! stale. No I/O here, so every rule is unit-tested without root.
//!
//! A process is a VM's VMM only when its command line names the VM by a path of SmolVM's
//! (API or QMP socket, disk), it runs in our view of the host, and it started no later
//! than the row was last written; anything else at a recorded pid is someone else's
//! process that reused the pid.

mod network;
mod rowless;
mod rows;
mod tenants;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use crate::model::{
    ElemMeaning, FileRef, Inventory, Observed, ProcInfo, Project, Role, View, Vm, data_file_id,
    forward_file_id, libkrun_config_id, socket_id, valid_tap_name, valid_vm_id,
};

use network::{rule_tap, rule_vm_id};
use rowless::{Held, add_rowless, claimed};
use rows::{judge_life, judge_row_vm, named_ids, out_of_view};
use tenants::Tenants;

/// Slack between a process's start time (from boot time + ticks) and the row's timestamp.
const START_SLACK_SECS: f64 = 1.0;

/// Lookups built once per run, so that judging N VMs costs O(N), not O(N × rules). Every
/// nft object is keyed by the project whose table holds it.
#[derive(Default)]
struct Index<'a> {
    link_by_name: HashMap<&'a str, usize>,
    rules_by_id: BTreeMap<&'a str, Vec<usize>>,
    rules_by_tap: HashMap<(Project, &'a str), Vec<usize>>,
    table_by_tap: HashMap<(Project, &'a str), usize>,
    /// The projects whose rule comments or bridge aliases name each VM id.
    projects_by_id: BTreeMap<&'a str, BTreeSet<Project>>,
    /// Elements of the projects' maps and sets: `allowed_taps` by TAP name, the others by
    /// the guest IP they carry, the port forwards also by host port.
    elems_by_tap: HashMap<(Project, &'a str), Vec<usize>>,
    elems_by_ip: HashMap<(Project, [u8; 4]), Vec<usize>>,
    elems_by_port: HashMap<(Project, u16), Vec<usize>>,
    /// Live (non-zombie) VMM processes by the one VM id each names.
    vmms_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live VMMs and sidecars whose view of the host could not be read, by the one VM id
    /// each names: cannot tell whose, so what they name is left alone.
    uninspected_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live VMMs in our view started for a data dir that is not this run's (another CI
    /// job's), by the one VM id each names: that data dir's VMs, never ours.
    foreign_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live sidecar processes by the VM they are proven to serve: swtpm by the one VM id
    /// its command line names, a port forward's ssh tunnel by its forwards JSON.
    sidecars_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// The files discovery listed, by the VM id their name carries (retained disks left out).
    files_by_id: HashMap<&'a str, Vec<FileRef>>,
    /// Ids named by a file only SmolVM makes (an `fc-/qmp-/vsock-<id>.sock` socket, a
    /// `locks/<id>.create.lock`), with those files: unlike a log or disk name, these
    /// corroborate a VM, for files of their own owner.
    named_by_file: BTreeMap<&'a str, Vec<FileRef>>,
    /// Bridge TAPs by the VM id their alias (`smolvm-bridge:<id>`, `celesto-bridge:<id>`) names.
    taps_by_alias: BTreeMap<&'a str, Vec<&'a str>>,
    /// The data dirs that hold each `locks/resources/<name>` claim file.
    resource_locks: HashMap<&'a str, Vec<&'a PathBuf>>,
}

impl<'a> Index<'a> {
    fn new(obs: &'a Observed) -> Index<'a> {
        let mut ix = Index {
            link_by_name: obs
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| (l.name.as_str(), i))
                .collect(),
            ..Index::default()
        };
        ix.add_files(obs);
        ix.add_network(obs);
        ix.add_tunnels(obs);
        // Another container's VMM names ids of its own; one we cannot inspect may be
        // anyone's: neither is ever a VM of ours, and the latter keeps what it names.
        for p in obs.vmms.iter().filter(|p| !p.is_zombie()) {
            let ids = named_ids(&p.cmdline, &obs.socket_dir, &obs.data_dirs);
            if ids.len() == 1
                && let Some(id) = ids.into_iter().next()
            {
                let by_role = match (&p.view, p.role) {
                    (View::Elsewhere(_), _) | (_, None) => continue,
                    (View::Unknown(_), _) => &mut ix.uninspected_by_id,
                    (View::Ours, Some(Role::Vmm)) if p.home.as_ref().is_some_and(|h| !h.ours) => {
                        &mut ix.foreign_by_id
                    }
                    (View::Ours, Some(Role::Vmm)) => &mut ix.vmms_by_id,
                    (View::Ours, Some(Role::Sidecar)) => &mut ix.sidecars_by_id,
                };
                by_role.entry(id).or_default().push(p);
            }
        }
        ix
    }

    /// The `ssh -L` tunnels of the VMs' port forwards: the process at a pid a forwards
    /// JSON records is the VM's sidecar when it is `ssh` forwarding exactly that port,
    /// started no later than the JSON was written (else the pid was reused), runs in our
    /// view, and belongs to the user who wrote the JSON in their own forwards dir (a JSON
    /// anyone may write names anyone's pid; its mtime is its writer's to set).
    fn add_tunnels(&mut self, obs: &'a Observed) {
        let records = obs
            .forwards
            .iter()
            .flat_map(|fl| fl.records.iter().filter(|r| fl.owner == Some(r.owner)));
        for r in records {
            for f in &r.forwards {
                let Some(p) = f.pid.and_then(|pid| obs.procs.get(&pid)) else {
                    continue;
                };
                let spec = format!("127.0.0.1:{}:127.0.0.1:{}", f.host_port, f.guest_port);
                let ssh = p
                    .cmdline
                    .first()
                    .is_some_and(|a| a.rsplit('/').next() == Some("ssh"));
                let forwarding = p.cmdline.windows(2).any(|w| w[0] == "-L" && w[1] == spec);
                let theirs = p.uid == r.owner && p.view == View::Ours;
                if ssh
                    && forwarding
                    && theirs
                    && !p.is_zombie()
                    && p.start_unix <= r.written + START_SLACK_SECS
                {
                    self.sidecars_by_id.entry(r.id.clone()).or_default().push(p);
                }
            }
        }
    }

    /// Sockets, logs, disks, locks, firmware directories, known-hosts files, forwards
    /// state and claim files, by VM id.
    fn add_files(&mut self, obs: &'a Observed) {
        let ix = self;
        for fl in &obs.forwards {
            for n in &fl.names {
                if let Some(id) = forward_file_id(n) {
                    ix.files_by_id
                        .entry(id)
                        .or_default()
                        .push(FileRef::new(&fl.dir, n.as_str()));
                }
            }
        }
        for n in &obs.socket_names {
            if let Some(id) = socket_id(n).or_else(|| libkrun_config_id(n)) {
                let f = FileRef::new(&obs.socket_dir, n.as_str());
                ix.files_by_id.entry(id).or_default().push(f.clone());
                ix.named_by_file.entry(id).or_default().push(f);
            }
        }
        for d in &obs.data_listing {
            for n in &d.resource_locks {
                ix.resource_locks.entry(n.as_str()).or_default().push(&d.dir);
            }
            let retained: HashSet<&str> = d
                .disks
                .iter()
                .filter_map(|n| n.strip_suffix(".retained"))
                .collect();
            for (sub, names) in d.by_sub() {
                for n in names {
                    let Some(id) = data_file_id(sub, n) else { continue };
                    let f = match sub {
                        "" => FileRef::new(&d.dir, n.as_str()),
                        "firmware" => FileRef::tree(&d.dir, format!("firmware/{n}")),
                        // A disk SmolVM marked to keep (`<disk>.retained`, newer releases)
                        // stays, and so does its companion.
                        "disks"
                            if retained.contains(
                                n.split_once(".create-backup-")
                                    .map_or(n.as_str(), |(disk, _)| disk),
                            ) =>
                        {
                            continue;
                        }
                        _ => FileRef::new(&d.dir, format!("{sub}/{n}")),
                    };
                    if sub == "locks" {
                        ix.named_by_file.entry(id).or_default().push(f.clone());
                    }
                    ix.files_by_id.entry(id).or_default().push(f);
                }
            }
        }
    }

    /// Rules, policy tables, elements and bridge aliases, by the VM, TAP, IP or port they
    /// name, each within its project.
    fn add_network(&mut self, obs: &'a Observed) {
        let ix = self;
        for l in obs.links.iter().filter(|l| l.is_tap() && valid_tap_name(&l.name)) {
            let Some(alias) = l.alias.as_deref() else { continue };
            for p in Project::ALL {
                if let Some(id) = alias
                    .strip_prefix(p.names().bridge_alias)
                    .filter(|id| valid_vm_id(id))
                {
                    ix.taps_by_alias.entry(id).or_default().push(&l.name);
                    ix.projects_by_id.entry(id).or_default().insert(p);
                }
            }
        }
        for (i, r) in obs.rules.iter().enumerate() {
            let (Some(c), Some(table_project)) = (r.comment.as_deref(), r.project()) else {
                continue;
            };
            // A comment counts only in its own project's table.
            if let Some((p, id)) = rule_vm_id(c).filter(|(p, _)| *p == table_project) {
                ix.rules_by_id.entry(id).or_default().push(i);
                ix.projects_by_id.entry(id).or_default().insert(p);
            } else if let Some(key) = rule_tap(c).filter(|(p, _)| *p == table_project) {
                ix.rules_by_tap.entry(key).or_default().push(i);
            }
        }
        for (i, t) in obs.tables.iter().enumerate() {
            if let Some(key) = Project::of_policy_table(t.family, &t.name) {
                ix.table_by_tap.insert(key, i);
            }
        }
        for (i, e) in obs.elems.iter().enumerate() {
            let Some(p) = e.project() else { continue };
            match e.meaning() {
                ElemMeaning::Tap(_) => {
                    // The name as the element holds it, NUL padding cut.
                    let end = e.key.iter().position(|&b| b == 0).unwrap_or(e.key.len());
                    if let Ok(tap) = std::str::from_utf8(&e.key[..end]) {
                        ix.elems_by_tap.entry((p, tap)).or_default().push(i);
                    }
                }
                ElemMeaning::Guest { ip, .. } => ix.elems_by_ip.entry((p, ip)).or_default().push(i),
                ElemMeaning::Forward { port, ip, .. } => {
                    ix.elems_by_ip.entry((p, ip)).or_default().push(i);
                    ix.elems_by_port.entry((p, port)).or_default().push(i);
                }
                ElemMeaning::Other => {}
            }
        }
    }
}

/// Builds the inventory: rows first (DB order), then VM ids that only the host shows
/// (sorted), then TAPs that only a SmolVM rule names (`orphan-<tap>`, sorted).
pub fn inventory(obs: &Observed) -> Inventory {
    let ix = Index::new(obs);
    let mut inv = Inventory::default();
    let by_id = add_rows(&mut inv, obs);
    for vm in &mut inv.vms {
        judge_row_vm(vm, obs, &ix, &mut inv.warnings);
    }
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
    for vm in &mut inv.vms {
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

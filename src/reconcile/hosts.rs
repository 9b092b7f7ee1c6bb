//! Rows in a DB that other hosts share (SmolVM's PostgreSQL): no row says which host
//! it is of, so a row is this host's only when something on this host names its VM by
//! its id: its VMM (or a VMM we cannot judge), a sidecar, its socket, log, disk, lock or
//! forwards file (not on a network filesystem other hosts write to too), a rule whose
//! comment carries the id, a bridge TAP whose alias does. Any other row is another
//! host's, or cannot be told: never changed, its pid never judged or signalled.
//!
//! A TAP or an nft element named only by the pool's TAP name or guest IP is no proof:
//! SmolVM's own `cleanup --all` on one host deletes every host's rows, the pool then
//! hands those names out again, and another host's new VM would look like this host's
//! leftover. Such a row is said to be "cannot tell", and its TAP and elements are kept.

use super::Index;
use crate::model::{Inventory, Observed, Refusal, Vm};

/// Sets `other_host` on every VM whose rows are all in shared DBs and that nothing here
/// names, and lists them in `inv.other_hosts`.
pub(super) fn leave_other_hosts(inv: &mut Inventory, obs: &Observed, ix: &Index<'_>) {
    if obs.shared_dbs.is_empty() {
        return;
    }
    for vm in &mut inv.vms {
        let shared = !vm.rows.is_empty() && vm.rows.iter().all(|&r| obs.shared_dbs.contains(&obs.rows[r].db));
        if !shared || names_here(vm, obs, ix) {
            continue;
        }
        let weak = weak_traces(vm, obs);
        if !weak.is_empty() {
            inv.warnings.push(format!(
                "{}: its row is in a DB other hosts share, and {} {} here, but nothing here names \
                 the VM itself (no VMM, socket, log, disk or rule of its own): cannot tell whether \
                 it is this host's, so it is left alone",
                vm.shown(),
                weak.join(", "),
                if weak.len() > 1 { "are" } else { "is" }
            ));
        }
        vm.other_host = true;
        vm.stale = None;
        vm.mark.clear();
        vm.refuse = None;
        vm.vmms.clear();
        vm.exiting.clear();
        vm.sidecars.clear();
        vm.files.clear();
        inv.other_hosts.push(vm.shown());
    }
}

/// Does anything on this host name this VM by its id?
fn names_here(vm: &Vm, obs: &Observed, ix: &Index<'_>) -> bool {
    let id = vm.id.as_str();
    let local_file = vm
        .files
        .iter()
        .any(|f| !obs.remote_dirs.iter().any(|d| f.root.starts_with(d)));
    let project_names = |found: bool| {
        found
            && ix
                .projects_by_id
                .get(id)
                .is_some_and(|ps| vm.projects.iter().any(|p| ps.contains(p)))
    };
    !vm.vmms.is_empty()
        || !vm.exiting.is_empty()
        || !vm.sidecars.is_empty()
        || matches!(
            vm.refuse,
            Some(Refusal::OtherView(..) | Refusal::Ambiguous(_) | Refusal::StartedLate(_))
        )
        || local_file
        || project_names(ix.rules_by_id.contains_key(id))
        || project_names(ix.taps_by_alias.contains_key(id))
}

/// What of this VM's is here by name only: its TAP, its elements, its per-TAP table.
fn weak_traces(vm: &Vm, obs: &Observed) -> Vec<String> {
    let mut out: Vec<String> = vm
        .taps
        .iter()
        .map(|&li| format!("TAP {}", obs.links[li].name))
        .collect();
    if !vm.elems.is_empty() || !vm.rules.is_empty() || !vm.tables.is_empty() {
        out.push("nft objects of its TAP or guest IP".into());
    }
    out
}

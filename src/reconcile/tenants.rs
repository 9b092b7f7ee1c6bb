//! Other data dirs' VMs on this host: parallel CI jobs on one runner share `/tmp`, the
//! TAP pool and the nft tables, but each has its own `SMOLVM_DATA_DIR`. A VMM started for
//! another data dir (its disk path, its log, its environment say so) and a claim file a
//! live process holds in another data dir are that data dir's VM: its id, its TAP and the
//! TAP's per-TAP objects are never this run's, whatever else names them.

use std::collections::{BTreeMap, BTreeSet};

use super::Index;
use super::network::{rule_tap, tap_for_guest_ip};
use crate::model::{ElemMeaning, Observed, Project, Role, View, Vm, parse_ipv4, valid_tap_name};

/// What other data dirs' live VMs hold, each with why (for stderr).
#[derive(Default)]
pub(super) struct Tenants {
    /// VM ids their VMMs name.
    pub ids: BTreeMap<String, String>,
    /// TAPs their VMMs hold open or their claim files claim (by name or by the guest IP
    /// SmolVM gives that TAP).
    pub taps: BTreeMap<String, String>,
    /// Of those, the TAPs a VMM holds (its VM is counted kept by its id already).
    pub held: BTreeSet<String>,
}

impl Tenants {
    pub(super) fn of(obs: &Observed, ix: &Index<'_>) -> Tenants {
        let mut t = Tenants::default();
        for (id, procs) in &ix.foreign_by_id {
            if let Some(why) = procs.iter().find_map(|p| {
                let h = p.home.as_ref()?;
                Some(format!(
                    "VMM pid {} is of data dir {} ({})",
                    p.pid,
                    h.dir.display(),
                    h.by
                ))
            }) {
                t.ids.insert(id.clone(), why);
            }
        }
        let vmms = obs.vmms.iter().filter(|p| {
            !p.is_zombie()
                && p.view == View::Ours
                && p.role == Some(Role::Vmm)
                && p.home.as_ref().is_some_and(|h| !h.ours)
        });
        for p in vmms {
            let Some(h) = &p.home else { continue };
            for tap in p.taps.iter().filter(|t| valid_tap_name(t)) {
                t.held.insert(tap.clone());
                t.taps.entry(tap.clone()).or_insert_with(|| {
                    format!(
                        "held by VMM pid {} of data dir {} ({})",
                        p.pid,
                        h.dir.display(),
                        h.by
                    )
                });
            }
        }
        for c in &obs.foreign_claims {
            let Some((kind, value)) = c.name.strip_suffix(".lock").and_then(|n| n.split_once('-')) else {
                continue;
            };
            let tap = match kind {
                "tap" => Some(value.to_string()).filter(|t| valid_tap_name(t)),
                "ip" => parse_ipv4(value).and_then(tap_for_guest_ip),
                _ => None,
            };
            if let Some(tap) = tap {
                t.taps.entry(tap).or_insert_with(|| {
                    format!(
                        "claimed by pid {} in data dir {} ({})",
                        c.pid,
                        c.dir.display(),
                        c.name
                    )
                });
            }
        }
        t
    }

    /// Leaves `vm` none of the TAPs other data dirs' VMs hold, nor their per-TAP objects
    /// (policy table, `allowed_taps` element, elements of the TAP's guest IP, rules that
    /// name the TAP), saying so once per TAP. A rule that names the VM by id stays its own.
    pub(super) fn leave(&self, vm: &mut Vm, obs: &Observed, warnings: &mut Vec<String>) {
        if self.taps.is_empty() {
            return;
        }
        let theirs = |tap: &str| self.taps.contains_key(tap);
        let left: Vec<String> = vm.tap_names.iter().filter(|t| theirs(t)).cloned().collect();
        vm.tap_names.retain(|t| !theirs(t));
        vm.taps.retain(|&li| !theirs(&obs.links[li].name));
        vm.tables.retain(|&ti| {
            let t = &obs.tables[ti];
            Project::of_policy_table(t.family, &t.name).is_none_or(|(_, tap)| !theirs(tap))
        });
        vm.elems
            .retain(|&ei| elem_tap(obs, ei).is_none_or(|t| !theirs(&t)));
        vm.rules.retain(|&ri| {
            let r = &obs.rules[ri];
            r.comment
                .as_deref()
                .and_then(rule_tap)
                .is_none_or(|(_, tap)| !theirs(tap))
        });
        for tap in &left {
            if let Some(why) = self.taps.get(tap) {
                warnings.push(format!(
                    "{}: its TAP {tap} is {why}, not this run's; the TAP and its objects are left alone",
                    vm.shown()
                ));
            }
        }
    }
}

/// The TAP an element is for: the one it names, or the one SmolVM gives the guest IP it
/// carries.
fn elem_tap(obs: &Observed, ei: usize) -> Option<String> {
    match obs.elems[ei].meaning() {
        ElemMeaning::Tap(tap) => Some(tap),
        ElemMeaning::Guest { ip, .. } | ElemMeaning::Forward { ip, .. } => tap_for_guest_ip(ip),
        ElemMeaning::Other => None,
    }
}

//! Pure: which VMs are targets, in which order, and which of their resources may be
//! deleted. Stale VMs are always targets; `--prefix` adds VMs by id; `--all` takes every
//! VM in the state DB's order. A resource that a VM outside the targets also claims (two
//! rows naming one TAP) is never deleted.

use std::collections::BTreeSet;

use crate::model::Link;
use crate::reconcile::{Inventory, Vm};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub all: bool,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Stale VM ids, sorted (the `Reconciled stale VMs:` line).
    pub stale: Vec<String>,
    /// Targets in output order, each trimmed to what it may delete.
    pub targets: Vec<Vm>,
    pub warnings: Vec<String>,
}

/// `links` is the dump the inventory's link indexes point into.
pub fn build(inv: &Inventory, links: &[Link], sel: &Selection) -> Plan {
    let mut stale: Vec<String> = inv
        .vms
        .iter()
        .filter(|v| v.stale.is_some())
        .map(|v| v.id.clone())
        .collect();
    stale.sort();
    let mut chosen: Vec<usize> = (0..inv.vms.len())
        .filter(|&i| {
            let v = &inv.vms[i];
            sel.all || v.stale.is_some() || v.id.starts_with(&sel.prefix)
        })
        .collect();
    if !sel.all {
        chosen.sort_by(|&a, &b| inv.vms[a].id.cmp(&inv.vms[b].id));
    }
    let keep: Vec<&Vm> = (0..inv.vms.len())
        .filter(|i| !chosen.contains(i))
        .map(|i| &inv.vms[i])
        .collect();
    let kept_taps: BTreeSet<&str> = keep
        .iter()
        .flat_map(|v| v.tap_names.iter().map(String::as_str))
        .collect();
    let kept_rules: BTreeSet<usize> = keep.iter().flat_map(|v| v.rules.iter().copied()).collect();
    let kept_tables: BTreeSet<usize> = keep.iter().flat_map(|v| v.tables.iter().copied()).collect();
    let mut plan = Plan {
        stale,
        ..Plan::default()
    };
    for i in chosen {
        let mut vm = inv.vms[i].clone();
        let shared: Vec<String> = vm
            .tap_names
            .iter()
            .filter(|t| kept_taps.contains(t.as_str()))
            .cloned()
            .collect();
        if !shared.is_empty() {
            plan.warnings.push(format!(
                "{}: TAP {} is also claimed by a VM that is not a target; it is kept",
                vm.id,
                shared.join(", ")
            ));
            vm.tap_names.retain(|t| !shared.contains(t));
            vm.taps
                .retain(|&li| links.get(li).is_some_and(|l| vm.tap_names.contains(&l.name)));
        }
        vm.rules.retain(|r| !kept_rules.contains(r));
        vm.tables.retain(|t| !kept_tables.contains(t));
        plan.targets.push(vm);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, stale: bool) -> Vm {
        Vm {
            id: id.into(),
            stale: stale.then(|| "gone".to_string()),
            ..Vm::default()
        }
    }

    fn ids(p: &Plan) -> Vec<&str> {
        p.targets.iter().map(|v| v.id.as_str()).collect()
    }

    fn sel(all: bool, prefix: &str) -> Selection {
        Selection {
            all,
            prefix: prefix.into(),
        }
    }

    #[test]
    fn default_is_stale_plus_prefix_sorted() {
        let inv = Inventory {
            vms: vec![
                vm("vm-b", false),
                vm("keepme", false),
                vm("web", true),
                vm("vm-a", false),
            ],
            warnings: vec![],
        };
        let p = build(&inv, &[], &sel(false, "vm-"));
        assert_eq!(ids(&p), ["vm-a", "vm-b", "web"]);
        assert_eq!(p.stale, ["web"]);
        let p = build(&inv, &[], &sel(false, "kee"));
        assert_eq!(ids(&p), ["keepme", "web"]);
    }

    #[test]
    fn all_keeps_db_order() {
        let inv = Inventory {
            vms: vec![vm("vm-b", false), vm("keepme", false), vm("vm-a", true)],
            warnings: vec![],
        };
        assert_eq!(
            ids(&build(&inv, &[], &sel(true, "zzz"))),
            ["vm-b", "keepme", "vm-a"]
        );
    }

    #[test]
    fn nothing_to_do() {
        let inv = Inventory {
            vms: vec![vm("keepme", false)],
            warnings: vec![],
        };
        assert!(build(&inv, &[], &sel(false, "vm-")).targets.is_empty());
    }

    #[test]
    fn shared_resources_stay_with_the_kept_vm() {
        let mut a = vm("vm-a", true);
        a.tap_names = vec!["tap5".into(), "tap6".into()];
        a.taps = vec![0, 1];
        a.rules = vec![0, 1];
        let mut k = vm("keepme", false);
        k.tap_names = vec!["tap5".into()];
        k.rules = vec![0];
        let inv = Inventory {
            vms: vec![a, k],
            warnings: vec![],
        };
        let links: Vec<Link> = ["tap5", "tap6"]
            .iter()
            .enumerate()
            .map(|(i, n)| Link {
                index: i as i32 + 10,
                name: n.to_string(),
                kind: Some("tun".into()),
                tun_type: Some(2),
                group: 0,
                alias: None,
                carrier: false,
            })
            .collect();
        let p = build(&inv, &links, &sel(false, "vm-"));
        assert_eq!(p.targets[0].tap_names, ["tap6"]);
        assert_eq!(p.targets[0].taps, [1]);
        assert_eq!(p.targets[0].rules, [1]);
        assert_eq!(p.warnings.len(), 1);
    }
}

//! Pure: which VMs are targets, in which order, and which of their resources may be
//! deleted. Stale VMs are always targets; `--prefix` adds VMs by id; `--all` takes every
//! VM in the state DB's order. A resource that a VM outside the targets also claims (two
//! rows naming one TAP, a SmolVM and a Celesto VM given the same TAP) is never deleted.
//!
//! About half of this file is its unit tests, kept beside the rules they pin.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Chain, FileRef, Inventory, NftState, Observed, Op, Plan, Project, RowRef, SHARED_SETS, TapRef, Target, Vm,
};

/// The base chains each project creates in its two shared tables, in the same order.
const BASE_CHAINS: [&[&str]; 2] = [&["prerouting", "output", "postrouting"], &["forward"]];

/// The batch that removes a project's shared nft objects once it has no VM left: its
/// shared rules (`smolvm:global:*`, `smolvm:map:*`; `celesto:…` for Celesto), then its
/// maps and sets (0.0.8+), then its base chains, then its two tables, each only if
/// empty (so anything someone else added keeps them all). Refused when a rule without
/// the project's comment, a VM's own rule, an element of a map or set, or a chain or set
/// the project did not create is still there.
pub fn shared_teardown(now: &NftState, project: Project) -> Result<Vec<Op>, String> {
    let (tables, chains, rules) = (&now.tables, &now.chains, &now.rules);
    let prefix = project.names().comment;
    let shared = |c: &str| {
        c.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with("global:") || rest.starts_with("map:"))
    };
    let mut ops = Vec::new();
    let mut drop_sets = Vec::new();
    let mut drop_chains = Vec::new();
    let mut drops = Vec::new();
    for ((family, name), base) in project.shared_tables().into_iter().zip(BASE_CHAINS) {
        if !tables.iter().any(|t| t.family == family && t.name == name) {
            continue;
        }
        for r in rules.iter().filter(|r| r.family == family && r.table == name) {
            match r.comment.as_deref() {
                Some(c) if shared(c) => {
                    ops.push(Op::for_rule(r));
                }
                Some(c) if c.starts_with(prefix) => {
                    return Err(format!("{name} still holds a VM's rule ({c})"));
                }
                _ => {
                    return Err(format!(
                        "{name} holds a rule that is not SmolVM's (handle {})",
                        r.handle
                    ));
                }
            }
        }
        for set in now
            .sets
            .iter()
            .filter(|st| st.family == family && st.table == name)
        {
            if !SHARED_SETS.contains(&set.name.as_str()) {
                return Err(format!(
                    "{name} holds set {} that {} did not create",
                    set.name,
                    project.title()
                ));
            }
            if now
                .elems
                .iter()
                .any(|e| e.family == family && e.table == name && e.set == set.name)
            {
                return Err(format!("{name} set {} still holds elements", set.name));
            }
            drop_sets.push(Op::Set {
                family,
                table: name.to_string(),
                name: set.name.clone(),
            });
        }
        for c in chains_in(chains, family, name) {
            if !base.contains(&c.name.as_str()) {
                return Err(format!(
                    "{name} holds chain {} that {} did not create",
                    c.name,
                    project.title()
                ));
            }
            drop_chains.push(Op::Chain {
                family,
                table: name.to_string(),
                name: c.name.clone(),
            });
        }
        drops.push(Op::Table {
            family,
            name: name.to_string(),
            recursive: false,
        });
    }
    ops.extend(drop_sets);
    ops.extend(drop_chains);
    ops.extend(drops);
    Ok(ops)
}

fn chains_in<'c>(chains: &'c [Chain], family: u8, table: &'c str) -> impl Iterator<Item = &'c Chain> {
    chains
        .iter()
        .filter(move |c| c.family == family && c.table == table)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub all: bool,
    pub prefix: String,
    /// `--older-than`: VMs whose row is younger (seconds) are left alone.
    pub min_age: Option<f64>,
    /// Now, in Unix seconds (for `min_age`).
    pub now: f64,
}

/// `obs` is what the inventory's indexes point into; the plan resolves them.
pub fn build(inv: &Inventory, obs: &Observed, sel: &Selection) -> Plan {
    let links = &obs.links;
    // --older-than: a VM whose row is younger is left alone entirely, stale or not.
    // A row whose creation time cannot be read has an unknown age, and unknown is never
    // old. (A VM with no row has no creation time at all: it is not filtered.)
    let young = |v: &Vm| match (sel.min_age, v.created_unix) {
        (Some(age), Some(created)) => sel.now - created < age,
        (Some(_), None) => !v.rowless,
        (None, _) => false,
    };
    let mut stale: Vec<String> = inv
        .vms
        .iter()
        .filter(|v| v.stale.is_some() && !young(v))
        .map(Vm::shown)
        .collect();
    stale.sort();
    let mut chosen: Vec<usize> = (0..inv.vms.len())
        .filter(|&i| {
            let v = &inv.vms[i];
            // A rowless VM that is alive, or a VM whose VMM this pid namespace cannot see,
            // is only ever taken by --all.
            let by_prefix = !v.rowless && !v.out_of_view && v.id.starts_with(&sel.prefix);
            let wanted = sel.all || v.stale.is_some() || by_prefix;
            // Another host's, or cannot be told: never this run's.
            wanted && !young(v) && !v.other_host
        })
        .collect();
    if !sel.all {
        chosen.sort_by(|&a, &b| {
            let (a, b) = (&inv.vms[a], &inv.vms[b]);
            (&a.id, &a.label).cmp(&(&b.id, &b.label))
        });
    }
    let mut is_target = vec![false; inv.vms.len()];
    for &i in &chosen {
        is_target[i] = true;
    }
    let keep: Vec<&Vm> = (0..inv.vms.len())
        .filter(|&i| !is_target[i])
        .map(|i| &inv.vms[i])
        .collect();
    // The TAPs of the VMs that stay, and those other data dirs' rows have (their VMs
    // are not this run's to judge).
    let kept_taps: BTreeSet<&str> = keep
        .iter()
        .flat_map(|v| v.tap_names.iter().map(String::as_str))
        .chain(
            obs.other_rows
                .iter()
                .flat_map(|r| r.taps.iter().map(String::as_str)),
        )
        .collect();
    // Files two VMs share (one id in two DBs: its socket in the shared socket dir, or
    // both DBs in one legacy data dir) stay while either VM does.
    let kept_files: BTreeSet<&FileRef> = keep.iter().flat_map(|v| &v.files).collect();
    let kept_rules: BTreeSet<usize> = keep.iter().flat_map(|v| v.rules.iter().copied()).collect();
    let kept_tables: BTreeSet<usize> = keep.iter().flat_map(|v| v.tables.iter().copied()).collect();
    let kept_elems: BTreeSet<usize> = keep.iter().flat_map(|v| v.elems.iter().copied()).collect();
    let mut groups: Vec<u32> = links.iter().map(|l| l.group).collect();
    groups.sort_unstable();
    groups.dedup();
    // Another host's VM keeps a project's shared tables only while something of it is here.
    let here = |v: &&&Vm| {
        !(v.other_host
            && v.taps.is_empty()
            && v.rules.is_empty()
            && v.elems.is_empty()
            && v.tables.is_empty())
    };
    let mut kept_projects: BTreeSet<Project> = keep
        .iter()
        .filter(here)
        .flat_map(|v| v.projects.iter().copied())
        .collect();
    kept_projects.extend(&inv.kept_projects);
    let mut plan = Plan {
        stale,
        remaining: keep.len() + inv.kept,
        kept_projects,
        link_groups: groups,
        ..Plan::default()
    };
    let mut free = free_claims_for(inv, &chosen, &is_target);
    for i in chosen {
        let mut vm = inv.vms[i].clone();
        vm.files.extend(free.remove(&i).unwrap_or_default());
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
        vm.files.retain(|f| !kept_files.contains(f));
        vm.rules.retain(|r| !kept_rules.contains(r));
        vm.tables.retain(|t| !kept_tables.contains(t));
        vm.elems.retain(|e| !kept_elems.contains(e));
        plan.targets.push(resolve(vm, obs));
    }
    plan
}

/// Free claim files (an SDK VM's whose owner is gone; which one cannot be told) go with
/// the first target with no row that has files in their data dir, and only when every
/// VM with no row there is a target: while one stays, any of them may be its.
fn free_claims_for(inv: &Inventory, chosen: &[usize], is_target: &[bool]) -> BTreeMap<usize, Vec<FileRef>> {
    let mut out: BTreeMap<usize, Vec<FileRef>> = BTreeMap::new();
    if inv.free_claims.is_empty() {
        return out;
    }
    // Per data dir: the first target with no row that has files there, unless a VM with no
    // row that stays has files there too.
    let mut owner: BTreeMap<&std::path::Path, Option<usize>> = BTreeMap::new();
    let rowless = |i: usize| inv.vms[i].rowless;
    for i in (0..inv.vms.len()).filter(|&i| rowless(i) && !is_target[i]) {
        for f in &inv.vms[i].files {
            owner.insert(&f.root, None);
        }
    }
    for &i in chosen.iter().filter(|&&i| rowless(i)) {
        for f in &inv.vms[i].files {
            owner.entry(&f.root).or_insert(Some(i));
        }
    }
    for f in &inv.free_claims {
        if let Some(Some(i)) = owner.get(f.root.as_path()) {
            out.entry(*i).or_default().push(f.clone());
        }
    }
    out
}

/// The target apply runs: the VM's resources by name, handle and path.
fn resolve(vm: Vm, obs: &Observed) -> Target {
    let row = |ri: usize| {
        let r = &obs.rows[ri];
        RowRef {
            db: r.db,
            id: r.id.clone(),
            updated_at: r.updated_at.clone(),
        }
    };
    let mut nft: Vec<Op> = vm.rules.iter().map(|&ri| Op::for_rule(&obs.rules[ri])).collect();
    // A per-TAP policy table holds only that TAP's chains and rules.
    nft.extend(vm.tables.iter().map(|&ti| Op::Table {
        family: obs.tables[ti].family,
        name: obs.tables[ti].name.clone(),
        recursive: true,
    }));
    nft.extend(vm.elems.iter().map(|&ei| Op::for_elem(&obs.elems[ei])));
    Target {
        taps: vm
            .taps
            .iter()
            .map(|&li| TapRef {
                index: obs.links[li].index,
                name: obs.links[li].name.clone(),
            })
            .collect(),
        rows: vm.rows.iter().map(|&ri| row(ri)).collect(),
        marks: vm.mark.iter().map(|&ri| row(ri)).collect(),
        nft,
        id: vm.shown(),
        stale: vm.stale,
        refuse: vm.refuse,
        // An exiting VMM is waited for with the others (signalled too: it is dying anyway).
        vmms: [vm.vmms, vm.exiting, vm.sidecars].concat(),
        tap_names: vm.tap_names,
        files: vm.files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Elem, Link, NFPROTO_INET, NFPROTO_IPV4, Rule, Set, Stale, Table};

    fn vm(id: &str, stale: bool) -> Vm {
        Vm {
            id: id.into(),
            stale: stale.then_some(Stale::NoVmm),
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
            min_age: None,
            now: 0.0,
        }
    }

    #[test]
    fn older_than_spares_young_rows_even_stale_ones() {
        let mut old = vm("vm-old", true);
        old.created_unix = Some(100.0);
        let mut young = vm("vm-young", true);
        young.created_unix = Some(950.0);
        let mut rowless = vm("orphan-tap3", true);
        rowless.rowless = true;
        // A row whose created_at could not be read: its age is unknown, so never old.
        let unknown = vm("vm-unknown", true);
        let inv = Inventory {
            vms: vec![old, young, rowless, unknown],
            ..Inventory::default()
        };
        let s = Selection {
            min_age: Some(600.0),
            now: 1000.0,
            ..sel(true, "vm-")
        };
        let p = build(&inv, &Observed::default(), &s);
        assert_eq!(ids(&p), ["vm-old", "orphan-tap3"]);
        assert_eq!(p.remaining, 2);
        // A VM left alone is not reported as reconciled either.
        assert_eq!(p.stale, ["orphan-tap3", "vm-old"]);
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
            ..Inventory::default()
        };
        let p = build(&inv, &Observed::default(), &sel(false, "vm-"));
        assert_eq!(ids(&p), ["vm-a", "vm-b", "web"]);
        assert_eq!(p.stale, ["web"]);
        let p = build(&inv, &Observed::default(), &sel(false, "kee"));
        assert_eq!(ids(&p), ["keepme", "web"]);
    }

    #[test]
    fn all_keeps_db_order() {
        let inv = Inventory {
            vms: vec![vm("vm-b", false), vm("keepme", false), vm("vm-a", true)],
            ..Inventory::default()
        };
        assert_eq!(
            ids(&build(&inv, &Observed::default(), &sel(true, "zzz"))),
            ["vm-b", "keepme", "vm-a"]
        );
    }

    #[test]
    fn nothing_to_do() {
        let inv = Inventory {
            vms: vec![vm("keepme", false)],
            ..Inventory::default()
        };
        assert!(
            build(&inv, &Observed::default(), &sel(false, "vm-"))
                .targets
                .is_empty()
        );
    }

    #[test]
    fn a_live_rowless_vm_is_taken_only_by_all() {
        let mut live = vm("vm-live", false);
        live.rowless = true;
        let inv = Inventory {
            vms: vec![live, vm("orphan-tap3", true)],
            kept: 1,
            ..Inventory::default()
        };
        let p = build(&inv, &Observed::default(), &sel(false, "vm-"));
        assert_eq!(ids(&p), ["orphan-tap3"]);
        assert_eq!(p.remaining, 2);
        let p = build(&inv, &Observed::default(), &sel(true, "vm-"));
        assert_eq!(ids(&p), ["vm-live", "orphan-tap3"]);
        assert_eq!(p.remaining, 1);
    }

    fn r(family: u8, table: &str, handle: u64, comment: Option<&str>) -> Rule {
        Rule {
            family,
            table: table.into(),
            chain: "c".into(),
            handle,
            comment: comment.map(String::from),
            ipv4: vec![],
        }
    }

    fn chain(family: u8, table: &str, name: &str) -> Chain {
        Chain {
            family,
            table: table.into(),
            name: name.into(),
        }
    }

    fn shared_teardown_smolvm(now: &NftState) -> Result<Vec<Op>, String> {
        shared_teardown(now, Project::SmolVM)
    }

    #[test]
    fn shared_teardown_only_when_nothing_foreign_is_left() {
        let tables = vec![
            Table {
                family: NFPROTO_IPV4,
                name: "smolvm_nat".into(),
            },
            Table {
                family: NFPROTO_INET,
                name: "smolvm_filter".into(),
            },
            Table {
                family: NFPROTO_INET,
                name: "other".into(),
            },
        ];
        let chains = vec![
            chain(NFPROTO_IPV4, "smolvm_nat", "postrouting"),
            chain(NFPROTO_INET, "smolvm_filter", "forward"),
        ];
        let rules = vec![r(
            NFPROTO_IPV4,
            "smolvm_nat",
            4,
            Some("smolvm:global:nat:masquerade:uplink0"),
        )];
        let state = |tables: &[Table], chains: &[Chain], rules: &[Rule]| NftState {
            tables: tables.to_vec(),
            chains: chains.to_vec(),
            rules: rules.to_vec(),
            ..NftState::default()
        };
        let ops = shared_teardown_smolvm(&state(&tables, &chains, &rules)).unwrap();
        assert_eq!(ops.len(), 1 + 2 + 2);
        assert!(matches!(ops[0], Op::Rule { handle: 4, .. }));
        assert!(matches!(&ops[1], Op::Chain { name, .. } if name == "postrouting"));
        assert!(matches!(&ops[4], Op::Table { name, recursive: false, .. } if name == "smolvm_filter"));

        let foreign = [rules.clone(), vec![r(NFPROTO_INET, "smolvm_filter", 9, None)]].concat();
        assert!(shared_teardown_smolvm(&state(&tables, &chains, &foreign)).is_err());
        let vm_rule = vec![r(NFPROTO_INET, "smolvm_filter", 9, Some("smolvm:vm-1:ssh"))];
        assert!(shared_teardown_smolvm(&state(&tables, &chains, &vm_rule)).is_err());
        let extra = [chains.clone(), vec![chain(NFPROTO_INET, "smolvm_filter", "mine")]].concat();
        assert!(shared_teardown_smolvm(&state(&tables, &extra, &rules)).is_err());
        assert!(
            shared_teardown_smolvm(&state(&tables[2..], &[], &[]))
                .unwrap()
                .is_empty()
        );

        // 0.0.36: its maps and sets go in the same batch, after the rules that use them,
        // and only when they are empty; a set SmolVM did not make keeps everything.
        let mut with_sets = state(&tables, &chains, &rules);
        with_sets.sets = vec![
            Set {
                family: NFPROTO_IPV4,
                table: "smolvm_nat".into(),
                name: "dnat_ext".into(),
            },
            Set {
                family: NFPROTO_INET,
                table: "smolvm_filter".into(),
                name: "allowed_taps".into(),
            },
        ];
        let ops = shared_teardown_smolvm(&with_sets).unwrap();
        assert_eq!(ops.len(), 1 + 2 + 2 + 2);
        assert!(matches!(&ops[1], Op::Set { name, .. } if name == "dnat_ext"));
        assert!(matches!(&ops[3], Op::Chain { .. }));
        with_sets.elems = vec![Elem {
            family: NFPROTO_INET,
            table: "smolvm_filter".into(),
            set: "allowed_taps".into(),
            key: b"tap2\0".to_vec(),
            data: None,
        }];
        assert!(
            shared_teardown_smolvm(&with_sets).is_err(),
            "a live VM's element keeps them"
        );
        with_sets.elems.clear();
        with_sets.sets[1].name = "mine".into();
        assert!(shared_teardown_smolvm(&with_sets).is_err());
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
            ..Inventory::default()
        };
        let links: Vec<Link> = ["tap5", "tap6"]
            .iter()
            .enumerate()
            .map(|(i, n)| Link {
                index: i32::try_from(i).unwrap() + 10,
                name: n.to_string(),
                kind: Some("tun".into()),
                tun_type: Some(2),
                group: 0,
                alias: None,
                carrier: false,
                tun_owner: None,
            })
            .collect();
        let obs = Observed {
            links,
            rules: vec![
                r(
                    NFPROTO_INET,
                    "smolvm_filter",
                    3,
                    Some("smolvm:nat:tap:tap5:to:up"),
                ),
                r(
                    NFPROTO_INET,
                    "smolvm_filter",
                    4,
                    Some("smolvm:nat:tap:tap6:to:up"),
                ),
            ],
            ..Observed::default()
        };
        let p = build(&inv, &obs, &sel(false, "vm-"));
        // Resolved to what apply needs: the link by index and name, the rule by handle.
        assert_eq!(p.targets[0].tap_names, ["tap6"]);
        assert_eq!(
            p.targets[0].taps,
            [TapRef {
                index: 11,
                name: "tap6".into()
            }]
        );
        assert_eq!(p.targets[0].nft, [Op::for_rule(&obs.rules[1])]);
        assert_eq!(p.link_groups, [0]);
        assert_eq!(p.warnings.len(), 1);
    }
}

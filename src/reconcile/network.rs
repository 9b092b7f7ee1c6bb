//! Network attribution: which TAPs, rules, policy tables, map and set elements and SDK
//! claim files are a VM's, by its id, its TAP names, its guest IP and its SSH port. The
//! TAP and IP pool is one for both projects, so every nft object is attributed within
//! its own project: a SmolVM row owns SmolVM's elements of its IP, never Celesto's.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::Index;
use crate::model::{ElemMeaning, FileRef, Observed, Project, Row, Vm, valid_tap_name, valid_vm_id};

/// `smolvm:<id>:ssh` and `smolvm:<id>:local:…` (`celesto:…` alike) name a VM.
pub fn rule_vm_id(comment: &str) -> Option<(Project, &str)> {
    let (project, rest) = strip_project(comment)?;
    let mut parts = rest.splitn(3, ':');
    let (id, kind, tail) = (parts.next()?, parts.next()?, parts.next());
    let named = (kind == "ssh" && tail.is_none()) || (kind == "local" && tail.is_some());
    (named && valid_vm_id(id)).then_some((project, id))
}

/// `smolvm:nat:tap:<tap>:to:…` and `smolvm:egress:<tap>:…` (`celesto:…` alike) name a TAP.
pub fn rule_tap(comment: &str) -> Option<(Project, &str)> {
    let (project, rest) = strip_project(comment)?;
    let (egress, rest) = match rest.strip_prefix("egress:") {
        Some(r) => (true, r),
        None => (false, rest.strip_prefix("nat:tap:")?),
    };
    let (tap, tail) = rest.split_once(':')?;
    (valid_tap_name(tap) && (egress || tail.starts_with("to:"))).then_some((project, tap))
}

/// Whose comment it is, and the rest of it.
fn strip_project(comment: &str) -> Option<(Project, &str)> {
    Project::ALL
        .into_iter()
        .find_map(|p| Some((p, comment.strip_prefix(p.names().comment)?)))
}

/// The TAP SmolVM gives a guest IP from its 172.16.0.0/16 pool: `tap<index>` (0.0.5 used
/// the last octet, which is the same number for 172.16.0.N).
pub fn tap_for_guest_ip(ip: [u8; 4]) -> Option<String> {
    let index = u32::from(ip[2]) << 8 | u32::from(ip[3]);
    (ip[0] == 172 && ip[1] == 16 && (2..65535).contains(&index)).then(|| format!("tap{index}"))
}

/// The guest IP SmolVM gives with `tap<index>` (the inverse of `tap_for_guest_ip`).
pub fn guest_ip_for_tap(tap: &str) -> Option<[u8; 4]> {
    let index: u16 = tap.strip_prefix("tap")?.parse().ok()?;
    let [hi, lo] = index.to_be_bytes();
    (index >= 2).then_some([172, 16, hi, lo])
}

/// The TAP links of `vm.tap_names` that are SmolVM's TAPs: a link of kind tun/tap, and
/// for a bridge TAP one whose alias names this VM in one of its projects.
pub(super) fn attach_links(vm: &mut Vm, obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    for tap in &vm.tap_names {
        let Some(&li) = ix.link_by_name.get(tap.as_str()) else {
            continue;
        };
        let l = &obs.links[li];
        let alias_ok = !tap.starts_with("svmb")
            || vm
                .projects
                .iter()
                .any(|p| l.alias.as_deref() == Some(format!("{}{}", p.names().bridge_alias, vm.id).as_str()));
        if l.is_tap() && alias_ok {
            vm.taps.push(li);
        } else {
            warnings.push(format!(
                "{}: link {tap} is not SmolVM's TAP (kind {}); left alone",
                vm.id,
                l.kind.as_deref().unwrap_or("none")
            ));
        }
    }
}

/// Links, rules, tables and elements for `vm.id` and `vm.tap_names`: the rules its own
/// comments name (`smolvm:<id>:…`), and its projects' per-TAP comments, policy tables
/// and `allowed_taps` elements of its TAPs.
pub(super) fn attach_network(vm: &mut Vm, obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    attach_links(vm, obs, ix, warnings);
    // Its own comments, in its projects' tables (a shared id's other VM has the rest).
    vm.rules = ix
        .rules_by_id
        .get(vm.id.as_str())
        .into_iter()
        .flatten()
        .copied()
        .filter(|&ri| obs.rules[ri].project().is_some_and(|p| vm.projects.contains(&p)))
        .collect();
    let taps = vm.tap_names.clone();
    attach_tap_objects(vm, &taps, ix);
}

/// The per-TAP objects of `taps` in the VM's projects: rules that name the TAP, its
/// policy table, its `allowed_taps` element.
pub(super) fn attach_tap_objects(vm: &mut Vm, taps: &[String], ix: &Index<'_>) {
    for &p in &vm.projects {
        for tap in taps {
            let key = (p, tap.as_str());
            vm.rules.extend(ix.rules_by_tap.get(&key).into_iter().flatten());
            vm.tables.extend(ix.table_by_tap.get(&key));
            vm.elems.extend(ix.elems_by_tap.get(&key).into_iter().flatten());
        }
    }
    vm.rules.sort_unstable();
    vm.rules.dedup();
    vm.tables.sort_unstable();
    vm.tables.dedup();
    vm.elems.sort_unstable();
    vm.elems.dedup();
}

/// The elements that carry one of `ips` as a guest IP in the VM's projects (a VM with
/// no row: the IPs its TAPs and rules name), unless a row of that project has that IP:
/// then they are that row's VM's.
pub(super) fn attach_elems_by_ip(
    vm: &mut Vm,
    ips: &BTreeSet<[u8; 4]>,
    row_ips: &BTreeSet<(Project, [u8; 4])>,
    ix: &Index<'_>,
) {
    for &p in &vm.projects {
        for &ip in ips.iter().filter(|&&ip| !row_ips.contains(&(p, ip))) {
            vm.elems
                .extend(ix.elems_by_ip.get(&(p, ip)).into_iter().flatten());
        }
    }
    vm.elems.sort_unstable();
    vm.elems.dedup();
}

/// A VM with rows: in each row's own project, the port forwards of its host port that
/// lead to its guest IP, and the `snat_return`/`fwd_allow` entries of its guest IP and
/// port. A forward of its port to another IP is someone else's: left, with a warning.
pub(super) fn attach_row_elems(
    vm: &mut Vm,
    rows: &[&Row],
    obs: &Observed,
    ix: &Index<'_>,
    warnings: &mut Vec<String>,
) {
    for row in rows {
        let p = row.project;
        let ours_port = |port: u16| row.guest_port.is_none_or(|g| g == port);
        for &ei in row
            .host_port
            .and_then(|port| ix.elems_by_port.get(&(p, port)))
            .into_iter()
            .flatten()
        {
            let e = &obs.elems[ei];
            if let ElemMeaning::Forward { port, ip, guest_port } = e.meaning() {
                if Some(ip) == row.guest_ip && ours_port(guest_port) {
                    vm.elems.push(ei);
                } else {
                    warnings.push(format!(
                        "{}: {} {} maps its port {port} to {}.{}.{}.{}, not to its guest; left alone",
                        vm.id, e.table, e.set, ip[0], ip[1], ip[2], ip[3]
                    ));
                }
            }
        }
        for &ei in row
            .guest_ip
            .and_then(|ip| ix.elems_by_ip.get(&(p, ip)))
            .into_iter()
            .flatten()
        {
            if let ElemMeaning::Guest { port, .. } = obs.elems[ei].meaning()
                && ours_port(port)
            {
                vm.elems.push(ei);
            }
        }
    }
    vm.elems.sort_unstable();
    vm.elems.dedup();
}

/// The values a VM's SDK claim files are named by.
#[derive(Default)]
pub(super) struct Claims {
    pub(super) ips: BTreeSet<[u8; 4]>,
    pub(super) ports: BTreeSet<u16>,
    pub(super) cids: BTreeSet<u32>,
}

/// The SDK's claim files (`locks/resources/{ip,ssh,vsock,tap}-<value>.lock`, 0.0.30+) for
/// a VM's guest IPs, SSH ports, vsock CIDs and TAPs, in `dirs`.
pub(super) fn attach_claims(vm: &mut Vm, values: &Claims, dirs: &[PathBuf], ix: &Index<'_>) {
    let mut names: Vec<String> = values
        .ips
        .iter()
        .map(|ip| format!("ip-{}.{}.{}.{}.lock", ip[0], ip[1], ip[2], ip[3]))
        .collect();
    names.extend(values.ports.iter().map(|p| format!("ssh-{p}.lock")));
    names.extend(values.cids.iter().map(|c| format!("vsock-{c}.lock")));
    names.extend(vm.tap_names.iter().map(|t| format!("tap-{t}.lock")));
    for name in names {
        for dir in ix.resource_locks.get(name.as_str()).into_iter().flatten() {
            if dirs.contains(dir) {
                let f = FileRef::new(dir, format!("locks/resources/{name}"));
                if !vm.files.contains(&f) {
                    vm.files.push(f);
                }
            }
        }
    }
}

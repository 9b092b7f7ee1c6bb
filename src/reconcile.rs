//! Pure: turns what was observed (rows, processes, links, rules, files) into one entry
//! per VM id with the resources that are provably that VM's, and decides which VMs are
//! stale. No I/O here, so every rule is unit-tested without root.
//!
//! A process is a VM's VMM only when its command line names the VM (API socket, disk or
//! `--id`) and it started no later than the row was last written; anything else at a
//! recorded pid is someone else's process that reused the pid.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::model::{
    ElemMeaning, FileRef, Inventory, Life, NFPROTO_INET, Observed, ProcInfo, Refusal, Row, Stale, Status, Vm,
    Vmm, is_smolvm_rule_table, is_vmm_argv0, socket_id, valid_tap_name, valid_vm_id,
};

/// Slack between a process's start time (from boot time + ticks) and the row's timestamp.
const START_SLACK_SECS: f64 = 1.0;

fn disk_id(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".ext4")
        .or_else(|| name.strip_suffix(".qcow2"))?;
    valid_vm_id(id).then_some(id)
}

/// The VM ids a VMM command line names: an API/QMP/vsock socket in the socket dir, a disk
/// in a data dir's `disks/`, or `--id <id>`.
pub fn named_ids(cmdline: &[String], socket_dir: &Path, data_dirs: &[PathBuf]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut prev = "";
    for arg in cmdline.iter().skip(1) {
        if prev == "--id" && valid_vm_id(arg) {
            ids.insert(arg.clone());
        }
        prev = arg;
        // `--api-sock=/p`, QEMU's `file=/p,format=raw` and `unix:/p,server`.
        for token in arg.split(',') {
            let token = token.rsplit('=').next().unwrap_or(token);
            let token = token.strip_prefix("unix:").unwrap_or(token);
            let path = Path::new(token);
            let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
            else {
                continue;
            };
            if parent == socket_dir
                && let Some(id) = socket_id(name)
            {
                ids.insert(id.to_string());
            }
            if data_dirs.iter().any(|d| parent == d.join("disks"))
                && let Some(id) = disk_id(name)
            {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

/// Is `p` this VM's VMM: a VMM binary whose command line names exactly this VM?
fn names_only(p: &ProcInfo, id: &str, obs: &Observed, dirs: &[PathBuf]) -> bool {
    if !p.cmdline.first().is_some_and(|a| is_vmm_argv0(a)) {
        return false;
    }
    let ids = named_ids(&p.cmdline, &obs.socket_dir, dirs);
    ids.len() == 1 && ids.contains(id)
}

/// Judges the pid a row records. Ok: the VMM is alive and proven. Err: why it is stale.
fn judge_pid(row: &Row, obs: &Observed, dirs: &[PathBuf]) -> Result<Vmm, Stale> {
    let Some(raw) = row.pid else {
        return Err(Stale::NoPid);
    };
    let pid = match i32::try_from(raw) {
        Ok(p) if p > 1 && p != obs.own_pid => p,
        _ => return Err(Stale::AbsurdPid(raw)),
    };
    let Some(p) = obs.procs.get(&pid) else {
        return Err(Stale::Gone(pid));
    };
    if p.is_zombie() {
        return Err(Stale::Zombie(pid));
    }
    if !names_only(p, &row.id, obs, dirs) {
        let what = p.cmdline.first().map(String::as_str).unwrap_or("?");
        return Err(Stale::OtherProcess(pid, what.to_string()));
    }
    if let Some(updated) = row.updated_unix
        && p.start_unix > updated + START_SLACK_SECS
    {
        return Err(Stale::PidReused(pid));
    }
    Ok(Vmm {
        pid,
        start_ticks: p.start_ticks,
    })
}

/// `smolvm:<id>:ssh` and `smolvm:<id>:local:…` name a VM.
pub fn rule_vm_id(comment: &str) -> Option<&str> {
    let mut parts = comment.strip_prefix("smolvm:")?.splitn(3, ':');
    let (id, kind, tail) = (parts.next()?, parts.next()?, parts.next());
    let named = (kind == "ssh" && tail.is_none()) || (kind == "local" && tail.is_some());
    (named && valid_vm_id(id)).then_some(id)
}

/// `smolvm:nat:tap:<tap>:to:…` and `smolvm:egress:<tap>:…` name a TAP.
pub fn rule_tap(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix("smolvm:")?;
    let rest = rest
        .strip_prefix("nat:tap:")
        .or_else(|| rest.strip_prefix("egress:"))?;
    let (tap, tail) = rest.split_once(':')?;
    (valid_tap_name(tap) && (tail.starts_with("to:") || comment.starts_with("smolvm:egress:"))).then_some(tap)
}

/// The TAP SmolVM gives a guest IP from its 172.16.0.0/16 pool: `tap<index>` (0.0.5 used
/// the last octet, which is the same number for 172.16.0.N).
pub fn tap_for_guest_ip(ip: [u8; 4]) -> Option<String> {
    let index = u32::from(ip[2]) << 8 | u32::from(ip[3]);
    (ip[0] == 172 && ip[1] == 16 && (2..65535).contains(&index)).then(|| format!("tap{index}"))
}

/// The SDK's claim files (`locks/resources/{ip,ssh,vsock,tap}-<value>.lock`, 0.0.30+) for
/// a VM's guest IPs, SSH ports, vsock CIDs and TAPs, in `dirs`.
fn attach_claims(vm: &mut Vm, values: &Claims, dirs: &[PathBuf], ix: &Index<'_>) {
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

/// The values a VM's SDK claim files are named by.
#[derive(Default)]
struct Claims {
    ips: BTreeSet<[u8; 4]>,
    ports: BTreeSet<u16>,
    cids: BTreeSet<u32>,
}

/// The guest IP SmolVM gives with `tap<index>` (the inverse of `tap_for_guest_ip`).
pub fn guest_ip_for_tap(tap: &str) -> Option<[u8; 4]> {
    let index: u16 = tap.strip_prefix("tap")?.parse().ok()?;
    let [hi, lo] = index.to_be_bytes();
    (index >= 2).then_some([172, 16, hi, lo])
}

/// Lookups built once per run, so that judging N VMs costs O(N), not O(N × rules).
struct Index<'a> {
    link_by_name: HashMap<&'a str, usize>,
    rules_by_id: BTreeMap<&'a str, Vec<usize>>,
    rules_by_tap: BTreeMap<&'a str, Vec<usize>>,
    table_by_tap: HashMap<&'a str, usize>,
    /// Elements of SmolVM's maps and sets: `allowed_taps` by TAP name, the others by the
    /// guest IP they carry, the port forwards also by host port.
    elems_by_tap: HashMap<String, Vec<usize>>,
    elems_by_ip: HashMap<[u8; 4], Vec<usize>>,
    elems_by_port: HashMap<u16, Vec<usize>>,
    /// Live (non-zombie) VMM processes by the one VM id each names.
    vmms_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// The files discovery listed, by the VM id their name carries (retained disks left out).
    files_by_id: HashMap<&'a str, Vec<FileRef>>,
    /// Ids named by a file only SmolVM makes (an `fc-/qmp-/vsock-<id>.sock` socket, a
    /// `locks/<id>.create.lock`): unlike a log or disk name, these corroborate a VM.
    named_by_file: BTreeSet<&'a str>,
    /// Bridge TAPs by the VM id their alias (`smolvm-bridge:<id>`) names.
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
            rules_by_id: BTreeMap::new(),
            rules_by_tap: BTreeMap::new(),
            table_by_tap: HashMap::new(),
            elems_by_tap: HashMap::new(),
            elems_by_ip: HashMap::new(),
            elems_by_port: HashMap::new(),
            vmms_by_id: BTreeMap::new(),
            files_by_id: HashMap::new(),
            named_by_file: BTreeSet::new(),
            resource_locks: HashMap::new(),
            taps_by_alias: BTreeMap::new(),
        };
        for l in obs.links.iter().filter(|l| l.is_tap() && valid_tap_name(&l.name)) {
            if let Some(id) = l
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix("smolvm-bridge:"))
                .filter(|id| valid_vm_id(id))
            {
                ix.taps_by_alias.entry(id).or_default().push(&l.name);
            }
        }
        for n in &obs.socket_names {
            if let Some(id) = socket_id(n) {
                let f = FileRef::new(&obs.socket_dir, n.as_str());
                ix.files_by_id.entry(id).or_default().push(f);
                ix.named_by_file.insert(id);
            }
        }
        for d in &obs.data_listing {
            for n in &d.resource_locks {
                ix.resource_locks.entry(n.as_str()).or_default().push(&d.dir);
            }
            for n in d.firmware.iter().filter(|n| valid_vm_id(n)) {
                let f = FileRef::tree(&d.dir, format!("firmware/{n}"));
                ix.files_by_id.entry(n.as_str()).or_default().push(f);
            }
            for n in &d.locks {
                if let Some(id) = n.strip_suffix(".create.lock").filter(|id| valid_vm_id(id)) {
                    let f = FileRef::new(&d.dir, format!("locks/{n}"));
                    ix.files_by_id.entry(id).or_default().push(f);
                    ix.named_by_file.insert(id);
                }
            }
            for n in &d.top {
                if let Some(id) = n.strip_suffix(".log").filter(|id| valid_vm_id(id)) {
                    ix.files_by_id
                        .entry(id)
                        .or_default()
                        .push(FileRef::new(&d.dir, n.as_str()));
                }
            }
            let names: HashSet<&str> = d.disks.iter().map(String::as_str).collect();
            for n in &d.disks {
                // A disk SmolVM marked to keep (`<disk>.retained`, newer releases) stays.
                if let Some(id) = disk_id(n).filter(|_| !names.contains(format!("{n}.retained").as_str())) {
                    let f = FileRef::new(&d.dir, format!("disks/{n}"));
                    ix.files_by_id.entry(id).or_default().push(f);
                }
            }
        }
        for (i, r) in obs.rules.iter().enumerate() {
            let Some(c) = r
                .comment
                .as_deref()
                .filter(|_| is_smolvm_rule_table(r.family, &r.table))
            else {
                continue;
            };
            if let Some(id) = rule_vm_id(c) {
                ix.rules_by_id.entry(id).or_default().push(i);
            } else if let Some(tap) = rule_tap(c) {
                ix.rules_by_tap.entry(tap).or_default().push(i);
            }
        }
        for (i, t) in obs.tables.iter().enumerate() {
            if let Some(tap) = t
                .name
                .strip_prefix("smolvm_policy_")
                .filter(|_| t.family == NFPROTO_INET)
            {
                ix.table_by_tap.insert(tap, i);
            }
        }
        for (i, e) in obs.elems.iter().enumerate() {
            match e.meaning() {
                ElemMeaning::Tap(tap) => ix.elems_by_tap.entry(tap).or_default().push(i),
                ElemMeaning::Guest { ip, .. } => ix.elems_by_ip.entry(ip).or_default().push(i),
                ElemMeaning::Forward { port, ip, .. } => {
                    ix.elems_by_ip.entry(ip).or_default().push(i);
                    ix.elems_by_port.entry(port).or_default().push(i);
                }
                ElemMeaning::Other => {}
            }
        }
        for p in obs.vmms.iter().filter(|p| !p.is_zombie()) {
            let ids = named_ids(&p.cmdline, &obs.socket_dir, &obs.data_dirs);
            if ids.len() == 1
                && let Some(id) = ids.into_iter().next()
            {
                ix.vmms_by_id.entry(id).or_default().push(p);
            }
        }
        ix
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
    out_of_view(&mut inv, obs);

    // VM ids that something only SmolVM makes names (a VMM command line, a rule comment,
    // a socket, a create lock), with their VMMs. A log or disk name alone names no VM.
    let mut evidence: BTreeMap<String, Vec<&ProcInfo>> = ix.vmms_by_id.clone();
    for &id in ix
        .rules_by_id
        .keys()
        .chain(&ix.named_by_file)
        .chain(ix.taps_by_alias.keys())
    {
        evidence.entry(id.to_string()).or_default();
    }
    evidence.retain(|id, _| !by_id.contains_key(id));
    let mut unattributed: Vec<FileRef> = ix
        .files_by_id
        .iter()
        .filter(|(id, _)| !by_id.contains_key(**id) && !evidence.contains_key(**id))
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
    add_rowless(&mut inv, obs, &ix, &by_id, &evidence);
    inv
}

/// One VM per valid row id, in DB order; a row with a hostile id is refused and kept.
fn add_rows(inv: &mut Inventory, obs: &Observed) -> BTreeMap<String, usize> {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, row) in obs.rows.iter().enumerate() {
        if !valid_vm_id(&row.id) {
            inv.warnings.push(format!(
                "refusing a state row whose id {:?} is not a SmolVM VM id; it is left as it is",
                row.id
            ));
            inv.kept += 1;
            continue;
        }
        let k = *by_id.entry(row.id.clone()).or_insert_with(|| {
            inv.vms.push(Vm {
                id: row.id.clone(),
                status: Some(row.status),
                ..Vm::default()
            });
            inv.vms.len() - 1
        });
        inv.vms[k].rows.push(i);
    }
    by_id
}

/// The VMs only the host shows (`evidence`, sorted), then the TAPs that only a SmolVM
/// rule names and no VM takes (`orphan-<tap>`, sorted).
fn add_rowless(
    inv: &mut Inventory,
    obs: &Observed,
    ix: &Index<'_>,
    by_id: &BTreeMap<String, usize>,
    evidence: &BTreeMap<String, Vec<&ProcInfo>>,
) {
    // TAP names: rows claim theirs; an SSH rule's guest IP ties a TAP to a rowless VM.
    let claimed: BTreeSet<&str> = obs
        .rows
        .iter()
        .flat_map(|r| r.taps.iter().map(String::as_str))
        .collect();
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
    let mut tied: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (tap, id) in &ties {
        tied.entry(id).or_default().push(tap.clone());
    }
    let row_ips: BTreeSet<[u8; 4]> = obs.rows.iter().filter_map(|r| r.guest_ip).collect();

    for (id, vmms) in evidence {
        let mut vm = Vm {
            id: id.clone(),
            rowless: true,
            tap_names: tied.get(id.as_str()).cloned().unwrap_or_default(),
            vmms: vmms
                .iter()
                .map(|p| Vmm {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                })
                .collect(),
            ..Vm::default()
        };
        attach_network(&mut vm, obs, ix, &mut inv.warnings);
        let mut ips: BTreeSet<[u8; 4]> = vm.tap_names.iter().filter_map(|t| guest_ip_for_tap(t)).collect();
        for &ri in ix.rules_by_id.get(id.as_str()).into_iter().flatten() {
            ips.extend(
                obs.rules[ri]
                    .ipv4
                    .iter()
                    .filter(|ip| tap_for_guest_ip(**ip).is_some()),
            );
        }
        attach_elems_by_ip(&mut vm, &ips, &row_ips, ix);
        vm.files = ix.files_by_id.get(id.as_str()).cloned().unwrap_or_default();
        let claims = Claims {
            ips: ips.difference(&row_ips).copied().collect(),
            ..Claims::default()
        };
        attach_claims(&mut vm, &claims, &obs.data_dirs, ix);
        judge_rowless(&mut vm, obs);
        if vm.stale.is_none() {
            inv.warnings.push(format!(
                "{}: has no state row but is alive ({}); left alone (--all stops it)",
                vm.id,
                vm.live.as_ref().map_or_else(|| "?".to_string(), Life::to_string)
            ));
        }
        inv.vms.push(vm);
    }

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
        attach_elems_by_ip(&mut vm, &ips, &row_ips, ix);
        let claims = Claims {
            ips: ips.difference(&row_ips).copied().collect(),
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
fn judge_rowless(vm: &mut Vm, obs: &Observed) {
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

/// What shows a VM alive when no VMM of its own can be seen: its socket still served, its
/// TAP held open, its create lock held.
fn signs_of_life(vm: &Vm, obs: &Observed) -> Option<Life> {
    if let Some(f) = vm.files.iter().find(|f| obs.served.contains(&f.path())) {
        return Some(Life::Served(f.path()));
    }
    if let Some(&li) = vm.taps.iter().find(|&&li| obs.links[li].carrier) {
        return Some(Life::TapHeld(obs.links[li].name.clone()));
    }
    let lock = vm.files.iter().find(|f| obs.held_locks.contains(&f.path()))?;
    Some(Life::LockHeld(lock.path()))
}

/// Seen from a pid namespace other than the host's (a container without `--pid=host`),
/// a VMM outside it is invisible, not gone. When a VM whose VMM cannot be seen still
/// shows life, or its row was written before this namespace began, the rows' pids cannot
/// be judged here: every VM whose VMM is unseen is then left alone, and stderr says once
/// why and what to change.
fn out_of_view(inv: &mut Inventory, obs: &Observed) {
    if !obs.pid_view.foreign {
        return;
    }
    let unseen = |v: &Vm| v.expects_vmm && v.vmms.is_empty() && !v.rowless;
    let predates = |v: &Vm| {
        let newest = v
            .rows
            .iter()
            .filter_map(|&i| obs.rows[i].updated_unix)
            .reduce(f64::max);
        matches!((newest, obs.pid_view.since_unix), (Some(w), Some(ns)) if w + START_SLACK_SECS < ns)
    };
    let witnesses: Vec<&str> = inv
        .vms
        .iter()
        .filter(|v| unseen(v) && (v.live.is_some() || predates(v)))
        .map(|v| v.id.as_str())
        .collect();
    if witnesses.is_empty() {
        return;
    }
    inv.warnings.push(format!(
        "the VMMs are not visible from this pid namespace ({} cannot be judged from it): run \
         cleanup in the host's pid namespace (docker run --pid=host; hostPID: true in Kubernetes); \
         VMs whose VMM cannot be seen are left alone",
        witnesses.join(", ")
    ));
    for vm in inv.vms.iter_mut().filter(|v| unseen(v)) {
        vm.out_of_view = true;
        vm.stale = None;
        vm.mark.clear();
        vm.refuse = Some(Refusal::OutOfView);
    }
}

/// TAP links, rules and per-TAP tables for `vm.id` and `vm.tap_names`: its own comments
/// (`smolvm:<id>:…`) and the per-TAP comments and policy tables of its TAPs.
fn attach_network(vm: &mut Vm, obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    for tap in &vm.tap_names {
        let Some(&li) = ix.link_by_name.get(tap.as_str()) else {
            continue;
        };
        let l = &obs.links[li];
        let alias_ok = !tap.starts_with("svmb")
            || l.alias.as_deref() == Some(format!("smolvm-bridge:{}", vm.id).as_str());
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
    let mut rules: Vec<usize> = ix.rules_by_id.get(vm.id.as_str()).cloned().unwrap_or_default();
    let mut tables = Vec::new();
    for tap in &vm.tap_names {
        rules.extend(ix.rules_by_tap.get(tap.as_str()).into_iter().flatten());
        tables.extend(ix.table_by_tap.get(tap.as_str()));
    }
    rules.sort_unstable();
    rules.dedup();
    vm.rules = rules;
    vm.tables = tables;
    for tap in &vm.tap_names {
        vm.elems
            .extend(ix.elems_by_tap.get(tap.as_str()).into_iter().flatten());
    }
}

/// The elements that carry one of `ips` as a guest IP (a VM with no row: the IPs its TAPs
/// and rules name), unless a row has that IP: then they are that row's VM's.
fn attach_elems_by_ip(vm: &mut Vm, ips: &BTreeSet<[u8; 4]>, row_ips: &BTreeSet<[u8; 4]>, ix: &Index<'_>) {
    for ip in ips.iter().filter(|ip| !row_ips.contains(*ip)) {
        vm.elems.extend(ix.elems_by_ip.get(ip).into_iter().flatten());
    }
    vm.elems.sort_unstable();
    vm.elems.dedup();
}

/// A VM with rows: the port forwards of its host port that lead to its guest IP, and the
/// `snat_return`/`fwd_allow` entries of its guest IP and port. A forward of its port to
/// another IP is someone else's: left, with a warning.
fn attach_row_elems(vm: &mut Vm, rows: &[&Row], obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    for row in rows {
        let ours_port = |p: u16| row.guest_port.is_none_or(|g| g == p);
        for &ei in row
            .host_port
            .and_then(|p| ix.elems_by_port.get(&p))
            .into_iter()
            .flatten()
        {
            let e = &obs.elems[ei];
            if let ElemMeaning::Forward { port, ip, guest_port } = e.meaning() {
                if Some(ip) == row.guest_ip && ours_port(guest_port) {
                    vm.elems.push(ei);
                } else {
                    warnings.push(format!(
                        "{}: {} maps its port {port} to {}.{}.{}.{}, not to its guest; left alone",
                        vm.id, e.set, ip[0], ip[1], ip[2], ip[3]
                    ));
                }
            }
        }
        for &ei in row
            .guest_ip
            .and_then(|ip| ix.elems_by_ip.get(&ip))
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

/// Judges a VM that has rows: its VMM, staleness, and its resources.
fn judge_row_vm(vm: &mut Vm, obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    let rows: Vec<&Row> = vm.rows.iter().map(|&i| &obs.rows[i]).collect();
    let dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = rows
            .iter()
            .filter_map(|r| obs.db_dirs.get(r.db).cloned())
            .collect();
        d.dedup();
        d
    };
    vm.created_unix = rows
        .iter()
        .filter_map(|r| r.created_unix.or(r.updated_unix))
        .reduce(f64::min);
    let expects = judge_vmm(vm, &rows, &dirs, obs, ix, warnings);
    attach_row_resources(vm, &rows, &dirs, obs, ix, warnings);
    vm.expects_vmm = expects;
    if vm.vmms.is_empty()
        && let Some(life) = signs_of_life(vm, obs)
    {
        // Something we cannot identify uses the VM's socket, TAP or lock: it lives, so
        // the row is not stale whatever its pid says.
        vm.refuse.get_or_insert(Refusal::Unidentified(life.clone()));
        vm.live = Some(life);
        vm.stale = None;
    }
    vm.files.retain(|f| !obs.held_locks.contains(&f.path()));
    if vm.refuse.is_some() {
        // Not ours to judge while something we cannot account for runs: write nothing.
        vm.mark.clear();
    }
}

/// The VMM of a VM with rows: what its rows record, then what the scan found naming
/// it. Sets its VMMs, whether it is stale, and which rows to mark; true when a row says a
/// VMM should run.
fn judge_vmm(
    vm: &mut Vm,
    rows: &[&Row],
    dirs: &[PathBuf],
    obs: &Observed,
    ix: &Index<'_>,
    warnings: &mut Vec<String>,
) -> bool {
    let newest_write = rows
        .iter()
        .filter_map(|r| r.updated_unix)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let mut stale_reason = None;
    let mut expects = false;
    for (&ri, row) in vm.rows.iter().zip(rows) {
        if !row.status.expects_process() {
            continue;
        }
        expects = true;
        match judge_pid(row, obs, dirs) {
            Ok(v) => {
                if !vm.vmms.contains(&v) {
                    vm.vmms.push(v);
                }
            }
            Err(why) => {
                if let Some(raw) = row.pid
                    && (raw <= 1 || raw > i64::from(i32::MAX) || raw == i64::from(obs.own_pid))
                {
                    warnings.push(format!("{}: {why}; refusing to signal it", row.id));
                }
                stale_reason.get_or_insert(why);
                if row.status != Status::Error || row.pid.is_some() {
                    vm.mark.push(ri);
                }
            }
        }
    }
    for p in ix.vmms_by_id.get(vm.id.as_str()).into_iter().flatten() {
        if vm.vmms.iter().any(|v| v.pid == p.pid) {
            continue;
        }
        if let Some(t) = newest_write
            && p.start_unix > t + START_SLACK_SECS
        {
            vm.refuse.get_or_insert(Refusal::StartedLate(p.pid));
            continue;
        }
        vm.vmms.push(Vmm {
            pid: p.pid,
            start_ticks: p.start_ticks,
        });
    }
    if expects && vm.vmms.is_empty() {
        vm.stale = stale_reason.or(Some(Stale::NoVmm));
    } else {
        // A VMM lives: the row is not stale, whatever its pid column says.
        vm.mark.clear();
    }
    expects
}

/// The TAPs, rules, tables and files of a VM with rows; warns of what its rows name that
/// SmolVM could not have made.
fn attach_row_resources(
    vm: &mut Vm,
    rows: &[&Row],
    dirs: &[PathBuf],
    obs: &Observed,
    ix: &Index<'_>,
    warnings: &mut Vec<String>,
) {
    // TAPs: valid names only, and only links that really are TAPs.
    for row in rows {
        for tap in &row.taps {
            if tap == "usernet" {
                continue; // QEMU user-mode networking: no host device.
            }
            if !valid_tap_name(tap) {
                warnings.push(format!("{}: refusing TAP name {tap:?} from the state DB", vm.id));
                continue;
            }
            if !vm.tap_names.contains(tap) {
                vm.tap_names.push(tap.clone());
            }
        }
    }
    attach_network(vm, obs, ix, warnings);
    attach_row_elems(vm, rows, obs, ix, warnings);

    // What discovery listed for this id in the socket dir and in its DBs' data dirs: a
    // missing file is already gone.
    let retain = rows.iter().any(|r| r.retain_disk);
    let ours = |f: &&FileRef| {
        (f.root == obs.socket_dir || dirs.contains(&f.root)) && !(retain && f.rel.starts_with("disks/"))
    };
    vm.files = ix
        .files_by_id
        .get(vm.id.as_str())
        .into_iter()
        .flatten()
        .filter(ours)
        .cloned()
        .collect();
    let claims = Claims {
        ips: rows.iter().filter_map(|r| r.guest_ip).collect(),
        ports: rows.iter().filter_map(|r| r.host_port).collect(),
        cids: rows.iter().filter_map(|r| r.vsock_cid).collect(),
    };
    attach_claims(vm, &claims, dirs, ix);
    for row in rows {
        // SmolVM's own paths: the Firecracker API socket, QEMU's QMP socket.
        let known = ["fc", "qmp"].map(|p| obs.socket_dir.join(format!("{p}-{}.sock", vm.id)));
        if let Some(sp) = &row.socket_path
            && !known.iter().any(|k| Path::new(sp) == k)
        {
            warnings.push(format!(
                "{}: socket path {sp:?} is not {}/fc-{}.sock; it is not removed",
                vm.id,
                obs.socket_dir.display(),
                vm.id
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DirListing, Elem, Link, NFPROTO_IPV4, PidView, Rule, Table};

    pub fn row(id: &str, status: &str, pid: Option<i64>) -> Row {
        Row {
            db: 0,
            id: id.into(),
            status: Status::parse(status),
            pid,
            socket_path: None,
            created_at: None,
            updated_at: Some("t".into()),
            updated_unix: Some(1000.0),
            created_unix: Some(900.0),
            taps: vec![],
            retain_disk: false,
            guest_ip: None,
            host_port: None,
            guest_port: None,
            vsock_cid: None,
        }
    }

    fn proc(pid: i32, start: f64, cmd: &[&str]) -> ProcInfo {
        ProcInfo {
            pid,
            state: 'S',
            start_ticks: pid as u64 * 10,
            start_unix: start,
            cmdline: cmd.iter().map(|s| s.to_string()).collect(),
            uid: 0,
        }
    }

    fn fc(pid: i32, start: f64, id: &str) -> ProcInfo {
        proc(
            pid,
            start,
            &["firecracker", "--api-sock", &format!("/tmp/fc-{id}.sock")],
        )
    }

    fn obs(rows: Vec<Row>) -> Observed {
        Observed {
            rows,
            db_dirs: vec!["/var/lib/smolvm".into()],
            data_dirs: vec!["/var/lib/smolvm".into()],
            socket_dir: "/tmp".into(),
            own_pid: 99,
            ..Observed::default()
        }
    }

    fn tap(index: i32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some("tun".into()),
            tun_type: Some(2),
            group: 0,
            alias: None,
            carrier: false,
        }
    }

    fn rule(family: u8, table: &str, handle: u64, comment: &str) -> Rule {
        Rule {
            family,
            table: table.into(),
            chain: "c".into(),
            handle,
            comment: Some(comment.into()),
            ipv4: vec![],
        }
    }

    #[test]
    fn live_vmm_is_not_stale() {
        let mut o = obs(vec![row("vm-1", "running", Some(500))]);
        o.procs.insert(500, fc(500, 990.0, "vm-1"));
        let inv = inventory(&o);
        assert_eq!(inv.vms[0].stale, None);
        assert_eq!(
            inv.vms[0].vmms,
            vec![Vmm {
                pid: 500,
                start_ticks: 5000
            }]
        );
        assert!(inv.vms[0].mark.is_empty());
    }

    #[test]
    fn gone_zombie_reused_and_late_pids_are_stale() {
        let cases: Vec<(Option<ProcInfo>, Stale)> = vec![
            (None, Stale::Gone(500)),
            (
                Some(ProcInfo {
                    state: 'Z',
                    ..fc(500, 990.0, "vm-1")
                }),
                Stale::Zombie(500),
            ),
            (
                Some(proc(500, 990.0, &["sleep", "1000"])),
                Stale::OtherProcess(500, "sleep".into()),
            ),
            (
                Some(fc(500, 990.0, "vm-2")),
                Stale::OtherProcess(500, "firecracker".into()),
            ),
            (Some(fc(500, 1002.0, "vm-1")), Stale::PidReused(500)),
        ];
        for (p, why) in cases {
            let mut o = obs(vec![row("vm-1", "running", Some(500))]);
            if let Some(p) = p {
                o.procs.insert(500, p);
            }
            let inv = inventory(&o);
            let vm = &inv.vms[0];
            assert_eq!(vm.stale.as_ref(), Some(&why));
            assert!(vm.vmms.is_empty(), "{why}: never signal it");
            assert_eq!(vm.mark, vec![0]);
        }
    }

    #[test]
    fn absurd_pids_are_refused_and_stale() {
        for pid in [0, 1, -5, 99, i64::from(i32::MAX) + 1] {
            let mut o = obs(vec![row("vm-1", "running", Some(pid))]);
            o.procs.insert(1, proc(1, 0.0, &["/sbin/init"]));
            o.procs.insert(99, fc(99, 0.0, "vm-1"));
            let inv = inventory(&o);
            assert!(inv.vms[0].vmms.is_empty(), "pid {pid}");
            assert!(inv.vms[0].stale.is_some());
            assert_eq!(inv.warnings.len(), 1, "pid {pid}");
        }
    }

    #[test]
    fn created_and_stopped_are_never_stale_and_error_is_marked_once() {
        let mut o = obs(vec![
            row("keepme", "created", None),
            row("web", "stopped", None),
            row("vm-9", "error", None),
        ]);
        o.rows[2].pid = None;
        let inv = inventory(&o);
        assert_eq!(inv.vms[0].stale, None);
        assert_eq!(inv.vms[1].stale, None);
        assert!(inv.vms[2].stale.is_some());
        assert!(
            inv.vms[2].mark.is_empty(),
            "already error with no pid: nothing to write"
        );
    }

    #[test]
    fn scanned_vmm_keeps_a_row_alive_unless_it_started_later() {
        let mut o = obs(vec![row("vm-1", "running", Some(500))]);
        o.vmms.push(fc(700, 950.0, "vm-1"));
        let inv = inventory(&o);
        assert_eq!(inv.vms[0].stale, None);
        assert_eq!(inv.vms[0].vmms[0].pid, 700);

        let mut o = obs(vec![row("vm-1", "created", None)]);
        o.vmms.push(fc(700, 1005.0, "vm-1"));
        let inv = inventory(&o);
        assert!(inv.vms[0].vmms.is_empty());
        assert!(inv.vms[0].refuse.is_some());

        // Its recorded pid is that late VMM: stale, refused, and the row is not rewritten.
        let mut o = obs(vec![row("vm-1", "running", Some(700))]);
        o.procs.insert(700, fc(700, 1005.0, "vm-1"));
        o.vmms.push(fc(700, 1005.0, "vm-1"));
        let inv = inventory(&o);
        assert!(inv.vms[0].stale.is_some());
        assert!(inv.vms[0].vmms.is_empty());
        assert!(inv.vms[0].refuse.is_some());
        assert!(inv.vms[0].mark.is_empty());
    }

    #[test]
    fn invalid_ids_and_tap_names_are_refused() {
        let mut r = row("vm-1", "stopped", None);
        r.taps = vec!["eth0".into(), "../x".into(), "tap3".into(), "usernet".into()];
        let o = Observed {
            links: vec![tap(2, "eth0"), tap(3, "tap3")],
            ..obs(vec![row("../../etc", "running", Some(5)), r])
        };
        let inv = inventory(&o);
        assert_eq!(inv.vms.len(), 1);
        assert_eq!(inv.vms[0].tap_names, ["tap3"]);
        assert_eq!(inv.vms[0].taps, [1]);
        assert_eq!(inv.warnings.len(), 3);
    }

    #[test]
    fn a_link_that_is_not_a_tap_is_left_alone() {
        let mut r = row("vm-1", "stopped", None);
        r.taps = vec!["tap3".into()];
        let mut veth = tap(3, "tap3");
        veth.kind = Some("veth".into());
        veth.tun_type = None;
        let o = Observed {
            links: vec![veth],
            ..obs(vec![r])
        };
        let inv = inventory(&o);
        assert!(inv.vms[0].taps.is_empty());
        assert_eq!(inv.warnings.len(), 1);
    }

    #[test]
    fn rules_only_from_smolvm_tables() {
        let mut r = row("vm-1", "stopped", None);
        r.taps = vec!["tap2".into()];
        let o = Observed {
            rules: vec![
                rule(NFPROTO_IPV4, "smolvm_nat", 5, "smolvm:vm-1:ssh"),
                rule(NFPROTO_INET, "smolvm_filter", 3, "smolvm:nat:tap:tap2:to:uplink0"),
                rule(NFPROTO_INET, "smolvm_nat", 9, "smolvm:vm-1:ssh"),
                rule(NFPROTO_IPV4, "other", 7, "smolvm:vm-1:ssh"),
                filter_rule(4, "smolvm:global:forward:tap-isolation"),
            ],
            tables: vec![
                Table {
                    family: NFPROTO_INET,
                    name: "smolvm_policy_tap2".into(),
                },
                Table {
                    family: NFPROTO_INET,
                    name: "smolvm_policy_tap3".into(),
                },
            ],
            ..obs(vec![r])
        };
        let inv = inventory(&o);
        assert_eq!(inv.vms[0].rules, [0, 1]);
        assert_eq!(inv.vms[0].tables, [0]);
    }

    #[test]
    fn comments_name_vms_and_taps() {
        assert_eq!(rule_vm_id("smolvm:vm-1:ssh"), Some("vm-1"));
        assert_eq!(rule_vm_id("smolvm:web:local:8080:80"), Some("web"));
        assert_eq!(rule_vm_id("smolvm:nat:ssh"), Some("nat"));
        for none in [
            "smolvm:vm-1:ssh:x",
            "smolvm:vm-1:local",
            "smolvm:nat:tap:tap2:to:uplink0",
            "smolvm:global:forward:established",
            "smolvm:egress:tap2:allow",
            "smolvm:Bad:ssh",
            "other:vm-1:ssh",
        ] {
            assert_eq!(rule_vm_id(none), None, "{none}");
        }
        assert_eq!(rule_tap("smolvm:nat:tap:tap2:to:uplink0"), Some("tap2"));
        assert_eq!(rule_tap("smolvm:egress:tap2:drop6"), Some("tap2"));
        assert_eq!(rule_tap("smolvm:nat:tap:eth0:to:uplink0"), None);
        assert_eq!(rule_tap("smolvm:nat:tap:tap2"), None);
        assert_eq!(rule_tap("smolvm:vm-1:ssh"), None);
    }

    #[test]
    fn guest_ip_to_tap() {
        assert_eq!(tap_for_guest_ip([172, 16, 0, 5]).as_deref(), Some("tap5"));
        assert_eq!(tap_for_guest_ip([172, 16, 1, 2]).as_deref(), Some("tap258"));
        assert_eq!(tap_for_guest_ip([172, 16, 0, 1]), None, "the gateway");
        assert_eq!(tap_for_guest_ip([127, 0, 0, 1]), None);
    }

    fn filter_rule(handle: u64, comment: &str) -> Rule {
        rule(NFPROTO_INET, "smolvm_filter", handle, comment)
    }

    fn ssh_rule(id: &str, octet: u8, handle: u64) -> Rule {
        Rule {
            ipv4: vec![[172, 16, 0, octet]],
            ..rule(NFPROTO_IPV4, "smolvm_nat", handle, &format!("smolvm:{id}:ssh"))
        }
    }

    #[test]
    fn with_no_rows_the_host_names_the_vms() {
        let mut o = obs(vec![]);
        o.links = vec![tap(2, "tap2"), tap(3, "tap3"), tap(4, "tap4")];
        o.links[2].carrier = true;
        o.rules = vec![
            ssh_rule("vm-1", 2, 10),
            filter_rule(11, "smolvm:nat:tap:tap2:to:uplink0"),
            filter_rule(12, "smolvm:nat:tap:tap3:to:uplink0"),
            filter_rule(13, "smolvm:nat:tap:tap4:to:uplink0"),
            filter_rule(14, "smolvm:global:forward:established"),
        ];
        o.socket_names = vec!["fc-vm-2.sock".into(), "fc-vm-3.sock".into(), "other.sock".into()];
        o.served.insert("/tmp/fc-vm-3.sock".into());
        o.data_listing = vec![DirListing {
            dir: "/var/lib/smolvm".into(),
            top: vec!["vm-4.log".into(), "smolvm.log".into(), "backup.log".into()],
            disks: vec![
                "kept.ext4".into(),
                "kept.ext4.retained".into(),
                "vm-4.ext4".into(),
                "golden-image.ext4".into(),
            ],
            locks: vec!["vm-4.create.lock".into(), "vm-6.create.lock".into()],
            ..DirListing::default()
        }];
        o.held_locks
            .insert("/var/lib/smolvm/locks/vm-6.create.lock".into());
        o.vmms = vec![fc(70, 1.0, "vm-5")];
        let inv = inventory(&o);
        let ids: Vec<&str> = inv.vms.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(
            ids,
            ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6", "orphan-tap3"]
        );
        // A log or disk that nothing only SmolVM makes names is no VM: never touched.
        let lone: Vec<String> = inv.unattributed.iter().map(|f| f.rel.clone()).collect();
        assert_eq!(lone, ["backup.log", "disks/golden-image.ext4", "smolvm.log"]);
        let vm = |id: &str| inv.vms.iter().find(|v| v.id == id).unwrap();
        // The SSH rule's guest IP ties tap2 and its rule to vm-1.
        assert_eq!(vm("vm-1").tap_names, ["tap2"]);
        assert_eq!(vm("vm-1").rules, [0, 1]);
        assert!(vm("vm-1").stale.is_some());
        // A served socket or a live VMM: alive, not stale; only the unidentified one is refused.
        assert!(vm("vm-3").stale.is_none() && vm("vm-3").refuse.is_some());
        assert!(vm("vm-5").stale.is_none() && vm("vm-5").refuse.is_none());
        assert_eq!(vm("vm-5").vmms[0].pid, 70);
        // Its create lock corroborates vm-4's log and disk; a held lock is a create in progress.
        assert!(vm("vm-4").stale.is_some());
        let rels: Vec<&str> = vm("vm-4").files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["locks/vm-4.create.lock", "vm-4.log", "disks/vm-4.ext4"]);
        let lock = PathBuf::from("/var/lib/smolvm/locks/vm-6.create.lock");
        assert!(vm("vm-6").stale.is_none());
        assert_eq!(
            vm("vm-6").refuse,
            Some(Refusal::Unidentified(Life::LockHeld(lock)))
        );
        assert!(vm("vm-6").files.is_empty(), "a held lock is never removed");
        assert_eq!(vm("orphan-tap3").taps, [1]);
        assert_eq!(vm("orphan-tap3").rules, [2]);
        // tap4 has carrier: never an orphan. "kept" is retained: not a leftover.
        assert_eq!(inv.kept, 1);
        assert!(!ids.contains(&"kept"));

        // A DB that could not be read: nothing rowless is taken.
        o.rows_incomplete = true;
        assert!(inventory(&o).vms.is_empty());
    }

    #[test]
    fn a_running_row_whose_socket_or_tap_lives_is_not_stale() {
        let mut r = row("sbx-a", "running", Some(500));
        r.taps = vec!["tap3".into()];
        let mut o = obs(vec![r, row("sbx-b", "running", Some(501))]);
        o.links = vec![tap(3, "tap3")];
        o.links[0].carrier = true;
        o.socket_names = vec!["fc-sbx-b.sock".into()];
        o.served.insert("/tmp/fc-sbx-b.sock".into());
        let inv = inventory(&o);
        assert_eq!(inv.vms[0].live, Some(Life::TapHeld("tap3".into())));
        assert_eq!(
            inv.vms[1].refuse,
            Some(Refusal::Unidentified(Life::Served("/tmp/fc-sbx-b.sock".into())))
        );
        assert_eq!(
            inv.vms[1].refuse.as_ref().map(ToString::to_string).as_deref(),
            Some(
                "/tmp/fc-sbx-b.sock is still served by a process that is not a VMM we can identify; not touched"
            )
        );
        for vm in &inv.vms {
            assert_eq!(vm.stale, None, "{}", vm.id);
            assert!(
                vm.mark.is_empty() && vm.refuse.is_some() && vm.live.is_some(),
                "{}",
                vm.id
            );
            assert!(!vm.out_of_view, "/proc is the host's: nothing is out of view");
        }
    }

    #[test]
    fn from_another_pid_namespace_unseen_vmms_are_left_alone() {
        let mut served = row("sbx-live1", "running", Some(500));
        served.updated_unix = Some(5000.0);
        let mut quiet = row("vm-quiet", "running", Some(502));
        quiet.updated_unix = Some(5000.0);
        let mut o = obs(vec![served, quiet, row("keep", "stopped", None)]);
        o.socket_names = vec!["fc-sbx-live1.sock".into()];
        o.served.insert("/tmp/fc-sbx-live1.sock".into());
        o.pid_view = PidView {
            foreign: true,
            since_unix: Some(6000.0),
        };
        let inv = inventory(&o);
        let vm = |id: &str| inv.vms.iter().find(|v| v.id == id).unwrap();
        // One served socket is enough to know the VMMs live out of view: the quiet one,
        // whose VMM shows nothing at all, is left alone too.
        for id in ["sbx-live1", "vm-quiet"] {
            assert!(
                vm(id).out_of_view && vm(id).stale.is_none() && vm(id).mark.is_empty(),
                "{id}"
            );
            assert_eq!(vm(id).refuse, Some(Refusal::OutOfView), "{id}");
        }
        assert!(!vm("keep").out_of_view);
        assert_eq!(inv.warnings.len(), 1, "said once: {:?}", inv.warnings);
        assert!(inv.warnings[0].contains("--pid=host"));

        // A row written before this namespace began names no process of it, even alone.
        let mut o2 = obs(vec![o.rows[1].clone()]);
        o2.pid_view = o.pid_view;
        assert!(inventory(&o2).vms[0].out_of_view);
        // Written after it began and showing no life: judged as usual (stale).
        o2.pid_view.since_unix = Some(4000.0);
        let inv2 = inventory(&o2);
        assert!(!inv2.vms[0].out_of_view && inv2.vms[0].stale.is_some());
        assert!(inv2.warnings.is_empty());
        // The host's /proc: a served socket with no VMM is refused, never "out of view".
        o.pid_view = PidView::default();
        assert!(inventory(&o).vms.iter().all(|v| !v.out_of_view));
    }

    fn elem(family: u8, table: &str, set: &str, key: &[u8], data: Option<&[u8]>) -> Elem {
        Elem {
            family,
            table: table.into(),
            set: set.into(),
            key: key.to_vec(),
            data: data.map(<[u8]>::to_vec),
        }
    }

    /// `port : 172.16.0.<o> . 22` in `dnat_ext`, as the kernel lays it out.
    fn forward(port: u16, octet: u8) -> Elem {
        let p = port.to_be_bytes();
        elem(
            NFPROTO_IPV4,
            "smolvm_nat",
            "dnat_ext",
            &p,
            Some(&[172, 16, 0, octet, 0, 22, 0, 0]),
        )
    }

    fn guest(set: &str, octet: u8) -> Elem {
        let (family, table) = if set == "fwd_allow" {
            (NFPROTO_INET, "smolvm_filter")
        } else {
            (NFPROTO_IPV4, "smolvm_nat")
        };
        elem(family, table, set, &[172, 16, 0, octet, 0, 22, 0, 0], None)
    }

    fn allowed(tap: &str) -> Elem {
        let mut key = tap.as_bytes().to_vec();
        key.resize(16, 0);
        elem(NFPROTO_INET, "smolvm_filter", "allowed_taps", &key, None)
    }

    #[test]
    fn elements_go_with_the_vm_whose_port_ip_or_tap_they_carry() {
        let with_net = |id: &str, status: &str, octet: u8, port: u16| {
            let mut r = row(id, status, None);
            r.taps = vec![format!("tap{octet}")];
            r.guest_ip = Some([172, 16, 0, octet]);
            r.host_port = Some(port);
            r.guest_port = Some(22);
            r
        };
        let mut o = obs(vec![
            with_net("vm-a", "stopped", 2, 2200),
            with_net("vm-b", "stopped", 3, 2201),
        ]);
        o.links = vec![tap(2, "tap2"), tap(3, "tap3"), tap(6, "tap6"), tap(7, "tap7")];
        o.links[3].carrier = true;
        o.elems = vec![
            forward(2200, 2),        // 0: vm-a's
            guest("snat_return", 2), // 1: vm-a's
            guest("fwd_allow", 2),   // 2: vm-a's
            allowed("tap2"),         // 3: vm-a's
            forward(2201, 9),        // 4: vm-b's port, another IP: nobody's to take
            allowed("tap6"),         // 5: no row: orphan-tap6
            guest("fwd_allow", 6),   // 6: 172.16.0.6 is tap6's IP
            allowed("tap7"),         // 7: tap7 is held open: alive
        ];
        o.tables = vec![Table {
            family: NFPROTO_INET,
            name: "smolvm_policy_tap6".into(),
        }];
        let inv = inventory(&o);
        let vm = |id: &str| inv.vms.iter().find(|v| v.id == id).unwrap();
        assert_eq!(vm("vm-a").elems, [0, 1, 2, 3]);
        assert!(vm("vm-b").elems.is_empty());
        assert!(
            inv.warnings
                .iter()
                .any(|w| w.contains("vm-b: dnat_ext maps its port 2201 to 172.16.0.9")),
            "{:?}",
            inv.warnings
        );
        // The SDK VM's TAP, named only by its policy table and its allowed_taps element.
        let orphan = vm("orphan-tap6");
        assert_eq!(
            (orphan.taps.as_slice(), orphan.tables.as_slice()),
            (&[2][..], &[0][..])
        );
        assert_eq!(orphan.elems, [5, 6]);
        assert!(orphan.stale.is_some());
        assert!(
            inv.vms
                .iter()
                .all(|v| v.id != "orphan-tap7" && !v.elems.contains(&7))
        );
        assert_eq!(inv.kept, 1);
    }

    #[test]
    fn a_claim_file_a_live_sdk_process_holds_keeps_its_tap() {
        let mut o = obs(vec![]);
        o.links = vec![tap(6, "tap6")];
        o.elems = vec![allowed("tap6")];
        o.data_listing = vec![DirListing {
            dir: "/var/lib/smolvm".into(),
            resource_locks: vec!["ip-172.16.0.6.lock".into(), "vsock-3.lock".into()],
            ..DirListing::default()
        }];
        let inv = inventory(&o);
        let rels: Vec<&str> = inv.vms[0].files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            rels,
            ["locks/resources/ip-172.16.0.6.lock"],
            "vsock-3 names no VM here"
        );
        o.held_locks
            .insert("/var/lib/smolvm/locks/resources/ip-172.16.0.6.lock".into());
        let inv = inventory(&o);
        assert!(inv.vms.is_empty());
        assert_eq!(inv.kept, 1);
    }

    #[test]
    fn a_tap_claimed_by_a_row_is_never_an_orphan_or_tied_elsewhere() {
        let mut r = row("keepme", "created", None);
        r.taps = vec!["tap2".into()];
        let mut o = obs(vec![r]);
        o.links = vec![tap(2, "tap2")];
        o.rules = vec![
            ssh_rule("ghost", 2, 10),
            filter_rule(11, "smolvm:nat:tap:tap2:to:uplink0"),
        ];
        let inv = inventory(&o);
        assert_eq!(inv.vms.len(), 2);
        assert_eq!(inv.vms[0].taps, [0]);
        assert_eq!(inv.vms[0].rules, [1]);
        assert_eq!(inv.vms[1].id, "ghost");
        assert!(inv.vms[1].tap_names.is_empty());
        assert_eq!(inv.vms[1].rules, [0]);
    }

    #[test]
    fn named_ids_forms() {
        let dirs = [PathBuf::from("/var/lib/smolvm")];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ids = |v: &[&str]| named_ids(&s(v), Path::new("/tmp"), &dirs);
        assert_eq!(
            ids(&["firecracker", "--api-sock", "/tmp/fc-vm-1.sock"]),
            ["vm-1".to_string()].into()
        );
        assert_eq!(
            ids(&["firecracker", "--api-sock=/tmp/fc-vm-1.sock"]),
            ["vm-1".to_string()].into()
        );
        assert!(ids(&["firecracker", "--api-sock", "/var/tmp/fc-vm-1.sock"]).is_empty());
        assert_eq!(
            ids(&[
                "qemu-system-x86_64",
                "-drive",
                "file=/var/lib/smolvm/disks/web.ext4,format=raw"
            ]),
            ["web".to_string()].into()
        );
        assert_eq!(
            ids(&[
                "qemu-system-x86_64",
                "-qmp",
                "unix:/tmp/qmp-web.sock,server,nowait"
            ])
            .len(),
            1
        );
        assert_eq!(ids(&["firecracker", "--id", "vm-7"]), ["vm-7".to_string()].into());
        assert!(ids(&["firecracker", "--api-sock", "/tmp/fc-../x.sock"]).is_empty());
    }

    #[test]
    fn served_socket_without_a_known_vmm_is_refused() {
        let mut o = obs(vec![row("vm-1", "stopped", None)]);
        o.socket_names = vec!["fc-vm-1.sock".into()];
        o.served.insert("/tmp/fc-vm-1.sock".into());
        let inv = inventory(&o);
        assert!(inv.vms[0].refuse.is_some());
    }

    fn listed(o: &mut Observed, sockets: &[&str], top: &[&str], disks: &[&str]) {
        o.socket_names = sockets.iter().map(|s| s.to_string()).collect();
        o.data_listing = vec![DirListing {
            dir: "/var/lib/smolvm".into(),
            top: top.iter().map(|s| s.to_string()).collect(),
            disks: disks.iter().map(|s| s.to_string()).collect(),
            ..DirListing::default()
        }];
    }

    #[test]
    fn files_are_what_was_listed_minus_kept_disks() {
        let rels = |o: &Observed| -> Vec<String> {
            inventory(o).vms[0].files.iter().map(|f| f.rel.clone()).collect()
        };
        let mut o = obs(vec![row("vm-1", "stopped", None), row("vm-2", "stopped", None)]);
        listed(
            &mut o,
            &["fc-vm-1.sock", "vsock-vm-1.sock"],
            &["vm-1.log"],
            &["vm-1.ext4", "vm-2.ext4", "vm-2.ext4.retained"],
        );
        assert_eq!(
            rels(&o),
            ["fc-vm-1.sock", "vsock-vm-1.sock", "vm-1.log", "disks/vm-1.ext4"]
        );
        o.rows[0].retain_disk = true;
        assert_eq!(rels(&o), ["fc-vm-1.sock", "vsock-vm-1.sock", "vm-1.log"]);
        // A disk with a .retained marker is kept.
        assert!(inventory(&o).vms[1].files.is_empty());
    }
}

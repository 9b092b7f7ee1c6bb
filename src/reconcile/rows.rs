//! Rows and liveness: a VM with rows, its VMM (proven by command line and start time),
//! whether it is stale, and what shows it alive when no VMM of its own can be seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::network::{Claims, attach_claims, attach_network, attach_row_elems};
use super::{Index, START_SLACK_SECS};
use crate::model::{
    FileRef, Inventory, Life, Observed, ProcInfo, Project, Refusal, Role, Row, Stale, Status, View, Vm, Vmm,
    argv_paths, disk_id, libkrun_config_id, socket_id, valid_tap_name, valid_vm_id,
};

/// The VM ids a VMM's or sidecar's command line names: an API/QMP/vsock socket or a
/// libkrun config in the socket dir, a disk in a data dir's `disks/`, a path beneath a
/// data dir's `firmware/<id>/` (swtpm's state). Only paths of SmolVM's own: no release
/// passes `--id`, so a `firecracker --id <uuid>` of the jailer, firecracker-containerd,
/// Kata or a test harness names no VM of SmolVM's.
pub fn named_ids(cmdline: &[String], socket_dir: &Path, data_dirs: &[PathBuf]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for path in argv_paths(cmdline) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            continue;
        };
        if parent == socket_dir
            && let Some(id) = socket_id(name).or_else(|| libkrun_config_id(name))
        {
            ids.insert(id.to_string());
        }
        if data_dirs.iter().any(|d| parent == d.join("disks"))
            && let Some(id) = disk_id(name)
        {
            ids.insert(id.to_string());
        }
        for d in data_dirs {
            let firmware = d.join("firmware");
            let id = path
                .ancestors()
                .find(|a| a.parent() == Some(firmware.as_path()))
                .and_then(|a| a.file_name()?.to_str())
                .filter(|id| valid_vm_id(id));
            if let Some(id) = id {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

/// Is `p` a VMM whose command line names exactly this VM (in whatever view it runs)?
pub(super) fn names_only(p: &ProcInfo, id: &str, obs: &Observed, dirs: &[PathBuf]) -> bool {
    if p.role != Some(Role::Vmm) {
        return false;
    }
    let ids = named_ids(&p.cmdline, &obs.socket_dir, dirs);
    ids.len() == 1 && ids.contains(id)
}

/// The live VMM at the pid a row records that names this VM but does not run in our view
/// (pid, why): it may be this VM's, seen from a namespace we do not share, so the VM is
/// neither stale nor ours to touch.
fn row_vmm_elsewhere(row: &Row, obs: &Observed, dirs: &[PathBuf]) -> Option<(i32, String)> {
    let p = row
        .pid
        .and_then(|raw| i32::try_from(raw).ok())
        .and_then(|pid| obs.procs.get(&pid))?;
    // An exiting VMM's view can no longer be read: it is waited for (`judge_pid`).
    let exiting_unread = p.exiting && matches!(p.view, View::Unknown(_));
    if p.is_zombie() || exiting_unread || !names_only(p, &row.id, obs, dirs) {
        return None;
    }
    match &p.view {
        View::Ours => None,
        View::Elsewhere(why) | View::Unknown(why) => Some((p.pid, why.clone())),
    }
}

/// An exiting process at the pid a row records is that row's VMM when its command line
/// (while it still has one) names the VM, or, once its memory is gone, its command name
/// is a VMM's; and it started no later than the row was written (not a reused pid).
fn vmm_exiting(p: &ProcInfo, row: &Row, obs: &Observed, dirs: &[PathBuf]) -> bool {
    let named = if p.cmdline.is_empty() {
        crate::model::vmm_comm(&p.comm)
    } else {
        names_only(p, &row.id, obs, dirs)
    };
    let started = row
        .updated_unix
        .is_none_or(|t| p.start_unix <= t + START_SLACK_SECS);
    // Its view may be unreadable as it exits; one seen elsewhere is another's.
    named && started && !matches!(p.view, View::Elsewhere(_))
}

/// Judges the pid a row records. Ok: the VMM is alive and proven. Err: why it is stale.
pub(super) fn judge_pid(row: &Row, obs: &Observed, dirs: &[PathBuf]) -> Result<Vmm, Stale> {
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
    if p.exiting && vmm_exiting(p, row, obs, dirs) {
        return Err(Stale::Exiting(pid));
    }
    if p.is_zombie() {
        return Err(Stale::Zombie(pid));
    }
    if !names_only(p, &row.id, obs, dirs) || p.view != View::Ours {
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

/// Records an exiting VMM of the VM, and says so once.
fn exiting(vm: &mut Vm, p: &ProcInfo, warnings: &mut Vec<String>) {
    let v = Vmm {
        pid: p.pid,
        start_ticks: p.start_ticks,
    };
    if !vm.exiting.contains(&v) {
        vm.exiting.push(v);
        warnings.push(format!(
            "{}: its VMM pid {} is exiting (killed a moment ago?): the run waits for it before its \
             TAP and files go",
            vm.shown(),
            p.pid
        ));
    }
}

/// Judges a VM that has rows: its projects, its VMM, staleness, and its resources.
/// Whether something else shows it alive is `judge_life`'s, once every VM's VMM is known.
pub(super) fn judge_row_vm(vm: &mut Vm, obs: &Observed, ix: &Index<'_>, warnings: &mut Vec<String>) {
    let rows: Vec<&Row> = vm.rows.iter().map(|&i| &obs.rows[i]).collect();
    let dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = rows
            .iter()
            .filter_map(|r| obs.db_dirs.get(r.db).cloned())
            .collect();
        d.dedup();
        d
    };
    let mut projects: BTreeSet<Project> = rows.iter().map(|r| r.project).collect();
    // An id another DB's VM has too: what names the id is not told apart by it, so the
    // VM is only its rows' projects'.
    if vm.label.is_none() {
        projects.extend(ix.projects_by_id.get(vm.id.as_str()).into_iter().flatten());
    }
    vm.projects = projects.into_iter().collect();
    vm.created_unix = rows
        .iter()
        .filter_map(|r| r.created_unix.or(r.updated_unix))
        .reduce(f64::min);
    judge_vmm(vm, &rows, &dirs, obs, ix, warnings);
    attach_row_resources(vm, &rows, &dirs, obs, ix, warnings);
}

/// A VM with rows and no VMM of its own: something we cannot identify that uses its
/// socket, TAP or lock keeps it alive, so it is not stale whatever its pid says. A TAP
/// that another VM with a live VMM also claims (a SmolVM and a Celesto VM given the same
/// TAP) is that VM's sign of life, not this one's.
pub(super) fn judge_life(
    vm: &mut Vm,
    obs: &Observed,
    live_taps: &BTreeMap<String, BTreeSet<String>>,
    warnings: &mut Vec<String>,
) {
    let whose = Whose::of(vm, obs);
    // A socket its VMM kind never serves, or one another user serves, shows nothing of
    // it (anyone may listen on `/tmp/qmp-<id>.sock`): not its life, and not its file.
    if vm.vmms.is_empty() {
        let (foreign, own): (Vec<FileRef>, Vec<FileRef>) = std::mem::take(&mut vm.files)
            .into_iter()
            .partition(|f| obs.served.contains(&f.path()) && !whose.may_serve(f, obs));
        vm.files = own;
        for f in foreign {
            let by = obs.owners.get(&f.path()).map_or("?".to_string(), u32::to_string);
            warnings.push(format!(
                "{}: {} is served by uid {by}, not by this VM's own VMM; it shows nothing of it and is left alone",
                vm.id,
                f.path().display()
            ));
        }
    }
    // What an exiting VMM still holds (its TAP, its socket's backlog) is its own.
    if vm.vmms.is_empty()
        && vm.exiting.is_empty()
        && let Some(life) = signs_of_life(vm, obs, &whose, |tap| {
            live_taps
                .get(tap)
                .is_some_and(|ids| ids.iter().any(|id| *id != vm.id))
        })
    {
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
/// it. Sets its VMMs, whether a row says one should run, whether it is stale, and which
/// rows to mark.
pub(super) fn judge_vmm(
    vm: &mut Vm,
    rows: &[&Row],
    dirs: &[PathBuf],
    obs: &Observed,
    ix: &Index<'_>,
    warnings: &mut Vec<String>,
) {
    let newest_write = rows
        .iter()
        .filter_map(|r| r.updated_unix)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let mut stale_reason = None;
    let mut expects = false;
    let mut other_view = None;
    let mut dying = Vec::new();
    for (&ri, row) in vm.rows.iter().zip(rows) {
        if !row.status.expects_process() {
            continue;
        }
        expects = true;
        if let Some(seen) = row_vmm_elsewhere(row, obs, dirs) {
            other_view.get_or_insert(seen);
            continue;
        }
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
                if let Stale::Exiting(pid) = why {
                    dying.push(pid);
                }
                stale_reason.get_or_insert(why);
                if row.status != Status::Error || row.pid.is_some() {
                    vm.mark.push(ri);
                }
            }
        }
    }
    for p in dying.iter().filter_map(|pid| obs.procs.get(pid)) {
        exiting(vm, p, warnings);
    }
    for p in ix.vmms_by_id.get(vm.id.as_str()).into_iter().flatten() {
        if vm.vmms.iter().chain(&vm.exiting).any(|v| v.pid == p.pid) {
            continue;
        }
        // The id is another DB's VM's too: the VMM is this one's only when its command
        // line names a path in this VM's data dir (its disk); otherwise whose cannot be told.
        if vm.label.is_some() && !argv_paths(&p.cmdline).any(|a| dirs.iter().any(|d| a.starts_with(d))) {
            vm.refuse.get_or_insert(Refusal::Ambiguous(p.pid));
            continue;
        }
        if let Some(t) = newest_write
            && p.start_unix > t + START_SLACK_SECS
        {
            vm.refuse.get_or_insert(Refusal::StartedLate(p.pid));
            continue;
        }
        if p.exiting {
            stale_reason.get_or_insert(Stale::Exiting(p.pid));
            exiting(vm, p, warnings);
            continue;
        }
        vm.vmms.push(Vmm {
            pid: p.pid,
            start_ticks: p.start_ticks,
        });
    }
    // Its sidecars: their command line names it, and they started after its row was
    // made (one that started before is another VM's, reusing the id).
    for p in ix.sidecars_by_id.get(vm.id.as_str()).into_iter().flatten() {
        if vm
            .created_unix
            .is_none_or(|c| p.start_unix + START_SLACK_SECS >= c)
        {
            vm.sidecars.push(Vmm {
                pid: p.pid,
                start_ticks: p.start_ticks,
            });
        }
    }
    // A VMM naming it that we cannot inspect may be its own: cannot tell.
    if let Some(p) = ix.uninspected_by_id.get(vm.id.as_str()).and_then(|ps| ps.first())
        && let View::Unknown(why) = &p.view
    {
        other_view.get_or_insert((p.pid, why.clone()));
    }
    if let Some((pid, why)) = other_view {
        vm.refuse = Some(Refusal::OtherView(pid, why));
        vm.mark.clear();
        vm.expects_vmm = expects;
        return;
    }
    if expects && vm.vmms.is_empty() {
        vm.stale = stale_reason.or(Some(Stale::NoVmm));
    } else {
        // A VMM lives: the row is not stale, whatever its pid column says.
        vm.mark.clear();
    }
    vm.expects_vmm = expects;
}

/// The TAPs, rules, tables and files of a VM with rows; warns of what its rows name that
/// SmolVM could not have made.
pub(super) fn attach_row_resources(
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
    // A shared id's forwards state is its own project's (`~/.smolvm/`, `~/.celesto/`).
    let own_forwards = |f: &FileRef| {
        vm.label.is_none()
            || vm
                .projects
                .iter()
                .any(|p| f.root.ends_with(format!(".{}/forwards", p.names().key)))
    };
    let forwards = |f: &FileRef| obs.forwards.iter().any(|fl| fl.dir == f.root) && own_forwards(f);
    let ours = |f: &&FileRef| {
        (f.root == obs.socket_dir || dirs.contains(&f.root) || forwards(f))
            && !(retain && f.rel.starts_with("disks/"))
    };
    vm.files = ix
        .files_by_id
        .get(vm.id.as_str())
        .into_iter()
        .flatten()
        .filter(ours)
        .cloned()
        .collect();
    // Its browser sessions' directories (0.0.6+), in the data dir of its rows.
    for row in rows {
        let dir = obs.db_dirs.get(row.db);
        for sid in row.browser_sessions.iter().filter(|s| safe_name(s)) {
            let listed = obs
                .data_listing
                .iter()
                .any(|d| Some(&d.dir) == dir && d.browser_sessions.contains(sid));
            if let (true, Some(dir)) = (listed, dir) {
                vm.files
                    .push(FileRef::tree(dir, format!("browser-sessions/{sid}")));
            }
        }
    }
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

/// A name from the DB that may be used as one path component: no separator, no dot
/// name, nothing but `[A-Za-z0-9_-]` (SmolVM's session ids are `bs-<hex>`-like).
fn safe_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Whose a VM with rows is, for its signs of life: the owner of its rows' data dir, and
/// the sockets its VMM kind serves (`config.backend`). `any`: a VM with no row.
pub(super) struct Whose {
    owner: Option<u32>,
    sockets: Option<&'static [&'static str]>,
}

impl Whose {
    pub(super) fn any() -> Whose {
        Whose {
            owner: None,
            sockets: None,
        }
    }

    fn of(vm: &Vm, obs: &Observed) -> Whose {
        let rows: Vec<&Row> = vm.rows.iter().map(|&i| &obs.rows[i]).collect();
        let owner = rows
            .iter()
            .find_map(|r| obs.db_dirs.get(r.db).and_then(|d| obs.dir_owners.get(d)))
            .copied();
        let sockets: Option<&'static [&'static str]> = match rows.iter().find_map(|r| r.backend.as_deref()) {
            Some("firecracker") => Some(&["fc-", "vsock-"]),
            Some("qemu") => Some(&["qmp-"]),
            _ => None,
        };
        Whose { owner, sockets }
    }

    /// Root, or the VM's owner (an owner that cannot be read is given the benefit: alive).
    fn by_owner(&self, uid: Option<u32>) -> bool {
        match (self.owner, uid) {
            (Some(owner), Some(uid)) => uid == 0 || uid == owner,
            _ => true,
        }
    }

    /// May `f`, served, be this VM's VMM's socket?
    fn may_serve(&self, f: &FileRef, obs: &Observed) -> bool {
        let kind = f.root != obs.socket_dir
            || self
                .sockets
                .is_none_or(|ps| ps.iter().any(|p| f.rel.starts_with(p)));
        kind && self.by_owner(obs.owners.get(&f.path()).copied())
    }

    /// May a lock held by `holders` be held by this VM's create?
    fn may_hold(&self, holders: &[u32]) -> bool {
        holders.is_empty() || holders.iter().any(|&u| self.by_owner(Some(u)))
    }
}

/// What shows a VM alive when no VMM of its own can be seen: its socket still served (by
/// its VMM kind and its owner or root), its TAP held open (unless `held_by_another` says
/// whose it is), its create lock held (by its owner or root).
pub(super) fn signs_of_life(
    vm: &Vm,
    obs: &Observed,
    whose: &Whose,
    held_by_another: impl Fn(&str) -> bool,
) -> Option<Life> {
    let served = |f: &&FileRef| obs.served.contains(&f.path()) && whose.may_serve(f, obs);
    if let Some(f) = vm.files.iter().find(served) {
        return Some(Life::Served(f.path()));
    }
    let held = |li: usize| obs.links[li].carrier && !held_by_another(&obs.links[li].name);
    if let Some(&li) = vm.taps.iter().find(|&&li| held(li)) {
        return Some(Life::TapHeld(obs.links[li].name.clone()));
    }
    let lock = vm.files.iter().find(|f| {
        obs.held_locks.contains(&f.path())
            && whose.may_hold(obs.lock_holders.get(&f.path()).map_or(&[][..], Vec::as_slice))
    })?;
    Some(Life::LockHeld(lock.path()))
}

/// Seen from a pid namespace other than the host's (a container without `--pid=host`),
/// a VMM outside it is invisible, not gone. When a VM whose VMM cannot be seen still
/// shows life, or its row was written before this namespace began, the rows' pids cannot
/// be judged here: every VM whose VMM is unseen is then left alone, and stderr says once
/// why and what to change.
pub(super) fn out_of_view(inv: &mut Inventory, obs: &Observed) {
    if !obs.pid_view.foreign {
        return;
    }
    let unseen =
        |v: &Vm| v.expects_vmm && v.vmms.is_empty() && v.exiting.is_empty() && !v.rowless && !v.other_host;
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

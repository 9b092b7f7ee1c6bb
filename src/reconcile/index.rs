//! The index reconcile judges by: every observed object keyed by the VM id, TAP, IP or
//! port it names, within its project, built once per run so that judging N VMs costs
//! O(N), not O(N × rules).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use super::START_SLACK_SECS;
use super::network::{rule_tap, rule_vm_id};
use super::rows::named_ids;
use crate::model::{
    ElemMeaning, FileRef, Observed, ProcInfo, Project, Role, View, data_file_id, forward_file_id,
    libkrun_config_id, socket_id, valid_tap_name, valid_vm_id,
};

/// Lookups built once per run, so that judging N VMs costs O(N), not O(N × rules). Every
/// nft object is keyed by the project whose table holds it.
#[derive(Default)]
pub(super) struct Index<'a> {
    pub(super) link_by_name: HashMap<&'a str, usize>,
    pub(super) rules_by_id: BTreeMap<&'a str, Vec<usize>>,
    pub(super) rules_by_tap: HashMap<(Project, &'a str), Vec<usize>>,
    pub(super) table_by_tap: HashMap<(Project, &'a str), usize>,
    /// The projects whose rule comments or bridge aliases name each VM id.
    pub(super) projects_by_id: BTreeMap<&'a str, BTreeSet<Project>>,
    /// Elements of the projects' maps and sets: `allowed_taps` by TAP name, the others by
    /// the guest IP they carry, the port forwards also by host port.
    pub(super) elems_by_tap: HashMap<(Project, &'a str), Vec<usize>>,
    pub(super) elems_by_ip: HashMap<(Project, [u8; 4]), Vec<usize>>,
    pub(super) elems_by_port: HashMap<(Project, u16), Vec<usize>>,
    /// Live (non-zombie) VMM processes by the one VM id each names.
    pub(super) vmms_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live VMMs and sidecars whose view of the host could not be read, by the one VM id
    /// each names: cannot tell whose, so what they name is left alone.
    pub(super) uninspected_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live VMMs in our view started for a data dir that is not this run's (another CI
    /// job's), by the one VM id each names: that data dir's VMs, never ours.
    pub(super) foreign_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// Live sidecar processes by the VM they are proven to serve: swtpm by the one VM id
    /// its command line names, a port forward's ssh tunnel by its forwards JSON.
    pub(super) sidecars_by_id: BTreeMap<String, Vec<&'a ProcInfo>>,
    /// The files discovery listed, by the VM id their name carries (retained disks left out).
    pub(super) files_by_id: HashMap<&'a str, Vec<FileRef>>,
    /// Ids named by a file only SmolVM makes (an `fc-/qmp-/vsock-<id>.sock` socket, a
    /// `locks/<id>.create.lock`), with those files: unlike a log or disk name, these
    /// corroborate a VM, for files of their own owner.
    pub(super) named_by_file: BTreeMap<&'a str, Vec<FileRef>>,
    /// Bridge TAPs by the VM id their alias (`smolvm-bridge:<id>`, `celesto-bridge:<id>`) names.
    pub(super) taps_by_alias: BTreeMap<&'a str, Vec<&'a str>>,
    /// The data dirs that hold each `locks/resources/<name>` claim file.
    pub(super) resource_locks: HashMap<&'a str, Vec<&'a PathBuf>>,
}

impl<'a> Index<'a> {
    pub(super) fn new(obs: &'a Observed) -> Index<'a> {
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
                // An exiting VMM's view can no longer be read (its namespaces are being
                // released): it is judged as ours, since all it can be is waited for.
                let by_role = match (&p.view, p.role) {
                    (View::Elsewhere(_), _) | (_, None) => continue,
                    (View::Unknown(_), Some(Role::Vmm)) if p.exiting => &mut ix.vmms_by_id,
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
}

/// The network half of the index.
impl<'a> Index<'a> {
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

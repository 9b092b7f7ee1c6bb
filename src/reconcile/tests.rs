//! Unit tests of the pure reconcile rules, on hand-made observations. Longer than the
//! other rooms because each rule has its own scenario; they share one set of builders.

use std::path::{Path, PathBuf};

use super::network::{guest_ip_for_tap, rule_tap, rule_vm_id, tap_for_guest_ip};
use super::rows::named_ids;
use super::*;
use crate::model::{
    DirListing, Elem, Life, Link, NFPROTO_INET, NFPROTO_IPV4, PidView, ProcInfo, Project, Refusal, Row, Rule,
    Stale, Status, Table, View, Vmm,
};

pub fn row(id: &str, status: &str, pid: Option<i64>) -> Row {
    Row {
        db: 0,
        project: Project::SmolVM,
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
        backend: None,
        guest_ip: None,
        host_port: None,
        guest_port: None,
        vsock_cid: None,
        browser_sessions: vec![],
    }
}

fn proc(pid: i32, start: f64, cmd: &[&str]) -> ProcInfo {
    let cmdline: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    ProcInfo {
        pid,
        state: 'S',
        start_ticks: pid as u64 * 10,
        start_unix: start,
        comm: cmd.first().map_or(String::new(), |c| {
            c.rsplit('/').next().unwrap_or(c).chars().take(15).collect()
        }),
        exiting: false,
        role: crate::model::vm_role(&cmdline),
        cmdline,
        uid: 0,
        taps: vec![],
        view: crate::model::View::Ours,
        home: None,
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
        tun_owner: None,
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
    let s = Project::SmolVM;
    assert_eq!(rule_vm_id("smolvm:vm-1:ssh"), Some((s, "vm-1")));
    assert_eq!(rule_vm_id("smolvm:web:local:8080:80"), Some((s, "web")));
    assert_eq!(rule_vm_id("smolvm:nat:ssh"), Some((s, "nat")));
    assert_eq!(
        rule_vm_id("celesto:web:local:8080:80"),
        Some((Project::Celesto, "web"))
    );
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
    assert_eq!(rule_tap("smolvm:nat:tap:tap2:to:uplink0"), Some((s, "tap2")));
    assert_eq!(rule_tap("smolvm:egress:tap2:drop6"), Some((s, "tap2")));
    assert_eq!(
        rule_tap("celesto:egress:tap2:drop6"),
        Some((Project::Celesto, "tap2"))
    );
    assert_eq!(rule_tap("celestial:egress:tap2:drop6"), None);
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
    assert_eq!(guest_ip_for_tap("tap258"), Some([172, 16, 1, 2]));
    assert_eq!(guest_ip_for_tap("tap5"), Some([172, 16, 0, 5]));
    assert_eq!(guest_ip_for_tap("tap1"), None, "the gateway");
    assert_eq!(guest_ip_for_tap("svmb0a1b2c3d"), None);
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
        firmware: vec!["vm-4".into(), "lonely".into()],
        ..DirListing::default()
    }];
    o.held_locks
        .insert("/var/lib/smolvm/locks/vm-6.create.lock".into());
    o.vmms = vec![fc(70, 1.0, "vm-5")];
    for rel in [
        "firmware/vm-4",
        "locks/vm-4.create.lock",
        "vm-4.log",
        "disks/vm-4.ext4",
    ] {
        o.owners.insert(Path::new("/var/lib/smolvm").join(rel), 0);
    }
    let inv = inventory(&o);
    let ids: Vec<&str> = inv.vms.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(
        ids,
        ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6", "orphan-tap3"]
    );
    // A log or disk that nothing only SmolVM makes names is no VM: never touched.
    let lone: Vec<String> = inv.unattributed.iter().map(|f| f.rel.clone()).collect();
    assert_eq!(
        lone,
        [
            "backup.log",
            "disks/golden-image.ext4",
            "firmware/lonely",
            "smolvm.log"
        ]
    );
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
    assert_eq!(
        rels,
        [
            "firmware/vm-4",
            "locks/vm-4.create.lock",
            "vm-4.log",
            "disks/vm-4.ext4"
        ]
    );
    assert!(vm("vm-4").files[0].tree, "a firmware directory goes whole");
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
            .any(|w| w.contains("vm-b: smolvm_nat dnat_ext maps its port 2201 to 172.16.0.9")),
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

/// The files the plan gives each target, by id.
fn planned_files(o: &Observed, all: bool) -> Vec<(String, Vec<String>)> {
    let sel = crate::plan::Selection {
        all,
        prefix: "vm-".into(),
        min_age: None,
        now: 0.0,
    };
    let plan = crate::plan::build(&inventory(o), o, &sel);
    plan.targets
        .iter()
        .map(|t| (t.id.clone(), t.files.iter().map(|f| f.rel.clone()).collect()))
        .collect()
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
    assert_eq!(rels, ["locks/resources/ip-172.16.0.6.lock"]);
    // vsock-3 names no VM, no process holds it and no row has CID 3: a gone SDK VM's,
    // it goes with the target with no row of its data dir.
    assert_eq!(inv.free_claims.len(), 1);
    let claims = [
        "locks/resources/ip-172.16.0.6.lock",
        "locks/resources/vsock-3.lock",
    ];
    assert_eq!(
        planned_files(&o, false),
        [("orphan-tap6".to_string(), claims.map(String::from).to_vec())]
    );
    // A row with that CID: the claim is the row's, never the orphan's.
    let mut r = row("vm-cid", "stopped", None);
    r.vsock_cid = Some(3);
    let mut with_row = o.clone();
    with_row.rows = vec![r];
    assert!(inventory(&with_row).free_claims.is_empty());
    // A lock held in that data dir (a create under way may be claiming): it stays.
    let mut busy = o.clone();
    busy.data_listing[0].locks = vec!["vm-new.create.lock".into()];
    busy.held_locks
        .insert("/var/lib/smolvm/locks/vm-new.create.lock".into());
    assert!(inventory(&busy).free_claims.is_empty());
    // Another VM with no row in that data dir stays (alive): it may be its; with --all
    // (every VM a target) it goes.
    let mut live = o.clone();
    live.data_listing[0].locks = vec!["sbx-live.create.lock".into()];
    live.vmms = vec![fc(70, 1.0, "sbx-live")];
    let default = planned_files(&live, false);
    assert_eq!(
        default,
        [("orphan-tap6".to_string(), vec![claims[0].to_string()])]
    );
    let all = planned_files(&live, true);
    assert!(
        all.iter().any(|(_, f)| f.contains(&claims[1].to_string())),
        "{all:?}"
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
    // Another product's Firecracker: `--id` is no SmolVM name.
    assert!(ids(&["firecracker", "--id", "3f2b1c4d-0000-4000-8000-00000000abcd"]).is_empty());
    assert!(ids(&["firecracker", "--id", "vm-7", "--api-sock", "/run/fc/vm-7.sock"]).is_empty());
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
    let rels =
        |o: &Observed| -> Vec<String> { inventory(o).vms[0].files.iter().map(|f| f.rel.clone()).collect() };
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
    // Celesto 0.1.9+'s known-hosts file goes with its VM; alone, it names no VM.
    o.data_listing[0].known_hosts = vec!["vm-2.known_hosts".into(), "ghost.known_hosts".into()];
    let inv = inventory(&o);
    let vm2: Vec<&str> = inv.vms[1].files.iter().map(|f| f.rel.as_str()).collect();
    assert_eq!(vm2, ["ssh-known-hosts/vm-2.known_hosts"]);
    assert_eq!(inv.unattributed[0].rel, "ssh-known-hosts/ghost.known_hosts");
}

#[test]
fn smolvm_socket_paths_are_not_warned_about() {
    let mut fc = row("vm-1", "stopped", None);
    fc.socket_path = Some("/tmp/fc-vm-1.sock".into());
    let mut qmp = row("vm-2", "stopped", None);
    qmp.socket_path = Some("/tmp/qmp-vm-2.sock".into());
    let mut odd = row("vm-3", "stopped", None);
    odd.socket_path = Some("/run/other.sock".into());
    let inv = inventory(&obs(vec![fc, qmp, odd]));
    assert_eq!(inv.warnings.len(), 1, "{:?}", inv.warnings);
    assert!(inv.warnings[0].starts_with("vm-3: socket path"));
}

/// An SDK VM (no row, 0.0.30+) whose VMM lives: the TAP that VMM holds is its own, with
/// its policy table and elements, so `--all`, which stops the VMM, reclaims them too.
#[test]
fn the_tap_a_live_rowless_vmm_holds_is_that_vms() {
    let mut o = obs(vec![]);
    o.links = vec![tap(6, "tap6")];
    o.links[0].carrier = true;
    o.tables = vec![Table {
        family: NFPROTO_INET,
        name: "smolvm_policy_tap6".into(),
    }];
    o.elems = vec![allowed("tap6")];
    let mut vmm = fc(70, 1.0, "sbx-sdk");
    vmm.taps = vec!["tap6".into()];
    o.vmms = vec![vmm];
    let inv = inventory(&o);
    assert_eq!(inv.vms.len(), 1, "{:?}", inv.vms);
    let vm = &inv.vms[0];
    assert_eq!(vm.id, "sbx-sdk");
    assert_eq!(
        (vm.taps.as_slice(), vm.tables.as_slice(), vm.elems.as_slice()),
        (&[0][..], &[0][..], &[0][..])
    );
    assert_eq!(vm.live, Some(Life::Vmm(70)));
    assert_eq!(inv.kept, 0, "nothing is left aside as a held orphan");
    // A TAP a row has is never the row-less VM's, whoever holds it.
    let mut r = row("keepme", "stopped", None);
    r.taps = vec!["tap6".into()];
    o.rows = vec![r];
    let inv = inventory(&o);
    let sdk = inv.vms.iter().find(|v| v.id == "sbx-sdk").unwrap();
    assert!(sdk.taps.is_empty() && sdk.tables.is_empty());
}

/// A user may bind `/tmp/fc-<any name>.sock`: such a socket vouches for that user's own
/// files only, never root's; root's (or the kernel's) word vouches for any.
#[test]
fn what_names_a_vm_with_no_row_vouches_only_for_files_of_its_own_owner() {
    let mut o = obs(vec![]);
    o.socket_names = vec!["fc-golden-image.sock".into()];
    o.data_listing = vec![DirListing {
        dir: "/var/lib/smolvm".into(),
        top: vec!["golden-image.log".into()],
        disks: vec!["golden-image.ext4".into()],
        ..DirListing::default()
    }];
    let sock = PathBuf::from("/tmp/fc-golden-image.sock");
    let log = PathBuf::from("/var/lib/smolvm/golden-image.log");
    let disk = PathBuf::from("/var/lib/smolvm/disks/golden-image.ext4");
    o.owners.insert(sock.clone(), 1000);
    o.owners.insert(log.clone(), 0);
    o.owners.insert(disk.clone(), 1000);
    let inv = inventory(&o);
    assert_eq!(inv.vms.len(), 1);
    let files: Vec<PathBuf> = inv.vms[0].files.iter().map(FileRef::path).collect();
    assert_eq!(
        files,
        [sock.clone(), disk.clone()],
        "the user's own socket and disk only"
    );
    let lone: Vec<PathBuf> = inv.unattributed.iter().map(FileRef::path).collect();
    assert_eq!(
        lone,
        std::slice::from_ref(&log),
        "root's log is no file of the user's"
    );
    assert!(
        inv.warnings.iter().any(|w| w.contains("golden-image.log")),
        "{:?}",
        inv.warnings
    );

    // A file whose owner could not be read is vouched for by nothing but root.
    o.owners.remove(&disk);
    let inv = inventory(&o);
    assert_eq!(inv.vms[0].files.len(), 1);

    // Root's socket, or a rule comment, vouches for every file of the id.
    o.owners.insert(sock.clone(), 0);
    assert_eq!(inventory(&o).vms[0].files.len(), 3);
    o.owners.insert(sock, 1000);
    o.rules = vec![ssh_rule("golden-image", 9, 10)];
    assert_eq!(inventory(&o).vms[0].files.len(), 3);
}

/// A VMM in another view of the host (another network namespace, its own `/tmp`) runs
/// another VM, whatever it names; one whose view cannot be read may be anyone's.
#[test]
fn a_vmm_outside_our_view_is_never_a_vm_of_ours() {
    let elsewhere = View::Elsewhere("it runs in another network namespace".into());
    let unknown = View::Unknown("its namespaces cannot be read (Permission denied)".into());
    // With no row: no VM for what it names, and the socket it names stays.
    for view in [elsewhere.clone(), unknown.clone()] {
        let mut o = obs(vec![]);
        o.vmms = vec![ProcInfo {
            view: view.clone(),
            ..fc(70, 1.0, "sbx-sdklive")
        }];
        o.socket_names = vec!["fc-sbx-sdklive.sock".into()];
        o.owners.insert("/tmp/fc-sbx-sdklive.sock".into(), 0);
        let inv = inventory(&o);
        match view {
            View::Elsewhere(_) => {
                // Our own socket of that id is a leftover of ours, not its.
                assert_eq!(inv.vms.len(), 1);
                assert!(inv.vms[0].vmms.is_empty() && inv.vms[0].stale.is_some());
                assert!(inv.uninspected.is_empty());
            }
            _ => {
                assert!(inv.vms.is_empty(), "cannot tell: nothing is taken");
                assert_eq!(inv.uninspected.len(), 1, "{:?}", inv.uninspected);
                assert!(inv.uninspected[0].starts_with("pid 70 (firecracker) names sbx-sdklive, but"));
            }
        }
    }
    // At the pid a running row records, naming it: it may be its VMM, seen from a
    // namespace we do not share: neither stale nor touched.
    for view in [elsewhere, unknown] {
        let mut o = obs(vec![row("vm-1", "running", Some(70))]);
        o.procs.insert(
            70,
            ProcInfo {
                view: view.clone(),
                ..fc(70, 1.0, "vm-1")
            },
        );
        let inv = inventory(&o);
        let vm = &inv.vms[0];
        assert!(
            vm.stale.is_none() && vm.mark.is_empty() && vm.vmms.is_empty(),
            "{vm:?}"
        );
        assert!(matches!(vm.refuse, Some(Refusal::OtherView(70, _))), "{vm:?}");
    }
}

/// One id in two DBs is two VMs, each labelled; a VMM naming only the shared socket
/// cannot be told whose (both are refused), one naming a disk in one data dir is that
/// VM's alone.
#[test]
fn one_id_in_two_dbs_is_two_vms_and_a_vmm_is_attributed_only_by_proof() {
    let mut a = row("sbx-tesla", "running", None);
    a.updated_unix = Some(10.0);
    let mut b = Row {
        db: 1,
        project: Project::Celesto,
        ..a.clone()
    };
    b.taps = vec!["tap2".into()];
    let mut o = obs(vec![a, b]);
    o.db_dirs = vec!["/var/lib/smolvm".into(), "/var/lib/celesto".into()];
    o.data_dirs = o.db_dirs.clone();
    o.vmms = vec![fc(70, 1.0, "sbx-tesla")];
    let inv = inventory(&o);
    assert_eq!(inv.vms.len(), 2);
    let shown: Vec<String> = inv.vms.iter().map(Vm::shown).collect();
    assert_eq!(shown, ["sbx-tesla (SmolVM)", "sbx-tesla (Celesto)"]);
    for vm in &inv.vms {
        assert_eq!(vm.refuse, Some(Refusal::Ambiguous(70)), "{vm:?}");
        assert!(vm.vmms.is_empty());
    }
    o.vmms = vec![proc(
        70,
        1.0,
        &[
            "qemu-system-x86_64",
            "-drive",
            "file=/var/lib/celesto/disks/sbx-tesla.qcow2,format=qcow2",
        ],
    )];
    let inv = inventory(&o);
    assert!(
        inv.vms[0].vmms.is_empty() && inv.vms[0].stale.is_some(),
        "{:?}",
        inv.vms[0]
    );
    assert_eq!(inv.vms[1].vmms.len(), 1);
    assert!(inv.vms[1].stale.is_none() && inv.vms[1].refuse.is_none());
}

/// Issue 27, case 1: parallel CI jobs on one runner, each with its own data dir. Job B's
/// SDK VM (no row; its VMM's log is in B) and the TAP job B is still making (a claim
/// held in B, no VMM yet) are never job A's, with --all too; job A's own SDK VM is.
#[test]
fn another_data_dirs_live_vms_are_never_this_runs() {
    let home = |dir: &str, ours: bool| {
        Some(crate::model::Home {
            dir: dir.into(),
            by: crate::model::HomeBy::Log,
            ours,
        })
    };
    let mut o = obs(vec![]);
    o.links = vec![tap(6, "tap6"), tap(7, "tap7"), tap(8, "tap8")];
    o.links[0].carrier = true;
    o.links[2].carrier = true;
    o.tables = vec![Table {
        family: NFPROTO_INET,
        name: "smolvm_policy_tap6".into(),
    }];
    o.elems = vec![
        allowed("tap6"),
        allowed("tap7"),
        guest("fwd_allow", 7),
        allowed("tap8"),
    ];
    o.socket_names = vec!["fc-sbx-jobb.sock".into(), "fc-sbx-joba.sock".into()];
    let mut b = fc(70, 1.0, "sbx-jobb");
    b.taps = vec!["tap6".into()];
    b.home = home("/ci/job-b/smolvm", false);
    let mut a = fc(71, 1.0, "sbx-joba");
    a.taps = vec!["tap8".into()];
    a.home = home("/var/lib/smolvm", true);
    o.vmms = vec![b, a];
    o.foreign_claims = vec![crate::model::ForeignClaim {
        dir: "/ci/job-b/smolvm".into(),
        name: "ip-172.16.0.7.lock".into(),
        pid: 60,
    }];
    let inv = inventory(&o);
    let ids: Vec<&str> = inv.vms.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["sbx-joba"], "{:?}", inv.warnings);
    assert_eq!(inv.vms[0].taps, [2]);
    assert_eq!(inv.kept, 2, "job B's VM and the TAP it is making");
    let said = inv.warnings.join("\n");
    assert!(
        said.contains("sbx-jobb: VMM pid 70 is of data dir /ci/job-b/smolvm (by its log), not this run's")
            && said.contains("tap7: claimed by pid 60 in data dir /ci/job-b/smolvm (ip-172.16.0.7.lock)"),
        "{said}"
    );
    assert!(
        inv.unattributed.iter().all(|f| !f.rel.contains("jobb")),
        "{:?}",
        inv.unattributed
    );
    let all = planned_files(&o, true);
    assert_eq!(all.len(), 1, "{all:?}");

    // A stale row of ours given the TAP job B's VMM holds (SmolVM's SQLite allocator does
    // not look at the SDK's claims): the row goes, the TAP and its objects stay.
    let mut r = row("vm-old", "running", Some(4000));
    r.taps = vec!["tap6".into()];
    r.guest_ip = Some([172, 16, 0, 6]);
    o.rows = vec![r];
    let inv = inventory(&o);
    let old = inv.vms.iter().find(|v| v.id == "vm-old").unwrap();
    assert!(old.stale.is_some() && old.refuse.is_none(), "{old:?}");
    assert!(
        old.taps.is_empty() && old.tables.is_empty() && old.elems.is_empty(),
        "{old:?}"
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.contains("vm-old: its TAP tap6 is held by VMM pid 70 of data dir /ci/job-b/smolvm")),
        "{:?}",
        inv.warnings
    );
}

/// Rows of a DB other hosts share (PostgreSQL): a row is this host's only when something
/// here names its VM by its id; any other is never stale, never marked, never a target
/// (with --all too), and listed once. A TAP named only by the pool, or a file on a
/// network filesystem, proves nothing.
#[test]
fn a_shared_dbs_row_is_this_hosts_only_when_something_here_names_it() {
    let mut o = obs(vec![
        row("sbx-disk", "running", Some(500)),
        row("sbx-rule", "running", Some(501)),
        row("sbx-vmm", "running", Some(502)),
        row("sbx-far", "running", Some(503)),
        row("sbx-tap", "running", None),
        row("sbx-nfs", "running", None),
        row("vm-far", "created", None),
    ]);
    o.rows[4].taps = vec!["tap4".into()];
    o.shared_dbs.insert(0);
    o.data_listing = vec![DirListing {
        dir: "/var/lib/smolvm".into(),
        disks: vec!["sbx-disk.ext4".into()],
        ..DirListing::default()
    }];
    o.rules = vec![rule(NFPROTO_IPV4, "smolvm_nat", 1, "smolvm:sbx-rule:ssh")];
    o.procs.insert(502, fc(502, 990.0, "sbx-vmm"));
    o.vmms = vec![fc(502, 990.0, "sbx-vmm")];
    // Pid 503 here is an unrelated process: another host's row records it.
    o.procs.insert(503, proc(503, 10.0, &["sleep", "1000"]));
    o.links = vec![tap(4, "tap4")];
    // sbx-nfs's log is in a data dir on NFS.
    o.data_dirs.push("/nfs/smolvm".into());
    o.remote_dirs.insert("/nfs/smolvm".into());
    o.data_listing.push(DirListing {
        dir: "/nfs/smolvm".into(),
        top: vec!["sbx-nfs.log".into()],
        ..DirListing::default()
    });
    // The DB's data dir is the NFS one: sbx-disk's disk in the local dir is not its data
    // dir's, so nothing here names it (the local case is below).
    o.db_dirs = vec!["/nfs/smolvm".into()];
    let inv = inventory(&o);
    let by = |id: &str| inv.vms.iter().find(|v| v.id == id).unwrap();
    for far in ["sbx-far", "sbx-tap", "sbx-nfs", "vm-far", "sbx-disk"] {
        let v = by(far);
        assert!(v.other_host, "{far}");
        assert!(
            v.stale.is_none() && v.mark.is_empty() && v.vmms.is_empty(),
            "{far}"
        );
    }
    assert!(!by("sbx-rule").other_host && by("sbx-rule").stale.is_some());
    assert!(!by("sbx-vmm").other_host && by("sbx-vmm").stale.is_none());
    assert_eq!(
        inv.other_hosts,
        ["sbx-disk", "sbx-far", "sbx-tap", "sbx-nfs", "vm-far"]
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.starts_with("sbx-tap: its row is in a DB other hosts share, and TAP tap4 is here")),
        "{:?}",
        inv.warnings
    );
    let sel = crate::plan::Selection {
        all: true,
        prefix: "vm-".into(),
        min_age: None,
        now: 2000.0,
    };
    let plan = crate::plan::build(&inv, &o, &sel);
    let ids: Vec<&str> = plan.targets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["sbx-rule", "sbx-vmm"]);
    // A TAP a far row names stays, even with --all.
    assert!(plan.targets.iter().all(|t| t.taps.is_empty()));

    // A local data dir: the disk names sbx-disk, which is then this host's and stale.
    o.db_dirs = vec!["/var/lib/smolvm".into()];
    let inv = inventory(&o);
    let disk = inv.vms.iter().find(|v| v.id == "sbx-disk").unwrap();
    assert!(!disk.other_host && disk.stale.is_some());
    // Told the DB is this host's alone, every row is judged as a SQLite row is.
    o.shared_dbs.clear();
    let inv = inventory(&o);
    assert!(inv.other_hosts.is_empty());
    let far = inv.vms.iter().find(|v| v.id == "sbx-far").unwrap();
    assert_eq!(far.stale, Some(Stale::OtherProcess(503, "sleep".into())));
    assert!(far.vmms.is_empty(), "an unrelated process is never a VMM of its");
}

/// A VMM killed a moment before the run is still exiting: its threads still hold the
/// TAP (carrier) and its command line may already be gone. It is no sign of life: the
/// VM is stale, the exiting VMM is waited for (it is in the target's processes), and
/// what it holds goes with it. Only a process whose command name is a VMM's and that
/// started before the row was written counts; an exiting stranger at the pid does not.
#[test]
fn a_vmm_still_exiting_is_waited_for_not_taken_for_life() {
    let mut o = obs(vec![row("sbx-dying", "running", Some(500))]);
    o.rows[0].taps = vec!["tap2".into()];
    o.links = vec![Link {
        carrier: true,
        ..tap(2, "tap2")
    }];
    // Its memory is gone: no command line, only its name in stat.
    let dying = ProcInfo {
        cmdline: vec![],
        role: None,
        exiting: true,
        ..proc(500, 990.0, &["qemu-system-x86_64"])
    };
    o.procs.insert(500, dying.clone());
    let inv = inventory(&o);
    let vm = &inv.vms[0];
    assert_eq!(vm.stale, Some(Stale::Exiting(500)));
    assert_eq!(
        vm.exiting,
        [Vmm {
            pid: 500,
            start_ticks: 5000
        }]
    );
    assert!(vm.vmms.is_empty() && vm.live.is_none() && vm.refuse.is_none());
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.contains("its VMM pid 500 is exiting")),
        "{:?}",
        inv.warnings
    );
    let sel = crate::plan::Selection {
        all: false,
        prefix: "vm-".into(),
        min_age: None,
        now: 2000.0,
    };
    let plan = crate::plan::build(&inv, &o, &sel);
    assert_eq!(
        plan.targets[0].vmms,
        [Vmm {
            pid: 500,
            start_ticks: 5000
        }]
    );
    assert_eq!(plan.targets[0].taps.len(), 1);

    // Still with its command line (killed an instant ago): the same.
    let mut o2 = o.clone();
    o2.procs.insert(
        500,
        ProcInfo {
            exiting: true,
            ..fc(500, 990.0, "sbx-dying")
        },
    );
    o2.vmms = vec![ProcInfo {
        exiting: true,
        ..fc(500, 990.0, "sbx-dying")
    }];
    let inv = inventory(&o2);
    assert_eq!(inv.vms[0].stale, Some(Stale::Exiting(500)));
    assert!(inv.vms[0].vmms.is_empty());

    // An exiting process that is no VMM, or one started after the row: another's.
    for stranger in [
        ProcInfo {
            exiting: true,
            cmdline: vec![],
            role: None,
            ..proc(500, 990.0, &["sleep"])
        },
        ProcInfo {
            start_unix: 1500.0,
            ..dying.clone()
        },
    ] {
        let mut o3 = o.clone();
        o3.procs.insert(500, stranger);
        let inv = inventory(&o3);
        assert!(inv.vms[0].exiting.is_empty(), "{:?}", inv.vms[0]);
        // The TAP held open by something unidentified keeps it alive, as before.
        assert!(inv.vms[0].refuse.is_some());
    }
}

/// An exiting VMM's namespaces are released as it exits, so its view cannot be read: it
/// is still this VM's exiting VMM (waited for), not "cannot tell"; one seen in another
/// view is another's.
#[test]
fn an_exiting_vmm_whose_view_cannot_be_read_is_waited_for() {
    let mut o = obs(vec![row("sbx-dying", "running", Some(500))]);
    let unread = ProcInfo {
        exiting: true,
        view: View::Unknown("its namespaces cannot be read".into()),
        ..fc(500, 990.0, "sbx-dying")
    };
    o.procs.insert(500, unread.clone());
    o.vmms = vec![unread.clone()];
    let inv = inventory(&o);
    assert_eq!(inv.vms[0].stale, Some(Stale::Exiting(500)));
    assert!(inv.vms[0].refuse.is_none() && inv.uninspected.is_empty());
    let elsewhere = ProcInfo {
        view: View::Elsewhere("another network namespace".into()),
        ..unread
    };
    o.procs.insert(500, elsewhere.clone());
    o.vmms = vec![elsewhere];
    let inv = inventory(&o);
    assert!(inv.vms[0].exiting.is_empty());
    assert!(matches!(inv.vms[0].refuse, Some(Refusal::OtherView(500, _))));
}

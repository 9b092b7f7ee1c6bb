//! End-to-end runs on state built like SmolVM's: default run, `--prefix`, `--all`,
//! `--dry-run`, nothing to do, a protected VM, running twice, QEMU.

use crate::util::{Proc, VmSpec, World, comments, fake_vmm, has_link, links, pid_alive, probe_world, sh};

/// A VM id's per-VM rule comments as SmolVM 0.0.5 writes them.
fn vm_comments(id: &str, tap: &str) -> Vec<String> {
    let mut v = vec![format!("smolvm:nat:tap:{tap}:to:uplink0")];
    v.extend(std::iter::repeat_n(format!("smolvm:{id}:ssh"), 4));
    v
}

fn globals() -> Vec<String> {
    vec![
        "smolvm:global:forward:established".into(),
        "smolvm:global:forward:tap-isolation".into(),
        "smolvm:global:nat:masquerade:uplink0".into(),
    ]
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn assert_only_keepme_left(w: &World) {
    assert_eq!(links(), ["lo", "tap5", "uplink0", "uplink0p"]);
    let mut want = globals();
    want.extend(vm_comments("keepme", "tap5"));
    assert_eq!(comments(), sorted(want));
    assert_eq!(w.ids(), ["keepme"]);
    assert_eq!(w.child_rows("ip_leases"), ["keepme"]);
    assert_eq!(w.child_rows("ssh_forwards"), ["keepme"]);
    let files: Vec<String> = w.files().into_keys().filter(|f| !f.starts_with("bin")).collect();
    assert_eq!(
        files,
        [
            "data/",
            "data/disks/",
            "data/disks/keepme.ext4",
            "data/keepme.log",
            "data/smolvm.db",
            "sock/"
        ]
    );
}

#[test]
fn default_run_cleans_stale_and_prefixed_vms_and_nothing_else() {
    let Some(mut w) = probe_world("default", true) else {
        return;
    };
    let live = w.vmm_pid("vm-aaaa0001");
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (4):\n  - vm-aaaa0001\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
         Deleted: vm-aaaa0001\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\n\
         Cleanup complete.\n",
    );
    assert!(!pid_alive(live), "the live VM's VMM was stopped");
    assert!(w.reap("vm-aaaa0001"));
    assert_only_keepme_left(&w);
}

#[test]
fn running_twice_is_safe() {
    let Some(w) = probe_world("twice", true) else {
        return;
    };
    assert_eq!(w.run(&[]).code, 0);
    let r = w.run(&[]);
    r.expect(0, "No matching VMs to clean.\n");
    assert_only_keepme_left(&w);
}

#[test]
fn prefix_targets_other_ids_and_stale_vms_always() {
    let Some(w) = probe_world("prefix", true) else {
        return;
    };
    let r = w.run(&["--prefix", "keep"]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (3):\n  - keepme\n  - vm-bbbb0002\n  - vm-dddd0004\n\
         Deleted: keepme\nDeleted: vm-bbbb0002\nDeleted: vm-dddd0004\nCleanup complete.\n",
    );
    // The live VM and the stopped one are not targets: fully intact.
    assert_eq!(w.ids(), ["vm-aaaa0001", "vm-cccc0003"]);
    assert_eq!(links(), ["lo", "tap2", "tap4", "uplink0", "uplink0p"]);
    let mut want = globals();
    want.extend(vm_comments("vm-aaaa0001", "tap2"));
    want.extend(vm_comments("vm-cccc0003", "tap4"));
    assert_eq!(comments(), sorted(want));
    assert!(pid_alive(w.vmm_pid("vm-aaaa0001")));
    assert!(w.data.join("vm-cccc0003.log").exists());
    assert!(w.socket_path("vm-aaaa0001").exists());
    assert!(!w.data.join("keepme.log").exists());
}

#[test]
fn all_targets_every_vm_in_db_order() {
    let Some(mut w) = probe_world("all", true) else {
        return;
    };
    let r = w.run(&["--all", "--prefix", "ignored"]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (5):\n  - vm-aaaa0001\n  - vm-bbbb0002\n  - vm-cccc0003\n  - keepme\n  - vm-dddd0004\n\
         Deleted: vm-aaaa0001\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: keepme\nDeleted: vm-dddd0004\n\
         Cleanup complete.\n",
    );
    assert!(w.reap("vm-aaaa0001"));
    assert_eq!(links(), ["lo", "uplink0", "uplink0p"]);
    // No VM is left: SmolVM's shared tables go too.
    assert_eq!(crate::util::ruleset(), "");
    assert!(w.ids().is_empty());
    assert!(w.child_rows("ip_leases").is_empty());
}

#[test]
fn dry_run_changes_nothing_at_all() {
    let Some(mut w) = probe_world("dry", true) else {
        return;
    };
    let before = w.snapshot();
    let r = w.run(&["--dry-run"]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n\
         Targets (4):\n  - vm-aaaa0001\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
         Dry run complete. No changes made.\n",
    );
    let r = w.run(&["--dry-run", "--all"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Targets (5):\n"), "{}", r.stdout);
    // DB bytes, ruleset, links, files and processes: all unchanged, and no lock file made.
    w.snapshot().assert_same(&before);
}

#[test]
fn nothing_to_do_leaves_a_protected_vm_alone() {
    let Some(mut w) = World::new("none") else { return };
    w.add(VmSpec::new("keepme", "created", 5));
    w.add(VmSpec {
        proc: Proc::Firecracker,
        ..VmSpec::new("web", "running", 7)
    });
    let before = w.snapshot();
    w.run(&[]).expect(0, "No matching VMs to clean.\n");
    // The run took its lock (the file stays); nothing else changed.
    w.snapshot().assert_same(&before);
    assert!(pid_alive(w.vmm_pid("web")));
}

#[test]
fn qemu_vm_without_tap_is_stopped_and_removed() {
    let Some(mut w) = World::new("qemu") else { return };
    w.add(VmSpec {
        octet: None,
        proc: Proc::Qemu,
        ..VmSpec::new("vm-qemu0001", "running", 0)
    });
    let pid = w.vmm_pid("vm-qemu0001");
    w.run(&[]).expect(
        0,
        "Targets (1):\n  - vm-qemu0001\nDeleted: vm-qemu0001\nCleanup complete.\n",
    );
    assert!(!pid_alive(pid));
    assert!(w.reap("vm-qemu0001"));
    assert!(w.ids().is_empty());
    assert!(!w.sock.join("qmp-vm-qemu0001.sock").exists());
    assert!(!w.data.join("disks/vm-qemu0001.qcow2").exists());
}

#[test]
fn unrelated_links_rules_and_processes_survive() {
    let Some(mut w) = World::new("unrelated") else {
        return;
    };
    w.add(VmSpec::stale("vm-gone0001", 2));
    // Look-alikes that are not SmolVM's: a TAP no row names, a veth named like a TAP,
    // a rule without a smolvm comment in SmolVM's table, another table, a process.
    sh("ip tuntap add tap99 mode tap && ip link add tap98 type veth peer name vethx");
    crate::util::nft(
        "add rule inet smolvm_filter forward iifname \"tap2\" counter accept comment \"operator:tap2\"
         add rule inet smolvm_filter forward iifname \"tap2\" counter accept
         add table inet other
         add chain inet other c
         add rule inet other c counter accept comment \"smolvm:vm-gone0001:ssh\"",
    );
    let mut sleeper = fake_vmm::spawn_unrelated();
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-gone0001\nTargets (1):\n  - vm-gone0001\nDeleted: vm-gone0001\nCleanup complete.\n",
    );
    assert!(!has_link("tap2"));
    for l in ["tap99", "tap98", "vethx"] {
        assert!(has_link(l), "{l} is not SmolVM's");
    }
    let c = comments();
    assert!(c.contains(&"operator:tap2".to_string()));
    assert_eq!(
        c.iter().filter(|x| *x == "smolvm:vm-gone0001:ssh").count(),
        1,
        "the rule in table other stays"
    );
    assert!(crate::util::ruleset().contains("iifname \"tap2\" counter packets 0 bytes 0 accept # handle"));
    assert!(pid_alive(sleeper.id()));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn newer_smolvm_objects_go_with_their_vm_and_look_alikes_stay() {
    let Some(mut w) = World::new("newer") else { return };
    w.add(VmSpec::stale("vm-new00001", 2));
    // SmolVM 0.0.32+ gives each TAP its own policy table; tap9's belongs to no VM here,
    // so it is a leftover of a VM whose row is gone (`orphan-tap9`).
    crate::util::nft(
        "add table inet smolvm_policy_tap2
         add chain inet smolvm_policy_tap2 forward { type filter hook forward priority -10; policy accept; }
         add rule inet smolvm_policy_tap2 forward iifname \"tap2\" oifname \"tap*\" drop
         add table inet smolvm_policy_tap9
         add chain inet smolvm_policy_tap9 forward { type filter hook forward priority -10; policy accept; }",
    );
    // Bridge mode (0.0.27+): `svmb<8 hex>` TAPs carry the owner in their alias.
    sh("ip tuntap add svmb0a1b2c3d mode tap && ip link set svmb0a1b2c3d alias smolvm-bridge:vm-brg00001");
    sh("ip tuntap add svmb0a1b2c3e mode tap && ip link set svmb0a1b2c3e alias smolvm-bridge:someone-else");
    for (id, tap) in [("vm-brg00001", "svmb0a1b2c3d"), ("vm-brg00002", "svmb0a1b2c3e")] {
        w.conn()
            .execute(
                "INSERT INTO vms VALUES (?1, 'stopped', '{}', ?2, NULL, NULL, 'x', 'x')",
                [id, &format!(r#"{{"tap_device":"{tap}","mode":"bridge"}}"#)],
            )
            .unwrap();
    }
    // Through --db this time: its directory is the data dir.
    let out = crate::util::bin()
        .arg("--db")
        .arg(&w.db)
        .arg("--socket-dir")
        .arg(&w.sock)
        .output()
        .unwrap();
    let r = crate::util::Run::from(out);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap9, vm-new00001\nTargets (4):\n  - orphan-tap9\n  - vm-brg00001\n\
         \x20 - vm-brg00002\n  - vm-new00001\nDeleted: orphan-tap9\nDeleted: vm-brg00001\nDeleted: vm-brg00002\n\
         Deleted: vm-new00001\nCleanup complete.\n",
    );
    assert!(
        r.stderr
            .contains("vm-brg00002: link svmb0a1b2c3e is not SmolVM's TAP"),
        "{}",
        r.stderr
    );
    assert_eq!(links(), ["lo", "svmb0a1b2c3e", "uplink0", "uplink0p"]);
    let rs = crate::util::ruleset();
    assert!(!rs.contains("smolvm_policy_tap2"), "{rs}");
    assert!(!rs.contains("smolvm_policy_tap9"), "{rs}");
    assert!(w.ids().is_empty());
    assert!(!w.data.join("vm-new00001.log").exists());
}

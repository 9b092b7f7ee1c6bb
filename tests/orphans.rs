//! Recovery from the live system: leftovers that no row describes, a lost or corrupt DB,
//! several data dirs, and the shared tables going away with `--all`.

use crate::util::{
    Proc, Run, Scratch, VmSpec, World, bin, comments, enter_netns, fake_vmm, has_link, hold_tap, links, nft,
    pid_alive, probe_world, ruleset, sh, smolvm_base_nft, smolvm_vm_nft,
};

pub const ALL_FOUR: &str = "Reconciled stale VMs: keepme, vm-bbbb0002, vm-cccc0003, vm-dddd0004\n\
     Targets (4):\n  - keepme\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
     Deleted: keepme\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\nCleanup complete.\n";

pub fn globals() -> Vec<String> {
    vec![
        "smolvm:global:forward:established".into(),
        "smolvm:global:forward:tap-isolation".into(),
        "smolvm:global:nat:masquerade:uplink0".into(),
    ]
}

/// Nothing of any VM is left: no TAP, no per-VM rule, no socket, log or disk.
pub fn assert_host_clean(w: &World) {
    assert_eq!(links(), ["lo", "uplink0", "uplink0p"]);
    assert_eq!(comments(), globals());
    let left: Vec<String> = w
        .files()
        .into_keys()
        .filter(|f| f.ends_with(".sock") || f.ends_with(".log") || f.ends_with(".ext4"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn db_removed_everything_is_reclaimed_from_the_host() {
    let Some(w) = probe_world("dbgone", false) else {
        return;
    };
    // SmolVM's "State Database Corruption" recipe: back up, remove, run cleanup.
    let backup = w.scratch.0.join("smolvm.db.bak");
    std::fs::rename(&w.db, &backup).unwrap();
    let r = w.run_found(&[]);
    r.expect(0, ALL_FOUR);
    assert!(r.stderr.contains("no state DB found"), "{}", r.stderr);
    assert_host_clean(&w);
    assert!(!w.db.exists(), "no DB is created");
    assert!(backup.exists());
}

#[test]
fn a_vm_id_with_no_row_is_stale_next_to_rows_that_keep_theirs() {
    let Some(mut w) = World::new("ghost") else { return };
    w.add(VmSpec::new("keepme", "created", 5));
    w.add(VmSpec::new("web", "stopped", 7));
    // What a VM "ghost-vm" left: its TAP (with SmolVM's address and route), its rules, its log.
    sh("ip tuntap add tap9 mode tap && ip link set tap9 up");
    nft(&smolvm_vm_nft("ghost-vm", 9, 2209, "uplink0"));
    std::fs::write(w.data.join("ghost-vm.log"), b"log").unwrap();
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: ghost-vm\nTargets (1):\n  - ghost-vm\nDeleted: ghost-vm\nCleanup complete.\n",
    );
    assert_eq!(links(), ["lo", "tap5", "tap7", "uplink0", "uplink0p"]);
    assert!(
        !comments()
            .iter()
            .any(|c| c.contains("ghost-vm") || c.contains("tap9"))
    );
    assert_eq!(
        comments()
            .iter()
            .filter(|c| c.contains("keepme") || c.contains("tap5"))
            .count(),
        5
    );
    assert_eq!(
        comments()
            .iter()
            .filter(|c| c.contains(":web:") || c.contains("tap7"))
            .count(),
        5
    );
    assert!(!w.data.join("ghost-vm.log").exists());
    assert_eq!(w.ids(), ["keepme", "web"]);
}

#[test]
fn a_tap_named_only_by_a_rule_is_an_orphan_unless_a_process_holds_it() {
    let Some(w) = World::new("orphantap") else { return };
    sh("ip tuntap add tap11 mode tap && ip tuntap add tap12 mode tap && ip link set tap12 up");
    nft("add rule inet smolvm_filter forward iifname \"tap11\" oifname \"uplink0\" counter accept comment \"smolvm:nat:tap:tap11:to:uplink0\"
         add rule inet smolvm_filter forward iifname \"tap11\" counter accept comment \"smolvm:egress:tap11:allow\"
         add rule inet smolvm_filter forward iifname \"tap12\" oifname \"uplink0\" counter accept comment \"smolvm:nat:tap:tap12:to:uplink0\"");
    let holder = hold_tap("tap12");
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap11\nTargets (1):\n  - orphan-tap11\nDeleted: orphan-tap11\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains("tap12: a live process holds this TAP"),
        "{}",
        r.stderr
    );
    assert!(!has_link("tap11"));
    assert!(has_link("tap12"));
    let c = comments();
    assert!(!c.iter().any(|c| c.contains("tap11")));
    assert!(c.contains(&"smolvm:nat:tap:tap12:to:uplink0".to_string()));
    drop(holder);
}

#[test]
fn a_live_vmm_without_a_row_is_reported_and_only_all_stops_it() {
    let Some(mut w) = World::new("liverowless") else {
        return;
    };
    let mut vmm = fake_vmm::spawn(&w, "vm-live0001", Proc::Firecracker, None);
    std::fs::write(w.data.join("vm-live0001.log"), b"log").unwrap();
    w.add(VmSpec::new("keepme", "created", 5));
    let before = w.snapshot();
    let r = w.run(&[]);
    r.expect(0, "No matching VMs to clean.\n");
    assert!(
        r.stderr.contains("vm-live0001: has no state row but is alive"),
        "{}",
        r.stderr
    );
    assert!(pid_alive(vmm.id()));
    w.snapshot().assert_same(&before);

    w.run(&["--all"]).expect(
        0,
        "Targets (2):\n  - keepme\n  - vm-live0001\nDeleted: keepme\nDeleted: vm-live0001\nCleanup complete.\n",
    );
    assert!(!pid_alive(vmm.id()));
    vmm.wait().unwrap();
    assert!(!w.socket_path("vm-live0001").exists());
    assert!(!w.data.join("vm-live0001.log").exists());
}

#[test]
fn dry_run_lists_rows_and_orphans_and_changes_nothing() {
    let Some(mut w) = probe_world("mixeddry", false) else {
        return;
    };
    w.add(VmSpec::running("vm-aaaa0001", 2));
    sh("ip tuntap add tap9 mode tap && ip tuntap add tap11 mode tap");
    nft(&smolvm_vm_nft("ghost-vm", 9, 2209, "uplink0"));
    nft(
        "add rule inet smolvm_filter forward iifname \"tap11\" oifname \"uplink0\" counter accept comment \"smolvm:nat:tap:tap11:to:uplink0\"",
    );
    // A disk that nothing else names is no VM's (a user's base image): never a target.
    std::fs::write(w.data.join("disks/lost-vm.ext4"), b"disk").unwrap();
    let before = w.snapshot();
    let r = w.run(&["--dry-run"]);
    r.expect(
        0,
        "Reconciled stale VMs: ghost-vm, orphan-tap11, vm-bbbb0002, vm-dddd0004\n\
         Targets (6):\n  - ghost-vm\n  - orphan-tap11\n  - vm-aaaa0001\n  - vm-bbbb0002\n\
         \x20 - vm-cccc0003\n  - vm-dddd0004\nDry run complete. No changes made.\n",
    );
    let r = w.run(&["--dry-run", "--all"]);
    assert!(
        r.stdout.contains(
            "Targets (7):\n  - vm-bbbb0002\n  - vm-cccc0003\n  - keepme\n  - vm-dddd0004\n  - vm-aaaa0001\n  - ghost-vm\n  - orphan-tap11\n"
        ),
        "{}",
        r.stdout
    );
    w.snapshot().assert_same(&before);
    // And the real run takes them all.
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: ghost-vm, orphan-tap11, vm-bbbb0002, vm-dddd0004\n\
         Targets (6):\n  - ghost-vm\n  - orphan-tap11\n  - vm-aaaa0001\n  - vm-bbbb0002\n\
         \x20 - vm-cccc0003\n  - vm-dddd0004\nDeleted: ghost-vm\nDeleted: orphan-tap11\n\
         Deleted: vm-aaaa0001\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\nCleanup complete.\n",
    );
    assert_eq!(links(), ["lo", "tap5", "uplink0", "uplink0p"]);
    assert_eq!(std::fs::read(w.data.join("disks/lost-vm.ext4")).unwrap(), b"disk");
    assert!(w.reap("vm-aaaa0001"));
}

#[test]
fn a_locked_db_keeps_rowless_leftovers_alone() {
    let Some(w) = probe_world("lockeddb", false) else {
        return;
    };
    sh("ip tuntap add tap9 mode tap");
    nft(&smolvm_vm_nft("ghost-vm", 9, 2209, "uplink0"));
    let c = rusqlite::Connection::open(&w.db).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = w.run(&["--timeout", "2s"]);
    let dry = w.run(&["--timeout", "1s", "--dry-run"]);
    let json = w.run(&["--timeout", "1s", "--json"]);
    c.execute_batch("ROLLBACK").unwrap();
    // Rows cannot be read: nothing the host shows may be taken for an orphan, and the run
    // says it could not look (exit 1), never "No matching VMs to clean.".
    let why = format!(
        "cannot open state DB {}: database is locked (DatabaseBusy)",
        w.db.display()
    );
    r.expect(1, &format!("Cleanup incomplete: {why}\n"));
    assert!(r.stderr.contains("could not be read"), "{}", r.stderr);
    dry.expect(1, &format!("Dry run incomplete: {why}\nNo changes made.\n"));
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!((json.code, &doc["exit_code"]), (1, &serde_json::json!(1)));
    assert_eq!(doc["incomplete"], serde_json::json!([why]));
    assert_eq!(doc["state_dbs"][0]["read"], false);
    assert_eq!(doc["targets"], serde_json::json!([]));
    assert!(has_link("tap9") && has_link("tap5"));
    assert_eq!(comments().len(), 3 + 5 * 5);
}

#[test]
fn all_removes_the_shared_tables_once_no_vm_is_left_and_only_then() {
    let Some(w) = probe_world("shared", false) else {
        return;
    };
    // A rule someone else put in SmolVM's table keeps the tables.
    nft("add rule inet smolvm_filter forward counter accept comment \"operator rule\"");
    let r = w.run(&["--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("holds a rule that is not SmolVM's"),
        "{}",
        r.stderr
    );
    assert!(ruleset().contains("operator rule"));
    assert_eq!(comments().len(), 4);
    crate::util::delete_rules(|c| c == "operator rule");
    // Nothing left now: the next --all run has no target but removes the tables.
    let r = w.run(&["--all"]);
    r.expect(0, "No matching VMs to clean.\n");
    assert!(
        r.stderr.contains("removed SmolVM's shared nftables tables"),
        "{}",
        r.stderr
    );
    assert_eq!(ruleset(), "");
}

#[test]
fn every_data_dir_with_a_db_is_read_and_rows_go_from_their_own_db() {
    if !enter_netns() {
        return;
    }
    if std::path::Path::new("/var/lib/smolvm").exists() {
        eprintln!("skipped: /var/lib/smolvm exists on this host and would be one of the data dirs");
        return;
    }
    let s = Scratch::new("twodirs");
    let home = s.0.join("home");
    let xdg = s.0.join("xdg");
    let sock = s.0.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    sh("ip link add uplink0 type veth peer name uplink0p");
    nft(&smolvm_base_nft("uplink0"));
    // Root's XDG dir and the legacy ~/.smolvm/state both hold a DB.
    for (dir, id, octet) in [
        (xdg.join("smolvm"), "vm-xdg00001", 2),
        (home.join(".smolvm/state"), "vm-old00001", 3),
    ] {
        std::fs::create_dir_all(dir.join("disks")).unwrap();
        let c = rusqlite::Connection::open(dir.join("smolvm.db")).unwrap();
        c.execute_batch(crate::util::SCHEMA_005).unwrap();
        c.execute(
            "INSERT INTO vms VALUES (?1, 'stopped', '{}', ?2, NULL, NULL, '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
            rusqlite::params![id, format!(r#"{{"tap_device":"tap{octet}"}}"#)],
        )
        .unwrap();
        c.execute(
            "INSERT INTO ip_leases VALUES (?1, ?2, ?3, 'x')",
            rusqlite::params![format!("172.16.0.{octet}"), id, format!("tap{octet}")],
        )
        .unwrap();
        sh(&format!("ip tuntap add tap{octet} mode tap"));
        nft(&smolvm_vm_nft(id, octet, 2200 + octet, "uplink0"));
        std::fs::write(dir.join(format!("{id}.log")), b"log").unwrap();
    }
    let out = bin()
        .arg("--socket-dir")
        .arg(&sock)
        .env("HOME", &home)
        .env("XDG_STATE_HOME", &xdg)
        .output()
        .unwrap();
    let r = Run::from(out);
    r.expect(
        0,
        "Targets (2):\n  - vm-old00001\n  - vm-xdg00001\nDeleted: vm-old00001\nDeleted: vm-xdg00001\nCleanup complete.\n",
    );
    assert_eq!(r.stderr.matches("state DB: ").count(), 2, "{}", r.stderr);
    assert_eq!(links(), ["lo", "uplink0", "uplink0p"]);
    for dir in [xdg.join("smolvm"), home.join(".smolvm/state")] {
        let c = rusqlite::Connection::open(dir.join("smolvm.db")).unwrap();
        let n: i64 = c.query_row("SELECT count(*) FROM vms", [], |r| r.get(0)).unwrap();
        let m: i64 = c
            .query_row("SELECT count(*) FROM ip_leases", [], |r| r.get(0))
            .unwrap();
        assert_eq!((n, m), (0, 0), "{}", dir.display());
    }
}

/// Parallel CI jobs, each with its own data dir on one host: a run limited to one data
/// dir never takes another data dir's VM for a leftover (its TAP, rules and socket stay).
#[test]
fn a_vm_of_another_data_dir_is_never_a_leftover() {
    let Some(mut w) = World::new("otherdir") else {
        return;
    };
    w.add(VmSpec::stale("vm-mine0001", 2));
    // The other job's data dir is one SmolVM would use too (~/.local/state/smolvm).
    let other = w.scratch.0.join(".local/state/smolvm");
    std::fs::create_dir_all(&other).unwrap();
    let c = rusqlite::Connection::open(other.join("smolvm.db")).unwrap();
    c.execute_batch(crate::util::SCHEMA_005).unwrap();
    c.execute(
        "INSERT INTO vms VALUES ('sbx-theirs', 'stopped', '{}', '{\"tap_device\":\"tap7\",\"guest_ip\":\"172.16.0.7\"}', NULL, NULL, 'x', 'x')",
        [],
    )
    .unwrap();
    drop(c);
    sh("ip tuntap add tap7 mode tap");
    nft(&smolvm_vm_nft("sbx-theirs", 7, 2207, "uplink0"));
    drop(std::os::unix::net::UnixListener::bind(w.sock.join("fc-sbx-theirs.sock")).unwrap());
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-mine0001\nTargets (1):\n  - vm-mine0001\nDeleted: vm-mine0001\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains("the VMs of the other data dirs ("),
        "{}",
        r.stderr
    );
    assert!(has_link("tap7") && !has_link("tap2"));
    assert_eq!(
        comments()
            .iter()
            .filter(|c| c.contains("sbx-theirs") || c.contains("tap7"))
            .count(),
        5
    );
    assert!(w.sock.join("fc-sbx-theirs.sock").exists());
}

/// A zero-byte `smolvm.db` (truncated, or SmolVM creating it) is no empty DB: its rows
/// are unknown, so nothing is taken and the run says it could not read it.
#[test]
fn an_empty_db_file_is_unreadable_not_empty() {
    let Some(w) = probe_world("emptydb", false) else {
        return;
    };
    std::fs::write(&w.db, b"").unwrap();
    let before = comments();
    let r = w.run(&[]);
    r.expect(
        1,
        &format!(
            "Cleanup incomplete: cannot open state DB {}: the file is empty (truncated, or SmolVM is creating it)\n",
            w.db.display()
        ),
    );
    assert_eq!(comments(), before);
    assert!(w.data.join("keepme.log").exists() && w.data.join("vm-bbbb0002.log").exists());
    assert_eq!(std::fs::read(&w.db).unwrap(), b"");
}

/// With --all and no VM left, a teardown the kernel refuses (an object the dump does not
/// show, here someone's named counter in SmolVM's table, keeps the table busy) leaves
/// every shared table as it was and is a failure: exit 1, one line saying why.
#[test]
fn a_teardown_the_kernel_refuses_is_a_failure_and_leaves_the_tables_whole() {
    let Some(w) = probe_world("busyteardown", false) else {
        return;
    };
    nft("add counter inet smolvm_filter operators_counter");
    let r = w.run(&["--all"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.ends_with(
            "Cleanup incomplete: Device or resource busy: cannot remove SmolVM's shared nftables tables\n"
        ),
        "{}",
        r.stdout
    );
    // The batch is all or nothing: the shared rules, chains and tables are all still there.
    assert_eq!(comments(), globals());
    assert!(ruleset().contains("counter operators_counter"));
    assert_eq!(w.ids(), Vec::<String>::new(), "the VMs themselves were cleaned");
    // With no VM left at all, the same refusal must still be said on stdout.
    let r = w.run(&["--all"]);
    r.expect(
        1,
        "Cleanup incomplete: Device or resource busy: cannot remove SmolVM's shared nftables tables\n",
    );
}

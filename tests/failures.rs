//! Faults and hostile input: pid reuse, zombies, VMMs that ignore SIGTERM or are stopped,
//! hostile DB values, EPERM, a DB locked by a writer, corrupt DBs, concurrent runs,
//! SIGINT mid-run, and resources already gone. Each test checks the world afterwards.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use rusqlite::params;

use crate::util::{
    NO_NET_ADMIN, NOT_ROOT, Proc, VmSpec, World, comments, fake_vmm, has_link, pid_alive, sh, wait_until,
};

fn vm_rules(id: &str) -> usize {
    comments()
        .iter()
        .filter(|c| c.contains(&format!(":{id}:")))
        .count()
}

#[test]
fn pid_reused_by_an_unrelated_process_is_never_signalled() {
    let Some(mut w) = World::new("reuse") else { return };
    let mut other = fake_vmm::spawn_unrelated();
    w.add(VmSpec {
        pid: Some(i64::from(other.id())),
        ..VmSpec::new("vm-reuse001", "running", 2)
    });
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-reuse001\nTargets (1):\n  - vm-reuse001\nDeleted: vm-reuse001\nCleanup complete.\n",
    );
    assert!(pid_alive(other.id()), "the process that reused the pid lives on");
    assert!(!has_link("tap2"));
    assert!(w.ids().is_empty());
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn a_vmm_started_after_the_row_is_not_touched() {
    let Some(mut w) = World::new("late") else { return };
    // The row was last written a minute ago; the process at its pid started just now.
    w.add(VmSpec {
        proc: Proc::Firecracker,
        updated_offset: -60,
        ..VmSpec::new("vm-late0001", "running", 2)
    });
    let pid = w.vmm_pid("vm-late0001");
    let r = w.run(&[]);
    // Its socket is served: the VM lives, so it is not called stale; --prefix takes it,
    // and it is refused.
    r.expect(
        1,
        &format!(
            "Targets (1):\n  - vm-late0001\n\
             Failed:  vm-late0001 (VMM pid {pid} started after its state row was last written (VM starting?); \
             not touched)\nCleanup completed with 1 failure(s).\n"
        ),
    );
    assert!(pid_alive(pid));
    assert!(has_link("tap2"));
    assert_eq!(vm_rules("vm-late0001"), 4);
    assert_eq!(
        w.status("vm-late0001"),
        Some(("running".into(), Some(i64::from(pid)))),
        "row untouched"
    );
    assert!(w.socket_path("vm-late0001").exists());
}

#[test]
fn a_zombie_vmm_counts_as_gone() {
    let Some(mut w) = World::new("zombie") else { return };
    w.add(VmSpec::running("vm-zomb0001", 2));
    let pid = w.vmm_pid("vm-zomb0001");
    // Killed but not reaped by its parent (this test): a zombie holding the pid.
    w.vmms.get_mut("vm-zomb0001").unwrap().kill().unwrap();
    wait_until("the zombie", Duration::from_secs(5), || !pid_alive(pid));
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z ")
    );
    w.run(&["--prefix", "none"]).expect(
        0,
        "Reconciled stale VMs: vm-zomb0001\nTargets (1):\n  - vm-zomb0001\nDeleted: vm-zomb0001\nCleanup complete.\n",
    );
    assert!(!has_link("tap2"));
    assert!(!w.socket_path("vm-zomb0001").exists());
    assert!(w.ids().is_empty());
    w.reap("vm-zomb0001");
}

#[test]
fn a_vmm_ignoring_sigterm_is_killed_after_the_grace_period() {
    let Some(mut w) = World::new("noterm") else { return };
    w.add(VmSpec {
        proc: Proc::IgnoresTerm,
        ..VmSpec::new("vm-hard0001", "running", 2)
    });
    let pid = w.vmm_pid("vm-hard0001");
    w.run(&["--grace", "300ms"]).expect(
        0,
        "Targets (1):\n  - vm-hard0001\nDeleted: vm-hard0001\nCleanup complete.\n",
    );
    assert!(!pid_alive(pid));
    assert!(w.reap("vm-hard0001"));
    assert!(!has_link("tap2"));
}

#[test]
fn a_stopped_vmm_is_killed() {
    let Some(mut w) = World::new("sigstop") else {
        return;
    };
    w.add(VmSpec::running("vm-stop0001", 2));
    let pid = w.vmm_pid("vm-stop0001");
    sh(&format!("kill -STOP {pid}"));
    w.run(&["--grace", "200ms"]).expect(
        0,
        "Targets (1):\n  - vm-stop0001\nDeleted: vm-stop0001\nCleanup complete.\n",
    );
    assert!(!pid_alive(pid));
    assert!(w.reap("vm-stop0001"));
    assert!(w.ids().is_empty());
}

#[test]
fn hostile_db_values_are_refused_and_never_acted_on() {
    let Some(mut w) = World::new("hostile") else {
        return;
    };
    // A TAP named eth0 and the loopback: a row naming them must not get them deleted.
    sh("ip tuntap add eth0 mode tap");
    let precious = w.scratch.0.join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    w.add(VmSpec::stale("vm-hostile03", 3));
    std::os::unix::fs::symlink(&precious, w.socket_path("vm-hostile03")).unwrap_or_else(|_| {
        std::fs::remove_file(w.socket_path("vm-hostile03")).unwrap();
        std::os::unix::fs::symlink(&precious, w.socket_path("vm-hostile03")).unwrap();
    });
    let c = w.conn();
    let net = |tap: &str| format!(r#"{{"tap_device":"{tap}","guest_ip":"172.16.0.9"}}"#);
    let insert = |id: &str, pid: Option<i64>, network: String, sock: &str| {
        c.execute(
            "INSERT INTO vms (id, status, config, network, pid, socket_path, created_at, updated_at) \
             VALUES (?1, 'running', '{not json', ?2, ?3, ?4, '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
            params![id, network, pid, sock],
        )
        .unwrap();
    };
    insert("../../etc", Some(1), net("lo"), "/etc/passwd");
    insert("vm-hostile01", Some(1), net("eth0"), "/etc/passwd");
    insert("vm-hostile02", Some(-1), net("../x"), "/tmp/../etc/shadow");
    insert("vm-hostile04", Some(1 << 40), net("lo"), "");
    insert("vm-hostile05", Some(0), "null".into(), "/tmp");
    // An id that is not UTF-8 at all.
    c.execute(
        "INSERT INTO vms VALUES (CAST(X'766dff' AS TEXT), 'running', '{}', NULL, NULL, NULL, 'x', 'x')",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO ip_leases (ip, vm_id, tap_device, created_at) VALUES ('172.16.0.250', 'vm-hostile01', 'lo', 'x')",
        [],
    )
    .unwrap();
    drop(c);
    let r = w.run(&[]);
    // The symlink at vm-hostile03's socket path is left alone, so that VM is not done.
    r.expect(
        1,
        &format!(
            "Reconciled stale VMs: vm-hostile01, vm-hostile02, vm-hostile03, vm-hostile04, vm-hostile05\n\
             Targets (5):\n  - vm-hostile01\n  - vm-hostile02\n  - vm-hostile03\n  - vm-hostile04\n  - vm-hostile05\n\
             Deleted: vm-hostile01\nDeleted: vm-hostile02\n\
             Failed:  vm-hostile03 ({} is a symlink; not removed)\nDeleted: vm-hostile04\n\
             Deleted: vm-hostile05\nCleanup completed with 1 failure(s).\n",
            w.socket_path("vm-hostile03").display()
        ),
    );
    for expected in [
        "refusing a state row whose id \"../../etc\"",
        "refusing a state row whose id \"vm\u{fffd}\"",
        "refusing TAP name \"eth0\"",
        "refusing TAP name \"lo\"",
        "refusing TAP name \"../x\"",
        "recorded pid 1 cannot be a VMM",
        "recorded pid -1 cannot be a VMM",
        "recorded pid 0 cannot be a VMM",
        "socket path \"/etc/passwd\" is not",
    ] {
        assert!(
            r.stderr.contains(expected),
            "stderr lacks {expected:?}:\n{}",
            r.stderr
        );
    }
    assert!(has_link("eth0") && has_link("lo"));
    assert!(!has_link("tap3"));
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    assert!(
        w.socket_path("vm-hostile03").symlink_metadata().is_ok(),
        "the symlink itself is left alone"
    );
    assert!(std::path::Path::new("/etc/passwd").exists());
    let ids: Vec<Vec<u8>> = w
        .conn()
        .prepare("SELECT CAST(id AS BLOB) FROM vms ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            b"../../etc".to_vec(),
            b"vm-hostile03".to_vec(),
            b"vm\xff".to_vec()
        ],
        "hostile ids are reported, not acted on; the VM with a refused file keeps its row"
    );
    // --check agrees with what cleanup left: that VM still leaks its refused path.
    let check = w.run(&["--check"]);
    assert_eq!(check.code, 1);
    assert!(
        check.stdout.contains("  - vm-hostile03: 1 file, state row\n"),
        "{}",
        check.stdout
    );
}

/// What an unprivileged run must report for a stale VM with a TAP: a failure, not success.
/// A user gets SmolVM's warning; root without CAP_NET_ADMIN is told what to grant.
fn expect_permission_failure(r: &crate::util::Run, warning: &str) {
    r.expect(
        1,
        &format!(
            "{warning}\nReconciled stale VMs: vm-perm0001\nTargets (1):\n  - vm-perm0001\n\
             Failed:  vm-perm0001 (Permission denied: cannot delete TAP device tap2)\n\
             Cleanup completed with 1 failure(s).\n"
        ),
    );
}

fn assert_perm_world_intact(w: &World) {
    assert!(has_link("tap2"));
    assert_eq!(vm_rules("vm-perm0001"), 4);
    assert_eq!(w.ids(), ["vm-perm0001"]);
    assert!(w.data.join("vm-perm0001.log").exists());
    assert!(w.data.join("disks/vm-perm0001.ext4").exists());
}

#[test]
fn eperm_as_nobody_is_a_failure_and_keeps_everything() {
    let Some(mut w) = World::new("nobody") else { return };
    w.add(VmSpec::stale("vm-perm0001", 2));
    let r = crate::util::Run::from(w.cmd(&[]).uid(65534).gid(65534).output().unwrap());
    expect_permission_failure(&r, NOT_ROOT);
    assert_perm_world_intact(&w);
    assert_eq!(
        w.status("vm-perm0001").unwrap().0,
        "running",
        "a read-only DB is not written"
    );
}

#[test]
fn eperm_without_cap_net_admin_is_a_failure_and_keeps_the_row() {
    let Some(mut w) = World::new("nocap") else { return };
    w.add(VmSpec::stale("vm-perm0001", 2));
    let out = w
        .cmd_via(&["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"], &[])
        .output()
        .unwrap();
    let r = crate::util::Run::from(out);
    expect_permission_failure(&r, NO_NET_ADMIN);
    assert_perm_world_intact(&w);
    // Root could write the DB: the stale row is marked as SmolVM would, and kept.
    assert_eq!(w.status("vm-perm0001"), Some(("error".into(), None)));
    // With the capability back, the next run finishes the job.
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-perm0001\nTargets (1):\n  - vm-perm0001\nDeleted: vm-perm0001\nCleanup complete.\n",
    );
    assert!(!has_link("tap2"));
}

#[test]
fn a_writer_holding_begin_exclusive_is_waited_for() {
    let Some(mut w) = World::new("busywriter") else {
        return;
    };
    w.add(VmSpec::stale("vm-busy0001", 2));
    let db = w.db.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        c.execute("UPDATE vms SET config = config", []).unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        c.execute_batch("COMMIT").unwrap();
    });
    rx.recv().unwrap();
    let r = w.run(&[]);
    writer.join().unwrap();
    r.expect(
        0,
        "Reconciled stale VMs: vm-busy0001\nTargets (1):\n  - vm-busy0001\nDeleted: vm-busy0001\nCleanup complete.\n",
    );
    assert!(!r.stderr.contains("database is locked"), "{}", r.stderr);
    assert!(w.ids().is_empty());
}

#[test]
fn eight_concurrent_cleanups_delete_each_vm_exactly_once() {
    let Some(mut w) = World::new("concurrent") else {
        return;
    };
    let ids = ["vm-conc0001", "vm-conc0002", "vm-conc0003", "vm-conc0004"];
    for (i, id) in ids.iter().enumerate() {
        w.add(VmSpec::running(id, 2 + u32::try_from(i).unwrap()));
    }
    w.add(VmSpec::stale("vm-conc0005", 9));
    w.add(VmSpec::new("keepme", "created", 10));
    let children: Vec<_> = (0..8)
        .map(|_| {
            w.cmd(&[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<crate::util::Run> = children
        .into_iter()
        .map(|c| crate::util::Run::from(c.wait_with_output().unwrap()))
        .collect();
    for r in &runs {
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    }
    for id in ids.iter().chain(&["vm-conc0005"]) {
        let n: usize = runs
            .iter()
            .map(|r| r.stdout.matches(&format!("Deleted: {id}\n")).count())
            .sum();
        assert_eq!(n, 1, "{id} deleted {n} times");
    }
    let idle = runs
        .iter()
        .filter(|r| r.stdout == "No matching VMs to clean.\n")
        .count();
    assert_eq!(idle, 7, "the other runs waited and found nothing left");
    for id in ids {
        assert!(w.reap(id));
    }
    assert_eq!(w.ids(), ["keepme"]);
    assert_eq!(crate::util::links(), ["lo", "tap10", "uplink0", "uplink0p"]);
}

#[test]
fn sigint_mid_run_finishes_the_step_reports_and_keeps_rows() {
    let Some(mut w) = World::new("sigint") else { return };
    w.add(VmSpec {
        proc: Proc::IgnoresTerm,
        ..VmSpec::new("vm-int00001", "running", 2)
    });
    w.add(VmSpec::stale("vm-int00002", 3));
    let pid = w.vmm_pid("vm-int00001");
    let mut child = crate::util::Reaped(
        w.cmd(&["--grace", "2s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The header is flushed before anything changes; then the grace period runs.
    while let Some(Ok(l)) = lines.next() {
        let done = l == "  - vm-int00002";
        seen.push(l);
        if done {
            break;
        }
    }
    // Wait until it is inside the grace period (blocked in poll on the VMM's pidfd).
    let syscall = format!("/proc/{}/syscall", child.id());
    wait_until("cleanup waiting on the VMM", Duration::from_secs(10), || {
        let nr = std::fs::read_to_string(&syscall).unwrap_or_default();
        matches!(nr.split(' ').next(), Some("7" | "271"))
    });
    sh(&format!("kill -INT {}", child.id()));
    seen.extend(lines.map_while(Result::ok));
    let code = child.wait().unwrap().code();
    let reason = "interrupted before this step; state row kept";
    assert_eq!(
        seen.join("\n"),
        format!(
            "Reconciled stale VMs: vm-int00002\nTargets (2):\n  - vm-int00001\n  - vm-int00002\n\
             Failed:  vm-int00001 ({reason})\nFailed:  vm-int00002 ({reason})\nCleanup completed with 2 failure(s)."
        )
    );
    assert_eq!(code, Some(1));
    // The step in progress (stopping VMMs) was finished; nothing after it was started.
    assert!(!pid_alive(pid));
    assert!(has_link("tap2") && has_link("tap3"));
    assert_eq!(w.ids(), ["vm-int00001", "vm-int00002"]);
    // The next run finishes the job.
    assert_eq!(w.run(&[]).code, 0);
    assert!(w.ids().is_empty());
    assert!(!has_link("tap2") && !has_link("tap3"));
    w.reap("vm-int00001");
}

#[test]
fn resources_already_gone_are_done() {
    let Some(mut w) = World::new("gone") else { return };
    w.add(VmSpec::stale("vm-gone0001", 2));
    w.add(VmSpec::stale("vm-gone0002", 3));
    w.add(VmSpec::stale("vm-gone0003", 4));
    // 0001: TAP gone, rules present. 0002: rules gone, TAP present. 0003: files gone too.
    sh("ip link del tap2");
    crate::util::delete_rules(|comment| comment.contains("vm-gone0002") || comment.contains("tap:tap3:"));
    assert_eq!(vm_rules("vm-gone0002"), 0);
    for f in ["vm-gone0003.log", "disks/vm-gone0003.ext4"] {
        std::fs::remove_file(w.data.join(f)).unwrap();
    }
    std::fs::remove_file(w.socket_path("vm-gone0003")).unwrap();
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-gone0001, vm-gone0002, vm-gone0003\n\
         Targets (3):\n  - vm-gone0001\n  - vm-gone0002\n  - vm-gone0003\n\
         Deleted: vm-gone0001\nDeleted: vm-gone0002\nDeleted: vm-gone0003\nCleanup complete.\n",
    );
    assert_eq!(crate::util::links(), ["lo", "uplink0", "uplink0p"]);
    assert_eq!(comments().len(), 3, "only the global rules are left");
    assert!(w.ids().is_empty());
}

/// A listener whose backlog is full never accepts: probing it must not block the run (any
/// local user can bind `fc-x.sock` with `listen(0)`), and it counts as alive.
#[test]
fn a_socket_whose_backlog_is_full_neither_hangs_the_run_nor_reads_as_dead() {
    use rustix::net::{
        AddressFamily, SocketAddrUnix, SocketFlags, SocketType, bind, connect, listen, socket_with,
    };
    let Some(mut w) = World::new("backlog") else {
        return;
    };
    w.add(VmSpec::stale("vm-dead0001", 2));
    let path = w.sock.join("fc-vm-wedged01.sock");
    let addr = SocketAddrUnix::new(&path).unwrap();
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    bind(&listener, &addr).unwrap();
    listen(&listener, 0).unwrap();
    // Fill the backlog: connects go through until the kernel says EAGAIN.
    let mut clients = Vec::new();
    loop {
        let c = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match connect(&c, &addr) {
            Ok(()) => clients.push(c),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(clients.len() < 16, "the backlog never filled");
    }
    for args in [&["--dry-run"][..], &["--check"][..], &[][..]] {
        let mut args = args.to_vec();
        args.extend(["--timeout", "2s"]);
        let mut child = crate::util::Reaped(
            w.cmd(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        wait_until("the run to end", Duration::from_secs(20), || {
            child.try_wait().unwrap().is_some()
        });
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        // Served (alive): never a target; the crashed VM still is.
        assert!(!stdout.contains("wedged"), "{args:?}: {stdout}");
        assert!(stdout.contains("vm-dead0001"), "{args:?}: {stdout}");
    }
    assert!(path.exists(), "the wedged socket is not removed");
    assert!(w.ids().is_empty());
    drop((clients, listener));
}

/// A newer SmolVM's table with a foreign key to `vms` and no cascade pins one row: that
/// VM fails with the table named, and every other VM is deleted all the same.
#[test]
fn a_row_pinned_by_a_foreign_key_fails_alone() {
    let Some(mut w) = World::new("pinned") else { return };
    for (i, id) in ["vm-pin00001", "vm-pin00002", "vm-pin00003"].iter().enumerate() {
        w.add(VmSpec::stale(id, 2 + u32::try_from(i).unwrap()));
    }
    w.conn()
        .execute_batch(
            "CREATE TABLE vm_leases (lease_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL REFERENCES vms(id));
             INSERT INTO vm_leases VALUES ('l1', 'vm-pin00002');",
        )
        .unwrap();
    let failed = "Failed:  vm-pin00002 (its state row is still referred to by table vm_leases; row kept)\n";
    w.run(&[]).expect(
        1,
        &format!(
            "Reconciled stale VMs: vm-pin00001, vm-pin00002, vm-pin00003\n\
             Targets (3):\n  - vm-pin00001\n  - vm-pin00002\n  - vm-pin00003\n\
             Deleted: vm-pin00001\n{failed}Deleted: vm-pin00003\nCleanup completed with 1 failure(s).\n"
        ),
    );
    assert_eq!(w.ids(), ["vm-pin00002"]);
    assert_eq!(
        w.child_rows("ip_leases"),
        ["vm-pin00002"],
        "its lease is kept with it"
    );
    assert!(!has_link("tap2") && !has_link("tap4"));
    // Once the referring row is gone, the next run finishes it.
    w.conn().execute("DELETE FROM vm_leases", []).unwrap();
    let r = w.run(&[]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(w.ids().is_empty());
}

/// Under sudo the data dir is the invoking user's, who may swap it for a symlink to a
/// root-owned directory while the run waits out a VMM's --grace. Every root was opened
/// once, when first read: root never deletes in the directory the symlink points to.
#[test]
fn a_data_dir_swapped_for_a_symlink_mid_run_never_redirects_a_removal() {
    let Some(mut w) = World::new("swap") else { return };
    w.add(VmSpec {
        proc: Proc::IgnoresTerm,
        ..VmSpec::new("vm-swap0001", "running", 2)
    });
    // A root-owned directory holding files named as the VM's would be.
    let precious = w.scratch.0.join("precious");
    std::fs::create_dir_all(precious.join("disks")).unwrap();
    for f in ["vm-swap0001.log", "disks/vm-swap0001.ext4", "auth.log"] {
        std::fs::write(precious.join(f), b"root's").unwrap();
    }
    let mut child = crate::util::Reaped(
        w.cmd(&["--grace", "1500ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The header goes out before anything changes; then the grace period runs.
    while let Some(Ok(l)) = lines.next() {
        if l.starts_with("  - vm-swap0001") {
            break;
        }
    }
    let moved = w.scratch.0.join("data.moved");
    std::fs::rename(&w.data, &moved).unwrap();
    std::os::unix::fs::symlink(&precious, &w.data).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{rest:?}");
    // SQLite itself refuses to write a DB whose path no longer leads to the file it opened
    // (SQLITE_READONLY_DBMOVED): the row stays, and a later run finishes the job.
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(
        rest[0].starts_with("Failed:  vm-swap0001 (cannot update state DB ")
            && rest[0].ends_with("attempt to write a readonly database (ReadOnly))"),
        "{rest:?}"
    );
    for f in ["vm-swap0001.log", "disks/vm-swap0001.ext4", "auth.log"] {
        assert_eq!(std::fs::read(precious.join(f)).unwrap(), b"root's", "{f}");
    }
    // What was removed is what was judged: the VM's own files, in the moved dir.
    assert!(!moved.join("vm-swap0001.log").exists() && !moved.join("disks/vm-swap0001.ext4").exists());
    assert!(w.reap("vm-swap0001"));
    std::fs::remove_file(&w.data).unwrap();
    std::fs::rename(&moved, &w.data).unwrap();
    assert_eq!(w.ids(), ["vm-swap0001"]);
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-swap0001\nTargets (1):\n  - vm-swap0001\nDeleted: vm-swap0001\nCleanup complete.\n",
    );
    assert!(w.ids().is_empty());
}

/// A data dir that a third user owns is refused: nothing in it is read or touched, and
/// the run says so (exit 1). (Symlinks: `paths.rs`.)
#[test]
fn a_data_dir_of_another_owner_is_refused() {
    let Some(mut w) = World::new("owner") else { return };
    w.add(VmSpec::stale("vm-own00001", 2));
    sh(&format!("chown 4242 {}", w.data.display()));
    let before = w.snapshot();
    let r = w.run(&[]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "Cleanup incomplete: {} is owned by uid 4242, neither root nor the user cleanup runs for: refused as a data dir",
            w.data.display()
        )),
        "{}",
        r.stdout
    );
    w.snapshot().assert_same(&before);
    sh(&format!("chown 0 {}", w.data.display()));
    assert_eq!(w.ids(), ["vm-own00001"]);
}

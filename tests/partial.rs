//! A partial view of the host never leads to a wrong conclusion: a lone file is no VM, a
//! DB that cannot be read is no empty DB, no /proc is no dead VMM, and a VMM in another
//! pid namespace is not gone. Each test checks the world afterwards.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{
    NOT_ROOT, Run, VmSpec, World, comments, fake_vmm, has_link, hold_tap, links, nft, probe_world,
    smolvm_vm_nft,
};

/// A user's own files in the data dir, named as a VM's log and disk would be.
const LONE: [&str; 2] = ["backup.log", "disks/golden-image.ext4"];

fn add_lone_files(w: &World) {
    for rel in LONE {
        std::fs::write(w.data.join(rel), format!("the user's {rel}")).unwrap();
    }
}

#[track_caller]
fn assert_lone_files_intact(w: &World) {
    for rel in LONE {
        assert_eq!(
            std::fs::read_to_string(w.data.join(rel)).unwrap(),
            format!("the user's {rel}"),
            "{rel}"
        );
    }
}

#[test]
fn a_lone_log_or_disk_is_never_taken_for_a_vm() {
    let Some(w) = probe_world("lone", false) else {
        return;
    };
    add_lone_files(&w);
    // A rowless VM that a SmolVM socket corroborates: its log and disk are its own.
    drop(std::os::unix::net::UnixListener::bind(w.sock.join("fc-ghost-vm.sock")).unwrap());
    std::fs::write(w.data.join("ghost-vm.log"), b"log").unwrap();
    std::fs::write(w.data.join("disks/ghost-vm.ext4"), b"disk").unwrap();

    let dry = w.run(&["--dry-run", "-v"]);
    assert!(!dry.stdout.contains("backup"), "{}", dry.stdout);
    let lone: Vec<String> = LONE
        .iter()
        .map(|r| w.data.join(r).display().to_string())
        .collect();
    assert!(
        dry.stderr.contains(&format!("left alone: {}", lone.join(", "))),
        "{}",
        dry.stderr
    );
    let doc: Value = serde_json::from_str(&w.run(&["--dry-run", "--json"]).stdout).unwrap();
    assert_eq!(doc["unattributed_files"], serde_json::json!(lone));

    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: ghost-vm, vm-bbbb0002, vm-dddd0004\n\
         Targets (4):\n  - ghost-vm\n  - vm-bbbb0002\n  - vm-cccc0003\n  - vm-dddd0004\n\
         Deleted: ghost-vm\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\n\
         Cleanup complete.\n",
    );
    assert!(!w.data.join("ghost-vm.log").exists() && !w.data.join("disks/ghost-vm.ext4").exists());
    assert!(!w.sock.join("fc-ghost-vm.sock").exists());
    assert_lone_files_intact(&w);
    // --all takes every VM, and still no lone file.
    w.run(&["--all"]).expect(
        0,
        "Targets (1):\n  - keepme\nDeleted: keepme\nCleanup complete.\n",
    );
    assert_lone_files_intact(&w);
    assert_eq!(w.ids(), Vec::<String>::new());
}

#[test]
fn without_a_db_lone_files_stay_while_the_host_names_the_vms() {
    let Some(w) = probe_world("lonenodb", false) else {
        return;
    };
    add_lone_files(&w);
    std::fs::remove_file(&w.db).unwrap();
    for args in [&[][..], &["--all"][..]] {
        let r = w.run_found(args);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert!(
            !r.stdout.contains("backup") && !r.stdout.contains("golden"),
            "{}",
            r.stdout
        );
        assert_lone_files_intact(&w);
    }
    // Recovery from the live system still works: rules and sockets named the VMs, and
    // with no VM left --all took SmolVM's shared tables too.
    assert_eq!(links(), ["lo", "uplink0", "uplink0p"]);
    assert!(comments().is_empty(), "{:?}", comments());
}

#[test]
fn a_db_another_user_cannot_read_is_unreadable_not_corrupt() {
    let Some(mut w) = World::new("db0600") else {
        return;
    };
    w.add(VmSpec::stale("vm-perm0001", 2));
    // A rowless leftover: were the DB taken for corrupt, it would become a target.
    crate::util::sh("ip tuntap add tap9 mode tap");
    nft(&smolvm_vm_nft("ghost-vm", 9, 2209, "uplink0"));
    crate::util::sh(&format!("chmod 0600 {}", w.db.display()));
    let before = w.snapshot();
    let r = Run::from(w.cmd(&[]).uid(65534).gid(65534).output().unwrap());
    r.expect(
        1,
        &format!(
            "{NOT_ROOT}\nCleanup incomplete: Permission denied: cannot open state DB {}\n",
            w.db.display()
        ),
    );
    assert!(!r.stderr.contains("SQLite database"), "{}", r.stderr);
    w.snapshot().assert_same(&before);
    assert!(has_link("tap2") && has_link("tap9"));
    assert_eq!(w.status("vm-perm0001").unwrap().0, "running");
}

/// Copies the binary (and, for a dynamically linked test build, the libraries it loads)
/// into `root`: with the state dirs beside it, that is all a `FROM scratch` root holds.
fn install_binary(root: &Path) -> PathBuf {
    let bin = Path::new(crate::util::BIN);
    std::fs::copy(bin, root.join("smolvm-cleanup")).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|t| t.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, to).unwrap();
    }
    PathBuf::from("/smolvm-cleanup")
}

#[test]
fn without_proc_nothing_is_judged_and_nothing_changes() {
    let Some(mut w) = probe_world("noproc", true) else {
        return;
    };
    let root = w.scratch.0.clone();
    let exe = install_binary(&root);
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let before = w.snapshot();
    let run = |args: &[&str]| {
        // env_clear drops PATH too: name chroot by its path.
        let mut c = Command::new("/usr/sbin/chroot");
        c.arg(&root)
            .arg(&exe)
            .args(["--state-dir", "/data", "--socket-dir", "/sock"])
            .args(args)
            .env_clear();
        Run::from(c.output().unwrap())
    };
    let why = "/proc is not mounted (No such file or directory): without it no VMM can be told alive \
               from gone, so nothing was looked at or changed; mount it (mount -t proc proc /proc), or \
               in a container share the host's (docker run --pid=host; hostPID: true in Kubernetes)";
    // Root with every capability: no "not running as root" (capget needs no /proc).
    run(&[]).expect(1, &format!("Cleanup incomplete: {why}\n"));
    run(&["--all"]).expect(1, &format!("Cleanup incomplete: {why}\n"));
    run(&["--dry-run"]).expect(1, &format!("Dry run incomplete: {why}\nNo changes made.\n"));
    run(&["--check"]).expect(1, &format!("Check incomplete: {why}\n"));
    let json = run(&["--json"]);
    let doc: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!((json.code, &doc["incomplete"][0]), (1, &Value::from(why)));
    // Rows, links, rules, files (the DB's bytes too), the live VMM: all as they were.
    w.snapshot().assert_same(&before);
    assert_eq!(w.ids().len(), 5);
    // With /proc, the same state is judged and cleaned.
    let r = w.run(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\n")
    );
    assert!(w.reap("vm-aaaa0001"), "a live VMM matching the prefix is stopped");
}

#[test]
fn from_a_child_pid_namespace_vmms_out_of_view_are_left_alone() {
    let Some(mut w) = World::new("pidns") else {
        return;
    };
    // Three live VMs in this (the host's) pid namespace: one serving its API socket, one
    // holding its TAP, one doing neither; and a crashed one.
    w.add(VmSpec::running("sbx-live1", 2));
    let holder = fake_vmm::spawn_unrelated();
    w.add(VmSpec {
        pid: Some(i64::from(holder.id())),
        files: false,
        ..VmSpec::new("sbx-live2", "running", 3)
    });
    w.vmms.insert("sbx-live2".into(), holder);
    let _tap3 = hold_tap("tap3");
    let quiet = fake_vmm::spawn_unrelated();
    w.add(VmSpec {
        pid: Some(i64::from(quiet.id())),
        files: false,
        ..VmSpec::new("sbx-live3", "running", 4)
    });
    w.vmms.insert("sbx-live3".into(), quiet);
    w.add(VmSpec::stale("vm-dead0001", 5));
    w.add(VmSpec::new("keepme", "created", 6));
    let before = w.snapshot();

    let in_child = |args: &[&str]| {
        Run::from(
            w.cmd_via(&["unshare", "--pid", "--fork", "--mount-proc"], args)
                .output()
                .unwrap(),
        )
    };
    let r = in_child(&[]);
    r.expect(0, "No matching VMs to clean.\n");
    let said: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("not visible from this pid namespace"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {}", r.stderr);
    assert!(said[0].contains("docker run --pid=host") && said[0].contains("hostPID: true"));
    in_child(&["--check"]).expect(0, "No leaked SmolVM resources.\n");
    // --all takes them, and still touches none of them.
    let all = in_child(&["--all"]);
    assert_eq!(all.code, 1, "{}", all.stdout);
    for id in ["sbx-live1", "sbx-live2", "sbx-live3", "vm-dead0001"] {
        assert!(
            all.stdout.contains(&format!(
                "Failed:  {id} (its VMM is not visible from this pid namespace; not touched)"
            )),
            "{id}: {}",
            all.stdout
        );
    }
    assert!(all.stdout.contains("Deleted: keepme\n"), "{}", all.stdout);
    let after = w.snapshot();
    assert_eq!(after.live, before.live, "no VMM was signalled");
    for tap in ["tap2", "tap3", "tap4", "tap5"] {
        assert!(has_link(tap), "{tap}");
    }
    assert!(!has_link("tap6"));
    assert_eq!(w.ids(), ["sbx-live1", "sbx-live2", "sbx-live3", "vm-dead0001"]);
    assert_eq!(w.status("sbx-live3").unwrap().0, "running", "no row was marked");
    assert!(w.socket_path("sbx-live1").exists());
}

#[test]
fn root_without_cap_kill_is_told_and_another_users_vmm_is_a_failure() {
    let Some(mut w) = World::new("nokill") else {
        return;
    };
    w.add(VmSpec {
        proc: crate::util::Proc::FirecrackerAs(65534),
        ..VmSpec::new("vm-other001", "running", 2)
    });
    let pid = w.vmm_pid("vm-other001");
    let before = w.snapshot();
    let out = w
        .cmd_via(
            &["setpriv", "--inh-caps=-all", "--bounding-set=-kill"],
            &["--grace", "200ms"],
        )
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let first = r.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("Warning: running as root without CAP_KILL. Cleanup may fail for VMM processes;")
            && first.contains("--cap-add KILL"),
        "{first}"
    );
    // The kernel's refusal is the reason (not "survived SIGKILL"), and nothing later runs.
    assert!(
        r.stdout.contains(&format!(
            "Failed:  vm-other001 (Permission denied: cannot stop VMM pid {pid} (SIGTERM))\n"
        )),
        "{}",
        r.stdout
    );
    // Its VMM lives on, and so does everything of its VM.
    assert!(crate::util::pid_alive(pid));
    let after = w.snapshot();
    assert_eq!((after.ruleset, after.links), (before.ruleset, before.links));
    assert_eq!(w.ids(), ["vm-other001"]);
    // Without a VMM of another user to stop, CAP_KILL is not asked for.
    let out = w
        .cmd_via(
            &["setpriv", "--inh-caps=-all", "--bounding-set=-kill"],
            &["--dry-run", "--prefix", "x"],
        )
        .output()
        .unwrap();
    Run::from(out).expect(0, "No matching VMs to clean.\n");
}

/// Root with every capability, in a sandbox that refuses nf_tables (a user namespace: the
/// network namespace's owner does not grant it): rules that cannot be listed make every
/// mode incomplete, never "No matching VMs to clean." with exit 0.
#[test]
fn nft_rules_that_cannot_be_listed_make_the_run_incomplete() {
    let Some(mut w) = World::new("nonft") else {
        return;
    };
    w.add(VmSpec::new("keepme", "created", 2));
    let before = w.snapshot();
    let why = "Permission denied: cannot list nftables rules";
    for (args, want) in [
        (&[][..], format!("Cleanup incomplete: {why}\n")),
        (
            &["--dry-run"][..],
            format!("Dry run incomplete: {why}\nNo changes made.\n"),
        ),
        (&["--check"][..], format!("Check incomplete: {why}\n")),
    ] {
        let r = Run::from(
            w.cmd_via(&["unshare", "--user", "--map-root-user"], args)
                .output()
                .unwrap(),
        );
        r.expect(1, &want);
    }
    w.snapshot().assert_same(&before);
    assert_eq!(w.ids(), ["keepme"]);
}

/// What `FROM scratch` with the documented mounts gives: a root holding nothing but the
/// binary, /proc, SmolVM's state dir at /var/lib/smolvm and /tmp; no /etc/passwd, no HOME,
/// and SUDO_USER naming a user nobody knows. Cleanup finds the state as SmolVM would and
/// cleans it all (rows, TAPs, rules, files).
#[test]
fn an_empty_root_with_the_documented_mounts_cleans_real_state() {
    let Some(w) = probe_world("scratchroot", false) else {
        return;
    };
    let root = w.scratch.0.join("root");
    for d in ["proc", "var/lib/smolvm", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let exe = install_binary(&root);
    let script = format!(
        "mount --bind {data} {root}/var/lib/smolvm && mount --bind {sock} {root}/tmp && \
         mount -t proc proc {root}/proc && exec /usr/sbin/chroot {root} {exe}",
        data = w.data.display(),
        sock = w.sock.display(),
        root = root.display(),
        exe = exe.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c", &script])
        .env_clear()
        .env("SUDO_USER", "ghost")
        .output()
        .unwrap();
    let r = Run::from(out);
    r.expect(
        0,
        "Reconciled stale VMs: vm-bbbb0002, vm-dddd0004\nTargets (3):\n  - vm-bbbb0002\n  - vm-cccc0003\n\
         \x20 - vm-dddd0004\nDeleted: vm-bbbb0002\nDeleted: vm-cccc0003\nDeleted: vm-dddd0004\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains("state DB: /var/lib/smolvm/smolvm.db"),
        "{}",
        r.stderr
    );
    assert_eq!(w.ids(), ["keepme"]);
    assert_eq!(links(), ["lo", "tap5", "uplink0", "uplink0p"]);
    assert_eq!(comments().iter().filter(|c| c.contains("vm-")).count(), 0);
    assert!(!w.data.join("vm-bbbb0002.log").exists() && w.data.join("keepme.log").exists());
    assert!(!w.sock.join("fc-vm-bbbb0002.sock").exists());
}

/// A VMM in another mount namespace (a container with its own socket dir) that names
/// `fc-<id>.sock` of one of our VM ids serves another file than ours: it is another VM's,
/// never signalled, and our stale VM of that id is cleaned as if it were not there.
#[test]
fn a_vmm_in_another_mount_namespace_naming_our_socket_path_is_not_ours() {
    let Some(mut w) = World::new("mountns") else {
        return;
    };
    w.add(VmSpec::stale("vm-twin0001", 2));
    let exe = w.scratch.0.join("bin/firecracker");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exe).unwrap();
    let sock = w.socket_path("vm-twin0001");
    let script = "mount -t tmpfs tmpfs \"$1\" && exec -a firecracker \"$2\" --api-sock \"$3\"";
    let mut other = crate::util::Reaped(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", script, "bash"])
            .arg(&w.sock)
            .arg(&exe)
            .arg(&sock)
            .env("SMOLVM_FAKE_VMM", "1")
            .spawn()
            .unwrap(),
    );
    let pid = other.id();
    crate::util::wait_until(
        "the other namespace's VMM",
        std::time::Duration::from_secs(10),
        || {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"firecracker\0"))
                && std::fs::symlink_metadata(format!("/proc/{pid}/root{}", sock.display())).is_ok()
        },
    );
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-twin0001\nTargets (1):\n  - vm-twin0001\nDeleted: vm-twin0001\nCleanup complete.\n",
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other namespace's VMM runs on"
    );
    assert!(w.ids().is_empty() && !sock.exists());
}

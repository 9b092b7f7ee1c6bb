//! Shared hosts: evidence made by another principal (a container with its own `/tmp`, a
//! user in a user namespace, a local user binding sockets or writing JSON) never leads to
//! an action, and the same setups made by the right owner in the right view still clean.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::fake_vmm::{ENV_NO_BIND, ENV_TAP};
use crate::util::{Reaped, Run, VmSpec, World, has_link, hold_tap, pid_alive, sh, wait_until};

/// uid and gid of the other local user.
const NOBODY: u32 = 65534;

/// The test binary as a stand-in `firecracker` (for commands run through `sh`).
fn firecracker_exe(w: &World) -> PathBuf {
    let exe = w.scratch.0.join("bin/firecracker");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    if !exe.exists() {
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exe).unwrap();
    }
    exe
}

/// The socket dir as SmolVM's `/tmp` is: anyone may create in it, sticky.
fn world_writable(dir: &Path) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
}

/// Starts `script` (`bash -c`, with the stand-in's path as `$1` and `args` after it) as a
/// stand-in VMM (`SMOLVM_FAKE_VMM`), and waits until /proc shows it as `firecracker`.
fn spawn_vmm(script: &str, args: &[&Path], env: &[(&str, &str)], uid: Option<u32>) -> Reaped {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(script)
        .arg("bash")
        .args(args)
        .env("SMOLVM_FAKE_VMM", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(uid) = uid {
        c.uid(uid).gid(uid);
    }
    let child = Reaped(c.stdin(Stdio::null()).spawn().unwrap());
    let pid = child.id();
    wait_until("the stand-in VMM", Duration::from_secs(10), || {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"firecracker\0"))
    });
    child
}

/// Case 1: a VMM in a container with its own `/tmp` (another mount namespace), started but
/// not yet serving `fc-<id>.sock`, names a path that exists in neither view. It is not a
/// row-less VM of ours: `--check --all` finds no leak and `--all` leaves it running. The
/// same VMM in another network namespace is not ours either; in our view it is.
#[test]
fn a_vmm_in_another_container_whose_socket_is_not_there_yet_is_not_ours() {
    let Some(w) = World::new("container") else {
        return;
    };
    let exe = firecracker_exe(&w);
    let sock = w.socket_path("sbx-cont");
    let own_tmp = "mount -t tmpfs tmpfs \"$2\" && exec -a firecracker \"$1\" --api-sock \"$3\"";
    let vmm = spawn_vmm(
        &format!("exec unshare -m --propagation private bash -c '{own_tmp}' bash \"$@\""),
        &[&exe, &w.sock, &sock],
        &[(ENV_NO_BIND, "1")],
        None,
    );
    w.run(&["--check", "--all"])
        .expect(0, "No leaked SmolVM resources.\n");
    w.run(&["--all"]).expect(0, "No matching VMs to clean.\n");
    assert!(pid_alive(vmm.id()), "the container's VMM runs on");
    drop(vmm);

    // Another network namespace, sharing our /tmp: its TAPs are other links. Not ours.
    let vmm = spawn_vmm(
        "exec unshare -n bash -c 'exec -a firecracker \"$1\" --api-sock \"$2\"' bash \"$@\"",
        &[&exe, &sock],
        &[(ENV_NO_BIND, "1")],
        None,
    );
    w.run(&["--check", "--all"])
        .expect(0, "No leaked SmolVM resources.\n");
    assert!(pid_alive(vmm.id()));
    drop(vmm);

    // Control: another mount namespace that shares our socket dir and data dir (a
    // container given the host's /tmp): its VM is ours, and --all takes it.
    let vmm = spawn_vmm(
        "exec unshare -m --propagation private bash -c 'exec -a firecracker \"$1\" --api-sock \"$2\"' bash \"$@\"",
        &[&exe, &sock],
        &[(ENV_NO_BIND, "1")],
        None,
    );
    let r = w.run(&["--check", "--all"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("sbx-cont"), "{}", r.stdout);
    w.run(&["--all"]).expect(
        0,
        "Targets (1):\n  - sbx-cont\nDeleted: sbx-cont\nCleanup complete.\n",
    );
    let pid = vmm.id();
    wait_until("the stopped VMM", Duration::from_secs(5), || !pid_alive(pid));
}

/// Binds and closes `sock` as `uid`: an unserved socket file that user owns.
fn forge_socket(sock: &Path, uid: u32) {
    let script = "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])";
    let ok = Command::new("python3")
        .args(["-c", script])
        .arg(sock)
        .uid(uid)
        .gid(uid)
        .status()
        .unwrap()
        .success();
    assert!(ok, "bind {} as uid {uid}", sock.display());
}

/// Case 2: any user can bind and close `/tmp/fc-golden-image.sock`. That unserved socket
/// names a row-less VM, but it vouches only for that user's own files: root's base image
/// and log stay, and only the user's socket goes. Root's socket vouches for root's files.
#[test]
fn a_users_forged_socket_costs_only_that_users_files() {
    let Some(w) = World::new("forged") else {
        return;
    };
    world_writable(&w.sock);
    let disk = w.data.join("disks/golden-image.ext4");
    let log = w.data.join("golden-image.log");
    let theirs = w.data.join("disks/golden-image.qcow2");
    std::fs::write(&disk, "the operator's base image").unwrap();
    std::fs::write(&log, "the operator's log").unwrap();
    std::fs::write(&theirs, "the user's own disk").unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = w.socket_path("golden-image");
    forge_socket(&sock, NOBODY);
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: golden-image\nTargets (1):\n  - golden-image\nDeleted: golden-image\nCleanup complete.\n",
    );
    assert!(
        r.stderr
            .contains("only a user's socket, lock or process names it")
            && r.stderr.contains(&log.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(disk.exists() && log.exists(), "root's files stay");
    assert!(
        !sock.exists() && !theirs.exists(),
        "the user's own socket and disk go"
    );

    // Control: the same socket made by root names root's VM, whose files all go.
    forge_socket(&sock, 0);
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: golden-image\nTargets (1):\n  - golden-image\nDeleted: golden-image\nCleanup complete.\n",
    );
    assert!(!disk.exists() && !log.exists() && !sock.exists());
}

/// `~/.smolvm/forwards/<id>.json` written by `owner`, recording `pid` as the tunnel of
/// 127.0.0.1:8080 → 80, and its lock, in a forwards dir `owner` owns.
fn forwards_json(w: &World, id: &str, pid: u32, owner: u32) -> PathBuf {
    let dir = w.scratch.0.join(".smolvm/forwards");
    std::fs::create_dir_all(&dir).unwrap();
    let json = format!(r#"[{{"host_port": 8080, "guest_port": 80, "transport": "ssh", "pid": {pid}}}]"#);
    std::fs::write(dir.join(format!("{id}.json")), json).unwrap();
    std::fs::write(dir.join(format!("{id}.lock")), "").unwrap();
    for p in [w.scratch.0.join(".smolvm"), dir.clone()] {
        std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
    }
    for f in [format!("{id}.json"), format!("{id}.lock")] {
        std::os::unix::fs::chown(dir.join(f), Some(owner), Some(owner)).unwrap();
    }
    dir
}

/// A stand-in `ssh -L 127.0.0.1:8080:127.0.0.1:80` run by `uid`.
fn tunnel_as(w: &World, uid: u32) -> Reaped {
    let exe = w.scratch.0.join("bin/ssh");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    if !exe.exists() {
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &exe).unwrap();
    }
    let child = Command::new(&exe)
        .arg0("ssh")
        .args(["-N", "-L", "127.0.0.1:8080:127.0.0.1:80", "root@127.0.0.1"])
        .env("SMOLVM_FAKE_VMM", "1")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("the tunnel", Duration::from_secs(10), || {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"ssh\0"))
    });
    Reaped(child)
}

/// Case 3: a user who may run `sudo smolvm-cleanup` writes a forwards JSON naming another
/// user's `ssh -L` tunnel (pids and command lines are anyone's to read). Root signals
/// nothing. Control: the JSON's own writer's tunnel, in their own forwards dir, is that
/// user's stale row-less VM's sidecar, and goes with it.
#[test]
fn a_forwards_json_naming_another_users_tunnel_signals_nothing() {
    let Some(w) = World::new("fwdforge") else {
        return;
    };
    let other = tunnel_as(&w, NOBODY);
    let dir = forwards_json(&w, "vm-evil", other.id(), 1000);
    let run = |w: &World| Run::from(w.cmd(&[]).env("SUDO_UID", "1000").output().unwrap());
    run(&w).expect(0, "No matching VMs to clean.\n");
    assert!(pid_alive(other.id()), "the other user's ssh runs on");
    assert!(dir.join("vm-evil.json").exists());
    drop(other);

    let own = tunnel_as(&w, 1000);
    forwards_json(&w, "vm-evil", own.id(), 1000);
    run(&w).expect(
        0,
        "Reconciled stale VMs: vm-evil\nTargets (1):\n  - vm-evil\nDeleted: vm-evil\nCleanup complete.\n",
    );
    let pid = own.id();
    wait_until("the stopped tunnel", Duration::from_secs(5), || !pid_alive(pid));
    assert!(!dir.join("vm-evil.json").exists() && !dir.join("vm-evil.lock").exists());
}

/// Case 4: an unprivileged user makes a user+net namespace, a TAP there named like one of
/// the host's (`tap7`, another tool's, held open, named by no row or rule), and holds it
/// from a `firecracker --api-sock /tmp/fc-evil.sock`. The host's tap7 is never tied to that
/// "VM": `--all` leaves it, and the process in the other namespace runs on.
#[test]
fn a_tap_named_from_a_user_namespace_is_not_the_hosts() {
    let Some(w) = World::new("userns") else {
        return;
    };
    world_writable(&w.sock);
    sh("ip tuntap add tap7 mode tap && ip link set tap7 up");
    let _other_tool = hold_tap("tap7");
    let exe = firecracker_exe(&w);
    let sock = w.socket_path("evil");
    // Debian makes /dev/net/tun 0666; this host's is 0600: give the user a 0666 one, in a
    // mount namespace of its own, before it drops to its uid.
    let tun = w.scratch.0.join("tun");
    sh(&format!("mknod -m 0666 {} c 10 200", tun.display()));
    let inner = w.scratch.0.join("inner.sh");
    std::fs::write(
        &inner,
        "ip tuntap add tap7 mode tap && exec -a firecracker \"$1\" --api-sock \"$2\"\n",
    )
    .unwrap();
    let vmm = spawn_vmm(
        "exec unshare -m --propagation private bash -c 'mount --bind \"$3\" /dev/net/tun && \
         exec setpriv --reuid 65534 --regid 65534 --clear-groups \
         unshare --user --map-root-user --net bash \"$4\" \"$1\" \"$2\"' bash \"$@\"",
        &[&exe, &sock, &tun, &inner],
        &[(ENV_TAP, "tap7")],
        None,
    );
    assert_eq!(
        std::fs::metadata(format!("/proc/{}", vmm.id()))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap(),
        NOBODY
    );
    wait_until("the user's socket", Duration::from_secs(10), || sock.exists());
    let r = w.run(&["--all"]);
    assert!(
        has_link("tap7"),
        "the host's tap7 stays: {}{}",
        r.stdout,
        r.stderr
    );
    assert!(pid_alive(vmm.id()), "the other namespace's process runs on");
    assert!(
        r.stdout.contains("Failed:  evil (") && r.stdout.contains("not touched"),
        "{}",
        r.stdout
    );
}

/// The lock file a root run takes for `dir` (`lock::dir_for`, keyed by device and inode).
fn lock_file(dir: &Path) -> PathBuf {
    let st = rustix::fs::stat(dir).unwrap();
    PathBuf::from(format!("/run/smolvm-cleanup/{:x}-{}.lock", st.st_dev, st.st_ino))
}

/// Case 5: any user who can open the data dir could hold a flock on it; that no longer
/// holds root's run off. Control: another cleanup's lock (root's) is waited for, named by
/// its pid, and still held at the deadline the run fails having changed nothing.
#[test]
fn no_other_user_can_hold_a_run_off_and_another_cleanup_is_named() {
    let Some(mut w) = World::new("holdoff") else {
        return;
    };
    w.add(VmSpec::stale("vm-held0001", 2));
    // -o: flock itself holds the lock, not the sleep it runs.
    let script = "exec flock -o -s \"$1\" sleep 60";
    let hold = |uid: u32, path: &Path| {
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh"]).arg(path).uid(uid).gid(uid);
        let child = Reaped(c.spawn().unwrap());
        let pid = child.id();
        wait_until("the flock holder", Duration::from_secs(10), || {
            std::fs::read_to_string("/proc/locks").is_ok_and(|l| l.contains(&format!(" {pid} ")))
        });
        child
    };
    let _nobody = hold(NOBODY, &w.data);
    let r = w.run(&["--dry-run", "--timeout", "5s"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let before = w.snapshot();
    // Root's lock file is root's alone.
    let denied = Command::new("flock")
        .args(["-n", "/run/smolvm-cleanup", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!denied.success());
    let key = lock_file(&w.data);
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&key)
        .unwrap();
    let other = hold(0, &key);
    let r = w.run(&["--timeout", "300ms"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "another cleanup (pid {}) still holds it at the --timeout deadline",
            other.id()
        )),
        "{}",
        r.stderr
    );
    w.snapshot().assert_same(&before);
    drop(other);
    w.run(&["--timeout", "5s"]).expect(
        0,
        "Reconciled stale VMs: vm-held0001\nTargets (1):\n  - vm-held0001\nDeleted: vm-held0001\nCleanup complete.\n",
    );
}

/// Issue 25, case 1: Alice's stopped VM (its TAP made for her uid, its rules) is not a
/// leftover of a root run that never read her data dir (the systemd unit's: no HOME, no
/// sudo): it stays whole. Controls: root's own TAP with the same rules is an orphan and
/// goes; once her data dir is read (and holds no row for it), hers goes too.
#[test]
fn another_users_tap_is_no_orphan_of_a_run_that_did_not_read_their_data_dir() {
    let Some(w) = World::new("alicetap") else {
        return;
    };
    sh("ip tuntap add tap2 mode tap user 1000 && ip tuntap add tap3 mode tap");
    crate::util::nft(
        "add rule inet smolvm_filter forward iifname \"tap2\" oifname \"uplink0\" counter accept comment \"smolvm:nat:tap:tap2:to:uplink0\"
add rule inet smolvm_filter forward iifname \"tap3\" oifname \"uplink0\" counter accept comment \"smolvm:nat:tap:tap3:to:uplink0\"
",
    );
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: orphan-tap3\nTargets (1):\n  - orphan-tap3\nDeleted: orphan-tap3\nCleanup complete.\n",
    );
    assert!(
        r.stderr
            .contains("tap2: made for uid 1000, whose data dir this run did not read"),
        "{}",
        r.stderr
    );
    assert!(has_link("tap2") && !has_link("tap3"));
    let comments = crate::util::comments();
    assert!(comments.iter().any(|c| c.contains("tap:tap2:")), "{comments:?}");
    assert!(!comments.iter().any(|c| c.contains("tap:tap3:")), "{comments:?}");

    // Her data dir read (hers, under sudo from her), with no row for tap2: it is a leftover.
    std::os::unix::fs::chown(&w.data, Some(1000), Some(1000)).unwrap();
    Run::from(w.cmd(&[]).env("SUDO_UID", "1000").output().unwrap()).expect(
        0,
        "Reconciled stale VMs: orphan-tap2\nTargets (1):\n  - orphan-tap2\nDeleted: orphan-tap2\nCleanup complete.\n",
    );
    assert!(!has_link("tap2"));
}

/// Issue 25, case 3: Alice replaces her `smolvm.db` with a symlink to Bob's DB (0600, in a
/// home she cannot read). Root's run refuses to open it as hers (the symlink rule of data
/// dirs, applied to the DB): Bob's running `vm-` VM, its row and its VMM stay, and the run
/// is incomplete. Control: the same symlink made by root is followed.
#[test]
fn a_state_db_behind_another_users_symlink_is_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let Some(mut w) = World::new("dblink") else {
        return;
    };
    w.add(VmSpec::running("vm-bob00001", 2));
    let bob_vmm = w.vmm_pid("vm-bob00001");
    for p in [&w.data, &w.db] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(&w.data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let alice = w.scratch.0.join("alice");
    std::fs::create_dir(&alice).unwrap();
    std::os::unix::fs::chown(&alice, Some(1000), Some(1000)).unwrap();
    let link = alice.join("smolvm.db");
    std::os::unix::fs::symlink(&w.db, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(1000), Some(1000)).unwrap();
    let run = |w: &World| {
        let mut c = crate::util::bin();
        c.arg("--state-dir")
            .arg(&alice)
            .arg("--socket-dir")
            .arg(&w.sock)
            .env("HOME", &w.scratch.0)
            .env("SUDO_UID", "1000");
        Run::from(c.output().unwrap())
    };
    let before = w.snapshot();
    let r = run(&w);
    let why = format!(
        "Cleanup incomplete: cannot open state DB {}: {} is a symlink owned by uid 1000 to a file of uid {NOBODY}; not followed\n",
        link.display(),
        link.display()
    );
    r.expect(1, &why);
    w.snapshot().assert_same(&before);
    assert!(pid_alive(bob_vmm));
    assert_eq!(w.ids(), ["vm-bob00001"]);

    // Control: root's symlink is followed (root may point anywhere).
    std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
    run(&w).expect(
        0,
        "Targets (1):\n  - vm-bob00001\nDeleted: vm-bob00001\nCleanup complete.\n",
    );
    assert!(w.ids().is_empty());
}

/// A process of `uid` listening on `sock` until the test ends.
fn listen_as(sock: &Path, uid: u32) -> Reaped {
    use std::io::BufRead;
    let script = "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\n\
                  s.listen()\nprint('ready', flush=True)\ntime.sleep(120)";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(sock)
        .uid(uid)
        .gid(uid)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    Reaped(child)
}

/// Issue 25, case 2: a crashed Firecracker VM does not read as alive because another user
/// listens on `/tmp/qmp-<id>.sock` (a socket a Firecracker VM never has) or holds its
/// leftover create lock (SmolVM makes it 0644): it is reclaimed, and the other user's
/// socket and the held lock are left alone. Control: its own kind of socket, served by
/// its owner (root), keeps it alive.
#[test]
fn a_lone_served_socket_or_held_lock_of_another_user_shows_no_life() {
    let Some(mut w) = World::new("lonelife") else {
        return;
    };
    world_writable(&w.sock);
    w.add(VmSpec::stale("sbx-crash", 2));
    let qmp = w.sock.join("qmp-sbx-crash.sock");
    let listener = listen_as(&qmp, NOBODY);
    let lock = w.data.join("locks/sbx-crash.create.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    let mut holder = Command::new("flock");
    holder
        .args(["-o"])
        .arg(&lock)
        .args(["sleep", "120"])
        .uid(NOBODY)
        .gid(NOBODY);
    let holder = Reaped(holder.spawn().unwrap());
    let hpid = holder.id();
    wait_until("the lock holder", Duration::from_secs(10), || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| l.contains(&format!(" {hpid} ")))
    });
    let r = w.run(&["--check"]);
    assert_eq!(r.code, 1, "a leak: {}{}", r.stdout, r.stderr);
    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: sbx-crash\nTargets (1):\n  - sbx-crash\nDeleted: sbx-crash\nCleanup complete.\n",
    );
    assert!(
        r.stderr
            .contains("is served by uid 65534, not by this VM's own VMM"),
        "{}",
        r.stderr
    );
    assert!(w.ids().is_empty() && !has_link("tap2"));
    assert!(
        qmp.exists() && lock.exists(),
        "the other user's socket and held lock stay"
    );
    assert!(pid_alive(listener.id()) && pid_alive(hpid));
    drop((listener, holder));

    // Control: its own Firecracker socket served by root keeps a crashed-looking row
    // alive. (What the first run left, no longer served or held, now goes: root's lock
    // names sbx-crash.)
    w.add(VmSpec::stale("sbx-again", 3));
    let fc = w.socket_path("sbx-again");
    std::fs::remove_file(&fc).unwrap();
    let _own = listen_as(&fc, 0);
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: sbx-crash\nTargets (1):\n  - sbx-crash\nDeleted: sbx-crash\nCleanup complete.\n",
    );
    assert_eq!(w.ids(), ["sbx-again"]);
    assert!(has_link("tap3") && !qmp.exists() && !lock.exists());
}

/// Issue 27, case 2: a `firecracker --id <uuid>` that the jailer, firecracker-containerd
/// or a test harness started (its socket elsewhere, holding a TAP of its own) is no VM of
/// SmolVM's: `--all` neither stops it nor deletes its TAP.
#[test]
fn another_products_firecracker_is_never_stopped() {
    let Some(w) = World::new("otherfc") else {
        return;
    };
    sh("ip tuntap add tap9 mode tap && ip link set tap9 up");
    let exe = firecracker_exe(&w);
    let other = w.scratch.0.join("fc-containerd");
    std::fs::create_dir_all(&other).unwrap();
    let sock = other.join("firecracker.sock");
    let vmm = spawn_vmm(
        "exec -a firecracker \"$1\" --id 3f2b1c4d-0000-4000-8000-00000000abcd --api-sock \"$2\"",
        &[&exe, &sock],
        &[(ENV_TAP, "tap9")],
        None,
    );
    wait_until("its socket", Duration::from_secs(10), || sock.exists());
    w.run(&["--check", "--all"])
        .expect(0, "No leaked SmolVM resources.\n");
    w.run(&["--all"]).expect(0, "No matching VMs to clean.\n");
    assert!(pid_alive(vmm.id()) && has_link("tap9"));
}

/// Issue 27, case 3: a VMM in another mount namespace whose view of our socket dir is a
/// FUSE mount that never answers (its server holds `/dev/fuse` and reads nothing). Its
/// view cannot be read, so it is "cannot tell": the run finishes within `--timeout`,
/// touches nothing of it, and `--check --all` says it is not fully inspected.
#[test]
fn a_stuck_filesystem_in_another_namespace_is_cannot_tell_within_the_timeout() {
    let Some(w) = World::new("stuckfuse") else {
        return;
    };
    let exe = firecracker_exe(&w);
    let sock = w.socket_path("sbx-fuse");
    // Mounts a FUSE filesystem over the socket dir (this namespace's view of it) whose
    // server is this very process, which never reads a request, then becomes the VMM.
    let script = "import ctypes, os, sys\n\
                  fd = os.open('/dev/fuse', os.O_RDWR)\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  opts = f'fd={fd},rootmode=40000,user_id=0,group_id=0'.encode()\n\
                  if libc.mount(b'stuck', sys.argv[2].encode(), b'fuse', 0, opts) != 0:\n\
                  \x20   sys.exit('mount: ' + os.strerror(ctypes.get_errno()))\n\
                  os.set_inheritable(fd, True)\n\
                  os.execv(sys.argv[1], ['firecracker', '--api-sock', sys.argv[3]])\n";
    let py = w.scratch.0.join("stuck.py");
    std::fs::write(&py, script).unwrap();
    let vmm = spawn_vmm(
        "exec unshare -m --propagation private python3 \"$4\" \"$1\" \"$2\" \"$3\"",
        &[&exe, &w.sock, &sock, &py],
        &[(ENV_NO_BIND, "1")],
        None,
    );
    let t = std::time::Instant::now();
    let r = w.run(&["--check", "--all", "--timeout", "4s"]);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Check incomplete: not fully inspected: pid")
            && r.stdout
                .contains("names sbx-fuse, but its view of the host did not answer in time"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let t = std::time::Instant::now();
    w.run(&["--all", "--timeout", "4s"])
        .expect(0, "No matching VMs to clean.\n");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(pid_alive(vmm.id()));
}

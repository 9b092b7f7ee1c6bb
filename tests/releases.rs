//! What releases after 0.0.5 leave beside a VMM, a TAP and rules, each with real
//! processes and files: the swtpm sidecar (0.0.16+), a port forward's ssh tunnel and its
//! `~/.smolvm/forwards` state (0.0.19+), libkrun's `krunvm` (0.0.9–0.0.20) and launcher
//! (0.0.21+) with its `/tmp/libkrun-<id>-<hex>.json`, snapshot locks (0.0.27+), disk
//! companions (0.0.19+), a VM's browser-session directories (0.0.6+), and SSH ports above
//! 65535 (0.0.8–0.0.18).

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::util::{Reaped, VmSpec, World, fake_vmm, pid_alive};

const HEX: &str = "0123456789abcdef0123456789abcdef";

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A VM's swtpm, started as SmolVM starts it (`swtpm socket --tpmstate dir=<data>/firmware/<id>/swtpm …`).
fn swtpm(w: &World, id: &str) -> Reaped {
    let state = w.data.join(format!("firmware/{id}/swtpm"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(w.data.join(format!("firmware/{id}/OVMF_VARS.fd")), "vars").unwrap();
    let argv = [
        "/usr/bin/swtpm".to_string(),
        "socket".into(),
        "--tpmstate".into(),
        format!("dir={}", state.display()),
        "--ctrl".into(),
        format!("type=unixio,path={}", state.join("swtpm-sock").display()),
        "--tpm2".into(),
        "--daemon".into(),
        "--pid".into(),
        format!("file={}", state.join("swtpm.pid").display()),
    ];
    Reaped(fake_vmm::spawn_as(&w.scratch.0, &argv))
}

/// A port forward's tunnel, as SmolVM's `sandbox expose` starts it.
fn tunnel(w: &World, host: u16, guest: u16) -> Reaped {
    let spec = format!("127.0.0.1:{host}:127.0.0.1:{guest}");
    let argv = args(&[
        "ssh",
        "-N",
        "-o",
        "BatchMode=yes",
        "-p",
        "2200",
        "-L",
        &spec,
        "root@127.0.0.1",
    ]);
    Reaped(fake_vmm::spawn_as(&w.scratch.0, &argv))
}

/// `~/.smolvm/forwards/<id>.json` with its locks, recording `forwards` (host, guest, pid).
fn forwards(w: &World, id: &str, forwards: &[(u16, u16, Option<u32>)]) -> PathBuf {
    let dir = w.scratch.0.join(".smolvm/forwards");
    std::fs::create_dir_all(&dir).unwrap();
    let items: Vec<String> = forwards
        .iter()
        .map(|(h, g, pid)| match pid {
            Some(p) => format!(r#"{{"host_port": {h}, "guest_port": {g}, "transport": "ssh", "pid": {p}}}"#),
            None => format!(r#"{{"host_port": {h}, "guest_port": {g}, "transport": "nftables"}}"#),
        })
        .collect();
    std::fs::write(dir.join(format!("{id}.json")), format!("[{}]", items.join(", "))).unwrap();
    std::fs::write(dir.join(format!("{id}.lock")), "").unwrap();
    std::fs::write(dir.join(format!("{id}.operation.lock")), "").unwrap();
    dir
}

fn alive(c: &Child) -> bool {
    pid_alive(c.id())
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// A stale VM's swtpm and tunnel are stopped, and its forwards state, snapshot lock, disk
/// companion and browser-session directory go with it; a kept VM's stay, and so does a
/// process that took a recorded tunnel pid later (pid reuse).
#[test]
fn a_stale_vms_sidecars_and_files_go_with_it_and_a_kept_vms_stay() {
    let Some(mut w) = World::new("sidecars") else {
        return;
    };
    w.add(VmSpec::stale("vm-side0001", 2));
    w.add(VmSpec::new("keepme", "created", 3));
    let (tpm, keep_tpm) = (swtpm(&w, "vm-side0001"), swtpm(&w, "keepme"));
    let (tun, keep_tun) = (tunnel(&w, 8080, 80), tunnel(&w, 9090, 90));
    // An ssh that started after the JSON was written, at a pid it records: pid reuse.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let late = tunnel(&w, 7070, 70);
    let fw = forwards(
        &w,
        "vm-side0001",
        &[
            (8080, 80, Some(tun.id())),
            (8181, 81, None),
            (7070, 70, Some(late.id())),
        ],
    );
    forwards(&w, "keepme", &[(9090, 90, Some(keep_tun.id()))]);
    filetime_back(&fw.join("vm-side0001.json"), 2);
    for f in [
        "locks/vm-side0001.snapshot.lock",
        "disks/vm-side0001.ext4.create-backup-1a2b3c",
    ] {
        std::fs::create_dir_all(w.data.join(f).parent().unwrap()).unwrap();
        std::fs::write(w.data.join(f), "x").unwrap();
    }
    std::fs::create_dir_all(w.data.join("browser-sessions/bs-0a1b/profile")).unwrap();
    std::fs::write(w.data.join("browser-sessions/bs-0a1b/profile/cookies"), "c").unwrap();
    w.conn()
        .execute_batch(
            "CREATE TABLE browser_sessions (session_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL UNIQUE, status TEXT);
             INSERT INTO browser_sessions VALUES ('bs-0a1b', 'vm-side0001', 'ready');",
        )
        .unwrap();

    let r = w.run(&[]);
    r.expect(
        0,
        "Reconciled stale VMs: vm-side0001\nTargets (1):\n  - vm-side0001\nDeleted: vm-side0001\nCleanup complete.\n",
    );
    assert!(
        !alive(&tpm) && !alive(&tun),
        "the stale VM's swtpm and tunnel are stopped"
    );
    assert!(alive(&keep_tpm) && alive(&keep_tun), "the kept VM's run on");
    assert!(
        alive(&late),
        "a process at a recorded pid that started later is not the tunnel"
    );
    for f in [
        "vm-side0001.json",
        "vm-side0001.lock",
        "vm-side0001.operation.lock",
    ] {
        assert!(!exists(&fw.join(f)), "{f}");
    }
    assert!(exists(&fw.join("keepme.json")) && exists(&fw.join("keepme.lock")));
    for f in [
        "firmware/vm-side0001",
        "locks/vm-side0001.snapshot.lock",
        "disks/vm-side0001.ext4.create-backup-1a2b3c",
        "browser-sessions/bs-0a1b",
    ] {
        assert!(!exists(&w.data.join(f)), "{f}");
    }
    assert!(exists(&w.data.join("firmware/keepme/swtpm")));
    let sessions: i64 = w
        .conn()
        .query_row("SELECT count(*) FROM browser_sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0);
    assert_eq!(w.ids(), ["keepme"]);
}

/// Sets a file's mtime `secs` seconds back.
fn filetime_back(p: &Path, secs: i64) {
    crate::util::sh(&format!("touch -d @$(( $(date +%s) - {secs} )) {}", p.display()));
}

/// libkrun: `krunvm` (0.0.9–0.0.20) runs a VM named by its disk; the launcher (0.0.21+)
/// by its `/tmp/libkrun-<id>-<hex>.json`. Their rows' pids prove them alive; a launcher
/// with no row is a live VM left alone until `--all`, which stops it and removes its
/// config; a config whose launcher is gone names a stale VM.
#[test]
fn libkrun_vmms_and_configs() {
    let Some(mut w) = World::new("libkrun") else {
        return;
    };
    let krun = Reaped(fake_vmm::spawn_as(
        &w.scratch.0,
        &args(&[
            "/usr/bin/krunvm",
            "run",
            "--cpus",
            "2",
            "--rootfs",
            &w.data.join("disks/vm-krun0001.ext4").display().to_string(),
        ]),
    ));
    w.add(VmSpec {
        pid: Some(i64::from(krun.id())),
        ..VmSpec::new("vm-krun0001", "running", 2)
    });
    let cfg = |id: &str| w.sock.join(format!("libkrun-{id}-{HEX}.json"));
    std::fs::write(cfg("sbx-launch"), "{}").unwrap();
    std::fs::write(cfg("sbx-gone"), "{}").unwrap();
    let launcher = Reaped(fake_vmm::spawn_as(
        &w.scratch.0,
        &args(&[
            "/opt/venv/bin/python3",
            "-m",
            "smolvm.runtime._libkrun_launcher",
            &cfg("sbx-launch").display().to_string(),
        ]),
    ));
    let r = w.run(&["--prefix", "zzz"]);
    r.expect(
        0,
        "Reconciled stale VMs: sbx-gone\nTargets (1):\n  - sbx-gone\nDeleted: sbx-gone\nCleanup complete.\n",
    );
    assert!(
        r.stderr.contains("sbx-launch: has no state row but is alive"),
        "{}",
        r.stderr
    );
    assert!(alive(&krun) && alive(&launcher));
    assert!(!exists(&cfg("sbx-gone")) && exists(&cfg("sbx-launch")));
    assert_eq!(w.ids(), ["vm-krun0001"]);
    w.run(&["--all"]).expect(
        0,
        "Targets (2):\n  - vm-krun0001\n  - sbx-launch\nDeleted: vm-krun0001\nDeleted: sbx-launch\nCleanup complete.\n",
    );
    assert!(!alive(&krun) && !alive(&launcher));
    assert!(!exists(&cfg("sbx-launch")));
    assert!(w.ids().is_empty());
}

/// SmolVM 0.0.8–0.0.18 handed out SSH ports up to 67499: such a row is read (not refused)
/// and its VM cleaned; the port matches no element.
#[test]
fn a_row_with_an_ssh_port_above_65535_is_read_and_cleaned() {
    let Some(mut w) = World::new("bigport") else {
        return;
    };
    w.add(VmSpec::stale("vm-port0001", 2));
    w.add(VmSpec::new("keepme", "created", 3));
    w.conn()
        .execute_batch(
            "UPDATE ssh_forwards SET host_port = 67499 WHERE vm_id = 'vm-port0001';
             UPDATE vms SET network = json_set(network, '$.ssh_host_port', 67499) WHERE id = 'vm-port0001';",
        )
        .unwrap();
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-port0001\nTargets (1):\n  - vm-port0001\nDeleted: vm-port0001\nCleanup complete.\n",
    );
    assert_eq!(w.ids(), ["keepme"]);
}

/// Snapshots (0.0.7+: `snapshots` rows, `snapshots/<sid>/`) are the user's data: never
/// removed, and the VM one was taken of keeps its row (no foreign key says so in any
/// release), failing with the table named, while everything else of it goes.
#[test]
fn a_vm_with_a_snapshot_keeps_its_row_and_the_snapshot_stays() {
    let Some(mut w) = World::new("snapshot") else {
        return;
    };
    w.add(VmSpec::stale("vm-snap0001", 2));
    w.add(VmSpec::stale("vm-plain001", 3));
    w.conn()
        .execute_batch(
            "CREATE TABLE snapshots (snapshot_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, snapshot_path TEXT);
             INSERT INTO snapshots VALUES ('snap-0a1b2c3d', 'vm-snap0001', NULL);",
        )
        .unwrap();
    std::fs::create_dir_all(w.data.join("snapshots/snap-0a1b2c3d")).unwrap();
    std::fs::write(w.data.join("snapshots/snap-0a1b2c3d/mem"), "memory").unwrap();
    w.run(&[]).expect(
        1,
        "Reconciled stale VMs: vm-plain001, vm-snap0001\nTargets (2):\n  - vm-plain001\n  - vm-snap0001\n\
         Deleted: vm-plain001\n\
         Failed:  vm-snap0001 (its state row is still referred to by table snapshots; row kept)\n\
         Cleanup completed with 1 failure(s).\n",
    );
    assert_eq!(w.ids(), ["vm-snap0001"]);
    assert!(w.data.join("snapshots/snap-0a1b2c3d/mem").exists());
    assert!(!crate::util::has_link("tap2") && !w.data.join("vm-snap0001.log").exists());
}

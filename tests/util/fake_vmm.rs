//! Stand-in VMMs: this test binary re-executed through a symlink named `firecracker` (or
//! `qemu-system-x86_64`), with the command line SmolVM gives the real one. A constructor
//! in `.init_array` takes over before libtest's `main` when `SMOLVM_FAKE_VMM` is set: it
//! holds the VM's TAP, binds the API or QMP socket and then sleeps until signalled, on
//! several threads, as the real ones (ci/guests meets real QEMU) do. Its output goes to
//! `<data_dir>/<id>.log`, where SmolVM sends the real one's.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Proc, World, wait_until};

const ENV: &str = "SMOLVM_FAKE_VMM";
const ENV_IGNORE_TERM: &str = "SMOLVM_FAKE_VMM_IGNORE_TERM";
/// The TAP the stand-in holds open, as Firecracker holds its guest's.
pub const ENV_TAP: &str = "SMOLVM_FAKE_VMM_TAP";
/// Set: it never binds its socket, as a VMM that has not got that far yet.
pub const ENV_NO_BIND: &str = "SMOLVM_FAKE_VMM_NO_BIND";

// SAFETY: a constructor runs before main with no Rust runtime guarantees; `hook` only
// reads the environment and /proc, and returns at once unless SMOLVM_FAKE_VMM is set,
// in which case it never returns (the process is a stand-in VMM, not a test run).
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static FAKE_VMM_HOOK: extern "C" fn() = hook;

extern "C" fn hook() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    run();
}

fn run() -> ! {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // SAFETY: prctl(PR_SET_PDEATHSIG) and signal(SIGTERM, SIG_IGN) only change this
    // process's signal dispositions; no Rust code relies on them.
    #[allow(unsafe_code)]
    unsafe {
        // Die with the test thread that started us, even if the test never reaps us.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if std::env::var_os(ENV_IGNORE_TERM).is_some() {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    let mut sock = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--api-sock" {
            sock = args.get(i + 1).cloned();
        }
        if let Some(rest) = a.strip_prefix("unix:") {
            sock = rest.split(',').next().map(String::from);
        }
    }
    // The TAP first: once the socket is there, the TAP is held.
    let _tap = std::env::var(ENV_TAP).ok().map(|t| super::netns::hold_tap(&t));
    let sock = sock.filter(|_| std::env::var_os(ENV_NO_BIND).is_none());
    let _listener = sock.map(|p| std::os::unix::net::UnixListener::bind(p).expect("bind API socket"));
    // Threads beside the main one, as a VMM's vCPU and I/O threads (QEMU: 7).
    for _ in 0..2 {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A symlink named `name` to this test binary, so /proc/PID/comm reads like a VMM's.
fn exe_as(world: &World, name: &str) -> PathBuf {
    exe_in(&world.scratch.0, name)
}

fn exe_in(scratch: &Path, name: &str) -> PathBuf {
    let dir = scratch.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &link).unwrap();
    }
    link
}

/// Starts a stand-in VMM for `id`, holding `tap` when it has one, with the command line
/// SmolVM builds (QEMU's as 0.0.36 builds it, seen in ci/guests; Firecracker's
/// `--api-sock` alone), its output in the VM's log, and waits until its socket is bound.
pub fn spawn(world: &World, id: &str, kind: Proc, tap: Option<&str>) -> Child {
    let (exe, args, sock) = match kind {
        Proc::Qemu => {
            let qmp = world.sock.join(format!("qmp-{id}.sock"));
            let disk = world.data.join(format!("disks/{id}.qcow2"));
            let mut args: Vec<String> = [
                "-smp",
                "2",
                "-m",
                "512",
                "-nodefaults",
                "-serial",
                "stdio",
                "-kernel",
                "/k",
                "-append",
                "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
                "-drive",
            ]
            .map(String::from)
            .to_vec();
            args.push(format!(
                "file={},if=none,format=qcow2,id=rootdisk0-drive,node-name=rootdisk0",
                disk.display()
            ));
            if let Some(tap) = tap {
                args.push("-netdev".into());
                args.push(format!("tap,id=net0,ifname={tap},script=no,downscript=no"));
            }
            args.extend(["-nographic", "-no-reboot", "-monitor", "none", "-qmp"].map(String::from));
            args.push(format!("unix:{},server=on,wait=off", qmp.display()));
            args.extend(
                [
                    "-machine",
                    "microvm,accel=kvm,acpi=on,pcie=off,pic=off,pit=off,rtc=on",
                    "-cpu",
                    "host",
                ]
                .map(String::from),
            );
            (exe_as(world, "qemu-system-x86_64"), args, qmp)
        }
        _ => {
            let sock = world.socket_path(id);
            let args = vec!["--api-sock".to_string(), sock.display().to_string()];
            (exe_as(world, "firecracker"), args, sock)
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(world.data.join(format!("{id}.log")))
        .expect("open the VM's log");
    let mut cmd = Command::new(&exe);
    // SmolVM runs the binary by its resolved path, so argv[0] is absolute.
    cmd.arg0(&exe)
        .args(&args)
        .env(ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log);
    if let Some(tap) = tap {
        cmd.env(ENV_TAP, tap);
    }
    if kind == Proc::IgnoresTerm {
        cmd.env(ENV_IGNORE_TERM, "1");
    }
    if let Proc::FirecrackerAs(uid) = kind {
        // Its socket goes where SmolVM puts it, in a dir every user may write to.
        std::fs::set_permissions(&world.sock, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        cmd.uid(uid).gid(uid);
    }
    let child = cmd.spawn().expect("spawn stand-in VMM");
    wait_until("the stand-in VMM's socket", Duration::from_secs(10), || {
        sock.exists()
    });
    child
}

/// Starts a stand-in Firecracker serving `sock` (for state made outside a `World`).
pub fn spawn_at(scratch: &Path, sock: &Path) -> Child {
    spawn_holding(scratch, sock, None)
}

/// Starts a stand-in Firecracker serving `sock` and, like Firecracker, holding its TAP.
pub fn spawn_holding(scratch: &Path, sock: &Path, tap: Option<&str>) -> Child {
    let mut cmd = Command::new(exe_in(scratch, "firecracker"));
    if let Some(tap) = tap {
        cmd.env(ENV_TAP, tap);
    }
    let child = cmd
        .arg0("firecracker")
        .arg("--api-sock")
        .arg(sock)
        .env(ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stand-in VMM");
    wait_until("the stand-in VMM's socket", Duration::from_secs(10), || {
        sock.exists()
    });
    child
}

/// Starts a process that is not a VMM at all (for pid-reuse cases).
pub fn spawn_unrelated() -> Child {
    Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

/// Starts a stand-in process whose command line is `argv` (its argv[0]'s base name is
/// what /proc shows: `swtpm`, `ssh`, `python3`, `krunvm`), sleeping until killed, and
/// waits until /proc shows that command line.
pub fn spawn_as(scratch: &Path, argv: &[String]) -> Child {
    spawn_with(scratch, argv, None, &[])
}

/// `spawn_as`, with stdout and stderr sent to `log` (as SmolVM sends a VMM's to
/// `<data_dir>/<id>.log`) and `env` added to its environment.
pub fn spawn_with(scratch: &Path, argv: &[String], log: Option<&Path>, env: &[(&str, &str)]) -> Child {
    let base = argv[0].rsplit('/').next().unwrap();
    let out = || match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let child = Command::new(exe_in(scratch, base))
        .arg0(&argv[0])
        .args(&argv[1..])
        .env(ENV, "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawn a stand-in process");
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let pid = child.id();
    wait_until("the stand-in's command line", Duration::from_secs(10), || {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
    });
    child
}

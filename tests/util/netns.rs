//! The namespace harness: a private network namespace per test, and the kernel's view
//! of it (links, the nft ruleset) read and changed through `ip` and `nft`, as SmolVM does.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Moves this test's thread into a new network namespace (children inherit it). Without
/// root the test fails, unless `SMOLVM_CLEANUP_ALLOW_SKIP=1` lets it skip: it then returns
/// false and says so past libtest's output capture, so a skip never reads as a pass.
pub fn enter_netns() -> bool {
    if !rustix::process::geteuid().is_root() {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        assert!(
            std::env::var("SMOLVM_CLEANUP_ALLOW_SKIP").is_ok_and(|v| v == "1"),
            "{name} creates TAPs, nft tables and processes and must run as root \
             (sudo ./ci/test), or be skipped explicitly with SMOLVM_CLEANUP_ALLOW_SKIP=1"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {name}");
        return false;
    }
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace; no
    // other thread's state or Rust invariant depends on it. libtest runs each test on
    // its own thread, so the namespace is this test's alone.
    #[allow(unsafe_code)]
    let r = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) };
    r.expect("unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
    true
}

/// Runs a shell command in this test's namespace; panics with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Feeds a script to `nft -f -`, as SmolVM does.
pub fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ruleset() -> String {
    sh("nft -a list ruleset")
}

/// Comments of every rule in the ruleset, sorted.
pub fn comments() -> Vec<String> {
    let mut v: Vec<String> = ruleset()
        .lines()
        .filter_map(|l| l.split("comment \"").nth(1))
        .map(|c| c[..c.find('"').unwrap()].to_string())
        .collect();
    v.sort();
    v
}

/// Deletes, with the nft CLI, every rule of SmolVM's chains whose comment matches.
pub fn delete_rules(matches: impl Fn(&str) -> bool) {
    let mut script = String::new();
    for (table, chain) in [
        ("ip smolvm_nat", "prerouting"),
        ("ip smolvm_nat", "output"),
        ("ip smolvm_nat", "postrouting"),
        ("inet smolvm_filter", "forward"),
    ] {
        for line in sh(&format!("nft -a list chain {table} {chain}")).lines() {
            let Some(comment) = line.split("comment \"").nth(1) else {
                continue;
            };
            if matches(&comment[..comment.find('"').unwrap()]) {
                let handle = line.rsplit("# handle ").next().unwrap().trim();
                script.push_str(&format!("delete rule {table} {chain} handle {handle}\n"));
            }
        }
    }
    nft(&script);
}

/// Holds an existing TAP open the way a VMM does (TUNSETIFF on /dev/net/tun): the kernel
/// then reports carrier on it. Dropping the file lets it go.
pub fn hold_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap(),
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq (name, flags) from the pointer, which points
    // to a live, correctly sized #[repr(C)] value for the duration of the call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f
}

/// Link names in this namespace, sorted.
pub fn links() -> Vec<String> {
    let mut v: Vec<String> = sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

pub fn has_link(name: &str) -> bool {
    links().iter().any(|l| l == name)
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !matches!(s[s.rfind(')').unwrap() + 2..].chars().next(), Some('Z' | 'X')))
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

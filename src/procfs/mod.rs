//! Reads processes from /proc (root injected, so tests can use a fake tree): state, start
//! time and command line, and the scan for VMM processes. Gathers facts, decides nothing.

use std::path::{Path, PathBuf};

mod home;
mod locks;
mod view;

pub use home::OwnDirs;
pub use locks::Locks;

use crate::model::{PidView, ProcInfo, View, vm_role};

/// The inode of the host's first pid namespace (`PROC_PID_INIT_INO`), fixed since Linux 3.8.
const HOST_PID_NS: &str = "pid:[4026531836]";

/// Why /proc cannot be used to judge processes, when it cannot: missing, or not procfs
/// (an empty directory, a tmpfs). Without it every VMM would look gone.
pub fn unusable(root: &Path) -> Option<String> {
    // PROC_SUPER_MAGIC, a literal so it takes f_type's type, which differs by arch.
    match rustix::fs::statfs(root) {
        Ok(st) if st.f_type == 0x9fa0 => None,
        Ok(_) => Some(format!("{} is not a procfs mount", root.display())),
        Err(e) => Some(format!(
            "{} is not mounted ({})",
            root.display(),
            crate::error::errno_text(e.raw_os_error())
        )),
    }
}

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name (field 2, at most 15 bytes: `qemu-system-x86`).
    pub comm: String,
    pub state: char,
    /// The kernel's flags word (field 9): `PF_EXITING` while it exits.
    pub flags: u64,
    /// Field 22, clock ticks after boot.
    pub start: u64,
}

/// The kernel's flag on a task in `do_exit`.
const PF_EXITING: u64 = 0x4;

/// Parses `/proc/PID/stat`: the comm between the first `(` and the last `)` (it may hold
/// spaces and parens), then the fields after it.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let close = stat.rfind(')')?;
    let comm = stat[..close].split_once('(')?.1.to_string();
    let mut fields = stat[close + 1..].split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3): flags is field 9, starttime field 22.
    let flags = fields.nth(5)?.parse().ok()?;
    let start = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        comm,
        state,
        flags,
        start,
    })
}

/// A SIGKILL is pending for the process or one of its threads (`SigPnd`/`ShdPnd` of
/// `/proc/PID/status`, bit 8): it is about to exit, whatever its threads are doing.
pub fn parse_kill_pending(status: &str) -> bool {
    status.lines().any(|l| {
        let mask = l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << 8) != 0)
    })
}

/// `/proc/PID/cmdline` split on NUL (lossy: an argument is only compared, never executed).
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The interface a tun fd is attached to, from its fdinfo (`iff:\ttap3`).
pub fn parse_fdinfo_iff(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// The pids holding flocks on the file with device `dev` and inode `ino`, as
/// `<proc_root>/locks` lists them: none when it cannot be read.
pub fn flock_pids(proc_root: &Path, dev: u64, ino: u64) -> Vec<i32> {
    let locks = std::fs::read_to_string(proc_root.join("locks")).unwrap_or_default();
    parse_locks(&locks, rustix::fs::major(dev), rustix::fs::minor(dev), ino)
}

/// The pids of the FLOCK lines of `/proc/locks` on one inode: `1: FLOCK  ADVISORY  WRITE
/// 1234 08:01:5678 0 EOF` (major and minor in hex; a waiter's line starts `1: ->`).
pub fn parse_locks(locks: &str, major: u32, minor: u32, ino: u64) -> Vec<i32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let mut pids: Vec<i32> = flocks(locks)
        .filter(|&(_, on)| on == want)
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Each held FLOCK line of `/proc/locks` (waiters left out): its pid and the
/// `major:minor:inode` it is on.
pub fn flocks(locks: &str) -> impl Iterator<Item = (i32, &str)> {
    locks.lines().filter(|l| !l.contains("->")).filter_map(|l| {
        let f: Vec<&str> = l.split_ascii_whitespace().collect();
        (f.get(1) == Some(&"FLOCK"))
            .then(|| Some((f.get(4)?.parse().ok()?, *f.get(5)?)))
            .flatten()
    })
}

/// Boot time as Unix seconds, from `/proc/uptime` (10 ms precision) and the wall clock.
pub fn boot_time(root: &Path, now_unix: f64) -> Option<f64> {
    let up = std::fs::read_to_string(root.join("uptime")).ok()?;
    let secs: f64 = up.split_ascii_whitespace().next()?.parse().ok()?;
    Some(now_unix - secs)
}

/// One of this thread's namespaces, read by `read` (a test's thread has a network
/// namespace of its own; a /proc without thread-self has only the process's).
fn own<T>(root: &Path, kind: &str, read: impl Fn(&Path) -> Option<T>) -> Option<T> {
    read(&root.join("thread-self/ns").join(kind)).or_else(|| read(&root.join("self/ns").join(kind)))
}

#[derive(Clone)]
pub struct Procfs {
    pub root: PathBuf,
    boot_unix: f64,
    ticks_per_sec: f64,
    /// Our own mount and network namespaces (`mnt:[…]`, `net:[…]`), read once.
    own_mnt: Option<PathBuf>,
    own_net: Option<PathBuf>,
    /// Our network namespace's nsfs (device, inode), as a tun fd's namespace is compared.
    own_net_id: Option<(u64, u64)>,
}

impl Procfs {
    pub fn new(root: &Path, now_unix: f64) -> Procfs {
        Procfs {
            root: root.to_path_buf(),
            boot_unix: boot_time(root, now_unix).unwrap_or(0.0),
            ticks_per_sec: rustix::param::clock_ticks_per_second() as f64,
            own_mnt: own(root, "mnt", |p| std::fs::read_link(p).ok()),
            own_net: own(root, "net", |p| std::fs::read_link(p).ok()),
            own_net_id: own(root, "net", |p| {
                let st = rustix::fs::stat(p).ok()?;
                Some((st.st_dev, st.st_ino))
            }),
        }
    }

    /// The process at `pid`, or None when there is none (or it vanished while we read).
    pub fn read(&self, pid: i32) -> Option<ProcInfo> {
        let dir = self.root.join(pid.to_string());
        let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
        // A zombie's cmdline is empty; an unreadable one (hidepid) is treated the same way.
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|raw| parse_cmdline(&raw))
            .unwrap_or_default();
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).ok()?);
        Some(ProcInfo {
            pid,
            state: stat.state,
            start_ticks: stat.start,
            start_unix: self.boot_unix + stat.start as f64 / self.ticks_per_sec,
            exiting: self.exiting(&dir, &stat),
            comm: stat.comm,
            role: vm_role(&cmdline),
            cmdline,
            uid,
            taps: Vec::new(),
            view: View::Ours,
            home: None,
        })
    }

    /// Is the process on its way out (killed a moment ago: SIGKILL pending, its leader in
    /// `do_exit`, or a zombie leader whose other threads still exit, holding its fds)? A
    /// zombie whose threads are all gone is dead, not exiting.
    fn exiting(&self, dir: &Path, stat: &Stat) -> bool {
        if stat.state == 'Z' || stat.state == 'X' {
            return std::fs::read_dir(dir.join("task")).is_ok_and(|t| t.count() > 1);
        }
        stat.flags & PF_EXITING != 0
            || std::fs::read_to_string(dir.join("status")).is_ok_and(|s| parse_kill_pending(&s))
    }

    /// Re-reads only the start time, to prove a pidfd still refers to the process we judged.
    pub fn start_ticks(&self, pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(self.root.join(pid.to_string()).join("stat")).ok()?;
        parse_stat(&stat).map(|s| s.start)
    }

    /// Whose processes this /proc shows: the pid namespace of its first process (or,
    /// when that cannot be read, of ours) against the host's first namespace.
    pub fn pid_view(&self) -> PidView {
        let ns = |who: &str| std::fs::read_link(self.root.join(who).join("ns/pid")).ok();
        let Some(ns) = ns("1").or_else(|| ns("self")) else {
            return PidView::default();
        };
        let foreign = ns.as_os_str() != HOST_PID_NS;
        PidView {
            foreign,
            since_unix: self.read(1).filter(|_| foreign).map(|p| p.start_unix),
        }
    }

    /// The processes this /proc lists (one readdir), None when it cannot be read.
    fn pids(&self) -> Option<impl Iterator<Item = i32>> {
        let entries = std::fs::read_dir(&self.root).ok()?;
        Some(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok()),
        )
    }

    /// Every process SmolVM could have started for a VM (a VMM or a sidecar, by its command
    /// line: `model::vm_role`), with the TAPs it holds; one pass over /proc.
    pub fn scan_vmms(&self) -> Vec<ProcInfo> {
        let Some(pids) = self.pids() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pid in pids {
            // Cheap filter first: cmdline only, stat only for candidates.
            let Ok(raw) = std::fs::read(self.root.join(pid.to_string()).join("cmdline")) else {
                continue;
            };
            if vm_role(&parse_cmdline(&raw)).is_none() {
                continue;
            }
            if let Some(mut info) = self.read(pid) {
                info.taps = self.held_taps(pid);
                out.push(info);
            }
        }
        out.sort_by_key(|p| p.pid);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let stat = "4242 (fire) cr (acker) S 1 4242 4242 0 -1 4194564 96 0 0 0 0 0 0 0 20 0 1 0 987654 4096 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                comm: "fire) cr (acker".into(),
                state: 'S',
                flags: 4_194_564,
                start: 987_654
            })
        );
        assert_eq!(parse_stat(stat).map(|s| s.flags & PF_EXITING), Some(4));
        assert_eq!(parse_stat("12 (x) Z 1 2 3"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_pending_sigkill_is_seen() {
        assert!(parse_kill_pending(
            "Name:\tqemu\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000000\n"
        ));
        assert!(parse_kill_pending("ShdPnd:\t0000000000004100\n"));
        assert!(!parse_kill_pending(
            "SigPnd:\t0000000000004000\nShdPnd:\t0000000000000000\n"
        ));
    }

    #[test]
    fn fdinfo_names_the_tap() {
        let info = "pos:\t0\nflags:\t0100002\nmnt_id:\t15\nino:\t1048\niff:\ttap6\n";
        assert_eq!(parse_fdinfo_iff(info), Some("tap6"));
        assert_eq!(parse_fdinfo_iff("pos:\t0\nflags:\t02\n"), None);
    }

    /// A real TAP held the way Firecracker holds one: our own fd, read back from /proc,
    /// and only in the network namespace its device is in.
    #[test]
    fn a_held_tap_is_read_from_proc() {
        if !crate::netlink::test_netns() {
            return;
        }
        crate::netlink::test_sh("ip tuntap add tap77 mode tap");
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = [0u8; 40];
        req[..5].copy_from_slice(b"tap77");
        let flags = u16::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap();
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads a 40-byte struct ifreq (name, then flags) from a live,
        // correctly sized buffer for the duration of the call.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&tun),
                libc::TUNSETIFF,
                req.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let fs = Procfs::new(Path::new("/proc"), 0.0);
        let me = rustix::process::getpid().as_raw_nonzero().get();
        assert_eq!(fs.held_taps(me), ["tap77"]);
        // The same fd seen from another network namespace (as a process there holding an
        // fd passed to it): its tap77 is not that namespace's tap77.
        assert!(crate::netlink::test_netns());
        let elsewhere = Procfs::new(Path::new("/proc"), 0.0);
        assert!(elsewhere.held_taps(me).is_empty());
        drop(tun);
        assert!(fs.held_taps(me).is_empty());
    }

    #[test]
    fn proc_locks_name_the_holders() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 77 fd:01:1234 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 55 fd:01:1234 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 9 fd:01:1234 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 8 fd:01:999 0 EOF\n";
        assert_eq!(parse_locks(locks, 0xfd, 1, 1234), [55, 4242]);
        assert!(parse_locks("", 1, 1, 1).is_empty());
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(
            parse_cmdline(b"firecracker\0--api-sock\0/tmp/fc-vm-1.sock\0"),
            ["firecracker", "--api-sock", "/tmp/fc-vm-1.sock"]
        );
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn only_procfs_counts_as_proc() {
        assert_eq!(unusable(Path::new("/proc")), None);
        let not_proc = unusable(&std::env::temp_dir()).unwrap();
        assert!(not_proc.ends_with("is not a procfs mount"), "{not_proc}");
        let missing = unusable(Path::new("/nonexistent-proc")).unwrap();
        assert!(
            missing.contains("is not mounted (No such file or directory)"),
            "{missing}"
        );
    }

    #[test]
    fn fake_proc_tree() {
        let root = std::env::temp_dir().join(format!("smolvm-procfs-{}", std::process::id()));
        let p = root.join("77");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(root.join("uptime"), "1000.00 1.0\n").unwrap();
        let fields = "S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 50000 0 0";
        std::fs::write(p.join("stat"), format!("77 (firecracker) {fields}")).unwrap();
        std::fs::write(p.join("cmdline"), b"firecracker\0--api-sock\0/tmp/fc-a.sock\0").unwrap();
        let q = root.join("78");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("stat"), format!("78 (sleep) {fields}")).unwrap();
        std::fs::write(q.join("cmdline"), b"sleep\x00100\x00").unwrap();
        let fs = Procfs::new(&root, 10_000.0);
        let found = fs.scan_vmms();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, 77);
        assert_eq!(found[0].start_ticks, 50000);
        let tps = rustix::param::clock_ticks_per_second() as f64;
        assert!((found[0].start_unix - (9000.0 + 50000.0 / tps)).abs() < 1e-6);
        assert!(fs.read(79).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! What a process sees and holds, read from /proc: whether it sees the host as we do
//! (its namespaces and the directories it names), the TAPs its tun fds hold in our
//! network namespace, and who holds a file's flocks. Gathers facts, decides nothing.

use std::path::Path;

use super::{Procfs, flock_pids, parse_fdinfo_iff};
use crate::model::{ProcInfo, View, argv_paths};

impl Procfs {
    /// Does `p` see the host as we do? Not when it is in another network namespace (its
    /// TAPs are other links than ours of those names), nor when a directory its command
    /// line names a path under (the socket dir, a data dir, and the path's own directory
    /// beneath it), seen through `/proc/PID/root`, is another directory than ours or one
    /// it lacks: a VMM in a container with its own `/tmp` names `/tmp/fc-<id>.sock` too,
    /// whether or not its socket exists yet. In another mount namespace and naming none of
    /// our directories, it names nothing of ours. What cannot be read (another user's
    /// process without CAP_SYS_PTRACE) is `Unknown`: cannot tell.
    pub fn view(&self, p: &ProcInfo, dirs: &[&Path]) -> View {
        use std::os::unix::fs::MetadataExt;
        let proc = self.root.join(p.pid.to_string());
        let unreadable = |what: &str, e: std::io::Error| {
            let why = e
                .raw_os_error()
                .map_or_else(|| e.to_string(), crate::error::errno_text);
            View::Unknown(format!("its {what} cannot be read ({why})"))
        };
        let ns = |kind: &str| std::fs::read_link(proc.join("ns").join(kind));
        let (net, mnt) = match (ns("net"), ns("mnt")) {
            (Ok(net), Ok(mnt)) => (net, mnt),
            (Err(e), _) | (_, Err(e)) => return unreadable("namespaces", e),
        };
        if self.own_net.as_ref().is_some_and(|ours| *ours != net) {
            return View::Elsewhere("it runs in another network namespace".into());
        }
        let mut named: Vec<&Path> = Vec::new();
        for path in argv_paths(&p.cmdline).filter(|p| p.is_absolute()) {
            let Some(dir) = dirs
                .iter()
                .filter(|d| path.starts_with(d))
                .max_by_key(|d| d.as_os_str().len())
            else {
                continue;
            };
            let parent = path.parent().filter(|p| p.starts_with(dir) && p != dir);
            for d in std::iter::once(*dir).chain(parent) {
                if !named.contains(&d) {
                    named.push(d);
                }
            }
        }
        let root = proc.join("root");
        let mut compared = false;
        for dir in named {
            let (Ok(ours), Ok(rel)) = (std::fs::metadata(dir), dir.strip_prefix("/")) else {
                continue;
            };
            match std::fs::metadata(root.join(rel)) {
                Ok(theirs) if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) => compared = true,
                Ok(_) => {
                    return View::Elsewhere(format!("its {} is another directory than ours", dir.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return View::Elsewhere(format!("it has no {}", dir.display()));
                }
                Err(e) => return unreadable("root", e),
            }
        }
        if !compared && self.own_mnt.as_ref().is_some_and(|ours| *ours != mnt) {
            return View::Elsewhere(
                "it runs in another mount namespace and names none of our directories".into(),
            );
        }
        View::Ours
    }

    /// The TAPs a process holds open in our network namespace: each fd on /dev/net/tun,
    /// and the interface its fdinfo names (`iff:\ttap3`), unless the kernel says that
    /// interface is in another namespace (an unprivileged user's TAP named like one of
    /// ours, made in a user+net namespace, whose fd may even be passed to a process in
    /// ours). Reading another user's fds takes root (or CAP_SYS_PTRACE); a process whose
    /// fds cannot be read holds none that we know of.
    pub fn held_taps(&self, pid: i32) -> Vec<String> {
        let dir = self.root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            return Vec::new();
        };
        let mut taps = Vec::new();
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/net/tun"))
                && let Ok(info) = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name()))
                && let Some(name) = parse_fdinfo_iff(&info)
                && fd
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse().ok())
                    .is_none_or(|n| self.tun_netns_is_ours(pid, n) != Some(false))
            {
                taps.push(name.to_string());
            }
        }
        taps.sort();
        taps.dedup();
        taps
    }

    /// Is the device behind `pid`'s tun fd `fd` in our network namespace? The fd itself,
    /// borrowed with pidfd_getfd, asked with TUNGETDEVNETNS (Linux 5.6 and 5.2). None: the
    /// kernel cannot say (too old, or the fd may not be borrowed); the process's own
    /// namespace then decides (`view`).
    fn tun_netns_is_ours(&self, pid: i32, fd: i32) -> Option<bool> {
        use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        /// `_IO('T', 227)`.
        const TUNGETDEVNETNS: libc::Ioctl = 0x54e3;
        let ours = self.own_net_id?;
        let pidfd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
        let tun = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).ok()?;
        // SAFETY: TUNGETDEVNETNS takes no argument; on a tun fd it returns a new fd of the
        // device's network namespace (or -1), which nothing else owns.
        #[allow(unsafe_code)]
        let ns = unsafe { libc::ioctl(tun.as_raw_fd(), TUNGETDEVNETNS) };
        if ns < 0 {
            return None;
        }
        // SAFETY: `ns` is a fresh fd the kernel just gave us (see above), owned only here.
        #[allow(unsafe_code)]
        let ns = unsafe { OwnedFd::from_raw_fd(ns) };
        let st = rustix::fs::fstat(&ns).ok()?;
        Some((st.st_dev, st.st_ino) == ours)
    }

    /// The owners of the processes that hold flocks on the file at `path` (`/proc/locks`
    /// read once per call): empty when none can be named.
    pub fn lock_holders(&self, path: &Path) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let Ok(st) = std::fs::metadata(path) else {
            return Vec::new();
        };
        let mut uids: Vec<u32> = flock_pids(&self.root, st.dev(), st.ino())
            .into_iter()
            .filter_map(|pid| std::fs::metadata(self.root.join(pid.to_string())).ok())
            .map(|m| m.uid())
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }
}

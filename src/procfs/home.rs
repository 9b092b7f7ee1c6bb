//! Which data dir a process works for, read from /proc: the data dir a VMM was started
//! for (its command line, its log, its environment) and the claim files that live
//! processes hold in data dirs that are not this run's. Parallel CI jobs on one runner
//! share `/tmp` but not `SMOLVM_DATA_DIR`; this is how one job's VMs are told from
//! another's. Gathers facts, decides nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Procfs, flocks};
use crate::model::{ForeignClaim, Home, HomeBy, ProcInfo, argv_homes, claim_home, env_homes, log_home};

/// This run's data dirs, each by its path and, when it could be read, its device and
/// inode (the same directory reached by another path is still ours).
pub struct OwnDirs {
    dirs: Vec<(PathBuf, Option<(u64, u64)>)>,
}

impl OwnDirs {
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> OwnDirs {
        let mut own = Vec::new();
        for d in dirs {
            let id = std::fs::metadata(d).ok().map(|m| (m.dev(), m.ino()));
            own.push((d.to_path_buf(), id));
            if let Ok(real) = std::fs::canonicalize(d)
                && real != d
            {
                own.push((real, id));
            }
        }
        OwnDirs { dirs: own }
    }

    fn by_name(&self, dir: &Path) -> bool {
        self.dirs.iter().any(|(d, _)| d == dir)
    }
}

impl Procfs {
    /// The data dir `p` was started for, from the most direct evidence that names one: a
    /// disk or firmware path on its command line, else the `<dir>/<id>.log` its stdout
    /// or stderr is, else the data-dir variable of its environment. Where one kind names
    /// several, any of ours makes it ours. None when nothing says (a stand-in started by
    /// hand, a process whose fds and environment we may not read).
    pub fn home(&self, p: &ProcInfo, own: &OwnDirs) -> Option<Home> {
        let proc = self.root.join(p.pid.to_string());
        let argv: Vec<PathBuf> = argv_homes(&p.cmdline)
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        let log = || -> Vec<PathBuf> {
            let mut dirs: Vec<PathBuf> = Vec::new();
            for fd in ["1", "2"] {
                if let Ok(target) = std::fs::read_link(proc.join("fd").join(fd))
                    && let Some(dir) = log_home(&target, &p.cmdline)
                    && !dirs.iter().any(|d| d == dir)
                {
                    dirs.push(dir.to_path_buf());
                }
            }
            dirs
        };
        let env = || {
            std::fs::read(proc.join("environ"))
                .map(|raw| env_homes(&raw))
                .unwrap_or_default()
        };
        let (by, dirs) = if !argv.is_empty() {
            (HomeBy::Argv, argv)
        } else {
            let log = log();
            if !log.is_empty() {
                (HomeBy::Log, log)
            } else {
                (HomeBy::Env, env())
            }
        };
        let first = dirs.first()?.clone();
        if let Some(dir) = dirs.iter().find(|d| self.is_own(p.pid, d, own)) {
            return Some(Home {
                dir: dir.clone(),
                by,
                ours: true,
            });
        }
        Some(Home {
            dir: first,
            by,
            ours: false,
        })
    }

    /// Is `dir`, as process `pid` names it, one of ours: by name, or the same directory
    /// seen through its root (this may block on a stuck filesystem in its namespace, so it
    /// is asked on the views worker).
    fn is_own(&self, pid: i32, dir: &Path, own: &OwnDirs) -> bool {
        if own.by_name(dir) {
            return true;
        }
        let Ok(rel) = dir.strip_prefix("/") else {
            return false;
        };
        let theirs = std::fs::metadata(self.root.join(pid.to_string()).join("root").join(rel))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        theirs.is_some() && own.dirs.iter().any(|(_, id)| *id == theirs)
    }

    /// The claim files that live processes in our network namespace hold (flock) in data
    /// dirs that are not ours by name, as the FLOCK holders of `locks` (`Locks::read`) hold
    /// them. A holder we may not read claims nothing we know.
    pub fn foreign_claims(&self, locks: &str, own: &OwnDirs, own_pid: i32) -> Vec<ForeignClaim> {
        let mut pids: Vec<i32> = flocks(locks).map(|(pid, _)| pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let mut claims = Vec::new();
        for pid in pids.into_iter().filter(|&pid| pid != own_pid) {
            self.claims_held_by(pid, own, &mut claims, &|| false);
        }
        sorted(claims)
    }

    /// The same claims found without `/proc/locks`, whose first read waits out a grace
    /// period: every process's fds are looked at instead. That costs what the processes in
    /// our network namespace hold, so it gives up (None) as soon as `give_up` says the
    /// cheaper answer is ready. It also finds a claim whose locker is gone while a child
    /// still holds its fd (`/proc/locks` names the locker only).
    pub fn scan_foreign_claims(
        &self,
        own: &OwnDirs,
        own_pid: i32,
        give_up: &dyn Fn() -> bool,
    ) -> Option<Vec<ForeignClaim>> {
        let mut claims = Vec::new();
        for pid in self.pids()?.filter(|&pid| pid != own_pid) {
            if give_up() || !self.claims_held_by(pid, own, &mut claims, give_up) {
                return None;
            }
        }
        Some(sorted(claims))
    }

    /// Adds the claims process `pid` holds when it is in our network namespace: its fds'
    /// targets, and the fd's own lock line in its fdinfo (no path is opened or stat'ed, so
    /// no filesystem can block this). False when `give_up` stopped it (asked every 256 fds).
    fn claims_held_by(
        &self,
        pid: i32,
        own: &OwnDirs,
        claims: &mut Vec<ForeignClaim>,
        give_up: &dyn Fn() -> bool,
    ) -> bool {
        let proc = self.root.join(pid.to_string());
        let net = std::fs::read_link(proc.join("ns/net")).ok();
        if net.is_none() || (self.own_net.is_some() && net != self.own_net) {
            return true;
        }
        let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
            return true;
        };
        for (n, fd) in fds.flatten().enumerate() {
            if n % 256 == 255 && give_up() {
                return false;
            }
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some((dir, name)) = claim_home(&target) else {
                continue;
            };
            if own.by_name(dir) {
                continue;
            }
            let locked =
                std::fs::read_to_string(proc.join("fdinfo").join(fd.file_name())).is_ok_and(|info| {
                    info.lines()
                        .any(|l| l.starts_with("lock:") && l.contains("FLOCK"))
                });
            if locked {
                claims.push(ForeignClaim {
                    dir: dir.to_path_buf(),
                    name: name.to_string(),
                    pid,
                });
            }
        }
        true
    }
}

fn sorted(mut claims: Vec<ForeignClaim>) -> Vec<ForeignClaim> {
    claims.sort_by(|a, b| (&a.dir, &a.name, a.pid).cmp(&(&b.dir, &b.name, b.pid)));
    claims.dedup();
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A /proc of symlinks and files: our network namespace `net:[1]`, and each process
    /// with its namespace, its fds' targets and their fdinfo lock lines.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let root = std::env::temp_dir().join(format!("smolvm-claims-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("thread-self/ns")).unwrap();
            symlink("net:[1]", root.join("thread-self/ns/net")).unwrap();
            FakeProc { root }
        }

        fn process(&self, pid: i32, net: &str, fds: &[(&str, Option<i32>)]) {
            let p = self.root.join(pid.to_string());
            for d in ["ns", "fd", "fdinfo"] {
                std::fs::create_dir_all(p.join(d)).unwrap();
            }
            symlink(net, p.join("ns/net")).unwrap();
            for (i, (target, locker)) in fds.iter().enumerate() {
                symlink(target, p.join("fd").join(i.to_string())).unwrap();
                let lock = locker
                    .map(|l| format!("lock:\t1: FLOCK  ADVISORY  WRITE {l} 00:2a:{i} 0 EOF\n"))
                    .unwrap_or_default();
                std::fs::write(
                    p.join("fdinfo").join(i.to_string()),
                    format!("pos:\t0\nflags:\t02\n{lock}"),
                )
                .unwrap();
            }
        }

        fn procfs(&self) -> Procfs {
            Procfs::new(&self.root, 10_000.0)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn claim(dir: &str, name: &str, pid: i32) -> ForeignClaim {
        ForeignClaim {
            dir: PathBuf::from(dir),
            name: name.into(),
            pid,
        }
    }

    /// Both ways find the same claims (held, in our network namespace, in a data dir not
    /// ours, by another process), and the scan also finds one whose locker is gone while a
    /// child holds its fd.
    #[test]
    fn the_scan_finds_what_proc_locks_names_and_an_inherited_claim() {
        let fake = FakeProc::new("both");
        let b = "/jobs/b/locks/resources";
        fake.process(
            10,
            "net:[1]",
            &[("/dev/null", None), (&format!("{b}/tap-tap9.lock"), Some(10))],
        );
        fake.process(11, "net:[2]", &[(&format!("{b}/tap-tap8.lock"), Some(11))]);
        // Its locker, pid 9, has exited; /proc/locks still names pid 9.
        fake.process(12, "net:[1]", &[(&format!("{b}/ip-172.16.0.8.lock"), Some(9))]);
        fake.process(
            13,
            "net:[1]",
            &[("/ours/locks/resources/tap-tap3.lock", Some(13))],
        );
        fake.process(14, "net:[1]", &[(&format!("{b}/tap-tap7.lock"), None)]);
        fake.process(15, "net:[1]", &[(&format!("{b}/tap-tap6.lock"), Some(15))]);
        let locks = "1: FLOCK  ADVISORY  WRITE 10 00:2a:1 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 00:2a:0 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 9 00:2a:0 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 13 00:2a:0 0 EOF\n\
                     5: FLOCK  ADVISORY  WRITE 15 00:2a:0 0 EOF\n";
        let own = OwnDirs::new([Path::new("/ours")]);
        let fs = fake.procfs();
        let named = fs.foreign_claims(locks, &own, 15);
        assert_eq!(named, vec![claim("/jobs/b", "tap-tap9.lock", 10)]);
        let scanned = fs.scan_foreign_claims(&own, 15, &|| false);
        assert_eq!(
            scanned,
            Some(vec![
                claim("/jobs/b", "ip-172.16.0.8.lock", 12),
                claim("/jobs/b", "tap-tap9.lock", 10),
            ])
        );
    }

    /// The scan stops when the other answer is ready: between processes, and within one
    /// that holds many fds; and it has none when /proc cannot be listed.
    #[test]
    fn the_scan_gives_up_when_asked() {
        let fake = FakeProc::new("give-up");
        let many: Vec<(String, Option<i32>)> = (0..300).map(|i| (format!("/dev/null{i}"), None)).collect();
        let many: Vec<(&str, Option<i32>)> = many.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        fake.process(20, "net:[1]", &many);
        let own = OwnDirs::new([Path::new("/ours")]);
        let fs = fake.procfs();
        assert_eq!(fs.scan_foreign_claims(&own, 1, &|| true), None);
        let asked = std::cell::Cell::new(0);
        let second = || {
            asked.set(asked.get() + 1);
            asked.get() >= 2
        };
        assert_eq!(
            fs.scan_foreign_claims(&own, 1, &second),
            None,
            "given up within pid 20's fds"
        );
        assert_eq!(asked.get(), 2);
        assert_eq!(fs.scan_foreign_claims(&own, 1, &|| false), Some(Vec::new()));
        // A /proc that cannot be listed gives no answer: `/proc/locks` is asked instead.
        let gone = Procfs::new(&fake.root.join("nonexistent"), 0.0);
        assert_eq!(gone.scan_foreign_claims(&own, 1, &|| false), None);
    }
}

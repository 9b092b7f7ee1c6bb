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
    /// dirs that are not ours by name: every FLOCK holder of `locks` (`Locks::read`), its
    /// fds' targets, and the fd's own lock line in its fdinfo (no path is opened or stat'ed,
    /// so no filesystem can block this). A holder we may not read claims nothing we know.
    pub fn foreign_claims(&self, locks: &str, own: &OwnDirs, own_pid: i32) -> Vec<ForeignClaim> {
        let mut pids: Vec<i32> = flocks(locks)
            .map(|(pid, _)| pid)
            .filter(|&pid| pid != own_pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let mut claims = Vec::new();
        for pid in pids {
            let proc = self.root.join(pid.to_string());
            let net = std::fs::read_link(proc.join("ns/net")).ok();
            if net.is_none() || (self.own_net.is_some() && net != self.own_net) {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
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
        }
        claims.sort_by(|a, b| (&a.dir, &a.name, a.pid).cmp(&(&b.dir, &b.name, b.pid)));
        claims.dedup();
        claims
    }
}

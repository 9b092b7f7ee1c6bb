//! The trusted roots: each data dir and the socket dir opened once (and judged by the
//! symlink rule: a symlink is followed only when that cannot hand a removal to someone
//! else), their subdirectories opened beneath them with O_NOFOLLOW and held, the state
//! DB's path pinned to its directory, and reads, owners and listings through those fds.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, openat, statat};
use rustix::io::Errno;

use crate::error::Error;

const DIR_PATH: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::PATH);

fn open_dir(at: Option<&OwnedFd>, path: &Path, nofollow: bool) -> Result<OwnedFd, Errno> {
    let mut flags = DIR_PATH;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    match at {
        Some(fd) => openat(fd, path, flags, Mode::empty()),
        None => openat(CWD, path, flags, Mode::empty()),
    }
}

/// Opens directory `name` beneath `parent` (whose path is `shown`, for messages). A
/// symlink there is followed only where that cannot hand a removal to someone else (the
/// idea of systemd's `CHASE_SAFE`): when root owns the link, or when the link, the
/// directory holding it and the directory it leads to all belong to one user. Ok(None):
/// nothing is there. Err: the sentence saying why it is not used.
fn chase(parent: &OwnedFd, name: &str, shown: &Path) -> Result<Option<OwnedFd>, String> {
    let sys = |what: &str, e: Errno| Error::sys(format!("{what} {}", shown.display()), e).to_string();
    match open_dir(Some(parent), Path::new(name), true) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {}
        Err(e) => return Err(sys("open", e)),
    }
    let link = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(sys("stat", e)),
    };
    if FileType::from_raw_mode(link.st_mode) != FileType::Symlink {
        return Err(format!("{} is not a directory", shown.display()));
    }
    let fd = match open_dir(Some(parent), Path::new(name), false) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::NOTDIR) => {
            return Err(format!(
                "{} is a symlink to something not a directory",
                shown.display()
            ));
        }
        Err(e) => return Err(sys("open", e)),
    };
    // The link read before the open must be the link the open went through.
    let again = statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| sys("stat", e))?;
    if (again.st_dev, again.st_ino, again.st_uid) != (link.st_dev, link.st_ino, link.st_uid) {
        return Err(format!(
            "{} was replaced while it was opened; not followed",
            shown.display()
        ));
    }
    let holder = rustix::fs::fstat(parent).map_err(|e| sys("stat the directory holding", e))?;
    let target = rustix::fs::fstat(&fd).map_err(|e| sys("stat", e))?;
    let one_user = link.st_uid == holder.st_uid && holder.st_uid == target.st_uid;
    if link.st_uid == 0 || one_user {
        Ok(Some(fd))
    } else {
        Err(format!(
            "{} is a symlink owned by uid {}; not followed",
            shown.display(),
            link.st_uid
        ))
    }
}

/// A subdirectory of a root (`disks`, `locks`, …) as it was resolved, once.
enum Sub {
    Missing,
    Held(OwnedFd),
    /// Behind a symlink cleanup does not follow: why, and an fd to read its names by
    /// (a listing only ever tells which VMs have files there; nothing there is removed).
    Refused(String, Option<OwnedFd>),
}

/// The directories cleanup works in (data dirs, the socket dir, and the data dirs'
/// `disks/`, `locks/`, … beneath them), each resolved once, when first read, and never
/// resolved by path again: were one renamed and a symlink put in its place mid-run (its
/// owner can do that under sudo), listings, the DB and removals all still reach the
/// directory that was judged. A symlink in their place is followed only when `chase`
/// allows it.
#[derive(Default)]
pub struct Roots {
    fds: HashMap<PathBuf, OwnedFd>,
    subs: HashMap<PathBuf, Sub>,
    /// The directories of state DBs reached through a symlink (`db_path`), held open.
    pinned: Vec<OwnedFd>,
}

/// Opening and holding: the roots, their subdirectories, and the fds removals go through.
impl Roots {
    /// Opens `dir` as a root. Ok when it does not exist (nothing is held). Refused (the
    /// text says why) when it is a symlink `chase` does not follow or, with `owners`, it
    /// is owned by a uid not in the list.
    pub fn open(&mut self, dir: &Path, owners: Option<&[u32]>) -> Result<(), String> {
        if self.fds.contains_key(dir) {
            return Ok(());
        }
        let name = dir.file_name().and_then(|n| n.to_str());
        let opened = match name {
            Some(name) => {
                let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(p) => open_dir(None, p, false),
                    None => open_dir(None, Path::new("."), false),
                };
                match parent {
                    Ok(parent) => chase(&parent, name, dir)?,
                    Err(Errno::NOENT) => None,
                    Err(e) => return Err(Error::sys(format!("open {}", dir.display()), e).to_string()),
                }
            }
            // `/`, `..`: nothing of SmolVM's naming, opened as given.
            None => match open_dir(None, dir, false) {
                Ok(fd) => Some(fd),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(Error::sys(format!("open {}", dir.display()), e).to_string()),
            },
        };
        let Some(fd) = opened else {
            return Ok(());
        };
        let owner = rustix::fs::fstat(&fd)
            .map_err(|e| Error::sys(format!("stat {}", dir.display()), e).to_string())?;
        if let Some(owners) = owners
            && !owners.contains(&owner.st_uid)
        {
            return Err(format!(
                "{} is owned by uid {}, neither root nor the user cleanup runs for",
                dir.display(),
                owner.st_uid
            ));
        }
        self.fds.insert(dir.to_path_buf(), fd);
        Ok(())
    }

    /// Resolves `sub` (`disks`, `locks/resources`) beneath the root `dir`, one component
    /// at a time with `chase`, and holds it for listings and removals. Err: the sentence
    /// saying why it is not followed (nothing behind it will be removed).
    pub fn open_sub(&mut self, dir: &Path, sub: &str) -> Result<(), String> {
        let mut at = PathBuf::new();
        for part in sub.split('/') {
            let parent = if at.as_os_str().is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(&at)
            };
            at.push(part);
            let key = dir.join(&at);
            if !self.subs.contains_key(&key) {
                let parent_fd = if parent == dir {
                    self.fds.get(dir)
                } else {
                    match self.subs.get(&parent) {
                        Some(Sub::Held(fd)) => Some(fd),
                        _ => None,
                    }
                };
                let resolved = match parent_fd {
                    None => match self.subs.get(&parent) {
                        Some(Sub::Refused(why, _)) => Sub::Refused(why.clone(), None),
                        _ => Sub::Missing,
                    },
                    Some(p) => match chase(p, part, &key) {
                        Ok(Some(fd)) => Sub::Held(fd),
                        Ok(None) => Sub::Missing,
                        Err(why) => {
                            let peek = openat(
                                p,
                                part,
                                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                                Mode::empty(),
                            );
                            Sub::Refused(why, peek.ok())
                        }
                    },
                };
                self.subs.insert(key.clone(), resolved);
            }
            if let Some(Sub::Refused(why, _)) = self.subs.get(&key) {
                return Err(why.clone());
            }
        }
        Ok(())
    }

    pub fn get(&self, dir: &Path) -> Option<&OwnedFd> {
        self.fds.get(dir)
    }

    /// The directory `sub` beneath the root `dir` (or `dir` itself for ""), as resolved:
    /// an fd to reach it by, None when it does not exist, or why nothing in it may be
    /// removed. A `sub` never resolved is opened without following a symlink.
    pub(super) fn dir_of(&self, dir: &Path, sub: &str) -> Result<Option<OwnedFd>, String> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(Some)
                .map_err(|e| Error::io(format!("open {}", dir.join(sub).display()), &e).to_string())
        };
        let Some(root) = self.fds.get(dir) else {
            return Ok(None);
        };
        if sub.is_empty() {
            return dup(root);
        }
        match self.subs.get(&dir.join(sub)) {
            Some(Sub::Held(fd)) => dup(fd),
            Some(Sub::Missing) => Ok(None),
            Some(Sub::Refused(why, _)) => Err(why.clone()),
            None => match open_dir(Some(root), Path::new(sub), true) {
                Ok(fd) => Ok(Some(fd)),
                Err(Errno::NOENT) => Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => Err(format!(
                    "{} has a symlink on its path; not followed",
                    dir.join(sub).display()
                )),
                Err(e) => Err(Error::sys(format!("open {}", dir.join(sub).display()), e).to_string()),
            },
        }
    }
}

/// Reading through the held fds: owners, small files and listings.
impl Roots {
    /// Who owns `rel` (`name`, or `sub/name`) beneath the root `dir`, the entry itself
    /// (never followed): None when it is gone or its directory is not reachable.
    pub fn owner(&self, dir: &Path, rel: &str) -> Option<u32> {
        let (sub, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let at = if sub.is_empty() {
            self.fds.get(dir)?
        } else {
            match self.subs.get(&dir.join(sub))? {
                Sub::Held(fd) | Sub::Refused(_, Some(fd)) => fd,
                _ => return None,
            }
        };
        let st = rustix::fs::statat(at, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(st.st_uid)
    }

    /// The bytes of a small regular file `name` directly in the root `dir` (never through
    /// a symlink, at most `max` bytes), when it was last written (Unix seconds) and who
    /// owns it.
    pub fn read(&self, dir: &Path, name: &str, max: u64) -> Option<(Vec<u8>, f64, u32)> {
        use std::io::Read;
        let root = self.fds.get(dir)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = openat(root, name, flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || u64::try_from(st.st_size).ok()? > max
        {
            return None;
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd).take(max).read_to_end(&mut bytes).ok()?;
        #[allow(clippy::cast_precision_loss)]
        let written = st.st_mtime as f64 + f64::from(u32::try_from(st.st_mtime_nsec).unwrap_or(0)) / 1e9;
        Some((bytes, written, st.st_uid))
    }

    /// The names in `sub` (a path under `dir`, or "" for `dir` itself), sorted; none when
    /// it is missing or unreadable. A refused subdirectory is still listed (which VMs
    /// have files there decides which fail); a `sub` never resolved is not when it is a
    /// symlink.
    pub fn list(&self, dir: &Path, sub: &str) -> Vec<String> {
        let held = match self.dir_of(dir, sub) {
            Ok(fd) => fd,
            Err(_) => match self.subs.get(&dir.join(sub)) {
                Some(Sub::Refused(_, Some(fd))) => fd.try_clone().ok(),
                _ => None,
            },
        };
        let Some(held) = held else {
            return Vec::new();
        };
        // Held fds are O_PATH: reading takes a real open, of "." beneath it.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = openat(&held, ".", flags, Mode::empty()) else {
            return Vec::new();
        };
        let Ok(dir) = rustix::fs::Dir::read_from(&fd) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names
    }
}

/// The state DB, by the symlink rule of data dirs, and paths through held fds for what
/// only opens by path (SQLite).
impl Roots {
    /// A path SQLite may open the state DB `name` of the root `dir` by, None when there is
    /// none. The DB file itself is held to the symlink rule of data dirs (`chase`): a
    /// symlink in its place is followed only when root owns it, or when the link, the data
    /// dir and the DB it leads to all belong to one user (Alice's `smolvm.db` pointing at
    /// Bob's is refused). A followed one is reached through its own directory, held open
    /// (SQLite writes its journal beside the DB), and proved to be the file judged.
    pub fn db_path(&mut self, dir: &Path, name: &str) -> Result<Option<PathBuf>, String> {
        use std::os::fd::AsRawFd;
        let shown = dir.join(name);
        let sys = |what: &str, e: Errno| Error::sys(format!("{what} {}", shown.display()), e).to_string();
        let Some(root) = self.fds.get(dir) else {
            return Ok(None);
        };
        let link = match statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(sys("stat", e)),
        };
        if FileType::from_raw_mode(link.st_mode) != FileType::Symlink {
            return Ok(self.path_in(dir, name));
        }
        let target = match openat(root, name, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(sys("open", e)),
        };
        let st = rustix::fs::fstat(&target).map_err(|e| sys("stat", e))?;
        let holder = rustix::fs::fstat(root).map_err(|e| sys("stat the directory holding", e))?;
        let one_user = link.st_uid == holder.st_uid && holder.st_uid == st.st_uid;
        if !(link.st_uid == 0 || one_user) {
            return Err(format!(
                "{} is a symlink owned by uid {} to a file of uid {}; not followed",
                shown.display(),
                link.st_uid,
                st.st_uid
            ));
        }
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(format!(
                "{} is a symlink to something not a file",
                shown.display()
            ));
        }
        let real = std::fs::read_link(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .map_err(|e| Error::io(format!("resolve {}", shown.display()), &e).to_string())?;
        let (Some(parent), Some(file)) = (real.parent(), real.file_name().and_then(|n| n.to_str())) else {
            return Err(format!(
                "{} leads to {}; not followed",
                shown.display(),
                real.display()
            ));
        };
        let pinned = open_dir(None, parent, false).map_err(|e| sys("open the directory of", e))?;
        let again = statat(&pinned, file, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| sys("stat", e))?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            return Err(format!(
                "{} was replaced while it was opened; not followed",
                shown.display()
            ));
        }
        let via = PathBuf::from(format!("/proc/self/fd/{}/{file}", pinned.as_raw_fd()));
        self.pinned.push(pinned);
        Ok(Some(via))
    }

    /// A path to `name` in `dir` that goes through the held fd (`/proc/self/fd/N/name`),
    /// for what only opens by path (SQLite). None when `dir` is not held.
    pub fn path_in(&self, dir: &Path, name: &str) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let fd = self.fds.get(dir)?;
        Some(PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn a_root_swapped_for_a_symlink_after_it_was_opened_is_still_the_one_removed_from() {
        let d = scratch("swap");
        let data = d.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("vm-1.log"), b"ours").unwrap();
        let precious = d.join("precious");
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("vm-1.log"), b"keep").unwrap();
        std::fs::write(precious.join("auth.log"), b"keep").unwrap();
        let roots = roots_of(&data);
        // The owner renames the data dir and puts a symlink to someone else's in its place.
        std::fs::rename(&data, d.join("moved")).unwrap();
        std::os::unix::fs::symlink(&precious, &data).unwrap();
        assert_eq!(roots.list(&data, ""), ["vm-1.log"], "listed through the held fd");
        let f = fref(&data, "vm-1.log");
        assert_eq!(Remover::new(&roots).remove(&f).unwrap(), Removal::Deleted);
        assert!(!d.join("moved/vm-1.log").exists());
        assert_eq!(std::fs::read(precious.join("vm-1.log")).unwrap(), b"keep");
        assert_eq!(roots.list(&data, ""), Vec::<String>::new());
        // A root of another owner is refused.
        let mut fresh = Roots::default();
        let me = rustix::process::geteuid().as_raw();
        let e = fresh.open(&precious, Some(&[me + 1])).unwrap_err();
        assert!(e.contains(&format!("is owned by uid {me}")), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Changes the owner of `p` itself (a symlink is not followed).
    fn own(p: &Path, uid: u32) {
        rustix::fs::chownat(
            CWD,
            p,
            Some(rustix::fs::Uid::from_raw(uid)),
            None,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    /// Which symlinks are followed: root's, or one user's pointing within their own
    /// files; any other is refused with whose it is. Needs root to hand files to users.
    #[test]
    fn a_symlink_is_followed_only_when_that_cannot_hand_a_removal_to_someone_else() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let d = scratch("chase");
        let (user_dir, target) = (d.join("home"), d.join("target"));
        std::fs::create_dir_all(&user_dir).unwrap();
        std::fs::create_dir_all(target.join("disks")).unwrap();
        std::fs::write(target.join("disks/vm-1.ext4"), b"x").unwrap();
        let link = user_dir.join("smolvm");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let open = |p: &Path| Roots::default().open(p, None);
        // root's link (root's dir, root's target): followed.
        assert_eq!(open(&link), Ok(()));
        // A user's link in root's directory: refused.
        own(&link, 1000);
        let e = open(&link).unwrap_err();
        assert_eq!(
            e,
            format!("{} is a symlink owned by uid 1000; not followed", link.display())
        );
        // Link, its directory and its target all the user's: followed.
        own(&user_dir, 1000);
        own(&target, 1000);
        assert_eq!(open(&link), Ok(()));
        // The same link leading to a directory of another user: refused.
        own(&target, 1001);
        assert!(open(&link).is_err());
        // A subdirectory follows the same rule, is still listed, and nothing in it is removed.
        own(&target, 0);
        let data = d.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(target.join("disks"), data.join("disks")).unwrap();
        own(&data.join("disks"), 1000);
        let mut roots = roots_of(&data);
        let e = roots.open_sub(&data, "disks").unwrap_err();
        assert!(
            e.ends_with("disks is a symlink owned by uid 1000; not followed"),
            "{e}"
        );
        assert_eq!(roots.list(&data, "disks"), ["vm-1.ext4"]);
        let r = Remover::new(&roots)
            .remove(&fref(&data, "disks/vm-1.ext4"))
            .unwrap();
        assert_eq!(r, Removal::Refused(e));
        assert!(target.join("disks/vm-1.ext4").exists());
        // Root's link there is followed, and the file goes.
        own(&data.join("disks"), 0);
        let mut roots = roots_of(&data);
        roots.open_sub(&data, "disks").unwrap();
        let r = Remover::new(&roots)
            .remove(&fref(&data, "disks/vm-1.ext4"))
            .unwrap();
        assert_eq!(r, Removal::Deleted);
        assert!(!target.join("disks/vm-1.ext4").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

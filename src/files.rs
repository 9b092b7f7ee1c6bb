//! Removes a VM's files (API socket, log, isolated disk copy) without ever following a
//! symlink: the trusted root (data dir or socket dir) is opened once, any subdirectory is
//! opened beneath it with O_NOFOLLOW, and the file is unlinked by name. An unlinked
//! symlink would only lose the link, but we do not even do that: it is not what SmolVM
//! leaves, so it is reported and left alone.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, openat, statat, unlinkat};
use rustix::io::Errno;

use crate::error::{Error, is_gone};
use crate::model::FileRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Deleted,
    AlreadyGone,
    /// Something is there that is not ours to delete (a symlink, a directory, ...), or
    /// its directory is behind a symlink cleanup does not follow: the whole sentence,
    /// `/tmp/fc-vm-1.sock is a symlink; not removed`.
    Refused(String),
}

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

    /// The directory `sub` beneath the root `dir` (or `dir` itself for ""), as resolved:
    /// an fd to reach it by, None when it does not exist, or why nothing in it may be
    /// removed. A `sub` never resolved is opened without following a symlink.
    fn dir_of(&self, dir: &Path, sub: &str) -> Result<Option<OwnedFd>, String> {
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

/// Removes files, opening each directory once however many files it holds (a run over
/// a thousand VMs removes thousands of files from three directories), beneath the roots
/// discovery opened.
pub struct Remover<'r> {
    roots: &'r Roots,
    /// Directory path → its fd (None: it does not exist), or why nothing in it is removed.
    dirs: HashMap<PathBuf, Result<Option<OwnedFd>, String>>,
}

impl<'r> Remover<'r> {
    pub fn new(roots: &'r Roots) -> Remover<'r> {
        Remover {
            roots,
            dirs: HashMap::new(),
        }
    }

    /// The directory holding `f`, as the roots resolved it, and the file's name.
    fn parent<'f>(&mut self, f: &'f FileRef) -> Result<Option<(&OwnedFd, &'f str)>, String> {
        let (sub, name) = f.rel.rsplit_once('/').unwrap_or(("", f.rel.as_str()));
        let key = f.root.join(sub);
        let roots = self.roots;
        let dir = self.dirs.entry(key).or_insert_with(|| roots.dir_of(&f.root, sub));
        match dir {
            Ok(Some(fd)) => Ok(Some((fd, name))),
            Ok(None) => Ok(None),
            Err(why) => Err(why.clone()),
        }
    }

    /// Removes `f` if it is a regular file or a socket (or, for a tree, a directory).
    pub fn remove(&mut self, f: &FileRef) -> Result<Removal, Error> {
        let action = || format!("remove {}", f.path().display());
        let refused = |what: &str| {
            Ok(Removal::Refused(format!(
                "{} {what}; not removed",
                f.path().display()
            )))
        };
        let (dir, name) = match self.parent(f) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Removal::AlreadyGone),
            Err(why) => return Ok(Removal::Refused(why)),
        };
        let kind = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => FileType::from_raw_mode(st.st_mode),
            Err(e) if is_gone(e) => return Ok(Removal::AlreadyGone),
            Err(e) => return Err(Error::sys(action(), e)),
        };
        if f.tree {
            return match kind {
                FileType::Directory => {
                    remove_tree(dir, name, 0)
                        .map(|()| Removal::Deleted)
                        .or_else(|e| match e {
                            Errno::LOOP | Errno::NOTDIR => refused("holds a symlink to a directory"),
                            e if is_gone(e) => Ok(Removal::AlreadyGone),
                            e => Err(Error::sys(action(), e)),
                        })
                }
                FileType::Symlink => refused("is a symlink"),
                _ => refused("is not a directory"),
            };
        }
        match kind {
            FileType::RegularFile | FileType::Socket => {}
            FileType::Symlink => return refused("is a symlink"),
            FileType::Directory => return refused("is a directory"),
            _ => return refused("is not a file or socket"),
        }
        // The name is unlinked, never resolved: were it swapped for a symlink since statat,
        // only that link would go, never what it points to.
        match unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => Ok(Removal::Deleted),
            Err(e) if is_gone(e) => Ok(Removal::AlreadyGone),
            Err(e) => Err(Error::sys(action(), e)),
        }
    }
}

/// Whether removing `files` as `uid` takes CAP_FOWNER (a file another user owns in a
/// sticky directory another user owns, as SmolVM's sockets in `/tmp`) or
/// CAP_DAC_OVERRIDE (a directory `uid` may not write). Only looks (lstat by path); a
/// file or directory that cannot be looked at calls for neither.
pub fn access_needs<'a>(files: impl Iterator<Item = &'a FileRef>, uid: u32) -> (bool, bool) {
    use std::os::unix::fs::MetadataExt;
    let (mut fowner, mut dac) = (false, false);
    for f in files {
        let path = f.path();
        let (Some(parent), Ok(file)) = (path.parent(), std::fs::symlink_metadata(&path)) else {
            continue;
        };
        let Ok(dir) = std::fs::symlink_metadata(parent) else {
            continue;
        };
        let mode = dir.mode();
        let writable = if dir.uid() == uid {
            mode & 0o200 != 0
        } else {
            mode & 0o002 != 0
        };
        dac |= !writable;
        fowner |= mode & 0o1000 != 0 && file.uid() != uid && dir.uid() != uid;
    }
    (fowner, dac)
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory
/// (never a symlink followed, never an existing file reused), synced, then renamed over
/// `path`; a reader sees the old file or the new one, never half of one, and no temporary
/// file is left behind, whatever fails.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes directory `name` under `parent` with everything in it, never following a
/// symlink: each level is opened with O_NOFOLLOW beneath the last, a symlink inside is
/// unlinked as a link, and a tree deeper than SmolVM makes (8 levels) is refused.
fn remove_tree(parent: &OwnedFd, name: &str, depth: u32) -> Result<(), Errno> {
    if depth > 8 {
        return Err(Errno::LOOP);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(parent, name, flags, Mode::empty())?;
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            entries.push(n);
        }
    }
    for n in entries {
        let st = statat(&fd, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(&fd, &n, depth + 1)?;
        } else {
            match unlinkat(&fd, n.as_str(), AtFlags::empty()) {
                Err(e) if !is_gone(e) => return Err(e),
                _ => {}
            }
        }
    }
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Err(e) if !is_gone(e) => Err(e),
        _ => Ok(()),
    }
}

/// What a liveness probe of a socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Served,
    NotServed,
    /// We may not connect (another user's socket, without CAP_DAC_OVERRIDE): it tells
    /// nothing, and the other evidence (the VMM's pid) decides.
    Denied,
}

/// Is a process accepting connections on this Unix socket? A VMM's API socket whose owner
/// died refuses connections (ECONNREFUSED); one still served belongs to a live VMM. Only
/// a socket itself is tried, never what a symlink points to. The connect never blocks: a
/// listener whose backlog is full (a frozen VMM, or anyone's `listen(0)` that never
/// accepts) answers EAGAIN at once, and a probe that cannot finish counts as served,
/// never as dead.
pub fn probe_socket(path: &Path) -> Probe {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with};
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return Probe::NotServed;
    }
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let probe = SocketAddrUnix::new(path).and_then(|addr| {
        let fd = socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
        connect(&fd, &addr)
    });
    match probe {
        Ok(()) => Probe::Served,
        Err(Errno::CONNREFUSED | Errno::NOENT) => Probe::NotServed,
        Err(Errno::ACCESS | Errno::PERM) => Probe::Denied,
        // EAGAIN (a listener whose backlog is full), EINPROGRESS, …: something is there.
        Err(_) => Probe::Served,
    }
}

/// Does a live process hold a `flock` on this lock file (SmolVM's create lock, taken with
/// `LOCK_EX` for as long as a create runs)? Probed with a non-blocking shared lock, which
/// is released at once; a symlink is never opened, and a file we cannot open counts as
/// not held (it is then refused or reported when removed).
pub fn lock_is_held(path: &Path) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = openat(CWD, path, flags, Mode::empty()) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(Errno::WOULDBLOCK)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("smolvm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("disks")).unwrap();
        d
    }

    /// The roots a run would hold for a test directory.
    fn roots_of(d: &Path) -> Roots {
        let mut roots = Roots::default();
        roots.open(d, None).unwrap();
        roots
    }

    fn fref(root: &Path, rel: &str) -> FileRef {
        FileRef::new(root, rel)
    }

    #[test]
    fn a_vm_directory_goes_with_what_it_holds_and_no_symlink_is_followed() {
        let d = scratch("tree");
        let fw = d.join("firmware/vm-1/swtpm");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(d.join("firmware/vm-1/OVMF_VARS.fd"), b"vars").unwrap();
        std::fs::write(fw.join("swtpm.pid"), b"1").unwrap();
        let outside = d.join("precious");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, fw.join("link")).unwrap();
        let f = FileRef::tree(&d, "firmware/vm-1");
        assert_eq!(Remover::new(&roots_of(&d)).remove(&f).unwrap(), Removal::Deleted);
        assert!(!d.join("firmware/vm-1").exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        assert_eq!(
            Remover::new(&roots_of(&d)).remove(&f).unwrap(),
            Removal::AlreadyGone
        );
        // The directory itself a symlink: refused, and its target untouched.
        std::os::unix::fs::symlink(&outside, d.join("firmware/vm-2")).unwrap();
        let g = FileRef::tree(&d, "firmware/vm-2");
        assert!(matches!(
            Remover::new(&roots_of(&d)).remove(&g).unwrap(),
            Removal::Refused(_)
        ));
        assert!(outside.join("keep").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn removes_files_and_is_idempotent() {
        let d = scratch("rm");
        std::fs::write(d.join("disks/vm-1.ext4"), b"disk").unwrap();
        let f = fref(&d, "disks/vm-1.ext4");
        assert_eq!(Remover::new(&roots_of(&d)).remove(&f).unwrap(), Removal::Deleted);
        assert!(!d.join("disks/vm-1.ext4").exists());
        assert_eq!(
            Remover::new(&roots_of(&d)).remove(&f).unwrap(),
            Removal::AlreadyGone
        );
        assert_eq!(
            Remover::new(&roots_of(&d))
                .remove(&fref(&d, "nodir/x.log"))
                .unwrap(),
            Removal::AlreadyGone
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn never_follows_symlinks() {
        let d = scratch("sym");
        let precious = d.join("precious");
        std::fs::write(&precious, b"keep").unwrap();
        std::os::unix::fs::symlink(&precious, d.join("vm-1.log")).unwrap();
        assert!(matches!(
            Remover::new(&roots_of(&d)).remove(&fref(&d, "vm-1.log")).unwrap(),
            Removal::Refused(_)
        ));
        assert!(d.join("vm-1.log").symlink_metadata().is_ok());
        // A symlinked subdirectory is not walked into.
        let other = d.join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("vm-1.ext4"), b"keep").unwrap();
        std::fs::remove_dir_all(d.join("disks")).unwrap();
        std::os::unix::fs::symlink(&other, d.join("disks")).unwrap();
        assert!(matches!(
            Remover::new(&roots_of(&d))
                .remove(&fref(&d, "disks/vm-1.ext4"))
                .unwrap(),
            Removal::Refused(_)
        ));
        assert!(other.join("vm-1.ext4").exists());
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn socket_listener_check() {
        let d = scratch("sock");
        let path = d.join("fc-vm-1.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let f = fref(&d, "fc-vm-1.sock");
        assert_eq!(probe_socket(&f.path()), Probe::Served);
        drop(listener);
        assert_eq!(probe_socket(&f.path()), Probe::NotServed);
        assert_eq!(probe_socket(&d.join("missing.sock")), Probe::NotServed);
        assert_eq!(Remover::new(&roots_of(&d)).remove(&f).unwrap(), Removal::Deleted);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lock_holder_check() {
        let d = scratch("lock");
        let path = d.join("vm-1.create.lock");
        std::fs::write(&path, b"").unwrap();
        assert!(!lock_is_held(&path));
        // Another open file description holding LOCK_EX, as SmolVM's create does.
        let holder = std::fs::File::open(&path).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        assert!(lock_is_held(&path));
        drop(holder);
        assert!(!lock_is_held(&path));
        assert!(!lock_is_held(&d.join("missing.lock")));
        std::fs::remove_dir_all(&d).unwrap();
    }

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

    /// Which capabilities removing a file takes, by its directory's mode and owners.
    #[test]
    fn access_needs_follow_the_kernels_rules() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let d = scratch("needs");
        let own = |p: &Path, uid: u32| {
            rustix::fs::chown(p, Some(rustix::fs::Uid::from_raw(uid)), None).unwrap();
        };
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
        };
        let (tmp, theirs, closed) = (d.join("tmp"), d.join("sticky"), d.join("closed"));
        for (dir, owner, m) in [(&tmp, 0, 0o1777), (&theirs, 4242, 0o1777), (&closed, 4242, 0o755)] {
            std::fs::create_dir_all(dir).unwrap();
            own(dir, owner);
            mode(dir, m);
            std::fs::write(dir.join("f"), "x").unwrap();
            own(&dir.join("f"), 4243);
        }
        let needs = |dir: &Path| access_needs([FileRef::new(dir, "f")].iter(), 0);
        // Root's /tmp: root owns the directory, so the sticky bit does not stand in the way.
        assert_eq!(needs(&tmp), (false, false));
        assert_eq!(needs(&theirs), (true, false));
        assert_eq!(needs(&closed), (false, true));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_atomic_write_replaces_whole_and_leaves_no_temporary_file() {
        let d = scratch("atomic");
        let p = d.join("m.prom");
        write_atomic(&p, b"one\n").unwrap();
        write_atomic(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        // A target that cannot be replaced (a directory): an error, and no temporary file.
        std::fs::create_dir_all(d.join("dir.prom/x")).unwrap();
        assert!(write_atomic(&d.join("dir.prom"), b"x").is_err());
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dir.prom", "disks", "m.prom"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

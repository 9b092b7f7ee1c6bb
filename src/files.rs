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
    /// Something is there that is not ours to delete (a symlink, a directory, ...).
    /// What is there: `is a symlink`, `is a directory`, …
    Refused(&'static str),
}

fn open_dir(at: Option<&OwnedFd>, path: &Path, nofollow: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    match at {
        Some(fd) => openat(fd, path, flags, Mode::empty()),
        None => openat(CWD, path, flags, Mode::empty()),
    }
}

/// The directories cleanup works in (data dirs, the socket dir), each opened once, when
/// first read, without following a symlink in its last component, and never resolved by
/// path again: were one renamed and a symlink put in its place mid-run (its owner can do
/// that under sudo), listings, the DB and removals all still reach the directory that was
/// judged, never where the symlink points.
#[derive(Default)]
pub struct Roots {
    fds: HashMap<PathBuf, OwnedFd>,
}

impl Roots {
    /// Opens `dir` as a root. None when it does not exist. Refused (the text says why)
    /// when it is a symlink or, with `owners`, owned by a uid not in the list.
    pub fn open(&mut self, dir: &Path, owners: Option<&[u32]>) -> Result<(), String> {
        if self.fds.contains_key(dir) {
            return Ok(());
        }
        let fd = match open_dir(None, dir, true) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(format!("{} is a symlink or not a directory", dir.display()));
            }
            Err(e) => return Err(Error::sys(format!("open {}", dir.display()), e).to_string()),
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

    pub fn get(&self, dir: &Path) -> Option<&OwnedFd> {
        self.fds.get(dir)
    }

    /// A path to `name` in `dir` that goes through the held fd (`/proc/self/fd/N/name`),
    /// for what only opens by path (SQLite). None when `dir` is not held.
    pub fn path_in(&self, dir: &Path, name: &str) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let fd = self.fds.get(dir)?;
        Some(PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd())))
    }

    /// The names in `sub` (a path under `dir`, or "" for `dir` itself), sorted; none when
    /// it is missing, unreadable, or a symlink.
    pub fn list(&self, dir: &Path, sub: &str) -> Vec<String> {
        let Some(root) = self.fds.get(dir) else {
            return Vec::new();
        };
        // The root is held as an O_PATH fd: reading it takes a real open, of "." beneath it.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(root, if sub.is_empty() { "." } else { sub }, flags, Mode::empty());
        let Ok(fd) = fd else {
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
    /// Subdirectory path → its fd (None: it does not exist), or why it cannot be used.
    dirs: HashMap<PathBuf, Result<Option<OwnedFd>, Errno>>,
}

impl<'r> Remover<'r> {
    pub fn new(roots: &'r Roots) -> Remover<'r> {
        Remover {
            roots,
            dirs: HashMap::new(),
        }
    }

    /// The directory holding `f` (root followed, subdirectories not) and the file's name.
    fn parent<'f>(&mut self, f: &'f FileRef) -> Result<Option<(&OwnedFd, &'f str)>, Errno> {
        let (sub, name) = match f.rel.rsplit_once('/') {
            Some((sub, name)) => (Some(sub), name),
            None => (None, f.rel.as_str()),
        };
        // A root discovery did not open (it did not exist) holds nothing of ours.
        let Some(root) = self.roots.get(&f.root) else {
            return Ok(None);
        };
        let Some(sub) = sub else {
            return Ok(Some((root, name)));
        };
        let key = f.root.join(sub);
        if !self.dirs.contains_key(&key) {
            let fd = match open_dir(Some(root), Path::new(sub), true) {
                Ok(fd) => Ok(Some(fd)),
                Err(Errno::NOENT) => Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => Err(Errno::LOOP),
                Err(e) => Err(e),
            };
            self.dirs.insert(key.clone(), fd);
        }
        match &self.dirs[&key] {
            Ok(Some(fd)) => Ok(Some((fd, name))),
            Ok(None) => Ok(None),
            Err(e) => Err(*e),
        }
    }

    /// Removes `f` if it is a regular file or a socket.
    pub fn remove(&mut self, f: &FileRef) -> Result<Removal, Error> {
        let action = || format!("remove {}", f.path().display());
        let (dir, name) = match self.parent(f) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Removal::AlreadyGone),
            Err(Errno::LOOP) => return Ok(Removal::Refused("has a symlink on its path")),
            Err(e) => return Err(Error::sys(action(), e)),
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
                            Errno::LOOP | Errno::NOTDIR => {
                                Ok(Removal::Refused("holds a symlink to a directory"))
                            }
                            e if is_gone(e) => Ok(Removal::AlreadyGone),
                            e => Err(Error::sys(action(), e)),
                        })
                }
                FileType::Symlink => Ok(Removal::Refused("is a symlink")),
                _ => Ok(Removal::Refused("is not a directory")),
            };
        }
        match kind {
            FileType::RegularFile | FileType::Socket => {}
            FileType::Symlink => return Ok(Removal::Refused("is a symlink")),
            FileType::Directory => return Ok(Removal::Refused("is a directory")),
            _ => return Ok(Removal::Refused("is not a file or socket")),
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

/// Is a process accepting connections on this Unix socket? A VMM's API socket whose owner
/// died refuses connections (ECONNREFUSED); one still served belongs to a live VMM. Only
/// a socket itself is tried, never what a symlink points to. The connect never blocks: a
/// listener whose backlog is full (a frozen VMM, or anyone's `listen(0)` that never
/// accepts) answers EAGAIN at once, and a probe that cannot finish counts as served,
/// never as dead.
pub fn socket_has_listener(path: &Path) -> bool {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, connect, socket_with};
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return false;
    }
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let probe = SocketAddrUnix::new(path).and_then(|addr| {
        let fd = socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
        connect(&fd, &addr)
    });
    match probe {
        Ok(()) => true,
        // Nobody listens; or we may not even try (another user's socket): the probe tells
        // nothing, and the other evidence (the VMM's pid) decides.
        Err(Errno::CONNREFUSED | Errno::NOENT | Errno::ACCESS | Errno::PERM) => false,
        // EAGAIN (a listener whose backlog is full), EINPROGRESS, …: something is there.
        Err(_) => true,
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
        assert!(socket_has_listener(&f.path()));
        drop(listener);
        assert!(!socket_has_listener(&f.path()));
        assert!(!socket_has_listener(&d.join("missing.sock")));
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
        // Opened now, that symlink is refused as a root; so is a root of another owner.
        let mut fresh = Roots::default();
        assert!(fresh.open(&data, None).unwrap_err().contains("is a symlink"));
        let e = fresh.open(&precious, Some(&[4242])).unwrap_err();
        assert!(e.contains("is owned by uid 0"), "{e}");
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

//! Removal beneath the roots: a file is unlinked by name in its held directory, never
//! resolved (a symlink is reported and left), a VM's directory tree level by level with
//! O_NOFOLLOW; and the atomic write of the files cleanup itself writes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, openat, statat, unlinkat};
use rustix::io::Errno;

use super::Roots;
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    use super::*;

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

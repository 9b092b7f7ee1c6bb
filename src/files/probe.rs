//! Probes that read without changing: is a socket still served, is a lock held, and
//! which capabilities removing some files as a user takes.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{CWD, Mode, OFlags, openat};
use rustix::io::Errno;

use crate::model::FileRef;

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
    use super::super::testing::*;
    use super::super::*;
    use super::*;

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
}

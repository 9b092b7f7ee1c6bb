//! One cleanup at a time per data dir: an exclusive `flock` on the data dir itself (its
//! directory fd, as the roots resolved it), taken before anything is read so a second
//! run waits (bounded by `--timeout`) and then sees what the first one left. A dry run
//! or a check takes a shared one. No file is ever created for it: a run pointed at a
//! directory that is not SmolVM's leaves nothing behind.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::error::Error;

/// Held locks; dropping this releases them.
pub struct Held {
    _fds: Vec<OwnedFd>,
}

/// Locks every directory in `dirs` (a name for messages, and a read-only fd of it),
/// each once however it was named and in (device, inode) order, so two runs can never
/// deadlock; a lock still held by another run at `deadline` is an error.
pub fn acquire(
    dirs: Vec<(PathBuf, OwnedFd)>,
    exclusive: bool,
    deadline: Instant,
    stop: &AtomicBool,
    warn: &mut dyn FnMut(String),
) -> Result<Held, Error> {
    let mut keyed = Vec::new();
    for (path, fd) in dirs {
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::sys(format!("lock {}", path.display()), e))?;
        keyed.push(((st.st_dev, st.st_ino), path, fd));
    }
    keyed.sort_by_key(|k| k.0);
    // Two fds of one directory would conflict with each other: flock is per open file.
    keyed.dedup_by_key(|k| k.0);
    let mut fds = Vec::new();
    for (_, path, fd) in keyed {
        wait_for(&fd, &path, exclusive, deadline, stop, warn)?;
        fds.push(fd);
    }
    Ok(Held { _fds: fds })
}

fn wait_for(
    file: &OwnedFd,
    path: &Path,
    exclusive: bool,
    deadline: Instant,
    stop: &AtomicBool,
    warn: &mut dyn FnMut(String),
) -> Result<(), Error> {
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    let mut said = false;
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK | Errno::INTR) => {}
            Err(e) => return Err(Error::sys(format!("lock {}", path.display()), e)),
        }
        if stop.load(Ordering::SeqCst) {
            return Err(Error::msg(
                format!("take the cleanup lock {}", path.display()),
                "interrupted while another cleanup held it",
            ));
        }
        if Instant::now() >= deadline {
            return Err(Error::msg(
                format!("take the cleanup lock {}", path.display()),
                "another cleanup still holds it at the --timeout deadline",
            ));
        }
        if !said {
            warn(format!(
                "waiting for another cleanup to finish (lock {})",
                path.display()
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO: AtomicBool = AtomicBool::new(false);

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smolvm-lock-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fd(d: &Path) -> Vec<(PathBuf, OwnedFd)> {
        vec![(d.to_path_buf(), std::fs::File::open(d).unwrap().into())]
    }

    #[test]
    fn second_exclusive_lock_waits_until_the_deadline() {
        let d = scratch("ex");
        let mut notes = Vec::new();
        let far = Instant::now() + Duration::from_secs(5);
        let held = acquire(fd(&d), true, far, &NO, &mut |m| notes.push(m)).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let err = acquire(fd(&d), true, soon, &NO, &mut |m| notes.push(m));
        assert!(err.is_err());
        assert_eq!(notes.len(), 1, "{notes:?}");
        // A shared lock (a dry run) waits for the cleanup too.
        assert!(acquire(fd(&d), false, soon, &NO, &mut |_| {}).is_err());
        drop(held);
        assert!(acquire(fd(&d), true, soon, &NO, &mut |_| {}).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_directory_named_twice_is_locked_once() {
        let d = scratch("twice");
        let link = d.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let mut both = fd(&d);
        both.extend(fd(&link));
        assert!(acquire(both, true, soon, &NO, &mut |_| {}).is_ok());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_interrupt_ends_the_wait() {
        let d = scratch("int");
        let far = Instant::now() + Duration::from_secs(30);
        let _held = acquire(fd(&d), true, far, &NO, &mut |_| {}).unwrap();
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(acquire(fd(&d), true, far, &stop, &mut |_| {}).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn locking_creates_nothing() {
        let d = scratch("none");
        let far = Instant::now() + Duration::from_secs(5);
        drop(acquire(fd(&d), true, far, &NO, &mut |_| {}).unwrap());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

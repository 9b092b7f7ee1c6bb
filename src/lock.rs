//! One cleanup at a time per data dir: an exclusive `flock` on `<data_dir>/smolvm-cleanup.lock`,
//! taken before anything is read so a second run waits (bounded by `--timeout`) and then
//! sees what the first one left. A dry run takes a shared lock on a lock file that
//! already exists and creates nothing. The file is never deleted (that would race).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::error::Error;

pub const LOCK_NAME: &str = "smolvm-cleanup.lock";

/// Held locks; dropping this releases them.
pub struct Held {
    _files: Vec<File>,
}

/// Locks every directory in `dirs` (sorted, so two runs can never deadlock). A directory
/// where the lock file cannot be opened (permissions) is reported through `warn` and
/// skipped; a lock still held by another run at `deadline` is an error.
pub fn acquire(
    dirs: &[PathBuf],
    exclusive: bool,
    deadline: Instant,
    stop: &AtomicBool,
    warn: &mut dyn FnMut(String),
) -> Result<Held, Error> {
    let mut dirs: Vec<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    dirs.sort();
    dirs.dedup();
    let mut files = Vec::new();
    for dir in dirs {
        let path = dir.join(LOCK_NAME);
        let Some(file) = open(&path, exclusive, warn) else {
            continue;
        };
        wait_for(&file, &path, exclusive, deadline, stop, warn)?;
        files.push(file);
    }
    Ok(Held { _files: files })
}

fn open(path: &Path, exclusive: bool, warn: &mut dyn FnMut(String)) -> Option<File> {
    let mut o = OpenOptions::new();
    o.read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if exclusive {
        o.write(true).create(true).mode(0o600);
    }
    match o.open(path) {
        Ok(f) => Some(f),
        Err(e) if !exclusive && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn(format!(
                "cannot open lock {}: {e}; running without it",
                path.display()
            ));
            None
        }
    }
}

fn wait_for(
    file: &File,
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

    #[test]
    fn second_exclusive_lock_waits_until_the_deadline() {
        let d = std::env::temp_dir().join(format!("smolvm-lock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut notes = Vec::new();
        let far = Instant::now() + Duration::from_secs(5);
        let held = acquire(std::slice::from_ref(&d), true, far, &NO, &mut |m| notes.push(m)).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let err = acquire(std::slice::from_ref(&d), true, soon, &NO, &mut |m| notes.push(m));
        assert!(err.is_err());
        assert_eq!(notes.len(), 1, "{notes:?}");
        drop(held);
        assert!(acquire(std::slice::from_ref(&d), true, soon, &NO, &mut |_| {}).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_interrupt_ends_the_wait() {
        let d = std::env::temp_dir().join(format!("smolvm-lock-int-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        let _held = acquire(std::slice::from_ref(&d), true, far, &NO, &mut |_| {}).unwrap();
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(acquire(std::slice::from_ref(&d), true, far, &stop, &mut |_| {}).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shared_lock_creates_nothing() {
        let d = std::env::temp_dir().join(format!("smolvm-lock-sh-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        drop(acquire(std::slice::from_ref(&d), false, far, &NO, &mut |_| {}).unwrap());
        assert!(!d.join(LOCK_NAME).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

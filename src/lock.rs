//! One cleanup at a time per data dir: an exclusive `flock` on a lock file named by the
//! data dir's device and inode, in a directory only the user cleanup runs as may write
//! (`/run/smolvm-cleanup/` for root; `$XDG_RUNTIME_DIR/smolvm-cleanup/`, else
//! `/tmp/smolvm-cleanup-<uid>/`, for anyone else). Taken before anything is read, so a
//! second run waits (bounded by `--timeout`) and then sees what the first one left; a dry
//! run or a check takes a shared one. A lock on the data dir itself could be taken and
//! held by anyone who can open that directory, holding every root run off; this one only
//! by someone who could write the lock dir. Nothing is created in the data dir, and a
//! held lock names who holds it (from `/proc/locks`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags, flock, fstat, mkdirat, openat};
use rustix::io::Errno;

use crate::error::Error;

/// Held locks; dropping this releases them.
pub struct Held {
    _fds: Vec<OwnedFd>,
}

/// Where the locks of a run as `euid` live.
pub fn dir_for(euid: u32, runtime_dir: Option<&Path>) -> PathBuf {
    match runtime_dir.filter(|d| d.is_absolute()) {
        _ if euid == 0 => PathBuf::from("/run/smolvm-cleanup"),
        Some(d) => d.join("smolvm-cleanup"),
        None => PathBuf::from(format!("/tmp/smolvm-cleanup-{euid}")),
    }
}

/// Opens the lock dir, making it (and, for `/run`, its parent) when missing: a directory,
/// not a symlink, owned by us and writable by no one else. Err: why it cannot be used.
fn open_dir(dir: &Path) -> Result<OwnedFd, Error> {
    let what = || format!("use the lock dir {}", dir.display());
    let euid = rustix::process::geteuid().as_raw();
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let name = dir.file_name().unwrap_or(dir.as_os_str());
    let path_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent_fd = match openat(rustix::fs::CWD, parent, path_flags, Mode::empty()) {
        // A root with nothing but the binary (`FROM scratch`) has no /run.
        Err(Errno::NOENT) if parent == Path::new("/run") => {
            match mkdirat(rustix::fs::CWD, parent, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::sys(what(), e)),
            }
            openat(rustix::fs::CWD, parent, path_flags, Mode::empty())
        }
        other => other,
    }
    .map_err(|e| Error::sys(what(), e))?;
    match mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(Error::sys(what(), e)),
    }
    let fd = openat(
        &parent_fd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(what(), e))?;
    let st = fstat(&fd).map_err(|e| Error::sys(what(), e))?;
    if st.st_uid != euid || st.st_mode & 0o022 != 0 {
        return Err(Error::msg(
            what(),
            format!(
                "it is owned by uid {} with mode {:o}, not ours alone",
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(fd)
}

/// Locks every directory in `dirs` (a name for messages, and its device and inode), each
/// once however it was named and in (device, inode) order, so two runs can never
/// deadlock; a lock still held by another run at `deadline` is an error. A lock dir that
/// cannot be used is said (`warn`), and the run goes on without the lock.
pub fn acquire(
    lock_dir: &Path,
    dirs: Vec<(PathBuf, (u64, u64))>,
    exclusive: bool,
    deadline: Instant,
    stop: &AtomicBool,
    warn: &mut dyn FnMut(String),
) -> Result<Held, Error> {
    let mut keyed: Vec<((u64, u64), PathBuf)> = dirs.into_iter().map(|(p, k)| (k, p)).collect();
    keyed.sort_by_key(|k| k.0);
    keyed.dedup_by_key(|k| k.0);
    let mut fds = Vec::new();
    if keyed.is_empty() {
        return Ok(Held { _fds: fds });
    }
    let at = match open_dir(lock_dir) {
        Ok(fd) => fd,
        Err(e) => {
            warn(format!("{e}; running without the cleanup lock"));
            return Ok(Held { _fds: fds });
        }
    };
    for ((dev, ino), path) in keyed {
        let name = format!("{dev:x}-{ino}.lock");
        let file = openat(
            &at,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .and_then(|fd| {
            let st = fstat(&fd)?;
            // The dir is ours alone, so this is ours too; checked all the same.
            let ours = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && st.st_uid == rustix::process::geteuid().as_raw();
            if ours { Ok(fd) } else { Err(Errno::PERM) }
        })
        .map_err(|e| {
            Error::sys(
                format!("lock {} ({}/{name})", path.display(), lock_dir.display()),
                e,
            )
        })?;
        wait_for(&file, &path, exclusive, deadline, stop, warn)?;
        fds.push(file);
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
        let who = holders(file);
        // Said first, so a wait that ends at once is still named.
        if !said {
            warn(format!(
                "waiting for another cleanup{who} to finish (lock {})",
                path.display()
            ));
            said = true;
        }
        if stop.load(Ordering::SeqCst) {
            return Err(Error::msg(
                format!("take the cleanup lock {}", path.display()),
                format!("interrupted while another cleanup{who} held it"),
            ));
        }
        if Instant::now() >= deadline {
            return Err(Error::msg(
                format!("take the cleanup lock {}", path.display()),
                format!("another cleanup{who} still holds it at the --timeout deadline"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ` (pid 1234)`: who holds flocks on `file`, as `/proc/locks` says; empty when it cannot.
fn holders(file: &OwnedFd) -> String {
    let Ok(st) = fstat(file) else {
        return String::new();
    };
    let pids: Vec<String> = crate::procfs::flock_pids(Path::new("/proc"), st.st_dev, st.st_ino)
        .iter()
        .map(i32::to_string)
        .collect();
    if pids.is_empty() {
        String::new()
    } else {
        format!(" (pid {})", pids.join(", "))
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

    fn fd(d: &Path) -> Vec<(PathBuf, (u64, u64))> {
        let st = rustix::fs::stat(d).unwrap();
        vec![(d.to_path_buf(), (st.st_dev, st.st_ino))]
    }

    #[test]
    fn second_exclusive_lock_waits_until_the_deadline_and_names_the_holder() {
        let (d, locks) = (scratch("ex"), scratch("ex-locks").join("l"));
        let far = Instant::now() + Duration::from_secs(5);
        let held = acquire(&locks, fd(&d), true, far, &NO, &mut |_| {}).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let mut notes = Vec::new();
        let err = acquire(&locks, fd(&d), true, soon, &NO, &mut |m| notes.push(m));
        assert!(err.is_err());
        assert_eq!(notes.len(), 1, "{notes:?}");
        let me = std::process::id();
        assert!(
            notes[0].starts_with(&format!("waiting for another cleanup (pid {me}) to finish")),
            "{notes:?}"
        );
        // A shared lock (a dry run) waits for the cleanup too.
        assert!(acquire(&locks, fd(&d), false, soon, &NO, &mut |_| {}).is_err());
        drop(held);
        // Another test's fork may hold a copy of the fd until it execs: a moment's wait.
        let later = Instant::now() + Duration::from_secs(5);
        assert!(acquire(&locks, fd(&d), true, later, &NO, &mut |_| {}).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(locks.parent().unwrap()).unwrap();
    }

    #[test]
    fn one_directory_named_twice_is_locked_once() {
        let (d, locks) = (scratch("twice"), scratch("twice-locks").join("l"));
        let link = d.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let mut both = fd(&d);
        both.extend(fd(&link));
        assert!(acquire(&locks, both, true, soon, &NO, &mut |_| {}).is_ok());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(locks.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_interrupt_ends_the_wait() {
        let (d, locks) = (scratch("int"), scratch("int-locks").join("l"));
        let far = Instant::now() + Duration::from_secs(30);
        let _held = acquire(&locks, fd(&d), true, far, &NO, &mut |_| {}).unwrap();
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(acquire(&locks, fd(&d), true, far, &stop, &mut |_| {}).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(locks.parent().unwrap()).unwrap();
    }

    /// Nothing in the data dir; the lock dir is ours alone (0700), the lock file 0600.
    #[test]
    fn locking_creates_nothing_in_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let (d, locks) = (scratch("none"), scratch("none-locks").join("l"));
        let far = Instant::now() + Duration::from_secs(5);
        drop(acquire(&locks, fd(&d), true, far, &NO, &mut |_| {}).unwrap());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&locks), 0o700);
        let files: Vec<PathBuf> = std::fs::read_dir(&locks)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), 0o600);
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(locks.parent().unwrap()).unwrap();
    }

    /// A lock dir someone else could write (or a symlink to one) is not used: the run goes
    /// on unlocked and says so, rather than trusting a file another user placed.
    #[test]
    fn a_lock_dir_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (d, top) = (scratch("open"), scratch("open-locks"));
        let locks = top.join("l");
        std::fs::create_dir(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        let mut notes = Vec::new();
        assert!(acquire(&locks, fd(&d), true, far, &NO, &mut |m| notes.push(m)).is_ok());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].ends_with("not ours alone; running without the cleanup lock"),
            "{notes:?}"
        );
        assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
        std::fs::remove_dir(&locks).unwrap();
        std::os::unix::fs::symlink(&d, &locks).unwrap();
        let mut notes = Vec::new();
        assert!(acquire(&locks, fd(&d), true, far, &NO, &mut |m| notes.push(m)).is_ok());
        assert!(notes[0].contains("running without the cleanup lock"), "{notes:?}");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn the_lock_dir_is_the_users_own() {
        assert_eq!(
            dir_for(0, Some(Path::new("/run/user/0"))),
            Path::new("/run/smolvm-cleanup")
        );
        assert_eq!(
            dir_for(1000, Some(Path::new("/run/user/1000"))),
            Path::new("/run/user/1000/smolvm-cleanup")
        );
        assert_eq!(
            dir_for(1000, Some(Path::new("rel"))),
            Path::new("/tmp/smolvm-cleanup-1000")
        );
        assert_eq!(dir_for(1000, None), Path::new("/tmp/smolvm-cleanup-1000"));
    }
}

//! `/proc/locks` read late without waiting long for it. The kernel takes its lock lists
//! for writing to list them, and on a quiet host that first waits out an RCU grace
//! period (5–15 ms here, whatever the list's size); a read soon after another read does
//! not wait. So a thread reads it once at the start of discovery, keeps it warm with a
//! read every few milliseconds, and makes the one read that counts only when asked:
//! after the network is listed, as the claims must be. The reads that only pay or keep
//! the wait take one small `read(2)`: the kernel then lists one page of locks, not all,
//! and every `flock` on the host waits while it lists. Until the wait is paid (`warm`),
//! the claims are looked for in the processes' fds instead (`discover::claims`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Procfs;

/// Well inside the window a read keeps the lists' fast path open (at least one grace
/// period after the read, extended by each read within it).
const KEEP_WARM: Duration = Duration::from_millis(2);

/// How long the lists are kept warm at most: a discovery slower than this (a DB waited
/// for, a PostgreSQL server far away) pays one more grace period, which it cannot see.
const WARM_AT_MOST: Duration = Duration::from_secs(1);

/// The reader thread, started by `Locks::start`, asked by `Locks::ask`, answered by
/// `Locks::read`.
pub struct Locks {
    job: Option<(Sender<()>, JoinHandle<String>)>,
    asked: bool,
    path: PathBuf,
    /// Set once the first read has paid the wait.
    warm: Arc<AtomicBool>,
}

impl Locks {
    /// Starts the thread that pays the grace period now. Without a thread, `read` reads
    /// directly (and waits).
    pub fn start(procfs: &Procfs) -> Locks {
        let path = procfs.root.join("locks");
        let (tx, rx) = mpsc::channel::<()>();
        let at = path.clone();
        let warm = Arc::new(AtomicBool::new(false));
        let paid = Arc::clone(&warm);
        let job = std::thread::Builder::new()
            .name("locks".into())
            .spawn(move || {
                let touch = || {
                    use std::io::Read;
                    if let Ok(mut f) = std::fs::File::open(&at) {
                        let _ = f.read(&mut [0u8; 64]);
                    }
                };
                let started = std::time::Instant::now();
                touch();
                paid.store(true, Ordering::Release);
                loop {
                    let wait = if started.elapsed() < WARM_AT_MOST {
                        rx.recv_timeout(KEEP_WARM)
                    } else {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    match wait {
                        Err(RecvTimeoutError::Timeout) => touch(),
                        Ok(()) => return std::fs::read_to_string(&at).unwrap_or_default(),
                        // Nobody wants the answer any more (the run stopped early).
                        Err(RecvTimeoutError::Disconnected) => return String::new(),
                    }
                }
            })
            .ok()
            .map(|job| (tx, job));
        Locks {
            job,
            asked: false,
            path,
            warm,
        }
    }

    /// Whether `read` would answer without waiting for the kernel (the first read is done).
    pub fn warm(&self) -> bool {
        self.job.is_some() && self.warm.load(Ordering::Acquire)
    }

    /// From now on, what `read` answers is read after this call.
    pub fn ask(&mut self) {
        if !std::mem::replace(&mut self.asked, true)
            && let Some((tx, _)) = &self.job
            && tx.send(()).is_err()
        {
            self.job = None;
        }
    }

    /// `/proc/locks` as read after `ask` (or this call), empty when it cannot be read.
    pub fn read(mut self) -> String {
        self.ask();
        if let Some((_, job)) = self.job.take()
            && let Ok(text) = job.join()
        {
            return text;
        }
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer is the file as it is after `ask`, however often it was read before
    /// (what a claim taken before the network dump relies on), also once the reader has
    /// stopped keeping the lists warm.
    #[test]
    fn the_answer_is_read_after_the_ask() {
        for (i, before) in [KEEP_WARM * 3, WARM_AT_MOST + KEEP_WARM * 50]
            .into_iter()
            .enumerate()
        {
            let root = std::env::temp_dir().join(format!("locks-test-{}-{i}", std::process::id()));
            std::fs::create_dir_all(&root).unwrap();
            // Whole files only (a rename), as the kernel's list is never seen half made.
            let write = |text: &str| {
                std::fs::write(root.join("locks.new"), text).unwrap();
                std::fs::rename(root.join("locks.new"), root.join("locks")).unwrap();
            };
            write("1: FLOCK ADVISORY WRITE 10 00:2a:1 0 EOF\n");
            let mut locks = Locks::start(&Procfs::new(&root, 0.0));
            std::thread::sleep(before);
            assert!(locks.warm(), "the first read is done");
            write("2: FLOCK ADVISORY WRITE 20 00:2a:2 0 EOF\n");
            locks.ask();
            write("3: FLOCK ADVISORY WRITE 30 00:2a:3 0 EOF\n");
            let seen = locks.read();
            assert!(seen.starts_with("2: ") || seen.starts_with("3: "), "{seen}");
            std::fs::remove_dir_all(&root).unwrap();
        }
        assert!(
            Locks::start(&Procfs::new(std::path::Path::new("/nonexistent-proc"), 0.0))
                .read()
                .is_empty(),
            "unreadable: nothing"
        );
    }
}

//! Stops VMM processes through pidfds. Owns: pinning a judged process (pidfd, then the
//! start time re-read so a reused pid is never signalled), SIGTERM to every target at
//! once, one shared wait, SIGKILL for stragglers, and a bounded end to all of it.
//! Not here: deciding whose process it is (reconcile), choosing targets (plan).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::error::{Error, is_gone};
use crate::model::Vmm;
use crate::procfs::Procfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after our signal.
    Exited,
    /// It was gone (or its pid belonged to someone else) before we signalled.
    AlreadyGone,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a VMM gets to exit after SIGTERM.
    pub grace: Duration,
    /// How long to wait for the exit after SIGKILL (D state can hold it).
    pub kill_wait: Duration,
    pub deadline: Instant,
}

struct Pinned {
    slot: usize,
    fd: OwnedFd,
    exited: bool,
}

/// Stops every VMM in `vmms` and returns one result per entry, in order. All are signalled
/// before any is waited for: N VMMs cost about one grace period, not N.
pub fn stop_all(procfs: &Procfs, vmms: &[Vmm], t: Timing) -> Vec<Result<Stopped, Error>> {
    let mut out: Vec<Option<Result<Stopped, Error>>> = (0..vmms.len()).map(|_| None).collect();
    let mut pinned = Vec::new();
    for (slot, v) in vmms.iter().enumerate() {
        match pin(procfs, *v) {
            Ok(Some(fd)) => pinned.push(Pinned {
                slot,
                fd,
                exited: false,
            }),
            Ok(None) => out[slot] = Some(Ok(Stopped::AlreadyGone)),
            Err(e) => out[slot] = Some(Err(e)),
        }
    }
    signal_and_wait(&mut pinned, &mut out, vmms, Signal::TERM, t.grace, t.deadline);
    signal_and_wait(&mut pinned, &mut out, vmms, Signal::KILL, t.kill_wait, t.deadline);
    // A signal the kernel refused (EPERM without CAP_KILL) is already the reason; only a
    // process that took SIGKILL and still lives "survived" it.
    for p in pinned.iter().filter(|p| !p.exited) {
        if out[p.slot].is_some() {
            continue;
        }
        let pid = vmms[p.slot].pid;
        let state = procfs.read(pid).map(|i| i.state).unwrap_or('?');
        let why = match state {
            'D' => "is in uninterruptible sleep (state D) and survived SIGKILL".to_string(),
            s => format!("survived SIGKILL (state {s})"),
        };
        out[p.slot] = Some(Err(Error::msg(format!("stop VMM pid {pid}"), why)));
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Ok(Stopped::Exited)))
        .collect()
}

/// Opens a pidfd and proves it refers to the process that was judged (same start time).
/// Ok(None): the process is gone, or the pid now belongs to someone else.
fn pin(procfs: &Procfs, v: Vmm) -> Result<Option<OwnedFd>, Error> {
    // Pids 0 and 1 and our own are never a VMM; the reconciler refuses them too.
    if v.pid <= 1 || v.pid == rustix::process::getpid().as_raw_nonzero().get() {
        return Ok(None);
    }
    let Some(pid) = Pid::from_raw(v.pid) else {
        return Ok(None);
    };
    let fd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) if is_gone(e) => return Ok(None),
        Err(e) => return Err(Error::sys(format!("open pidfd for VMM pid {}", v.pid), e)),
    };
    // After pidfd_open the fd pins one process; if its start time is not the one we
    // judged, the pid was reused between the scan and now: that process is not ours.
    match procfs.start_ticks(v.pid) {
        Some(t) if t == v.start_ticks => Ok(Some(fd)),
        _ => Ok(None),
    }
}

fn signal_and_wait(
    pinned: &mut [Pinned],
    out: &mut [Option<Result<Stopped, Error>>],
    vmms: &[Vmm],
    sig: Signal,
    wait: Duration,
    deadline: Instant,
) {
    let name = if sig == Signal::KILL { "SIGKILL" } else { "SIGTERM" };
    for p in pinned.iter_mut() {
        if p.exited || out[p.slot].is_some() {
            continue;
        }
        match pidfd_send_signal(&p.fd, sig) {
            Ok(()) => {}
            Err(e) if is_gone(e) => p.exited = true,
            Err(e) => {
                let pid = vmms[p.slot].pid;
                out[p.slot] = Some(Err(Error::sys(format!("stop VMM pid {pid} ({name})"), e)));
            }
        }
    }
    let until = (Instant::now() + wait).min(deadline);
    loop {
        let waiting: Vec<usize> = (0..pinned.len())
            .filter(|&i| !pinned[i].exited && out[pinned[i].slot].is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let left = until.saturating_duration_since(Instant::now());
        let mut fds: Vec<PollFd<'_>> = waiting
            .iter()
            .map(|&i| PollFd::new(&pinned[i].fd, PollFlags::IN))
            .collect();
        let ts = Timespec::try_from(left).unwrap_or_default();
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => return,
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for (k, &i) in waiting.iter().enumerate() {
            if ready[k] {
                pinned[i].exited = true;
            }
        }
        if left.is_zero() {
            return;
        }
    }
}

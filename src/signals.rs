//! SIGINT and SIGTERM to cleanup itself become a flag: the phase in progress finishes,
//! no further phase starts, the report says what was left, and the exit status is 1.
//! This is the crate's only `unsafe`: installing a handler needs `sigaction`.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// The flag the handlers set.
pub fn flag() -> &'static AtomicBool {
    &STOP
}

/// Installs the handlers and returns the flag they set. Err: the kernel refused a
/// handler, so that signal would end the run mid-step (the flag still works for the other).
pub fn install() -> std::io::Result<&'static AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is given a zero-initialised struct (valid for the C type)
        // whose handler only performs an atomic store, which is async-signal-safe; no
        // other thread installs handlers, so the previous action is not needed.
        #[allow(unsafe_code)]
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}

//! SQLite's memory, taken from the process's allocator (`crate::heap`) rather than from
//! musl's `malloc`, which unmaps what SQLite frees and maps it again on the next
//! statement: the DB read and the row deletes made most of a run's remaining `munmap`s.
//! Each block carries its size in a 16-byte header, as SQLite's free and size calls pass
//! only the pointer.

// SQLite's memory methods are C callbacks over raw pointers.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ffi::{c_int, c_void};
use std::sync::Once;

use rusqlite::ffi;

const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

unsafe extern "C" fn malloc(size: c_int) -> *mut c_void {
    let Some(l) = usize::try_from(size).ok().and_then(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a non-zero layout; the header records the size `free` needs.
    unsafe {
        let base = std::alloc::alloc(l);
        if base.is_null() {
            return std::ptr::null_mut();
        }
        base.cast::<usize>().write(l.size() - HEADER);
        base.add(HEADER).cast()
    }
}

/// The block's base and layout (from its header).
///
/// # Safety
/// `p` was returned by `malloc` or `realloc` here and not freed.
unsafe fn block(p: *mut c_void) -> (*mut u8, Layout) {
    // SAFETY: the caller's promise; the header sits just before `p`.
    unsafe {
        let base = p.cast::<u8>().sub(HEADER);
        let size = base.cast::<usize>().read();
        (base, Layout::from_size_align_unchecked(size + HEADER, HEADER))
    }
}

unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: SQLite frees only what its `xMalloc`/`xRealloc` returned.
        unsafe {
            let (base, l) = block(p);
            std::alloc::dealloc(base, l);
        }
    }
}

unsafe extern "C" fn realloc(p: *mut c_void, size: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as `malloc`.
        return unsafe { malloc(size) };
    }
    let Some(new) = usize::try_from(size).ok().and_then(layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `p` is SQLite's block from here; on success the header is rewritten.
    unsafe {
        let (base, old) = block(p);
        let moved = std::alloc::realloc(base, old, new.size());
        if moved.is_null() {
            return std::ptr::null_mut();
        }
        moved.cast::<usize>().write(new.size() - HEADER);
        moved.add(HEADER).cast()
    }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: as `free`.
    let (_, l) = unsafe { block(p) };
    c_int::try_from(l.size() - HEADER).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn roundup(size: c_int) -> c_int {
    size.saturating_add(7) & !7
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

/// Before SQLite's first use in this process; later (SQLite already initialised, as in
/// tests that made a fixture first) SQLite refuses and keeps `malloc`, which is only slower.
pub fn use_process_allocator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(malloc),
            xFree: Some(free),
            xRealloc: Some(realloc),
            xSize: Some(size),
            xRoundup: Some(roundup),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: SQLite copies the methods before returning; they honour its contract.
        unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_and_bytes_through_realloc() {
        // SAFETY: each pointer is used as SQLite would: malloc, realloc, size, free.
        unsafe {
            assert!(malloc(-1).is_null());
            let p = malloc(5).cast::<u8>();
            assert_eq!(p as usize % 8, 0);
            p.copy_from(b"hello".as_ptr(), 5);
            assert_eq!(size(p.cast()), 5);
            let q = realloc(p.cast(), 70_000).cast::<u8>();
            assert_eq!(size(q.cast()), 70_000);
            assert_eq!(std::slice::from_raw_parts(q, 5), b"hello");
            let r = realloc(q.cast(), 3).cast::<u8>();
            assert_eq!(std::slice::from_raw_parts(r, 3), b"hel");
            free(r.cast());
            free(std::ptr::null_mut());
            assert_eq!(roundup(9), 16);
        }
    }
}

//! The process's memory allocator. musl's hands freed memory back to the kernel at once: a
//! run at N = 100 made about 270 `mmap` and 420 `munmap` calls, each `munmap` a TLB
//! shootdown (an IPI to the other CPU while a thread of ours runs there, dear under
//! nested virtualisation, and the TAP delete's grace periods wait behind it) and each
//! page faulted in again when reused. Here a block up to `SMALL_MAX` comes from one of
//! `CLASSES` size classes, carved from chunks kept for the process's life: a freed block
//! goes on its class's free list and is the next one handed out. Larger or over-aligned
//! blocks go to musl as before (few, and large ones are mapped on their own anyway).
//!
//! What this costs: a process's small-block memory never shrinks below its peak (a
//! `--every` process keeps its largest run's, which `operator::every_frees_what_each_run_read`
//! bounds), and a block above 128 bytes is up to a quarter larger than asked (four
//! classes per doubling; below, 16-byte steps).

// An allocator hands out raw memory: it cannot be written without `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// Blocks up to this size come from the classes.
const SMALL_MAX: usize = 64 << 10;
/// Eight 16-byte steps up to 128, then four steps per doubling up to `SMALL_MAX`.
const CLASSES: usize = 8 + 4 * (SMALL_MAX.trailing_zeros() as usize - 7);
/// Every class size is a multiple of this, and every chunk starts page-aligned.
const ALIGN: usize = 16;
const FIRST_CHUNK: usize = 256 << 10;
const LAST_CHUNK: usize = 8 << 20;

/// The class a block of `size` (1..=SMALL_MAX) bytes comes from.
fn class_of(size: usize) -> usize {
    if size <= 128 {
        return size.max(1).div_ceil(16) - 1;
    }
    let p = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    8 + (p - 7) * 4 + ((size - 1 - (1 << p)) >> (p - 2))
}

/// The size of every block of class `c`.
fn class_size(c: usize) -> usize {
    if c < 8 {
        return (c + 1) * 16;
    }
    let (p, k) = (7 + (c - 8) / 4, (c - 8) % 4);
    (1 << p) + ((k + 1) << (p - 2))
}

fn small(layout: Layout) -> bool {
    layout.size() <= SMALL_MAX && layout.align() <= ALIGN
}

struct Classes {
    /// Each class's freed blocks, linked through their first word.
    free: [*mut u8; CLASSES],
    /// The rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
    chunk: usize,
}

// SAFETY: the pointers are to memory no one else owns, reached only under the mutex.
unsafe impl Send for Classes {}

pub struct Heap {
    classes: Mutex<Classes>,
}

impl Heap {
    pub const fn new() -> Heap {
        Heap {
            classes: Mutex::new(Classes {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
                chunk: FIRST_CHUNK,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Classes> {
        // Nothing under the lock panics; a poisoned lock still guards whole lists.
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl Classes {
    /// A block of class `c`, or null when the kernel gives no memory.
    fn take(&mut self, c: usize) -> *mut u8 {
        let head = self.free[c];
        if !head.is_null() {
            // SAFETY: a free block of this class holds the next one's address.
            self.free[c] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = class_size(c);
        if (self.end as usize) - (self.next as usize) < size && !self.grow(size) {
            return ptr::null_mut();
        }
        let block = self.next;
        // SAFETY: `size` bytes are left in the chunk (checked above).
        self.next = unsafe { block.add(size) };
        block
    }

    fn give(&mut self, block: *mut u8, c: usize) {
        // SAFETY: the block is ours, at least 16 bytes and 16-aligned.
        unsafe { block.cast::<*mut u8>().write(self.free[c]) };
        self.free[c] = block;
    }

    /// A new chunk, each twice the last up to `LAST_CHUNK` (what is left of the old one,
    /// less than one block, is not used).
    fn grow(&mut self, at_least: usize) -> bool {
        let len = self.chunk.max(at_least);
        // SAFETY: an anonymous private mapping, owned by nothing else.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        self.next = p.cast();
        // SAFETY: the mapping is `len` bytes long.
        self.end = unsafe { self.next.add(len) };
        self.chunk = (self.chunk * 2).min(LAST_CHUNK);
        true
    }
}

// SAFETY: a small block is handed out once until freed, 16-aligned and at least as large
// as asked; everything else is musl's.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !small(layout) {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        }
        self.lock().take(class_of(layout.size()))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !small(layout) {
            // SAFETY: the caller's layout, passed on (a fresh mapping needs no zeroing).
            return unsafe { System.alloc_zeroed(layout) };
        }
        let p = self.lock().take(class_of(layout.size()));
        if !p.is_null() {
            // SAFETY: the block is at least `layout.size()` bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !small(layout) {
            // SAFETY: allocated by `System` with this layout (`alloc` chose by the same test).
            return unsafe { System.dealloc(block, layout) };
        }
        self.lock().give(block, class_of(layout.size()));
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_small = small(layout);
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new_small = small(new);
        if !old_small && !new_small {
            // SAFETY: both are musl's; it may move the pages instead of copying them.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        if old_small && new_small && class_of(layout.size()) == class_of(new_size) {
            return block;
        }
        // SAFETY: `new` is a valid layout (above); the copy stays within both blocks.
        unsafe {
            let moved = self.alloc(new);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_fits_its_class_and_the_classes_grow_by_at_most_a_quarter() {
        let mut last = 0;
        for size in 1..=SMALL_MAX {
            let c = class_of(size);
            assert!(c < CLASSES, "{size}");
            let s = class_size(c);
            assert!(s >= size && s.is_multiple_of(ALIGN), "{size} -> {s}");
            assert!(c == 0 || class_size(c - 1) < size, "{size} fits a smaller class");
            assert!(c >= last, "monotonic at {size}");
            last = c;
        }
        assert_eq!(class_size(CLASSES - 1), SMALL_MAX);
        for c in 8..CLASSES {
            assert!(class_size(c) * 4 <= class_size(c - 1) * 5, "class {c}");
        }
    }

    #[test]
    fn blocks_are_aligned_distinct_and_reused_after_free() {
        let heap = Heap::new();
        let layouts: Vec<Layout> = [1, 8, 16, 17, 100, 129, 4000, 40_000, SMALL_MAX, SMALL_MAX + 1]
            .iter()
            .map(|&s| Layout::from_size_align(s, 8).unwrap())
            .chain([Layout::from_size_align(64, 128).unwrap()])
            .collect();
        let mut held = Vec::new();
        for round in 0..3u8 {
            for l in &layouts {
                // SAFETY: valid non-zero layouts, each block freed with its own layout.
                let p = unsafe { heap.alloc(*l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align().max(if small(*l) { ALIGN } else { 1 }), 0);
                // SAFETY: the block is at least `l.size()` bytes.
                unsafe { p.write_bytes(round, l.size()) };
                held.push((p, *l, round));
            }
        }
        let mut spans: Vec<(usize, usize)> = held.iter().map(|(p, l, _)| (*p as usize, l.size())).collect();
        spans.sort_unstable();
        assert!(
            spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "blocks overlap"
        );
        for (p, l, round) in &held {
            // SAFETY: written above, `l.size()` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(*p, l.size()) };
            assert!(bytes.iter().all(|b| b == round));
        }
        let (p, l, _) = held[4];
        // SAFETY: freed once, then the same class asked for again.
        let again = unsafe {
            heap.dealloc(p, l);
            heap.alloc(Layout::from_size_align(112, 8).unwrap())
        };
        assert_eq!(again, p, "the freed block comes back");
    }

    /// When the kernel gives no memory, a class hands out null (the caller's out-of-memory
    /// path), and the classes still work once memory is there.
    #[test]
    fn no_memory_from_the_kernel_is_null_not_a_bad_block() {
        let heap = Heap::new();
        let mut classes = heap.lock();
        classes.chunk = 1 << 62;
        assert!(classes.take(0).is_null(), "a 4 EiB chunk is refused");
        assert!(
            classes.next.is_null() && classes.end.is_null(),
            "nothing half made"
        );
        classes.chunk = FIRST_CHUNK;
        assert!(!classes.take(0).is_null());
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_into_musl() {
        let heap = Heap::new();
        let mut l = Layout::from_size_align(10, 1).unwrap();
        // SAFETY: each step passes the layout the block has.
        unsafe {
            let mut p = heap.alloc(l);
            for i in 0..10u8 {
                p.add(usize::from(i)).write(i);
            }
            for size in [12, 200, 5000, SMALL_MAX + 5, 3 * SMALL_MAX, 300, 10] {
                p = heap.realloc(p, l, size);
                assert!(!p.is_null());
                l = Layout::from_size_align(size, 1).unwrap();
                for i in 0..10u8 {
                    assert_eq!(p.add(usize::from(i)).read(), i, "size {size}");
                }
            }
            heap.dealloc(p, l);
        }
    }

    #[test]
    fn threads_share_it_without_losing_or_doubling_a_block() {
        let heap = std::sync::Arc::new(Heap::new());
        let jobs: Vec<_> = (0..4usize)
            .map(|t| {
                let heap = std::sync::Arc::clone(&heap);
                std::thread::spawn(move || {
                    let l = Layout::from_size_align(48, 8).unwrap();
                    let mut mine = Vec::new();
                    for i in 0..20_000usize {
                        // SAFETY: 48-byte blocks, each written then freed once.
                        unsafe {
                            let p = heap.alloc(l);
                            p.cast::<usize>().write(t << 32 | i);
                            mine.push((p, t << 32 | i));
                            if i % 3 == 0 {
                                let (q, v) = mine.swap_remove(i % mine.len());
                                assert_eq!(q.cast::<usize>().read(), v);
                                heap.dealloc(q, l);
                            }
                        }
                    }
                    for (q, v) in mine {
                        // SAFETY: as above.
                        unsafe {
                            assert_eq!(q.cast::<usize>().read(), v);
                            heap.dealloc(q, l);
                        }
                    }
                })
            })
            .collect();
        for j in jobs {
            j.join().unwrap();
        }
    }
}

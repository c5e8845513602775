//! Helpers shared by the strategy allocator tests: an `Os` over the Rust heap (so OS-backed
//! constructors run under miri too), caller buffers, and content patterns that reveal
//! overlapping blocks.
#![allow(dead_code)]

use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use allocscope_core::os::Os;

/// An `Os` that reserves from the Rust heap and counts reservations and releases.
#[derive(Default)]
pub struct HeapOs {
    pub reserved: AtomicUsize,
    pub released: AtomicUsize,
    /// Decommit calls (memory given back while the addresses stay reserved).
    pub decommitted: AtomicUsize,
    /// When set, reservations beyond this count fail (out-of-memory paths).
    pub limit: Option<usize>,
    live: Mutex<Vec<(usize, Layout)>>,
}

impl HeapOs {
    pub fn with_limit(limit: usize) -> Self {
        HeapOs {
            limit: Some(limit),
            ..Default::default()
        }
    }

    pub fn live_regions(&self) -> usize {
        self.reserved.load(Ordering::SeqCst) - self.released.load(Ordering::SeqCst)
    }
}

impl Os for HeapOs {
    fn page_size(&self) -> usize {
        4096
    }

    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if self
            .limit
            .is_some_and(|l| self.reserved.load(Ordering::SeqCst) >= l)
        {
            return None;
        }
        let layout = Layout::from_size_align(size, align.max(4096)).ok()?;
        // SAFETY: non-zero size (callers never reserve 0 bytes).
        let p = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        self.live
            .lock()
            .unwrap()
            .push((p.as_ptr() as usize, layout));
        self.reserved.fetch_add(1, Ordering::SeqCst);
        Some(p)
    }

    unsafe fn commit(&self, _ptr: NonNull<u8>, _size: usize) -> bool {
        true
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) {
        self.decommitted.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's contract.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) }
    }

    unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
        let mut live = self.live.lock().unwrap();
        let i = live
            .iter()
            .position(|&(p, _)| p == ptr.as_ptr() as usize)
            .expect("release of a region that was not reserved");
        let (_, layout) = live.swap_remove(i);
        assert_eq!(layout.size(), size, "release with the wrong size");
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

/// A block pointer handed to another thread (which then owns the block).
pub struct Sent<T>(pub NonNull<T>);

// SAFETY: tests send a block only when the sender stops using it.
unsafe impl<T> Send for Sent<T> {}

/// A caller buffer of `len` bytes.
pub fn buffer(len: usize) -> Vec<MaybeUninit<u8>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit<u8> needs no initialisation (and writing `len` of them one by one
    // is what makes `vec![..; len]` slow under miri).
    unsafe { v.set_len(len) };
    v
}

/// The byte offsets the patterns cover: all of a block natively; under miri (which runs
/// byte loops slowly) its first and last 32 bytes, enough to catch overlapping blocks.
fn covered(len: usize) -> impl Iterator<Item = usize> {
    let edge = if cfg!(miri) { 32 } else { len };
    (0..len.min(edge)).chain(len.saturating_sub(edge).max(edge.min(len))..len)
}

/// Writes a pattern derived from `seed` over a block.
pub fn fill(ptr: NonNull<u8>, len: usize, seed: u64) {
    for i in covered(len) {
        // SAFETY: tests pass live blocks of at least `len` bytes.
        unsafe { ptr.as_ptr().add(i).write(pattern(seed, i)) };
    }
}

/// Whether the block still holds the pattern of `seed`.
pub fn holds(ptr: NonNull<u8>, len: usize, seed: u64) -> bool {
    // SAFETY: tests pass live blocks of at least `len` bytes, filled by `fill`.
    covered(len).all(|i| unsafe { ptr.as_ptr().add(i).read() } == pattern(seed, i))
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i as u64 * 31)
        >> 24) as u8
}

/// Whether `[a, a+la)` and `[b, b+lb)` overlap (zero-length blocks never do).
pub fn overlap(a: usize, la: usize, b: usize, lb: usize) -> bool {
    la != 0 && lb != 0 && a < b + lb && b < a + la
}

/// Proptest settings: fewer cases under miri, no failure files.
pub fn config() -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 128 },
        failure_persistence: None,
        ..Default::default()
    }
}

/// The operation count a pool, stack, buddy or slab magazine reports for `n` operations:
/// exact with the `stats` feature, 0 without it (their fast paths count nothing then).
pub fn counted(n: u64) -> u64 {
    if cfg!(feature = "stats") {
        n
    } else {
        0
    }
}

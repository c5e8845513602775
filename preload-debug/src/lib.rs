//! `liballocscope_debug.so`: the instrumented heap (allocscope-tracker) behind the C
//! allocation ABI, so C and C++ programs get canaries, guard pages, quarantine, double/invalid
//! free detection, sampled stacks, leak reports and a trace:
//! `ALLOCSCOPE_OPTIONS=trace=prog.%p.trace LD_PRELOAD=target/release/liballocscope_debug.so prog`
//! (what `allocscope record` runs).
//!
//! The C entry points are the release library's (`preload/src/c_abi.rs`), over the tracker.
//!
//! May touch: `allocscope_tracker`'s C-ABI functions, `libc` (errno, page size).

#![allow(clippy::missing_safety_doc)] // the C ABI's contracts are C's: see each function.

include!("../../preload/src/c_abi.rs");

/// The tracker behind the C ABI.
mod backend {
    pub use allocscope_core::collect;
    pub use allocscope_tracker::{alloc, alloc_zeroed, free, realloc};

    /// `malloc_usable_size`: the tracker's (the requested size; the slack stays guarded).
    ///
    /// # Safety
    /// `ptr` is a live block of this heap.
    pub unsafe fn usable_size(ptr: *const u8) -> usize {
        allocscope_tracker::usable_size(ptr)
    }

    /// The alignment `malloc(size)` asks the tracker for: C's 16 above 8 bytes, 8 below. The
    /// release heap's classes give 16 for free, but a guarded block is placed against its guard
    /// page and a red-zoned one after its zone, both only as aligned as asked.
    #[inline(always)]
    pub fn malloc_align(size: usize) -> usize {
        if size > 8 {
            16
        } else {
            8
        }
    }
}

c_abi!();

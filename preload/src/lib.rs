//! `liballocscope.so`: the allocscope heap behind the C allocation ABI.
//!
//! `LD_PRELOAD=target/release/liballocscope.so prog` (or `allocscope run -- prog`) serves every
//! allocation of `prog` — from the dynamic loader's first call on, in every thread, and in
//! children after `fork` — with the thread-caching heap of `allocscope-core`. C++'s `new` and
//! `delete` reach it through libstdc++'s calls to `malloc` and `free`.
//!
//! May touch: `allocscope_core::heap`, `libc` (errno, page size).

#![allow(clippy::missing_safety_doc)] // the C ABI's contracts are C's: see each function.

include!("c_abi.rs");

/// The release heap behind the C ABI.
mod backend {
    pub use allocscope_core::collect;
    pub use allocscope_core::heap::{alloc, alloc_zeroed, free, realloc, usable_size};

    /// The alignment `malloc(size)` asks the heap for: 8, since every size class above 8 bytes
    /// is a multiple of 16 and so 16-aligned already (asking 16 would cost a branch for nothing).
    #[inline(always)]
    pub const fn malloc_align(_size: usize) -> usize {
        8
    }
}

c_abi!();

//! The one door to atomics: `std`/`core` atomics normally, loom's under `cfg(loom)`, so the
//! lock-free structures (the remote-free list, the lock-free strategy allocator) are
//! model-checked from the very code that ships.
//!
//! May touch: nothing but `core::sync::atomic` and, under `cfg(loom)`, `loom`.

#[cfg(all(not(loom), target_has_atomic = "64"))]
pub use core::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};

pub use core::sync::atomic::Ordering;

/// Spin-loop hint (loom needs to be told a thread is waiting so it can schedule another).
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

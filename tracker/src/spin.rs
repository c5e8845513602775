//! A spin lock for the tracker's short critical sections (a table shard, the quarantine ring,
//! the guard pool's free list). Holders never allocate, never block and never call out, so a
//! waiter spins for a few hundred nanoseconds at most; after a while it yields the CPU so a
//! preempted holder can run.
//!
//! May touch: [`allocscope_core::sync`] only.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use allocscope_core::sync::{spin_hint, AtomicBool, Ordering};

/// A value behind a spin lock.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so sharing the lock is as safe as
// sending the value.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Waits for the lock.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        // Acquire on success: the previous holder's writes (released in `drop`) are visible.
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self) {
        let mut spins = 0u32;
        loop {
            // Relaxed: only a hint that the lock looks free; the CAS below decides.
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                if spins < 128 {
                    spin_hint();
                } else {
                    std::thread::yield_now();
                }
            }
            // Acquire: as in `lock`.
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Holds a [`SpinLock`]; releases it when dropped.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard's existence means this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard's existence means this thread holds the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release: our writes to the value happen-before the next holder's Acquire.
        self.lock.locked.store(false, Ordering::Release);
    }
}

//! The tracker's lock for its short critical sections (a table shard, the quarantine ring, the
//! guard pool's free list, the walk lock): the core's [`allocscope_core::spin::SpinLock`] (one
//! compare-and-swap to take it, one store to release it), with a wait of the tracker's own.
//! Holders never allocate and never call out, but a walk (leak check, scan) holds the walk lock
//! for milliseconds and any holder may be preempted, so after a short spin a waiter yields the
//! CPU instead of spinning on for its whole time slice (the core's own wait never yields: it
//! serves firmware with no scheduler).
//!
//! May touch: [`allocscope_core::spin`], [`allocscope_core::sync`].

use allocscope_core::spin::SpinLock as CoreSpinLock;
use allocscope_core::sync::spin_hint;

pub(crate) use allocscope_core::spin::SpinGuard;

/// Spins this many times before yielding.
const SPINS_BEFORE_YIELD: u32 = 128;

/// A spin lock around a value that yields while it waits.
pub(crate) struct SpinLock<T>(CoreSpinLock<T>);

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock(CoreSpinLock::new(value))
    }

    /// Takes the lock, spinning a little and then yielding while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        match self.0.try_lock() {
            Some(guard) => guard,
            None => self.lock_slow(),
        }
    }

    /// Takes the lock and keeps it, with no guard, until [`SpinLock::release_held`]: for
    /// `fork`'s prepare handler ([`crate::fork`]).
    #[cfg(unix)]
    pub(crate) fn hold(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::hold`].
    ///
    /// # Safety
    /// This thread (or, in a forked child, the thread that forked) holds the lock through
    /// `hold`, and releases it once.
    #[cfg(unix)]
    pub(crate) unsafe fn release_held(&self) {
        // SAFETY: the caller's contract: held with a forgotten guard, not in use.
        unsafe { self.0.force_unlock() }
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(guard) = self.0.try_lock() {
                return guard;
            }
            spins = spins.saturating_add(1);
            if spins < SPINS_BEFORE_YIELD {
                spin_hint();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_take_turns() {
        let lock = std::sync::Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 40_000);
    }
}

//! An asymmetric memory barrier: a cheap side run on every owner-thread free, a heavy side run
//! at the start of every table walk (leak check, scan), which is rare.
//!
//! The problem it solves is Dekker's: a free stores "freed" into the block's table word, then
//! loads the walk counter; a walk stores the counter, then loads the words. Both store→load
//! orders must hold, or the free may miss the walk (and give the block back while the walk reads
//! it) while the walk misses the free. A `SeqCst` fence on the free side would cost as much as
//! the locked instruction the owner path exists to avoid. Instead the free side only keeps the
//! compiler from reordering ([`light`]), and the walk side makes every running thread of the
//! process execute a full barrier before it goes on ([`heavy`], Linux `membarrier` with
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, as liburcu and Folly's `asymmetricHeavyBarrier` do):
//! a thread that was between its store and its load when the heavy barrier ran has its store
//! made visible before the walk reads the words; one that was not running had its store and
//! load already ordered by the context switch. Either the free sees the walk, or the walk sees
//! the free.
//!
//! Where `membarrier` is missing (old kernels, seccomp, other systems), [`light`] falls back to
//! a real `SeqCst` fence, decided once by [`init`].
//!
//! May touch: `libc` (the syscall).

use allocscope_core::sync::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const EXPEDITED: u8 = 1;
const FENCE: u8 = 2;

/// Which protocol is in force. Relaxed loads: it is written once, before any table exists
/// ([`init`] runs in the table's constructor, which happens-before the table is shared).
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Registers the process for expedited private barriers (once); later calls do nothing.
pub(crate) fn init() {
    // Relaxed: see `MODE`; racing initialisers compute the same answer.
    if MODE.load(Ordering::Relaxed) != UNKNOWN {
        return;
    }
    let mode = if register() { EXPEDITED } else { FENCE };
    MODE.store(mode, Ordering::Relaxed);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn register() -> bool {
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let supported = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0) };
    if supported < 0 || supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED == 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
        ) == 0
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn register() -> bool {
    false
}

/// The free side: between a store and a later load that must not pass it.
#[inline(always)]
pub(crate) fn light() {
    // Relaxed: see `MODE`.
    if MODE.load(Ordering::Relaxed) == EXPEDITED {
        // The heavy side supplies the hardware barrier; only the compiler must keep the order.
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// The walk side: after its store, before its loads. Every thread of the process that runs a
/// [`light`] barrier has its earlier stores ordered before this thread's later loads.
pub(crate) fn heavy() {
    core::sync::atomic::fence(Ordering::SeqCst);
    // Relaxed: see `MODE`.
    if MODE.load(Ordering::Relaxed) == EXPEDITED {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
            const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
            // SAFETY: membarrier takes two integers and touches no memory of ours.
            let call = |cmd: libc::c_long| unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0) };
            // Registered in `init`, so the expedited call cannot fail with EPERM. Should it
            // fail anyway, the global barrier (slow: it waits for a grace period) gives the
            // same guarantee, and later frees fence for real.
            if call(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
                MODE.store(FENCE, Ordering::Relaxed);
                call(MEMBARRIER_CMD_GLOBAL);
            }
        }
    }
}

//! Why the last allocation failed: an error code readable after the fact, never a message on
//! stderr and never a panic (the allocation path cannot print or unwind).
//!
//! May touch: [`crate::sync`] only.

#[cfg(not(loom))]
use crate::sync::{AtomicU32, Ordering};
// A process-wide diagnostic, never part of a loom model; loom's atomics cannot be `static`.
#[cfg(loom)]
use core::sync::atomic::{AtomicU32, Ordering};

/// Why an allocation returned null / `None` / `AllocError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AllocErrorKind {
    /// The OS (or the fixed buffer) refused to give more memory.
    OutOfMemory = 1,
    /// The request can never be satisfied: size overflow, alignment not a power of two or
    /// larger than the maximum this allocator supports.
    InvalidRequest = 2,
    /// A strategy allocator's fixed capacity is used up.
    Exhausted = 3,
    /// A free of a block that is already free (reported, and the free refused).
    DoubleFree = 4,
    /// A free of a pointer the allocator did not hand out, or with the wrong size.
    InvalidFree = 5,
    /// A stack allocator's block freed while blocks above it are live (kept until a reset).
    OutOfOrderFree = 6,
}

/// The last failure seen by any allocator of this crate (0 = none yet). Relaxed: a diagnostic
/// value with no ordering relation to anything else.
static LAST_ERROR: AtomicU32 = AtomicU32::new(0);

/// Records `kind` as the reason of the latest failure. Called only on failure paths.
#[cold]
pub fn record(kind: AllocErrorKind) {
    LAST_ERROR.store(kind as u32, Ordering::Relaxed);
    set_errno(kind);
}

/// C callers read `errno`: out of memory is `ENOMEM`, an impossible request `EINVAL`. Setting
/// it here lets the C entry points tail-call the heap.
#[cfg(all(unix, feature = "std"))]
fn set_errno(kind: AllocErrorKind) {
    let code = match kind {
        AllocErrorKind::InvalidRequest => libc::EINVAL,
        _ => libc::ENOMEM,
    };
    // SAFETY: errno_location gives the calling thread's errno slot.
    unsafe { *errno_location() = code };
}

/// The calling thread's `errno` slot.
#[cfg(all(unix, feature = "std"))]
fn errno_location() -> *mut libc::c_int {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "emscripten"))]
    // SAFETY: no preconditions.
    return unsafe { libc::__errno_location() };
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: no preconditions.
    return unsafe { libc::__error() };
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "emscripten",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )))]
    // SAFETY: no preconditions.
    return unsafe { libc::__errno() };
}

#[cfg(not(all(unix, feature = "std")))]
fn set_errno(_kind: AllocErrorKind) {}

/// The reason of the most recent allocation failure in this process, if any.
pub fn last_error() -> Option<AllocErrorKind> {
    match LAST_ERROR.load(Ordering::Relaxed) {
        1 => Some(AllocErrorKind::OutOfMemory),
        2 => Some(AllocErrorKind::InvalidRequest),
        3 => Some(AllocErrorKind::Exhausted),
        4 => Some(AllocErrorKind::DoubleFree),
        5 => Some(AllocErrorKind::InvalidFree),
        6 => Some(AllocErrorKind::OutOfOrderFree),
        _ => None,
    }
}

/// Forgets the recorded failure (tests, or a program that handled it).
pub fn clear_last_error() {
    LAST_ERROR.store(0, Ordering::Relaxed);
}

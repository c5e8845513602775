//! allocscope's instrumented mode: the core allocator (or any `GlobalAlloc`) wrapped with
//! canaries, guard pages, quarantine, double/invalid-free and layout checks, sampled stacks,
//! leak reports, and an event stream to a trace file or a live Unix socket.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: allocscope_tracker::Tracker = allocscope_tracker::Tracker::new();
//! ```
//!
//! Run-time options come from `ALLOCSCOPE_OPTIONS` (see [`options`]), e.g.
//! `ALLOCSCOPE_OPTIONS=sample=1,canary=16,quarantine=64m,trace=/tmp/prog.%p.trace`.
//! Reports use AddressSanitizer's words (`heap-buffer-overflow`, `use-after-free`, ...) and are
//! printed on standard error, streamed, and kept for [`Tracker::take_reports`].
//!
//! Map of the crate (each module says what it may touch):
//! - [`tracker`]: the `Tracker` type and its allocation paths;
//! - `state`: one tracker's run-time state, reports, scans, the registry for exit and faults;
//! - `shadow`: the default path's blocks over the core heap, recorded in a map beside the heap
//!   (a 32-bit word per 16-byte granule); `block_table` (direct map by address) and
//!   `cold_table` (hashed, for what a word cannot hold): every other live (and recently freed)
//!   block, with `barrier` (the asymmetric barrier that lets the allocating thread free without
//!   a locked instruction);
//! - `guard`, `fault`: the guard-page pool and what explains its faults (a signal handler on
//!   Unix, a vectored exception handler on Windows); `quarantine`; `canary`: red zones and
//!   poison;
//! - `stacks` (capture, de-duplication), [`symbolize`]; `leaks` (reachability scan);
//! - `stream` (per-thread buffers, writer thread), [`trace_format`] (the one definition of a
//!   trace, shared with the viewer), `snapshot`, `modules`;
//! - `thread_state` (re-entrancy flag, thread id and countdowns in one hot thread-local, the
//!   rest of the per-thread state), `spin`, `os_memory`;
//! - `windows`: stand-ins for the Unix-only calls, so the crate builds for Windows (what they
//!   cannot do is refused at run time, with a message).
//!
//! The C-ABI functions [`alloc`], [`free`], [`realloc`], [`usable_size`] work on one
//! process-wide tracker ([`global`]) for the preload library.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
// Module docs name the private modules and items they build on ("May touch: ..."); those
// links resolve in the maintainers' build (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

#[cfg(not(all(any(unix, windows), target_pointer_width = "64")))]
compile_error!("allocscope-tracker supports 64-bit Unix and (building only) 64-bit Windows");

mod barrier;
mod block_table;
mod canary;
mod cold_table;
mod fault;
#[cfg(unix)]
mod fork;
mod guard;
mod leaks;
mod modules;
pub mod options;
mod os_memory;
mod quarantine;
pub mod report;
mod shadow;
mod snapshot;
mod spin;
mod stacks;
mod state;
mod stream;
pub mod symbolize;
mod thread_state;
pub mod trace_format;
pub mod tracker;
#[cfg(windows)]
mod windows;

pub use options::{GuardRate, LeakCheck, Options, OptionsBuilder, OptionsError, Unwinder};
pub use report::Report;
pub use state::TrackerStats;
pub use trace_format::ReportKind;
pub use tracker::Tracker;

/// The process-wide tracker behind the C-ABI functions (configured by `ALLOCSCOPE_OPTIONS`).
static GLOBAL: Tracker = Tracker::new();

/// The process-wide tracker used by [`alloc`], [`free`], [`realloc`] and [`usable_size`].
pub fn global() -> &'static Tracker {
    &GLOBAL
}

/// `malloc`/`aligned_alloc` for the preload library: `size` bytes aligned to `align` (a power
/// of two); null when out of memory.
#[inline]
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    GLOBAL.allocate(size, align, false)
}

/// `calloc` for the preload library (the caller checks `count * size` for overflow).
#[inline]
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    GLOBAL.allocate(size, align, true)
}

/// `free` for the preload library. Null is ignored; a pointer this heap never gave, or one
/// freed already, is reported and ignored.
///
/// # Safety
/// A valid `ptr` is not used after this call.
#[inline]
pub unsafe fn free(ptr: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { GLOBAL.deallocate(ptr, None) }
}

/// `realloc` for the preload library: null `ptr` allocates; on failure returns null and the
/// old block stays valid. (C's `realloc(p, 0)` policy is the wrapper's choice: this function
/// returns a minimal block.)
///
/// # Safety
/// On success the old `ptr` is not used again.
#[inline]
pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { GLOBAL.reallocate(ptr, None, new_size, align) }
}

/// For the preload library's `_exit`: ends the process-wide tracker's trace first (see
/// [`Tracker::finish_trace_before_exit`]), so that a program ending so leaves its whole trace.
pub fn before_exit() {
    GLOBAL.finish_trace_before_exit();
}

/// For the preload library's `exec*`, before libc's: ends the trace of the program about to be
/// replaced (see [`Tracker::end_trace_before_exec`]); [`after_failed_exec`] when it returns.
pub fn before_exec() {
    GLOBAL.end_trace_before_exec();
}

/// For the preload library's `exec*`, when libc's returned (the exec failed): the trace goes on
/// (see [`Tracker::resume_trace_after_failed_exec`]).
pub fn after_failed_exec() {
    GLOBAL.resume_trace_after_failed_exec();
}

/// `malloc_usable_size` for the preload library: the requested size of a live block (the
/// tracker never lets a program use the slack), 0 for anything else.
#[inline]
pub fn usable_size(ptr: *const u8) -> usize {
    GLOBAL.usable_size(ptr)
}

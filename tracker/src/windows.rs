//! Windows stand-ins for the tracker's few Unix-only calls, so that the crate builds for
//! `x86_64-pc-windows-gnu`. The tracker is run and tested on 64-bit Linux; on Windows the
//! allocation paths, canaries, quarantine, reports and trace files work through the core's OS
//! layer and the C runtime, and what has no counterpart here says so at run time:
//! - guard pages still trap, but their faults are not explained (no exception handler yet): a
//!   guarded overflow or use-after-free ends the process with an access violation, no report;
//! - live streaming to a socket (`socket=`) is refused with an error (trace files work);
//! - the reachability leak check has no map of the address space (no `/proc/self/maps`), so it
//!   finds no roots and reports every live block;
//! - threads are announced without their names.
//!
//! `crate::fault` is this module on Windows (see lib.rs), hence [`install`].
//!
//! May touch: `windows-sys` (performance counter, thread id), [`crate::report::print_raw`].

use std::io;
use std::time::Duration;

use allocscope_core::sync::{AtomicBool, Ordering};
use windows_sys::Win32::System::Performance::{QueryPerformanceCounter, QueryPerformanceFrequency};
use windows_sys::Win32::System::Threading::GetCurrentThreadId;

/// Nanoseconds of the performance counter (monotonic; no allocation, no lock).
pub(crate) fn monotonic_ns() -> u64 {
    let (mut count, mut frequency) = (0i64, 0i64);
    // SAFETY: both calls write one i64 through a valid pointer; they cannot fail since
    // Windows XP.
    unsafe {
        QueryPerformanceCounter(&mut count);
        QueryPerformanceFrequency(&mut frequency);
    }
    // In 128 bits: count * 10^9 leaves 64 bits after about 15 minutes at 10 MHz.
    let ns = u128::from(count.unsigned_abs()) * 1_000_000_000
        / u128::from(frequency.unsigned_abs().max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The OS thread id (what a debugger shows).
pub(crate) fn os_thread_id() -> u64 {
    // SAFETY: GetCurrentThreadId has no preconditions.
    u64::from(unsafe { GetCurrentThreadId() })
}

/// Prints `text` once per process (for each `flag`).
fn notice_once(flag: &AtomicBool, text: &str) {
    // Relaxed: a once-flag for a message; nothing is published through it.
    if !flag.swap(true, Ordering::Relaxed) {
        crate::report::print_raw(text);
    }
}

/// On Unix, the guard-page fault handler; here, the notice that there is none.
pub(crate) fn install() {
    static SAID: AtomicBool = AtomicBool::new(false);
    notice_once(
        &SAID,
        "allocscope: guard-page faults are not explained on Windows: a guarded overflow or \
         use-after-free ends the process with an access violation and no report\n",
    );
}

/// Called when the leak check finds no map of the address space.
pub(crate) fn no_leak_roots() {
    static SAID: AtomicBool = AtomicBool::new(false);
    notice_once(
        &SAID,
        "allocscope: the reachability leak check is not supported on Windows (no map of the \
         address space): every live block is reported\n",
    );
}

/// The error for `socket=`.
pub(crate) fn no_socket(path: &std::path::Path) -> String {
    format!(
        "cannot listen on socket {}: live streaming is not supported on Windows (use trace=FILE)",
        path.display()
    )
}

/// A Unix-socket listener cannot exist on Windows (`stream::listen` refuses): the type is
/// uninhabited, so the code that serves clients compiles and provably never runs.
pub(crate) enum UnixListener {}

/// A client socket; uninhabited like [`UnixListener`].
pub(crate) enum UnixStream {}

impl UnixListener {
    pub(crate) fn accept(&self) -> io::Result<(UnixStream, ())> {
        match *self {}
    }
}

impl UnixStream {
    pub(crate) fn set_nonblocking(&self, _: bool) -> io::Result<()> {
        match *self {}
    }

    pub(crate) fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        match *self {}
    }
}

impl io::Write for UnixStream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {}
    }
}

//! The Windows half of [`super`]: a vectored exception handler, first in the list. It looks at
//! access violations only, passes each to [`super::explain`], and always answers
//! `EXCEPTION_CONTINUE_SEARCH`: the search goes on to the program's own SEH handlers and, when
//! none takes the exception, to the unhandled-exception end, so the process exits with
//! `0xC0000005` exactly as it would have without the tracker. Nothing is put back, since
//! Windows does not run the faulting instruction again on `CONTINUE_SEARCH`.
//!
//! One explanation per process, as on Unix (whose handler steps aside after its first report):
//! once a fault has been explained, the handler passes every later one on untouched, so an SEH
//! handler that answers `EXCEPTION_CONTINUE_EXECUTION` without fixing the access does not get
//! the same report again at each retry. Vectored handlers run in the first-chance search only;
//! an exception no handler took gets a last-chance notice to a debugger, if one is attached,
//! and then the system ends the process without searching handlers again, so that path
//! cannot repeat a report either.
//!
//! One fault is explained at a time (a process-wide owner word): a thread that faults while
//! another explains waits, so that its own fault, unhandled, cannot end the process before the
//! first report is written. A fault inside the explanation itself — on the faulting thread, or
//! on the helper thread that renders the report — is passed on at once (re-entry).
//!
//! May touch: `windows-sys` (vectored handlers, threads, stack limits).

use core::ffi::c_void;

use allocscope_core::sync::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use windows_sys::Win32::Foundation::{CloseHandle, EXCEPTION_ACCESS_VIOLATION, WAIT_OBJECT_0};
use windows_sys::Win32::System::Diagnostics::Debug::{
    AddVectoredExceptionHandler, EXCEPTION_CONTINUE_SEARCH, EXCEPTION_POINTERS,
};
use windows_sys::Win32::System::Threading::{
    CreateThread, GetCurrentThreadId, GetCurrentThreadStackLimits, Sleep, WaitForSingleObject,
    INFINITE, STACK_SIZE_PARAM_IS_A_RESERVATION,
};

use crate::thread_state::enter_always;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The OS id of the thread inside [`super::explain`]; 0 when none is.
static EXPLAINING: AtomicU32 = AtomicU32::new(0);

/// The OS id of the thread rendering a report for [`run_on_large_stack`]; 0 when none is.
static HELPER: AtomicU32 = AtomicU32::new(0);

/// Whether a fault has been explained (read and written with [`EXPLAINING`] held).
static EXPLAINED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process).
pub(crate) fn install() {
    // Relaxed: a once-flag; a second caller returning early before the first finishes only
    // means a guarded fault in that tiny window ends without a report.
    if INSTALLED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: `handler` has the signature of a vectored handler and lives as long as the
    // process (it is never removed). A null result (out of memory) leaves faults unexplained.
    unsafe { AddVectoredExceptionHandler(1, Some(handler)) };
}

/// `ExceptionInformation[0]` of an access violation: what the instruction did.
const READ: usize = 0;
const WRITE: usize = 1;

/// The vectored handler (see the module doc).
///
/// # Safety
/// Called by the system only, with the exception pointers of a first-chance exception.
unsafe extern "system" fn handler(pointers: *mut EXCEPTION_POINTERS) -> i32 {
    // SAFETY: the system calls a vectored handler with valid exception pointers, whose record
    // stays valid for the call.
    let record = unsafe { &*(*pointers).ExceptionRecord };
    if record.ExceptionCode != EXCEPTION_ACCESS_VIOLATION || record.NumberParameters < 2 {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    // Relaxed: a shortcut only; a stale `false` takes the owner word and reads it again there.
    if EXPLAINED.load(Ordering::Relaxed) {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    // SAFETY: GetCurrentThreadId has no preconditions.
    let me = unsafe { GetCurrentThreadId() };
    // Relaxed: only the helper thread itself ever finds its own id here (program order).
    if HELPER.load(Ordering::Relaxed) == me {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    loop {
        // Acquire: pairs with the Release below, so this thread sees `EXPLAINED` as the last
        // owner left it.
        match EXPLAINING.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(owner) if owner == me => return EXCEPTION_CONTINUE_SEARCH,
            // SAFETY: Sleep has no preconditions.
            Err(_) => unsafe { Sleep(1) },
        }
    }
    // Relaxed (both): under the owner word, whose Acquire/Release order them.
    if !EXPLAINED.load(Ordering::Relaxed) {
        let write = match record.ExceptionInformation[0] {
            READ => Some(false),
            WRITE => Some(true),
            // 8: an instruction fetch (data execution prevention), neither.
            _ => None,
        };
        let addr = record.ExceptionInformation[1];
        let ip = record.ExceptionAddress as usize;
        if super::explain(addr, ip, write) {
            EXPLAINED.store(true, Ordering::Relaxed);
        }
    }
    // Release: publishes `EXPLAINED` to the next owner.
    EXPLAINING.store(0, Ordering::Release);
    EXCEPTION_CONTINUE_SEARCH
}

/// Bytes left below the current stack pointer on this thread's stack, less what Windows keeps
/// at its bottom to raise the stack overflow (a guard page and the stack guarantee, which std
/// sets to 20 KiB): 64 KiB are held back to be safe.
pub(super) fn room_on_stack() -> usize {
    const KEPT_BY_THE_SYSTEM: usize = 64 * 1024;
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    let (mut low, mut high) = (0usize, 0usize);
    // SAFETY: GetCurrentThreadStackLimits writes two usizes through valid pointers.
    unsafe { GetCurrentThreadStackLimits(&mut low, &mut high) };
    sp.saturating_sub(low.saturating_add(KEPT_BY_THE_SYSTEM))
}

/// Who runs the job of [`run_on_large_stack`]: the helper thread or, if it has not started
/// when the faulting thread stops waiting, the faulting thread.
struct Handoff<'a> {
    claim: AtomicU8,
    job: *mut (dyn FnMut() + 'a),
}

const PENDING: u8 = 0;
const TAKEN_BY_HELPER: u8 = 1;
const ABANDONED: u8 = 2;

/// How long the faulting thread waits for the helper to start before it runs the job itself.
/// A thread cannot start while the faulting one holds the loader lock (a fault in a DLL's
/// attach or detach code, or in a thread-local's destructor): waiting on would hang.
const START_WAIT_MS: u32 = 2000;

/// Runs `f` on a fresh thread with an 8 MiB stack and waits for it; runs it here if no thread
/// can be created, or if the thread has not started within [`START_WAIT_MS`].
pub(super) fn run_on_large_stack(f: &mut dyn FnMut()) {
    /// The helper thread's routine.
    ///
    /// # Safety
    /// `arg` is a `Handoff` that stays allocated while the thread may read it.
    unsafe extern "system" fn helper(arg: *mut c_void) -> u32 {
        // SAFETY: `arg` is the `Handoff` boxed below, freed only after this thread ended or
        // leaked (never freed) when the faulting thread stopped waiting.
        let handoff = unsafe { &*arg.cast::<Handoff>() };
        // Relaxed: the exchange only decides who runs the job (one of the two exchanges from
        // PENDING wins); the job's data is published to this thread by CreateThread and its
        // effects back by the thread's end, which WaitForSingleObject observes.
        if handoff
            .claim
            .compare_exchange(
                PENDING,
                TAKEN_BY_HELPER,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            let _busy = enter_always();
            // SAFETY: GetCurrentThreadId has no preconditions.
            let me = unsafe { GetCurrentThreadId() };
            // Relaxed: read only by this thread (see the handler).
            HELPER.store(me, Ordering::Relaxed);
            // SAFETY: taken by this thread, the job is alive until the faulting thread's wait
            // for this thread's end returns.
            unsafe { (*handoff.job)() };
            HELPER.store(0, Ordering::Relaxed);
        }
        0
    }
    let handoff = Box::into_raw(Box::new(Handoff {
        claim: AtomicU8::new(PENDING),
        job: &mut *f,
    }));
    // SAFETY: `helper` has the thread-routine signature; `handoff` is valid until freed below,
    // which happens only once the helper has ended or can no longer touch the job.
    let thread = unsafe {
        CreateThread(
            core::ptr::null(),
            8 << 20,
            Some(helper),
            handoff.cast::<c_void>(),
            STACK_SIZE_PARAM_IS_A_RESERVATION,
            core::ptr::null_mut(),
        )
    };
    if thread.is_null() {
        // SAFETY: no thread was made: the box is ours alone.
        drop(unsafe { Box::from_raw(handoff) });
        f();
        return;
    }
    // SAFETY: `thread` is a valid handle until CloseHandle below.
    if unsafe { WaitForSingleObject(thread, START_WAIT_MS) } != WAIT_OBJECT_0 {
        // SAFETY: `handoff` is alive (leaked from here on if abandoned).
        let claim = unsafe { &(*handoff).claim };
        // Relaxed: as in `helper`.
        if claim
            .compare_exchange(PENDING, ABANDONED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // The helper has not started its job and never will: run it here, and leave the
            // box to the helper, which may still read `claim` whenever it starts.
            // SAFETY: a valid handle, closed once.
            unsafe { CloseHandle(thread) };
            f();
            return;
        }
        // The helper runs the job: wait for it however long it takes.
        // SAFETY: `thread` is a valid handle.
        unsafe { WaitForSingleObject(thread, INFINITE) };
    }
    // SAFETY: a valid handle, closed once; the helper has ended, so the box is ours again.
    unsafe {
        CloseHandle(thread);
        drop(Box::from_raw(handoff));
    }
}

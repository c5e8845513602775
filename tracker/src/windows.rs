//! Windows stand-ins for the tracker's few Unix-only calls, so that the crate builds for
//! `x86_64-pc-windows-gnu`. The tracker is run and tested on 64-bit Linux; on Windows the
//! allocation paths, canaries, quarantine, reports and trace files work through the core's OS
//! layer and the C runtime, and what has no counterpart here says so at run time:
//! - live streaming to a socket (`socket=`) is refused with an error (trace files work);
//! - the reachability leak check takes its roots from `VirtualQuery` (every committed writable
//!   region but the heap's) and reads memory with `ReadProcessMemory`, as it reads
//!   `/proc/self/maps` and uses `process_vm_readv` on Linux; this thread's TLS is in those
//!   regions (the TEB and the process heap), not found apart;
//! - threads are announced without their names;
//! - reports give file:line as on Linux, from the DWARF debug info that MinGW's linker leaves
//!   in the executable (`backtrace` reads it with gimli on windows-gnu, not with dbghelp); a
//!   build without debug info (`debug = false`) names functions only, from the symbol table,
//!   as on Linux (docs/platforms.md says what to set).
//!
//! Guard-page faults are explained as on Unix, by a vectored exception handler
//! (`crate::fault`'s Windows half), not here.
//!
//! May touch: `windows-sys` (performance counter, thread id, memory queries).

use std::io;
use std::time::Duration;

use windows_sys::Win32::System::Diagnostics::Debug::ReadProcessMemory;
use windows_sys::Win32::System::Memory::{
    VirtualQuery, MEMORY_BASIC_INFORMATION, MEM_COMMIT, PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY, PAGE_GUARD, PAGE_NOACCESS, PAGE_READWRITE, PAGE_WRITECOPY,
};
use windows_sys::Win32::System::Performance::{QueryPerformanceCounter, QueryPerformanceFrequency};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetCurrentThreadId};

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

/// Calls `f(start, end)` for every committed region of the address space a program could have
/// written a pointer into (read-write or copy-on-write, no guard or no-access modifier): the
/// leak check's roots before it leaves out the heap's own (see `crate::leaks::roots`).
/// `VirtualQuery` walks the regions in address order from 0 to the top of user space.
pub(crate) fn for_each_writable_region(f: &mut dyn FnMut(usize, usize)) {
    const WRITABLE: u32 =
        PAGE_READWRITE | PAGE_WRITECOPY | PAGE_EXECUTE_READWRITE | PAGE_EXECUTE_WRITECOPY;
    let mut at = 0usize;
    loop {
        // SAFETY: MEMORY_BASIC_INFORMATION is plain data that VirtualQuery fills.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { core::mem::zeroed() };
        let size = core::mem::size_of::<MEMORY_BASIC_INFORMATION>();
        // SAFETY: VirtualQuery reads no memory of ours but writes `info` through a valid
        // pointer of `size` bytes; any address may be asked about.
        if unsafe { VirtualQuery(at as *const _, &mut info, size) } < size {
            return;
        }
        let (base, len) = (info.BaseAddress as usize, info.RegionSize);
        if info.State == MEM_COMMIT
            && info.Protect & WRITABLE != 0
            && info.Protect & (PAGE_GUARD | PAGE_NOACCESS) == 0
        {
            f(base, base + len);
        }
        match base.checked_add(len) {
            Some(next) if next > at => at = next,
            _ => return,
        }
    }
}

/// Copies `buf.len()` bytes from `addr` in our own address space, as `process_vm_readv` does on
/// Linux: a range that is not readable (freed meanwhile, a guard page) gives what came before
/// it, instead of a fault. The number of bytes copied.
pub(crate) fn read_own_memory(addr: usize, buf: &mut [u8]) -> usize {
    let mut copied = 0usize;
    // SAFETY: the kernel copies from our own process into `buf` (valid for its length),
    // checking the source range itself; `copied` is a valid out-pointer.
    let ok = unsafe {
        ReadProcessMemory(
            GetCurrentProcess(),
            addr as *const _,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut copied,
        )
    };
    if ok != 0 {
        buf.len()
    } else {
        copied.min(buf.len())
    }
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

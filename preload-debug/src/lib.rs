//! `liballocscope_debug.so`: the instrumented heap (allocscope-tracker) behind the C
//! allocation ABI, so C and C++ programs get canaries, guard pages, quarantine, double/invalid
//! free detection, sampled stacks, leak reports and a trace:
//! `ALLOCSCOPE_OPTIONS=trace=prog.%p.trace LD_PRELOAD=target/release/liballocscope_debug.so prog`
//! (what `allocscope record` runs).
//!
//! The C entry points are the release library's (`preload/src/c_abi.rs`), over the tracker.
//!
//! A program that ends with `_exit` (a forked child, many shells' children) or becomes another
//! with `exec*` runs no exit hook: this library's `_exit`, `_Exit`, `execve`, `execv`, `execvp`,
//! `execvpe` and `fexecve` end the trace first (`before_exit`, `before_exec`), then do what
//! libc's do; an exec that fails takes the trace up again (`after_failed_exec`).
//! (The variadic `execl*` are not wrapped: stable Rust cannot define a variadic function.)
//!
//! May touch: `allocscope_tracker`'s C-ABI functions, `libc` (errno, page size, dlsym, the
//! exit_group system call).

#![allow(clippy::missing_safety_doc)] // the C ABI's contracts are C's: see each function.

include!("../../preload/src/c_abi.rs");

/// The tracker behind the C ABI.
mod backend {
    pub use allocscope_core::collect;
    pub use allocscope_tracker::{alloc, alloc_zeroed, free, realloc};

    /// `malloc_usable_size`: the tracker's (the requested size; the slack stays guarded).
    ///
    /// # Safety
    /// `ptr` is a live block of this heap.
    pub unsafe fn usable_size(ptr: *const u8) -> usize {
        allocscope_tracker::usable_size(ptr)
    }

    /// The alignment `malloc(size)` asks the tracker for: C's 16 above 8 bytes, 8 below. The
    /// release heap's classes give 16 for free, but a guarded block is placed against its guard
    /// page and a red-zoned one after its zone, both only as aligned as asked.
    #[inline(always)]
    pub fn malloc_align(size: usize) -> usize {
        if size > 8 {
            16
        } else {
            8
        }
    }
}

c_abi!();

/// `_exit`, `_Exit` and the `exec*` that take an argument vector: the trace ended first.
mod ending {
    use core::ffi::{c_char, c_int, c_void, CStr};

    type Argv = *const *const c_char;

    /// The next definition of `name` after this library's (libc's).
    fn next(name: &CStr) -> *mut c_void {
        // SAFETY: `name` is NUL-terminated; RTLD_NEXT looks in the libraries after this one.
        unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
    }

    /// ENOSYS for an entry libc turned out not to have (so the caller sees a failed exec).
    fn missing() -> c_int {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        -1
    }

    /// Ends the process as libc's `_exit` does (all its threads, no exit hook).
    fn exit_group(status: c_int) -> ! {
        allocscope_tracker::before_exit();
        loop {
            // SAFETY: exit_group takes a status and does not return.
            unsafe { libc::syscall(libc::SYS_exit_group, status) };
        }
    }

    #[no_mangle]
    pub extern "C" fn _exit(status: c_int) -> ! {
        exit_group(status)
    }

    #[no_mangle]
    pub extern "C" fn _Exit(status: c_int) -> ! {
        exit_group(status)
    }

    macro_rules! exec_with {
        ($name:ident, $sym:literal, ($($arg:ident: $ty:ty),*)) => {
            /// libc's, with the trace ended first, and taken up again if the exec fails
            /// (its `errno` kept).
            ///
            /// # Safety
            /// As for libc's.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
                let f = next($sym);
                if f.is_null() {
                    return missing();
                }
                // SAFETY: `f` is libc's definition of this very function, of this signature.
                let f: unsafe extern "C" fn($($ty),*) -> c_int = unsafe { core::mem::transmute(f) };
                allocscope_tracker::before_exec();
                // SAFETY: the caller's contract is libc's.
                let failed = unsafe { f($($arg),*) };
                // SAFETY: errno is this thread's.
                let errno = unsafe { *libc::__errno_location() };
                allocscope_tracker::after_failed_exec();
                // SAFETY: as above.
                unsafe { *libc::__errno_location() = errno };
                failed
            }
        };
    }

    exec_with!(execve, c"execve", (path: *const c_char, argv: Argv, envp: Argv));
    exec_with!(execv, c"execv", (path: *const c_char, argv: Argv));
    exec_with!(execvp, c"execvp", (file: *const c_char, argv: Argv));
    exec_with!(execvpe, c"execvpe", (file: *const c_char, argv: Argv, envp: Argv));
    exec_with!(fexecve, c"fexecve", (fd: c_int, argv: Argv, envp: Argv));
}

//! The Unix half of [`super`]: a SIGSEGV/SIGBUS handler. A fault the pool explains is handed
//! on by putting the previous action back and returning: the faulting instruction runs again,
//! so the process dies by the signal (or the program's own handler runs). Faults elsewhere go
//! straight to the previous handler (Rust's stack-overflow handler, for one).
//!
//! May touch: `sigaction`, `sigaltstack`, `pthread_create`.

use core::mem::MaybeUninit;

use allocscope_core::sync::{AtomicBool, Ordering};

use crate::thread_state::enter_always;

/// The actions that were in place before ours, for SIGSEGV and SIGBUS.
struct Previous(core::cell::UnsafeCell<[MaybeUninit<libc::sigaction>; 2]>);

// SAFETY: written once in `install` before the handler can run (sigaction orders it), read-only
// afterwards.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(core::cell::UnsafeCell::new([MaybeUninit::uninit(); 2]));
static INSTALLED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// Installs the handler (once per process).
pub(crate) fn install() {
    // Relaxed: a once-flag; a second caller returning early before the first finishes only
    // means a guarded fault in that tiny window is handled by the previous handler.
    if INSTALLED.swap(true, Ordering::Relaxed) {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: a zeroed sigaction is a valid starting point; we fill handler, flags, mask.
        let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
        action.sa_sigaction =
            handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        // No SA_ONSTACK: std gives each thread an 8 KiB alternate stack, too small to capture
        // and symbolise a stack. A pool fault happens in ordinary code, with the thread's own
        // stack to spare. The cost: a stack overflow (no room to deliver the signal at all)
        // now ends in a plain SIGSEGV instead of std's "has overflowed its stack" message.
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: sigemptyset initialises the mask; sigaction stores the previous action into
        // our static slot, which nothing reads before this call returns (INSTALLED guards it).
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            let previous = (*PREVIOUS.0.get())[i].as_mut_ptr();
            libc::sigaction(sig, &action, previous);
        }
    }
}

fn previous(sig: libc::c_int) -> Option<libc::sigaction> {
    let i = SIGNALS.iter().position(|&s| s == sig)?;
    // SAFETY: written in `install` before our handler could be called.
    Some(unsafe { (*PREVIOUS.0.get())[i].assume_init() })
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let sent = sent_by_a_process(info);
    // A sent signal's siginfo holds a pid and uid where a fault's holds the address.
    let handled = !sent && {
        // SAFETY: the kernel passes a valid siginfo for SIGSEGV/SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        let (ip, write) = fault_context(context);
        super::explain(addr, ip, write)
    };
    let Some(old) = previous(sig) else { return };
    if sent && old.sa_sigaction == libc::SIG_IGN {
        // Ignored, as it would have been without us.
        return;
    }
    if handled || old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
        // Put the previous action back and return: the access faults again and the previous
        // action (by default: death by this signal) takes it from there.
        let mut restore = old;
        if restore.sa_sigaction == libc::SIG_IGN {
            restore.sa_sigaction = libc::SIG_DFL;
        }
        // SAFETY: restoring an action the kernel gave us.
        unsafe { libc::sigaction(sig, &restore, core::ptr::null_mut()) };
        if sent {
            // No access faults again: send the signal again. Blocked while this handler runs,
            // it arrives as the handler returns (returning alone let the program run on, and
            // `kill -SEGV` or `raise(SIGSEGV)` ended it with status 0).
            // SAFETY: raise is async-signal-safe.
            unsafe { libc::raise(sig) };
        }
        return;
    }
    // Not ours: call the previous handler as the kernel would have.
    // SAFETY: the previous action's handler has the signature its flags announce.
    unsafe {
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                core::mem::transmute(old.sa_sigaction);
            f(sig, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = core::mem::transmute(old.sa_sigaction);
            f(sig);
        }
    }
}

/// Whether the signal was sent (`kill`, `raise`, `sigqueue`) rather than raised by an access.
fn sent_by_a_process(info: *mut libc::siginfo_t) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the kernel passes a valid siginfo. Codes at or below zero (SI_USER, SI_QUEUE,
        // SI_TKILL, ...) come from processes; faults have positive ones.
        unsafe { (*info).si_code <= 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = info;
        false
    }
}

/// The faulting instruction and whether the access was a write (when the CPU says).
fn fault_context(context: *mut libc::c_void) -> (usize, Option<bool>) {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        // SAFETY: for an SA_SIGINFO handler the third argument is the interrupted ucontext.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        let ip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
        // Page-fault error code: bit 1 set for a write.
        let err = uc.uc_mcontext.gregs[libc::REG_ERR as usize] as usize;
        (ip, Some(err & 2 != 0))
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        // SAFETY: as above.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        (uc.uc_mcontext.pc as usize, None)
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        let _ = context;
        (0, None)
    }
}

/// Bytes left below the current stack pointer on the stack we run on (alternate signal stack
/// or the thread's own).
pub(super) fn room_on_stack() -> usize {
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    // SAFETY: sigaltstack with a null new stack only reports the current one into `ss`.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let on_alt = unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) } == 0
        && ss.ss_flags & libc::SS_ONSTACK != 0;
    if on_alt {
        return sp.saturating_sub(ss.ss_sp as usize);
    }
    // The thread's own stack: plenty unless this is a stack overflow (not a pool fault).
    usize::MAX
}

/// Runs `f` on a fresh thread with an 8 MiB stack and waits for it; runs it here if no thread
/// can be created.
pub(super) fn run_on_large_stack(f: &mut dyn FnMut()) {
    extern "C" fn trampoline(arg: *mut libc::c_void) -> *mut libc::c_void {
        let _busy = enter_always();
        // SAFETY: `arg` is the `&mut &mut dyn FnMut()` passed below, alive until the join.
        let f = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
        f();
        core::ptr::null_mut()
    }
    let mut f = f;
    let arg = (&mut f as *mut &mut dyn FnMut()).cast::<libc::c_void>();
    // SAFETY: standard pthread calls with locals; the thread is joined before `f` goes away.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 8 << 20);
        let mut thread: libc::pthread_t = core::mem::zeroed();
        let created = libc::pthread_create(&mut thread, &attr, trampoline, arg) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if created {
            libc::pthread_join(thread, core::ptr::null_mut());
            return;
        }
    }
    f();
}

//! Guard-page faults explained. The platform's handler (a SIGSEGV/SIGBUS handler on Unix,
//! `signal`; a vectored exception handler on Windows, `vectored`) passes each fault's
//! address, faulting instruction and access to [`explain`]; a fault inside a guard pool is
//! explained (overflow, underflow, use-after-free) and reported, and then handed on, so that
//! the process dies (or the program's own handler runs) exactly as it would have without the
//! tracker. Faults elsewhere are handed on untouched.
//!
//! The report is rendered on a helper thread with a large stack, so that symbolisation never
//! depends on how much of the faulting thread's stack is left. Not async-signal-safe in the
//! strict sense — neither is any sanitizer's report — but the faulting thread holds no tracker
//! lock when it faults (the access is in program code), so the allocations and locks used
//! here are free.
//!
//! May touch: [`crate::state`] (the registry), [`crate::guard`], [`crate::stacks`], the
//! platform's handler module.

#[cfg(unix)]
mod signal;
#[cfg(windows)]
mod vectored;

#[cfg(unix)]
use signal as platform;
#[cfg(windows)]
use vectored as platform;

pub(crate) use platform::install;

use crate::report::{Detection, Facts};
use crate::stacks;
use crate::state::for_each_state;
use crate::thread_state::{enter_always, thread_id};

/// Explains a fault at `addr`, raised by the instruction at `ip` (`write`: whether the access
/// was a write, when the CPU says), if `addr` lies in the guard pool of a registered tracker:
/// reports it (rendered on a large stack) and flushes that tracker's stream. Returns whether
/// the fault was a pool's; the caller then hands it on as it would any other.
pub(crate) fn explain(addr: usize, ip: usize, write: Option<bool>) -> bool {
    let _busy = enter_always();
    let mut handled = false;
    for_each_state(|state| {
        if handled {
            return;
        }
        let Some(pool) = &state.guard else { return };
        let Some(fault) = pool.classify(addr) else {
            return;
        };
        handled = true;
        let access_stack = access_stack(ip);
        let mut facts = Facts::new(fault.kind, Detection::Fault { write }, addr, thread_id());
        facts.block = Some((fault.block_start, fault.block_size));
        facts.access_stack = access_stack;
        facts.alloc_stack = fault.alloc_stack;
        facts.alloc_thread = fault.alloc_thread;
        facts.free_stack = fault.free_stack;
        facts.free_thread = fault.free_thread;
        platform::run_on_large_stack(&mut || state.raise(facts.clone(), None));
        if let Some(stream) = state.stream() {
            stream.finish(None, std::time::Duration::from_secs(2));
        }
    });
    handled
}

/// The faulting thread's stack, starting at the faulting instruction. Unwinds through the
/// signal or exception frame when there is room on the current stack; otherwise records the
/// instruction alone.
fn access_stack(ip: usize) -> u32 {
    let mut frames = [0usize; stacks::MAX_FRAMES];
    let mut n = 0;
    if platform::room_on_stack() >= 48 * 1024 {
        let captured = stacks::capture(64, crate::options::Unwinder::Backtrace, None);
        let all = captured.frames();
        // Drop the handler's own frames: keep from the interrupted instruction on.
        if let Some(at) = all.iter().position(|&f| f.abs_diff(ip) <= 1) {
            for &f in &all[at..] {
                frames[n] = f;
                n += 1;
            }
        }
    }
    if n == 0 {
        frames[0] = ip;
        n = 1;
    }
    // Symbolisation looks one byte back (return addresses); the faulting instruction itself is
    // not a return address, so point one byte past it.
    frames[0] = ip + 1;
    stacks::intern(&frames[..n], None)
}

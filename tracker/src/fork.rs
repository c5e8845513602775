//! `fork` in a multi-threaded program: the child has only the thread that forked, so a lock
//! another thread of the parent held at that moment would stay held in the child for good, and
//! the child's first allocation that needs it (a sampled stack, a guarded block, the
//! quarantine's ring, the block table's cold entries) would wait forever. As glibc does for its
//! arenas, a prepare handler takes every tracker lock before the fork (waiting for holders to
//! finish their short critical sections) and both processes release them after it, so the
//! child starts with each lock free and the data under it whole.
//!
//! Order: the symbolizer's lock (a report renders its stacks under it, which allocates), then
//! per registered state the report log (its holder allocates the log's memory, which
//! may take the others), the block table's walk lock (a walk takes the others while it holds
//! it), the quarantine's ring, the guard pool's free list, then the cold table's shards; the
//! stack table's lock last (interning happens under none of the others). Released in the
//! reverse order. Holders never fork, and only the first two allocate (which takes none but
//! later locks of this list), so taking them all in this order cannot wait on ourselves.
//!
//! The child also notes which threads were the parent's: their blocks are no leaks of the
//! child's ([`crate::thread_state::forked_child`]). A thread that was allocating when the fork
//! came may hold its newest block in a register alone, which no memory of the child keeps, so
//! the child's exit-time leak check found it unreachable: a false leak per busy thread.
//!
//! May touch: [`crate::state`], [`crate::block_table`], [`crate::quarantine`],
//! [`crate::guard`], [`crate::stacks`], [`crate::thread_state`].

use core::ptr::null_mut;

use allocscope_core::sync::{AtomicBool, AtomicPtr, Ordering};

use crate::state::{for_each_state, State};

/// Registers the handlers once (the first tracker to start).
pub(crate) fn install() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    // Relaxed: a once-flag. Handlers registered twice would take each lock twice and wait on
    // themselves, so only the thread that flips the flag registers.
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: the three handlers are `extern "C" fn()`s that never unwind.
        unsafe { libc::pthread_atfork(Some(prepare), Some(after), Some(after_in_child)) };
    }
}

fn hold(state: &State) {
    // First: a thread logging a report may still take the others (its Vec's memory).
    state.hold_log_for_fork();
    state.table.hold_for_fork();
    if let Some(q) = &state.quarantine {
        q.hold_for_fork();
    }
    if let Some(pool) = &state.guard {
        pool.hold_for_fork();
    }
}

/// # Safety
/// After `hold(state)` on this thread (or, in the child, on the thread that forked), once.
unsafe fn release(state: &State) {
    // SAFETY: the caller's contract: each lock held through `hold`.
    unsafe {
        if let Some(pool) = &state.guard {
            pool.release_after_fork();
        }
        if let Some(q) = &state.quarantine {
            q.release_after_fork();
        }
        state.table.release_after_fork();
        state.release_log_after_fork();
    }
}

/// Most states held across one fork (more than any program registers: see `state::register`).
const MAX_HELD: usize = 64;

/// The states `prepare` held, for `after` to release exactly those (a state registered or
/// dropped meanwhile by another thread of the parent is neither held nor released).
static HELD: [AtomicPtr<State>; MAX_HELD] = [const { AtomicPtr::new(null_mut()) }; MAX_HELD];

/// Before the fork, in the parent.
extern "C" fn prepare() {
    crate::symbolize::hold_for_fork();
    let mut n = 0;
    for_each_state(|s| {
        if n < MAX_HELD {
            hold(s);
            // Relaxed: read by this same thread in `after` (or by the child's copy of it).
            HELD[n].store(s as *const State as *mut State, Ordering::Relaxed);
            n += 1;
        }
    });
    crate::stacks::hold_for_fork();
}

/// After the fork, in the child: the locks, and which threads are the parent's.
extern "C" fn after_in_child() {
    after();
    crate::thread_state::forked_child();
}

/// After the fork, in the parent (and in the child, first).
extern "C" fn after() {
    // SAFETY: `prepare` took the stack table's lock on this thread (the child's only thread is
    // the one that forked).
    unsafe { crate::stacks::release_after_fork() };
    for slot in HELD.iter().rev() {
        // Relaxed: see `prepare`.
        let p = slot.swap(null_mut(), Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: registered states are leaked (`'static`); `prepare` held this one's
            // locks on this thread.
            unsafe { release(&*p) };
        }
    }
    // SAFETY: `prepare` took it on this thread, first.
    unsafe { crate::symbolize::release_after_fork() };
}

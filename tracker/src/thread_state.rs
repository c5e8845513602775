//! Per-thread state: the re-entrancy flag, the thread's trace id, its sampling countdowns and
//! random generator, its stack-id cache and its event buffer.
//!
//! The flag is what keeps the tracker from tracking itself: while it is set, allocations made on
//! this thread (by the tracker's own code, or by std/crossbeam/backtrace on its behalf) go to
//! the inner allocator as *internal* blocks. It is a `const`-initialised `Cell<bool>` with no
//! destructor, so it is readable at every moment of a thread's life, including while its other
//! thread-locals are being destroyed.
//!
//! The thread's counter slot (which of the block tables' per-thread figures it updates) is
//! here too, in the hot thread-local, so the default path reaches it with the rest.
//!
//! May touch: `std::thread_local`, [`crate::stream`] (to flush the buffer at thread exit).

use core::cell::{Cell, RefCell};

use allocscope_core::sync::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::stream::EventBuffer;

thread_local! {
    static HOT: Hot = const { Hot::new() };
    static LOCAL: Local = const { Local::new() };
}

/// What every allocation and free of the default path reads and writes, in one `const`
/// thread-local without a destructor: reaching it is one thread-pointer-relative address (no
/// lazy registration, no "destroyed?" check), and it stays readable for the whole life of the
/// thread, including while its other thread-locals are destroyed.
pub(crate) struct Hot {
    /// The re-entrancy flag (see the module docs).
    busy: Cell<bool>,
    /// The thread's trace id (0 = not assigned yet: see [`thread_id`]).
    tid: Cell<u32>,
    /// `tid` while the default path may run on this thread — an id assigned, small enough for
    /// a table word ([`FAST_THREAD_LIMIT`]), a counter slot chosen (its own or the shared one),
    /// the flag clear — and 0 otherwise: the default path's one load and test instead of four.
    /// Kept in step with `busy`, `tid` and `slot` by every function here that changes them.
    gate: Cell<u32>,
    /// What `gate` is while the flag is clear (recomputed when `tid` or `slot` changes), so
    /// that entering and leaving the tracker update the gate with a load and a store.
    open: Cell<u32>,
    /// The thread's counter slot in every block table: 0 = not claimed yet, 1 ..
    /// `COUNTER_SLOTS - 1` = owned, [`SHARED_SLOT`] = the shared slot (none was free, or the
    /// thread is exiting).
    slot: Cell<u8>,
    /// Bytes left before the next sampled stack.
    pub(crate) sample_countdown: Cell<i64>,
    /// Allocations left before the next guarded one (0 = draw a new interval).
    pub(crate) guard_countdown: Cell<u32>,
}

/// Thread ids at or above this take the general paths (a table word holds 12 bits of id).
pub(crate) const FAST_THREAD_LIMIT: u32 = 1 << 12;

/// The gate, while the flag is clear, of a thread with id `tid` and counter slot `slot` (see
/// [`Hot::gate`]).
#[inline(always)]
fn open_gate(tid: u32, slot: u8) -> u32 {
    if tid >= FAST_THREAD_LIMIT || slot == 0 {
        0
    } else {
        tid
    }
}

impl Hot {
    const fn new() -> Self {
        Hot {
            busy: Cell::new(false),
            tid: Cell::new(0),
            gate: Cell::new(0),
            open: Cell::new(0),
            slot: Cell::new(0),
            sample_countdown: Cell::new(0),
            guard_countdown: Cell::new(0),
        }
    }

    /// Sets the re-entrancy flag to `busy`, keeping the gate in step.
    #[inline(always)]
    fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
        self.gate.set(if busy { 0 } else { self.open.get() });
    }

    /// Recomputes the gate after `tid` or `slot` changed.
    fn update_gate(&self) {
        self.open.set(open_gate(self.tid.get(), self.slot.get()));
        self.set_busy(self.busy.get());
    }

    /// The thread's id if the default path may run (see [`Hot::gate`]), else 0.
    #[inline(always)]
    pub(crate) fn gate(&self) -> u32 {
        self.gate.get()
    }

    /// The thread's counter slot (claimed at the first call), below `COUNTER_SLOTS`.
    #[inline(always)]
    pub(crate) fn counter_slot(&self) -> usize {
        let s = self.slot.get();
        if s == 0 {
            return claim_slot(self);
        }
        usize::from(s) & (COUNTER_SLOTS - 1)
    }

    /// The thread's counter slot for a caller that saw the gate open (which implies one was
    /// chosen: no claim to try), below `COUNTER_SLOTS`.
    #[inline(always)]
    pub(crate) fn owned_slot(&self) -> usize {
        usize::from(self.slot.get()) & (COUNTER_SLOTS - 1)
    }
}

// -------------------------------------------------------------------------------------------
// Counter slots
// -------------------------------------------------------------------------------------------

/// Counter slots per block table; slot 0 is shared (updated with atomic read-modify-writes),
/// the others are each owned by one running thread, which updates its slot with plain loads
/// and stores.
pub(crate) const COUNTER_SLOTS: usize = 64;
// `Hot::counter_slot` masks slot numbers with COUNTER_SLOTS - 1, and they fit a u8.
const _: () = assert!(COUNTER_SLOTS.is_power_of_two() && COUNTER_SLOTS < 256);

/// [`Hot::slot`]'s value for the shared slot (masks to 0).
const SHARED_SLOT: u8 = COUNTER_SLOTS as u8;

/// Slot i (i >= 1) is owned by a running thread. Process-wide: a thread owns the same slot in
/// every table.
static SLOT_OWNED: [AtomicBool; COUNTER_SLOTS] = [const { AtomicBool::new(false) }; COUNTER_SLOTS];

#[cold]
#[inline(never)]
fn claim_slot(hot: &Hot) -> usize {
    for (i, owned) in SLOT_OWNED.iter().enumerate().skip(1) {
        // Acquire: the previous owner's counter stores happen before ours.
        if owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            hot.slot.set(i as u8);
            hot.update_gate();
            return i;
        }
    }
    hot.slot.set(SHARED_SLOT);
    hot.update_gate();
    0
}

/// The current thread's counter slot (0, the shared one, if it has no hot state left).
#[inline(always)]
pub(crate) fn counter_slot() -> usize {
    // SAFETY: the current thread's hot state, used during this call on this thread.
    hot().map_or(0, |h| unsafe { &*h }.counter_slot())
}

/// Gives the current thread's counter slot back (thread exit); later updates from this thread
/// use the shared slot.
pub(crate) fn release_counter_slot() {
    let _ = HOT.try_with(|h| {
        let i = usize::from(h.slot.replace(SHARED_SLOT)) & (COUNTER_SLOTS - 1);
        h.update_gate();
        if i != 0 {
            // Release: this thread's last counter stores happen before the next owner's.
            SLOT_OWNED[i].store(false, Ordering::Release);
        }
    });
}

/// Runs `f` with the current thread's hot state (`None` only if the platform has no
/// thread-locals left, which a `const` one without destructor never reaches in practice).
#[inline(always)]
pub(crate) fn with_hot<R>(f: impl FnOnce(&Hot) -> R) -> Option<R> {
    // SAFETY: the reference is used only during this call, on this thread.
    hot().map(|h| f(unsafe { &*h }))
}

/// The address of the current thread's hot state, for the default path: only the address is
/// taken inside `try_with`, so that it compiles to one thread-pointer-relative address and the
/// caller's code stays inline (with the caller's code inside `try_with`'s closure, the compiler
/// kept that closure out of line, its captures passed through memory: about 30 instructions
/// per allocation). Dereferencing it is sound on the current thread while that thread runs:
/// `HOT` is a `const` thread-local without destructor, whose storage lives as long as the
/// thread.
#[inline(always)]
pub(crate) fn hot() -> Option<*const Hot> {
    HOT.try_with(|h| h as *const Hot).ok()
}

/// Next thread id to hand out (0 = not assigned yet). Relaxed: ids only need to be unique.
static NEXT_TID: AtomicU32 = AtomicU32::new(1);

/// In a process made by `fork`: thread ids below this one were handed out before the fork,
/// and but for [`FORKER`] their threads are the parent's, which do not run here (0: not
/// forked). Ids are never reused, so an id at or above it is a thread of this process.
/// Relaxed, like [`FORKER`]: both are written by the child's only thread inside `fork`,
/// before it can start another, and read by the leak check of that process.
static FORK_BOUND: AtomicU32 = AtomicU32::new(0);
/// The id of the thread that called `fork` (0: it had none).
static FORKER: AtomicU32 = AtomicU32::new(0);

/// In the child of a `fork`, on its only thread: the threads the parent had are gone.
#[cfg(unix)]
pub(crate) fn forked_child() {
    // Relaxed: see `FORK_BOUND`.
    FORK_BOUND.store(NEXT_TID.load(Ordering::Relaxed), Ordering::Relaxed);
    FORKER.store(
        HOT.try_with(|h| h.tid.get()).unwrap_or(0),
        Ordering::Relaxed,
    );
}

/// Whether thread id `tid` was a thread of the parent process that did not come along into
/// this one at a `fork` (the thread that forked did; 0, an unknown thread, is not judged).
pub(crate) fn left_behind_at_fork(tid: u32) -> bool {
    // Relaxed: see `FORK_BOUND`.
    let bound = FORK_BOUND.load(Ordering::Relaxed);
    tid != 0 && tid < bound && tid != FORKER.load(Ordering::Relaxed)
}

/// Marks the current thread as inside the tracker until dropped.
pub(crate) struct Busy {
    previous: bool,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let previous = self.previous;
        let _ = HOT.try_with(|h| h.set_busy(previous));
    }
}

/// Sets the flag; `None` when it was set already (a nested call from inside the tracker).
#[inline]
pub(crate) fn enter() -> Option<Busy> {
    HOT.try_with(|h| {
        if h.busy.get() {
            None
        } else {
            h.set_busy(true);
            Some(Busy { previous: false })
        }
    })
    .ok()
    .flatten()
}

/// Sets the flag for a caller that saw `hot`'s gate open, which implies the flag is clear (the
/// gate is 0 while it is set): [`enter`] without its test, nor a second look-up of the hot
/// thread-local. `hot` is the current thread's.
#[inline(always)]
pub(crate) fn enter_open(hot: &Hot) -> Busy {
    debug_assert!(
        !hot.busy.get(),
        "the gate is open only while the flag is clear"
    );
    hot.set_busy(true);
    Busy { previous: false }
}

/// Sets the flag whatever its state (exit hooks, signal handlers, the writer thread).
pub(crate) fn enter_always() -> Busy {
    let previous = HOT
        .try_with(|h| {
            let previous = h.busy.get();
            h.set_busy(true);
            previous
        })
        .unwrap_or(true);
    Busy { previous }
}

/// The current thread's trace id (small, assigned at first use, stable for the thread's life).
#[inline]
pub(crate) fn thread_id() -> u32 {
    HOT.try_with(|h| {
        let id = h.tid.get();
        if id != 0 {
            return id;
        }
        // Relaxed: uniqueness is all that is needed.
        let id = NEXT_TID.fetch_add(1, Ordering::Relaxed);
        h.tid.set(id);
        // The default path needs a counter slot chosen: claimed with the id.
        if h.slot.get() == 0 {
            claim_slot(h);
        }
        h.update_gate();
        id
    })
    .unwrap_or(0)
}

/// Entries in the per-thread stack cache (direct mapped by stack hash).
pub(crate) const STACK_CACHE: usize = 256;

/// The rest of a thread's state. `const`-constructible: nothing here allocates until used.
pub(crate) struct Local {
    /// xorshift64* state (0 = not seeded).
    rng: Cell<u64>,
    /// Scratch space for a captured stack (see [`crate::stacks::capture_into`]).
    pub(crate) frames: RefCell<[usize; crate::stacks::MAX_FRAMES]>,
    /// Stack hash -> stack id, to skip the global table for stacks seen before.
    pub(crate) stack_cache: RefCell<[(u64, u32); STACK_CACHE]>,
    /// This thread's bounds for the frame-pointer walk ((0, 0) = not read yet). Read on Linux
    /// only, where the frame-pointer and DWARF walks are (`stacks::stack_bounds`).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) stack_bounds: Cell<(usize, usize)>,
    /// Stacks captured by the default unwinder (which checks one in so many against DWARF).
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    pub(crate) captures: Cell<u32>,
    /// Scratch space for the DWARF walk that checks and teaches the default unwinder.
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    pub(crate) check_frames: RefCell<[usize; crate::stacks::MAX_FRAMES]>,
    /// The default unwinder's last walks, replayed when the stack still holds the same return
    /// addresses at the same places (see [`crate::stacks::RecentWalks`]).
    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    pub(crate) recent_walks: RefCell<crate::stacks::RecentWalks>,
    /// Events waiting to be handed to the writer.
    pub(crate) events: RefCell<Option<EventBuffer>>,
    /// Whether this thread's stack was taken off the dead-stack list.
    registered: Cell<bool>,
}

impl Local {
    pub(crate) const fn new() -> Self {
        Local {
            rng: Cell::new(0),
            frames: RefCell::new([0; crate::stacks::MAX_FRAMES]),
            stack_cache: RefCell::new([(0, 0); STACK_CACHE]),
            stack_bounds: Cell::new((0, 0)),
            captures: Cell::new(0),
            check_frames: RefCell::new([0; crate::stacks::MAX_FRAMES]),
            recent_walks: RefCell::new(crate::stacks::RecentWalks::new()),
            events: RefCell::new(None),
            registered: Cell::new(false),
        }
    }

    /// A uniform random 64-bit value (xorshift64*: fast, good enough for sampling intervals).
    pub(crate) fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in (0, 1].
    pub(crate) fn next_unit(&self) -> f64 {
        ((self.next_random() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Thread exit: the buffer's memory is internal, so free it (and send what it holds)
        // with the flag set.
        let _busy = enter_always();
        release_counter_slot();
        if let Some(buffer) = self.events.get_mut().take() {
            buffer.flush_and_close();
        }
        // Only the part below this frame is dead: above it lie the frames of the thread's exit
        // path and, at the top of the mapping, glibc's thread descriptor and static TLS, which
        // still point to live blocks (the DTV) while glibc caches the stack.
        let marker = 0u8;
        let sp = &marker as *const u8 as usize;
        let (low, high) = crate::stacks::stack_bounds(self);
        if high != 0 && (low..high).contains(&sp) {
            mark_stack(low, sp, true);
        }
    }
}

/// Stacks of threads that exited, from the stack's low end to where the thread's exit path
/// ran (start, end; (0, 0) = free entry). glibc keeps such stacks mapped for reuse, full of
/// stale copies of pointers: the leak check must not take them for roots. A thread that starts on a reused stack takes it off the list at its first allocation.
static DEAD_STACKS: [(AtomicUsize, AtomicUsize); 256] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 256];

/// Adds (`dead`) or removes a stack from [`DEAD_STACKS`].
fn mark_stack(low: usize, high: usize, dead: bool) {
    for (start, end) in &DEAD_STACKS {
        // Relaxed throughout: the list is a hint for the leak check, which tolerates a stale
        // entry (a missed or an extra root), and each entry is claimed by one CAS.
        if dead {
            if start
                .compare_exchange(0, low, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                end.store(high, Ordering::Relaxed);
                return;
            }
        } else if start.load(Ordering::Relaxed) == low {
            end.store(0, Ordering::Relaxed);
            start.store(0, Ordering::Relaxed);
        }
    }
}

/// Calls `f(start, end)` for each stack of an exited thread.
pub(crate) fn for_each_dead_stack(f: &mut dyn FnMut(usize, usize)) {
    for (start, end) in &DEAD_STACKS {
        // Relaxed: see `mark_stack`.
        let (s, e) = (start.load(Ordering::Relaxed), end.load(Ordering::Relaxed));
        if s != 0 && e > s {
            f(s, e);
        }
    }
}

/// Runs `f` with the current thread's state; `None` once the thread's locals are destroyed.
#[inline]
pub(crate) fn with_local<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL
        .try_with(|local| {
            if !local.registered.get() {
                register_thread(local);
            }
            f(local)
        })
        .ok()
}

/// First use on this thread: its stack is alive (it may be a dead thread's, reused).
#[cold]
fn register_thread(local: &Local) {
    local.registered.set(true);
    let (low, high) = crate::stacks::stack_bounds(local);
    if high != 0 {
        mark_stack(low, high, false);
    }
}

/// A seed that differs between threads and runs.
fn seed() -> u64 {
    let here = &seed as *const _ as u64;
    let mut x = monotonic_ns() ^ (u64::from(thread_id()) << 32) ^ here.rotate_left(17);
    x ^= u64::from(std::process::id()).rotate_left(40);
    if x == 0 {
        x = 0x9E37_79B9_7F4A_7C15;
    }
    x
}

/// Nanoseconds of a clock that never goes back (CLOCK_MONOTONIC; no allocation, no lock).
#[cfg(unix)]
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(windows)]
pub(crate) use crate::windows::monotonic_ns;

/// A random 64-bit value for per-process secrets (canary pattern).
pub(crate) fn process_random() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut bytes = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into our buffer.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, libc::GRND_NONBLOCK) };
        if n == 8 {
            return u64::from_le_bytes(bytes) | 1;
        }
    }
    seed() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> u32 {
        // SAFETY: the current thread's hot state, used during this call on this thread.
        hot().map_or(u32::MAX, |h| unsafe { &*h }.gate())
    }

    #[test]
    fn the_gate_is_the_thread_id_only_outside_the_tracker() {
        std::thread::spawn(|| {
            // A fresh thread: no id yet, so the default path is closed.
            assert_eq!(gate(), 0);
            let id = thread_id();
            assert!(id != 0 && id < FAST_THREAD_LIMIT);
            assert_eq!(gate(), id);
            {
                let outer = enter().expect("not nested");
                assert_eq!(gate(), 0);
                assert!(enter().is_none(), "nested");
                {
                    let _always = enter_always();
                    assert_eq!(gate(), 0);
                }
                // Leaving the inner guard restores the outer state: still inside.
                assert_eq!(gate(), 0);
                drop(outer);
            }
            assert_eq!(gate(), id);
            // A thread that stays inside the tracker for good (the writer thread) stays closed.
            core::mem::forget(enter_always());
            assert_eq!(gate(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn counter_slots_are_owned_once_and_given_back_at_exit() {
        let claim = || {
            std::thread::spawn(|| {
                let slot = counter_slot();
                assert_eq!(counter_slot(), slot, "stable");
                release_counter_slot();
                assert_eq!(counter_slot(), 0, "the shared slot after exit");
                slot
            })
            .join()
            .unwrap()
        };
        let first = claim();
        assert!(first < COUNTER_SLOTS);
        // Two threads alive at once never share an owned slot.
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            tx.send(counter_slot()).unwrap();
            go_rx.recv().unwrap();
            release_counter_slot();
        });
        let held = rx.recv().unwrap();
        let other = claim();
        assert!(held == 0 || other == 0 || held != other, "{held} {other}");
        go_tx.send(()).unwrap();
        holder.join().unwrap();
    }
}

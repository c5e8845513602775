//! The type users install: `Tracker<A>`, an instrumented wrapper around any `GlobalAlloc`
//! (the core allocator by default), and the allocation paths through it.
//!
//! Every call first checks the thread's re-entrancy flag. Set: the call comes from the tracker
//! itself (or std/crossbeam/backtrace working for it) and takes the *internal* path — the inner
//! allocator, plus a table entry so the block can later be freed from anywhere. Clear: the
//! program's call takes the *tracked* path:
//!
//! The default path (no red zones, no quarantine, no stream, neither sampled nor guarded, the
//! thread's own block at free) is `allocate_fast` / `deallocate_fast`: one hot thread-local
//! (whose "gate" word stands for the re-entrancy flag, the thread id and its counter slot at
//! once), two countdowns, the inner call, the block's record — its shadow word over the core
//! heap ([`crate::shadow`]), else one table word — at free compared with the layout given in
//! one comparison, so a mismatch takes the general path, which reports it — and the thread's
//! live counters; anything else takes the path below. The figures below are the table's (for
//! the shadow's see `crate::shadow` and the design document). Measured (cachegrind, the overhead
//! bench's table-only row): about 200 instructions per alloc/free pair, core included, against
//! the core's 43 (240 before the gate, the folded layout check and the word built
//! beside the inner call), all inline but the core's allocation; about two more D1 misses per
//! pair than the core's three (the table word at alloc and at free, one word per 8 heap bytes,
//! so rarely in cache), and perf put a third of the tracker's own samples on the instruction
//! after each of those loads.
//!
//! The checked fast paths are the same two with red zones and the quarantine on (and no
//! stream, stacks sampled or off, guard pages for some or none: see `checked_paths`): the fill
//! of the red zones at alloc; at free one table load and store to `QUARANTINED`, the red-zone
//! check, the poison and the quarantine's exchange (`deallocate_checked`). Blocks with a
//! stack, guarded blocks and every bad free take the general path.
//!
//! ```text
//! alloc:   flag -> sample? (byte countdown) -> guard? (1 in N) -> guard slot | inner + red zones
//!          -> table insert -> event
//! free:    flag -> table release (unknown: invalid-free; freed: double-free) -> layout check
//!          -> guard slot free | red-zone check -> quarantine (poison, evict oldest) | inner free
//!          -> event
//! ```
//!
//! Problems found here are reported ([`crate::state::State::raise`]) and the bad call is
//! ignored, so the heap stays sound.
//!
//! May touch: the inner allocator, [`crate::state`], [`crate::thread_state`], the detection
//! modules.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use std::time::Duration;

use allocscope_core::error::{record, AllocErrorKind};
use allocscope_core::sync::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use allocscope_core::Allocscope;

use crate::block_table::{
    flag, prefetch, state as block_state, BlockInfo, PlainWord, Release, PLAIN_SIZE_LIMIT,
};
use crate::canary;
use crate::options::{GuardRate, LeakCheck, Options};
use crate::quarantine::{Held, Quarantine, HELD_ALIGN_LOG2_MAX};
use crate::report::{print_line, Detection, Facts, Report};
use crate::shadow::{self, Found};
use crate::state::{self, State, TrackerStats};
use crate::thread_state::{
    enter, enter_always, enter_open, hot, thread_id, with_local, Hot, Local,
};
use crate::trace_format::{Event, ReportKind};

const UNINIT: u32 = 0;
const INITIALISING: u32 = 1;
const READY: u32 = 2;
const FAILED: u32 = 3;

/// [`Tracker`]'s `checked` when the checked fast paths do not apply.
const CHECKED_OFF: usize = usize::MAX;

/// The canary size for the checked fast paths under `options`, or [`CHECKED_OFF`]. They are the
/// default paths with red zones and the quarantine (ASan-style checking without stacks for
/// every block): they apply when either is on and nothing else that needs the general paths is
/// (an event stream, every allocation sampled or guarded).
fn checked_paths(options: &Options) -> usize {
    let checking = options.canary_bytes != 0 || options.quarantine_bytes != 0;
    if !checking
        || options.streams()
        || options.sample_bytes == 1
        || matches!(options.guard, GuardRate::All)
    {
        return CHECKED_OFF;
    }
    options.canary_bytes
}

/// The instrumented allocator. `Tracker::new()` reads `ALLOCSCOPE_OPTIONS` at the first
/// allocation; [`Tracker::with_options`] takes options built in code.
///
/// ```
/// use allocscope_tracker::{Options, Tracker};
/// use std::alloc::{GlobalAlloc, Layout, System};
///
/// let options = Options::builder().canary_bytes(16).print_reports(false).build().unwrap();
/// let tracker = Tracker::with_options(System, options);
/// let layout = Layout::from_size_align(16, 8).unwrap();
/// unsafe {
///     let p = tracker.alloc(layout);
///     p.add(16).write(0); // one byte too far
///     tracker.dealloc(p, layout);
/// }
/// let reports = tracker.take_reports();
/// assert_eq!(reports[0].kind.as_str(), "heap-buffer-overflow");
/// ```
pub struct Tracker<A: GlobalAlloc = Allocscope> {
    inner: A,
    given: Option<Options>,
    state: AtomicPtr<State>,
    /// The state while it is being finished (its event stream starting), before `state` is
    /// published: blocks the tracker allocates for itself meanwhile are recorded in its table.
    building: AtomicPtr<State>,
    init: AtomicU32,
    /// The red-zone size the checked fast paths use, or [`CHECKED_OFF`] (see
    /// [`checked_paths`]); stored before `state` is published, so whoever sees the state sees
    /// it.
    checked: AtomicUsize,
}

impl Tracker<Allocscope> {
    /// The tracker over the core allocator, configured by `ALLOCSCOPE_OPTIONS`; `const`, for
    /// `#[global_allocator] static A: Tracker = Tracker::new();`.
    pub const fn new() -> Self {
        Self::with_inner(Allocscope::new())
    }
}

impl Default for Tracker<Allocscope> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: GlobalAlloc> Tracker<A> {
    /// The tracker over `inner`, configured by `ALLOCSCOPE_OPTIONS`.
    pub const fn with_inner(inner: A) -> Self {
        Tracker {
            inner,
            given: None,
            state: AtomicPtr::new(null_mut()),
            building: AtomicPtr::new(null_mut()),
            init: AtomicU32::new(UNINIT),
            checked: AtomicUsize::new(CHECKED_OFF),
        }
    }

    /// The tracker over `inner` with options built in code (`ALLOCSCOPE_OPTIONS` is ignored).
    pub fn with_options(inner: A, options: Options) -> Self {
        Tracker {
            inner,
            given: Some(options),
            state: AtomicPtr::new(null_mut()),
            building: AtomicPtr::new(null_mut()),
            init: AtomicU32::new(UNINIT),
            checked: AtomicUsize::new(CHECKED_OFF),
        }
    }

    /// The state if initialised; never initialises (for nested calls).
    #[inline]
    fn ready(&self) -> Option<&'static State> {
        // Acquire: pairs with the Release store in `init_slow`: the state is fully built.
        let p = self.state.load(Ordering::Acquire);
        // SAFETY: a published state is leaked, so valid for 'static.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// The state, initialising it at the first call.
    #[inline]
    fn state(&self) -> Option<&'static State> {
        match self.ready() {
            Some(s) => Some(s),
            None => self.init_slow(),
        }
    }

    #[cold]
    #[inline(never)]
    fn init_slow(&self) -> Option<&'static State> {
        // Acquire on success and failure: see the state published by the winner.
        match self
            .init
            .compare_exchange(UNINIT, INITIALISING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(INITIALISING) => {
                // Another thread is building the state: it does not wait for us, so waiting
                // here cannot deadlock.
                while self.init.load(Ordering::Acquire) == INITIALISING {
                    std::thread::yield_now();
                }
                return self.ready();
            }
            Err(_) => return self.ready(),
        }
        let _busy = enter_always();
        let options = match &self.given {
            Some(o) => Ok(o.clone()),
            None => env_options(),
        };
        let arena_heap = shadow::Shadow::usable_over::<A>() && self.inner_is_arena_heap();
        let built = options.and_then(|o| State::create(o, arena_heap));
        match built {
            Ok(state) => {
                // Relaxed: read only by this thread (its nested, re-entrant allocations) until
                // `state` is published with Release below.
                self.building
                    .store(state as *const State as *mut State, Ordering::Relaxed);
                // Started before publication, so no event of another thread is lost; what it
                // allocates (the writer thread's start-up box, freed by that thread) is
                // recorded through `building` as the tracker's own.
                let started = state.start_stream();
                state::register(state);
                // Relaxed: published with the state by the Release store below.
                self.checked
                    .store(checked_paths(&state.options), Ordering::Relaxed);
                // Release: publishes the built state (pairs with the Acquire in `ready`).
                self.state
                    .store(state as *const State as *mut State, Ordering::Release);
                self.init.store(READY, Ordering::Release);
                if let Err(message) = started {
                    print_line(&format!("allocscope: {message}"));
                    if self.given.is_none() {
                        std::process::abort();
                    }
                }
                Some(state)
            }
            Err(message) => {
                print_line(&format!("allocscope: {message}"));
                if self.given.is_none() {
                    // A mistyped ALLOCSCOPE_OPTIONS must not go unnoticed (as ASan does).
                    std::process::abort();
                }
                self.init.store(FAILED, Ordering::Release);
                None
            }
        }
    }

    /// Whether the inner allocator hands out the core heap's arena blocks (so that the default
    /// path may record its blocks in shadow words, see [`crate::shadow`]): one block asked for
    /// and given back at initialisation.
    fn inner_is_arena_heap(&self) -> bool {
        // SAFETY: a valid, non-zero layout.
        let layout = unsafe { Layout::from_size_align_unchecked(64, 16) };
        // SAFETY: as above.
        let p = unsafe { self.inner.alloc(layout) };
        if p.is_null() {
            return false;
        }
        let q = p as usize + shadow::HEADER;
        let yes = q % shadow::GRANULE == 0 && allocscope_core::heap::in_arena(q);
        // SAFETY: just allocated with this layout.
        unsafe { self.inner.dealloc(p, layout) };
        yes
    }

    // -----------------------------------------------------------------------------------------
    // Allocation
    // -----------------------------------------------------------------------------------------

    /// Allocates `size` bytes aligned to `align` (a power of two); null when out of memory.
    #[inline(always)]
    pub fn allocate(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        if !align.is_power_of_two() {
            record(AllocErrorKind::InvalidRequest);
            return null_mut();
        }
        self.allocate_pow2(size, align, zeroed)
    }

    /// [`Tracker::allocate`] for an alignment known to be a power of two (a `Layout`'s).
    #[inline(always)]
    fn allocate_pow2(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        match self.allocate_fast(size, align, zeroed) {
            Some(p) => p,
            None => self.allocate_checked(size, align, zeroed),
        }
    }

    /// The default path (fast path; falls back to `allocate_slow`): the program's allocation
    /// that is neither sampled nor guarded, with no event stream, of a size a table word holds
    /// and an alignment of at most a page. Two countdown decrements, the inner allocation and
    /// one table store; with red zones (the checked fast path, see [`checked_paths`]) their
    /// fill too. `None` when anything else applies, having changed nothing. `align` is a power
    /// of two.
    ///
    /// The re-entrancy flag is only read (through the thread's gate), not set: nothing below
    /// calls back into the allocator (the inner allocator does not; the table maps its memory
    /// from the OS).
    #[inline(always)]
    fn allocate_fast(&self, size: usize, align: usize, zeroed: bool) -> Option<*mut u8> {
        let state = self.ready()?;
        if !state.fast.alloc {
            return None;
        }
        self.allocate_short::<false>(state, 0, size, align, zeroed)
    }

    /// Where `allocate_fast` falls back to (fast path; falls back to `allocate_slow`): the
    /// checked fast path's allocation (see [`checked_paths`]), `allocate_fast` with red zones.
    /// Out of line and reached only when the default path declined, so that path stays as
    /// short as it was (calling this from `allocate_fast` cost it six instructions per pair,
    /// and from the start of `allocate_slow` cost the checked path ~60: cachegrind, the
    /// overhead bench).
    /// Also where the default path's allocation whose sample fired is served
    /// (`allocate_sampled`).
    #[inline(never)]
    fn allocate_checked(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        if let Some(state) = self.ready() {
            if state.fast.alloc {
                if let Some(p) = self.allocate_sampled(state, size, align, zeroed) {
                    return p;
                }
            }
            // Relaxed: stored before the state was published (see `checked`).
            let canary = self.checked.load(Ordering::Relaxed);
            if !state.fast.alloc && canary != CHECKED_OFF {
                if let Some(p) = self.allocate_short::<true>(state, canary, size, align, zeroed) {
                    return p;
                }
            }
        }
        self.allocate_slow(size, align, zeroed)
    }

    /// The body of `allocate_fast` (`ZONES = false`, `canary` 0) and `allocate_checked`
    /// (`ZONES`: `canary` bytes of red zone after the block, and the left zone before it;
    /// `canary` is not 0 there, as the default path serves allocations without red zones).
    #[inline(always)]
    fn allocate_short<const ZONES: bool>(
        &self,
        state: &'static State,
        canary: usize,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> Option<*mut u8> {
        let fast = &state.fast;
        if size >= PLAIN_SIZE_LIMIT || align > fast.max_align {
            return None;
        }
        let hot = hot()?;
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot = unsafe { &*hot };
        // Non-zero: an id a table word holds, a counter slot of the thread's own, and the flag
        // clear (not a nested call).
        let tid = hot.gate();
        let left = hot.sample_countdown.get() - size as i64;
        // `align` is at most a page, the guard pool's limit (`FastPath::max_align`).
        let counts_guard = size < fast.guard_below;
        let guard_left = hot.guard_countdown.get();
        // A sample that fires is `allocate_checked`'s (`allocate_sampled`): reached from the one
        // call site every declined allocation uses, so that a sampled block's stack is the same
        // whichever path took it (the paths are inlined into the `GlobalAlloc` method or C
        // entry point, never into the program's function: the return address into that is the
        // stack's first frame).
        if tid == 0 || (fast.sample && left <= 0) || (counts_guard && guard_left <= 1) {
            return None;
        }
        if fast.sample {
            hot.sample_countdown.set(left);
        }
        if counts_guard {
            hot.guard_countdown.set(guard_left - 1);
        }
        if !ZONES && align <= shadow::MAX_ALIGN && size < shadow::SIZE_LIMIT {
            if let Some(shadow) = &fast.shadow {
                return self.allocate_shadowed(shadow, tid, size, align, zeroed);
            }
        }
        self.allocate_in_table::<ZONES>(state, hot, tid, canary, size, align, zeroed)
    }

    /// The default path's allocation whose sample fired (`allocate_short` declined it): a
    /// shadow block with the stack in its header — the stack captured with the re-entrancy flag
    /// set (the unwinder may allocate), the countdowns taken as `allocate_short` takes them.
    /// `None` when anything else applies (the fast path declined for another reason, a nested
    /// call, no thread state, a block the shadow does not serve), the countdowns then as they
    /// were for the general path, which decides.
    #[inline(always)]
    fn allocate_sampled(
        &self,
        state: &'static State,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> Option<*mut u8> {
        let fast = &state.fast;
        let shadow = fast.shadow.as_ref()?;
        if !fast.sample || align > shadow::MAX_ALIGN || size >= shadow::SIZE_LIMIT {
            return None;
        }
        let hot = hot()?;
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot = unsafe { &*hot };
        let tid = hot.gate();
        let counts_guard = size < fast.guard_below;
        let guard_left = hot.guard_countdown.get();
        let fired = hot.sample_countdown.get() - size as i64 <= 0;
        if tid == 0 || !fired || (counts_guard && guard_left <= 1) {
            return None;
        }
        // The gate is open, so the flag is clear: set it without testing it again.
        let busy = enter_open(hot);
        let p = with_local(|local| {
            let local = Some(local);
            // The countdown fired, so this draws the next interval and says yes.
            if !state.should_sample(local, size) {
                return None;
            }
            let stack = state.stack_here(local);
            let p = self.alloc_shadowed_tracked(state, shadow, tid, size, align, zeroed, stack);
            if p.is_none() {
                // The sample passes to the general path's allocation.
                state.rearm_sample();
            }
            p
        })
        .flatten();
        drop(busy);
        if p.is_some() && counts_guard {
            hot.guard_countdown.set(guard_left - 1);
        }
        p
    }

    /// The rest of `allocate_short` for a block the table records (no shadow, or a block it
    /// does not serve): out of line, so that the shadow's path, the default one, carries none
    /// of its code (nor the registers it needs). `hot`, `tid`: the thread's, its countdowns
    /// already taken.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn allocate_in_table<const ZONES: bool>(
        &self,
        state: &'static State,
        hot: &Hot,
        tid: u32,
        canary: usize,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> Option<*mut u8> {
        let mut w = PlainWord::new(size, align.trailing_zeros() as u8, tid);
        // Red zones: `left` bytes before the block, `right` after.
        let (left, right) = if ZONES {
            debug_assert!(canary != 0);
            w = w.with_canary();
            (canary::left_zone(canary, align), canary)
        } else {
            (0, 0)
        };
        // SAFETY: 0 < left + size + right < 2^24 + 3 pages (a canary is at most 4096 bytes,
        // `left` at most a page more) and `align` is a power of two of at most a page, so the
        // layout is valid.
        let layout =
            unsafe { Layout::from_size_align_unchecked((left + size + right).max(1), align) };
        // SAFETY: the layout's size is not zero.
        let base = unsafe { self.inner_alloc_layout(layout, zeroed) };
        if base.is_null() {
            return Some(base);
        }
        let p = base.wrapping_add(left);
        if ZONES {
            // SAFETY: both red zones lie inside the block just allocated.
            unsafe {
                canary::fill(base as usize, left);
                canary::fill(p as usize + size, right);
            }
        }
        if !state.table.insert_owned(p as usize, w, hot.owned_slot()) {
            return Some(self.insert_general(state, p, w));
        }
        if state.fast.core_heap {
            // The next allocation of this size is most likely handed the core's next block,
            // whose table word is far out of cache (the core reuses a page's blocks in the
            // order they were freed, long ago when a quarantine holds them): start loading it
            // now, as the core does the block itself, so the next insert does not wait for it.
            let next = allocscope_core::heap::next_block(layout.size(), align);
            if !next.is_null() {
                state.table.prefetch(next as usize + left);
            }
        }
        Some(p)
    }

    /// The default path's allocation recorded in the shadow ([`crate::shadow`]): 16 more
    /// bytes from the inner allocator, aligned to 16, the header written in front of the block
    /// and its state byte. `align` is a power of two of at most 16, `size` below the shadow's
    /// limit, `tid` the thread's open gate. Always `Some`: the block, or null when out of
    /// memory.
    ///
    /// Inline, it takes the core heap's fast path alone (the shadow is on only over the core
    /// heap, `Shadow::usable_over`) and a state byte already mapped; everything else is
    /// [`Tracker::allocate_shadowed_rest`]'s, called last. So the default path makes no call
    /// but that one, whose result it returns: with a call whose result it went on using (the
    /// core's slow path, the shadow's mapping of an arena's bytes) the compiler saved and
    /// restored seven registers around all of it, 14 of its ~100 instructions (callgrind).
    #[inline(always)]
    fn allocate_shadowed(
        &self,
        shadow: &shadow::Shadow,
        tid: u32,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> Option<*mut u8> {
        let layout = shadow_layout(size);
        let base = if zeroed {
            null_mut()
        } else {
            allocscope_core::heap::alloc_fast(layout.size(), layout.align())
        };
        if !base.is_null() {
            let p = base.wrapping_add(shadow::HEADER);
            if let Some(slot) = shadow.slot(p as usize) {
                let align_log2 = align.trailing_zeros() as u8;
                let byte = shadow::live_byte(size, align_log2);
                slot.write(byte, shadow::header_word(size, align_log2, tid, 0));
                return Some(p);
            }
        }
        // Six arguments, all in registers: the call can be the path's last instruction.
        Some(self.allocate_shadowed_rest(tid, base, size, align, zeroed))
    }

    /// [`Tracker::allocate_shadowed`]'s other cases: `base` null (the core's fast path had no
    /// block, or a zeroed block is asked for) or a block whose arena has no state bytes
    /// mapped yet. A block that has no state byte at all (not in an arena, or the bytes could
    /// not be mapped) is given back and the allocation goes to `allocate_checked`, where every
    /// allocation the default path declines goes (the table records it there).
    #[inline(never)]
    fn allocate_shadowed_rest(
        &self,
        tid: u32,
        base: *mut u8,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> *mut u8 {
        // The default path's caller found the shadow on: it stays on for the state's life.
        let Some(shadow) = self.ready().and_then(|state| state.fast.shadow.as_ref()) else {
            // SAFETY: a non-null `base` came from the core heap (`alloc_fast`) just now.
            unsafe { allocscope_core::heap::free(base) };
            return self.allocate_checked(size, align, zeroed);
        };
        let align_log2 = align.trailing_zeros() as u8;
        let block = if base.is_null() {
            self.shadow_block(shadow, size, zeroed)
        } else {
            let p = base.wrapping_add(shadow::HEADER);
            match shadow.slot_for_new(p as usize) {
                Some(slot) => Some(Some((p, slot))),
                None => {
                    // SAFETY: `base` came from the core heap (`alloc_fast`) just now.
                    unsafe { allocscope_core::heap::free(base) };
                    None
                }
            }
        };
        match block {
            Some(Some((p, slot))) => {
                let byte = shadow::live_byte(size, align_log2);
                slot.write(byte, shadow::header_word(size, align_log2, tid, 0));
                p
            }
            Some(None) => null_mut(),
            None => self.allocate_checked(size, align, zeroed),
        }
    }

    /// The inner allocation of a shadow block of `size` bytes (below the shadow's limit) and
    /// its slot, for the caller to write: `None` when the block has no state byte (given back:
    /// the table records the block instead), `Some(None)` when out of memory.
    #[inline(always)]
    fn shadow_block(
        &self,
        shadow: &shadow::Shadow,
        size: usize,
        zeroed: bool,
    ) -> Option<Option<(*mut u8, shadow::Slot)>> {
        let layout = shadow_layout(size);
        // SAFETY: the layout's size is not zero.
        let base = unsafe { self.inner_alloc_layout(layout, zeroed) };
        if base.is_null() {
            return Some(None);
        }
        let p = base.wrapping_add(shadow::HEADER);
        let Some(slot) = shadow.slot_for_new(p as usize) else {
            // SAFETY: just allocated with this layout.
            unsafe { self.inner.dealloc(base, layout) };
            return None;
        };
        Some(Some((p, slot)))
    }

    /// The default path's block when the table's short insert declined it (a stale word to
    /// clean up, a field too large for the word): the general insert. Returns `p`, or null
    /// (the block given back) when there is no room to record it.
    #[cold]
    #[inline(never)]
    fn insert_general(&self, state: &'static State, p: *mut u8, w: PlainWord) -> *mut u8 {
        let info = w.info();
        if !state.table.insert(p as usize, info) {
            // No room to record it: better out of memory than an untracked block.
            self.release_memory(state, p as usize, &info);
            record(AllocErrorKind::OutOfMemory);
            return null_mut();
        }
        p
    }

    #[inline(never)]
    fn allocate_slow(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        // `align` is a power of two (`allocate_pow2`).
        let Some(busy) = enter() else {
            return self.alloc_internal(size, align, zeroed);
        };
        let Some(state) = self.state() else {
            drop(busy);
            return self.inner_alloc(size.max(1), align, zeroed);
        };
        let p = match with_local(|local| {
            self.alloc_tracked(state, Some(local), size, align, zeroed, true)
        }) {
            Some(p) => p,
            None => self.alloc_tracked(state, None, size, align, zeroed, true),
        };
        drop(busy);
        p
    }

    /// The inner allocator's `alloc` or `alloc_zeroed` of `layout`.
    ///
    /// # Safety
    /// `layout`'s size is not zero.
    #[inline(always)]
    unsafe fn inner_alloc_layout(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        }
    }

    #[inline(always)]
    fn inner_alloc(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(size, align) else {
            // More than the address space holds (`align` is a power of two): C's ENOMEM.
            record(AllocErrorKind::OutOfMemory);
            return null_mut();
        };
        // SAFETY: size >= 1 (callers pass a non-zero size), and the layout is valid.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        }
    }

    /// A block for the tracker's own use (re-entrant call).
    fn alloc_internal(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        let size = size.max(1);
        let p = self.inner_alloc(size, align, zeroed);
        if !p.is_null() {
            // Relaxed `building`: only the initialising thread allocates re-entrantly before
            // the state is published, and it stored the pointer itself.
            let building = self.building.load(Ordering::Relaxed);
            // SAFETY: a state, once built, is leaked: valid for 'static.
            let state = self
                .ready()
                .or_else(|| (!building.is_null()).then(|| unsafe { &*building }));
            if let Some(state) = state {
                let info = BlockInfo {
                    size,
                    align_log2: align.trailing_zeros() as u8,
                    state: block_state::LIVE,
                    flags: flag::INTERNAL,
                    ..Default::default()
                };
                state.table.insert(p as usize, info);
            }
        }
        p
    }

    fn alloc_tracked(
        &self,
        state: &'static State,
        local: Option<&Local>,
        size: usize,
        align: usize,
        zeroed: bool,
        emit: bool,
    ) -> *mut u8 {
        let tid = thread_id();
        let sampled = state.should_sample(local, size);
        let guarded = state.should_guard(local, size, align);
        let stack = if sampled || guarded {
            state.stack_here(local)
        } else {
            0
        };
        let align_log2 = align.trailing_zeros() as u8;
        let mut info = BlockInfo {
            size,
            align_log2,
            state: block_state::LIVE,
            flags: 0,
            alloc_stack: stack,
            alloc_thread: tid,
            ..Default::default()
        };
        let mut ptr = 0;
        if guarded {
            if let Some(pool) = &state.guard {
                let random = local.map_or(1.0, Local::next_unit);
                if let Some(p) = pool.allocate(size, align, random, stack, tid) {
                    if zeroed {
                        // SAFETY: the slot's block is `size` writable bytes.
                        unsafe { core::ptr::write_bytes(p as *mut u8, 0, size) };
                    }
                    info.flags = flag::GUARDED;
                    ptr = p;
                }
            }
        }
        // A resize's new block (`emit` false) past the medium classes is the table's: the core
        // grows such a block in place as a large block of its own mapping, which a shadow block
        // cannot follow (as a shadow block, every further growth would move it again: growing
        // a buffer a byte at a time from 64 KiB to 512 KiB was quadratic).
        let shadow_serves =
            emit || size <= allocscope_core::size_class::MEDIUM_MAX - shadow::HEADER;
        if ptr == 0 && shadow_serves {
            let shadowed = state.fast.shadow.as_ref().and_then(|shadow| {
                self.alloc_shadowed_tracked(state, shadow, tid, size, align, zeroed, stack)
            });
            if let Some(p) = shadowed {
                if p.is_null() {
                    return p;
                }
                info.flags = flag::IN_SHADOW;
                ptr = p as usize;
            }
        }
        if ptr == 0 {
            let canary = state.options.canary_bytes;
            let left = canary::left_zone(canary, align);
            let Some(total) = left.checked_add(size).and_then(|t| t.checked_add(canary)) else {
                record(AllocErrorKind::OutOfMemory);
                return null_mut();
            };
            let base = self.inner_alloc(total.max(1), align, zeroed);
            if base.is_null() {
                return null_mut();
            }
            ptr = base as usize + left;
            if canary > 0 {
                info.flags = flag::CANARY;
                let filled = canary::left_filled(canary, align);
                // SAFETY: both red zones lie inside the `total` bytes just allocated (`filled`
                // is at most `left`).
                unsafe {
                    canary::fill(ptr - filled, filled);
                    canary::fill(ptr + size, canary);
                }
            }
        }
        // The default path's block (no flags, no stack) mostly takes the table's short insert.
        let plain =
            info.flags == 0 && stack == 0 && state.table.insert_plain(ptr, size, align_log2, tid);
        let recorded = plain || info.flags == flag::IN_SHADOW;
        if !recorded && !state.table.insert(ptr, info) {
            // No room to record it: better out of memory than an untracked block.
            self.release_memory(state, ptr, &info);
            record(AllocErrorKind::OutOfMemory);
            return null_mut();
        }
        if emit {
            if let Some(stream) = state.stream() {
                let event = Event::Alloc {
                    time_ns: stream.now(),
                    addr: ptr as u64,
                    size: size as u64,
                    align: align as u64,
                    stack,
                };
                stream.record(local, event);
            }
        }
        ptr as *mut u8
    }

    /// A shadow block with allocation stack `stack` (0: none) in its header, for the general
    /// path (`alloc_tracked`, a block neither guarded nor red-zoned) and the sampled short path.
    /// `None` when the shadow does not serve it (a layout, thread or stack id it cannot hold,
    /// no state byte for the block), having changed nothing; null when out of memory. The byte
    /// is [`shadow`]'s `SAMPLED` when the free is to record its stack, else the layout's.
    /// Inlined into both: the sampled short path has made most of its checks already.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn alloc_shadowed_tracked(
        &self,
        state: &'static State,
        shadow: &shadow::Shadow,
        tid: u32,
        size: usize,
        align: usize,
        zeroed: bool,
        stack: u32,
    ) -> Option<*mut u8> {
        if align > shadow::MAX_ALIGN
            || size >= shadow::SIZE_LIMIT
            || tid == 0
            || tid >= crate::thread_state::FAST_THREAD_LIMIT
            || stack >= shadow::STACK_LIMIT
        {
            return None;
        }
        let Some((p, slot)) = self.shadow_block(shadow, size, zeroed)? else {
            return Some(null_mut());
        };
        let align_log2 = align.trailing_zeros() as u8;
        let word = shadow::header_word(size, align_log2, tid, stack);
        if stack != 0 && state.options.free_stacks {
            slot.write_sampled(word);
        } else {
            slot.write(shadow::live_byte(size, align_log2), word);
        }
        if !state.fast.alloc {
            state.table.count_shadowed(size, 1);
        }
        Some(p)
    }

    /// Gives a block's memory back to where it came from (guard slot or inner allocator).
    fn release_memory(&self, state: &State, ptr: usize, info: &BlockInfo) {
        if info.flags & flag::GUARDED != 0 {
            if let Some(pool) = &state.guard {
                pool.free(ptr, info.free_stack, info.free_thread);
            }
            return;
        }
        if info.flags & flag::IN_SHADOW != 0 {
            // SAFETY: a shadow block came from the inner allocator with exactly this layout
            // (`allocate_shadowed`), 16 bytes before `ptr`, and is freed once: its byte moved
            // out of LIVE before we got here.
            unsafe {
                self.inner
                    .dealloc((ptr - shadow::HEADER) as *mut u8, shadow_layout(info.size))
            };
            return;
        }
        let (base, total) = if info.flags & flag::CANARY != 0 {
            let canary = state.options.canary_bytes;
            let left = canary::left_zone(canary, info.align());
            (ptr - left, left + info.size + canary)
        } else {
            (ptr, info.size)
        };
        // SAFETY: `base` was returned by the inner allocator with exactly this size (at least
        // 1) and alignment (see `alloc_tracked` / `alloc_internal`), and is freed once: the table
        // entry moved out of LIVE before we got here.
        unsafe {
            let layout = Layout::from_size_align_unchecked(total.max(1), info.align());
            self.inner.dealloc(base as *mut u8, layout);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Free
    // -----------------------------------------------------------------------------------------

    /// Frees `ptr`. `layout` is the size and alignment the caller believes the block has
    /// (Rust's `dealloc`), checked against the allocation's; `None` for C's `free`. A bad
    /// pointer is reported and ignored.
    ///
    /// # Safety
    /// Nothing may use the block after this call (if it is a valid block of this tracker).
    /// Invalid and double frees are detected, but an arbitrary pointer that happens to equal
    /// another live block's address frees that block.
    #[inline(always)]
    pub unsafe fn deallocate(&self, ptr: *mut u8, layout: Option<(usize, usize)>) {
        match layout {
            Some((size, align)) if align.is_power_of_two() => {
                self.deallocate_given(ptr, Given { size, align })
            }
            // An alignment that is no power of two cannot be the block's: the general path
            // reports the mismatch.
            Some((size, align)) if !ptr.is_null() => {
                self.deallocate_slow(ptr, Given { size, align })
            }
            Some(_) => {}
            None => self.deallocate_given(ptr, Given::NONE),
        }
    }

    /// [`Tracker::deallocate`] with the caller's layout as a [`Given`] whose alignment, if
    /// any, is a power of two (a `Layout`'s). Same contract.
    #[inline(always)]
    fn deallocate_given(&self, ptr: *mut u8, given: Given) {
        if ptr.is_null() || self.deallocate_fast(ptr, given) {
            return;
        }
        self.deallocate_checked(ptr, given);
    }

    /// The default path's free (fast path; falls back to `deallocate_slow`): a plain block
    /// freed by the thread that allocated it, with the layout it was allocated with (or none
    /// given), no quarantine and no event stream; one table load and store (see
    /// `BlockTable::release_with`'s owner path for why no locked instruction is needed) and the
    /// inner free. The layout check is part of the table word's comparison, so a mismatch, like
    /// every double and invalid free, takes the general path, which reports it. `false` when
    /// anything else applies, having changed nothing.
    #[inline(always)]
    fn deallocate_fast(&self, ptr: *mut u8, given: Given) -> bool {
        let Some(state) = self.ready() else {
            return false;
        };
        if !state.fast.free {
            return false;
        }
        let Some(hot) = hot() else {
            return false;
        };
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot = unsafe { &*hot };
        // Non-zero: an id a table word holds, a counter slot of the thread's own, and the flag
        // clear (not a nested call).
        let tid = hot.gate();
        if tid == 0 {
            return false;
        }
        if let Some(shadow) = &state.fast.shadow {
            // A power of two or none (`deallocate_given`'s contract).
            let expect = (given.align != 0)
                .then(|| shadow::live_byte(given.size, given.align.trailing_zeros() as u8));
            let Some(slot) = shadow.slot(ptr as usize) else {
                return false;
            };
            // SAFETY: `ptr` has a slot, so it is in an arena.
            if !unsafe { allocscope_core::heap::owned_here(ptr) } {
                return false;
            }
            if !slot.release_owned(expect) {
                return false;
            }
            // SAFETY: a shadow block came from the core heap itself, 16 bytes before `ptr` (the
            // shadow is on only over it, `Shadow::usable_over`), whose `dealloc` is
            // `heap::free` and needs no layout; the release above moved it out of LIVE, so it
            // is freed once.
            unsafe { allocscope_core::heap::free(ptr.wrapping_sub(shadow::HEADER)) };
            return true;
        }
        self.deallocate_in_table(state, ptr, given);
        true
    }

    /// The rest of `deallocate_fast` for a block the table records (no shadow), and
    /// `deallocate_checked` when the table's path declines: out of line, so that the shadow's
    /// path carries none of its code, and called last, so that it makes no call whose result
    /// it goes on using (that cost the shadow's path four register saves and a stack frame).
    /// `given` is the layout given; the caller found the thread's gate open. (Five arguments,
    /// all in registers: the thread's state is looked up again rather than passed.)
    #[inline(never)]
    fn deallocate_in_table(&self, state: &'static State, ptr: *mut u8, given: Given) {
        let Some(hot) = hot() else {
            return self.deallocate_checked(ptr, given);
        };
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot = unsafe { &*hot };
        // Open, as the caller found it (nothing ran in between); checked all the same.
        let tid = hot.gate();
        if tid == 0 {
            return self.deallocate_checked(ptr, given);
        }
        // A power of two or none (`deallocate_given`'s contract).
        let expect = (given.align != 0).then(|| (given.size, given.align.trailing_zeros() as u8));
        // No prefetch of the block here: the core heap's free only stores into it (its free-list
        // link), which waits in the store buffer instead of stalling; the prefetch cost more
        // than it saved (the overhead bench's table-only row, 16.9 -> 16.2 ns per pair).
        let Some((size, align_log2)) =
            state
                .table
                .release_owned(ptr as usize, tid, hot.owned_slot(), expect, 0, 0)
        else {
            return self.deallocate_checked(ptr, given);
        };
        // SAFETY: a plain block came from the inner allocator with exactly (size.max(1),
        // align) (`allocate_fast`, `alloc_tracked`); the release above moved it out of
        // LIVE on this thread, so it is freed once.
        unsafe {
            self.inner.dealloc(
                ptr,
                Layout::from_size_align_unchecked(size.max(1), 1 << align_log2),
            )
        };
    }

    /// The checked fast path's free (`deallocate_checked` falls back to `deallocate_slow`):
    /// as `deallocate_fast`,
    /// for a block with red zones or a quarantine on (see [`checked_paths`]): one table load
    /// and store (to `QUARANTINED` for a block the quarantine holds), the red-zone check, then
    /// the quarantine (poison, evictions) or the inner free. Damage is reported as on the
    /// general path. `false` when anything else applies, having changed nothing.
    #[inline(always)]
    fn deallocate_checked_short(&self, state: &'static State, ptr: *mut u8, given: Given) -> bool {
        let canary = if state.fast.alloc {
            0
        } else {
            // Relaxed: stored before the state was published (see `checked`).
            match self.checked.load(Ordering::Relaxed) {
                CHECKED_OFF => return false,
                c => c,
            }
        };
        let Some(hot) = hot() else {
            return false;
        };
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot: &Hot = unsafe { &*hot };
        // Non-zero: an id a table word holds, a counter slot of its own, the flag clear.
        let tid = hot.gate();
        if tid == 0 {
            return false;
        }
        // The red zones are read next, and the block poisoned: start loading its first line,
        // the left zone's and (with a layout given) the right zone's, so that those misses
        // overlap with the table word's instead of following it.
        let addr = ptr as usize;
        prefetch(addr.wrapping_sub(canary));
        prefetch(addr);
        prefetch(addr.wrapping_add(given.size));
        let quarantine = state.quarantine.as_ref();
        let expect = (given.align != 0).then(|| (given.size, given.align.trailing_zeros() as u8));
        let flags = if canary != 0 { flag::CANARY } else { 0 };
        let hold_below = quarantine.map_or(0, Quarantine::hold_below);
        let Some((size, align_log2)) = state.table.release_owned(
            ptr as usize,
            tid,
            hot.owned_slot(),
            expect,
            flags,
            hold_below,
        ) else {
            return false;
        };
        let info = BlockInfo {
            size,
            align_log2,
            state: block_state::LIVE,
            flags,
            alloc_thread: tid,
            ..Default::default()
        };
        let ptr = ptr as usize;
        // SAFETY: the block was live until the release above, which this thread made; its
        // memory is still ours.
        if let Some((kind, addr)) = unsafe { state.canary_damage(ptr, &info) } {
            let facts = state.facts_for(kind, Detection::Free, addr, ptr, &info);
            Reporter::Fast.raise(state, facts);
        }
        match quarantine {
            Some(q) if size < hold_below && align_log2 <= HELD_ALIGN_LOG2_MAX => {
                self.hold(state, Reporter::Fast, q, ptr, &info)
            }
            _ => self.release_memory(state, ptr, &info),
        }
        true
    }

    /// Where `deallocate_fast` falls back to: `deallocate_checked_short` when the checked
    /// paths apply, else (or when it declines) `deallocate_slow`. Out of line, for the same
    /// reason as `allocate_checked`.
    /// Also where the default path's free of a sampled shadow block is served
    /// (`deallocate_sampled`).
    #[inline(never)]
    fn deallocate_checked(&self, ptr: *mut u8, given: Given) {
        if let Some(state) = self.ready() {
            if state.fast.free {
                if self.deallocate_sampled(state, ptr, given) {
                    return;
                }
            } else if self.deallocate_checked_short(state, ptr, given) {
                return;
            }
        }
        self.deallocate_slow(ptr, given);
    }

    /// The default path's free of a sampled shadow block whose free records its stack (its
    /// byte `SAMPLED`), by the thread whose heap owns it, with the layout it was allocated with
    /// (compared exactly: the header is read) or none: the stack captured with the re-entrancy
    /// flag set, the byte and stacks written as the general path writes them, the core's free.
    /// `false` when anything else applies, having changed nothing.
    #[inline(always)]
    fn deallocate_sampled(&self, state: &'static State, ptr: *mut u8, given: Given) -> bool {
        let Some(shadow) = &state.fast.shadow else {
            return false;
        };
        let Some(slot) = shadow.slot(ptr as usize) else {
            return false;
        };
        let Some(info) = slot.find_sampled() else {
            return false;
        };
        // SAFETY: `ptr` has a slot, so it is in an arena.
        if !unsafe { allocscope_core::heap::owned_here(ptr) } {
            return false;
        }
        if let Some((size, align)) = given.layout() {
            if size != info.size || align != info.align() {
                return false;
            }
        }
        let Some(hot) = hot() else {
            return false;
        };
        // SAFETY: the current thread's hot state, used during this call on this thread.
        let hot = unsafe { &*hot };
        if hot.gate() == 0 {
            return false;
        }
        // The gate is open, so the flag is clear (as in `allocate_sampled`).
        let busy = enter_open(hot);
        let Some(stack) = with_local(|local| state.stack_here(Some(local))) else {
            return false;
        };
        slot.release_sampled_owned(info.alloc_stack, stack);
        drop(busy);
        // SAFETY: a shadow block came from the core heap itself, 16 bytes before `ptr` (see
        // `deallocate_fast`); the store above moved it out of SAMPLED on its owner's thread, so
        // it is freed once.
        unsafe { allocscope_core::heap::free(ptr.wrapping_sub(shadow::HEADER)) };
        true
    }

    /// The rest of [`Tracker::deallocate`] (whose contract the caller keeps). `given` in
    /// registers, not an `Option` in memory, so the default path reaches this by a jump.
    #[inline(never)]
    fn deallocate_slow(&self, ptr: *mut u8, given: Given) {
        let layout = given.layout();
        let Some(busy) = enter() else {
            self.free_nested(ptr as usize, layout);
            return;
        };
        let Some(state) = self.state() else {
            drop(busy);
            self.free_untracked(ptr as usize, layout);
            return;
        };
        if with_local(|local| {
            self.free_tracked(
                state,
                Some(local),
                ptr as usize,
                layout,
                Detection::Free,
                true,
            )
        })
        .is_none()
        {
            self.free_tracked(state, None, ptr as usize, layout, Detection::Free, true);
        }
        drop(busy);
    }

    fn free_untracked(&self, ptr: usize, layout: Option<(usize, usize)>) {
        let (size, align) = layout.unwrap_or((1, 1));
        // SAFETY: with no state there is no tracking: the block came straight from the inner
        // allocator; C callers give no layout, which the core allocator does not need.
        unsafe {
            self.inner.dealloc(
                ptr as *mut u8,
                Layout::from_size_align_unchecked(size.max(1), align),
            )
        }
    }

    /// A free from inside the tracker (re-entrant call).
    fn free_nested(&self, ptr: usize, layout: Option<(usize, usize)>) {
        let Some(state) = self.ready() else {
            self.free_untracked(ptr, layout);
            return;
        };
        if matches!(self.shadow_find(state, ptr), Found::Live(_)) {
            // A program block freed by code running for the tracker (below).
            self.free_tracked(state, None, ptr, None, Detection::Free, false);
            return;
        }
        match state.table.get(ptr) {
            Some(info) if info.is_internal() => {
                if let Release::Was(info) = state.table.release(ptr, block_state::FREED, 0, 0) {
                    self.release_memory(state, ptr, &info);
                }
            }
            // A program block freed by code running for the tracker (std's thread-local
            // bookkeeping can do this): free it properly, without events.
            Some(_) => {
                self.free_tracked(state, None, ptr, None, Detection::Free, false);
            }
            // Allocated before the table existed (during initialisation).
            None => self.free_untracked(ptr, layout),
        }
    }

    fn free_tracked(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        layout: Option<(usize, usize)>,
        detection: Detection,
        emit: bool,
    ) {
        // The block's memory is about to be read (red zones, poison) or written (the inner
        // allocator's free list), likely from far out of cache: start loading it now, so that
        // miss overlaps with the table word's instead of waiting behind its compare-and-swap.
        prefetch(ptr);
        let tid = thread_id();
        let quarantine = state.quarantine.as_ref();
        // The default path's block (plain, freed by the thread that allocated it, no
        // quarantine) takes the table's short release; everything else, and every bad free,
        // the general one.
        let free_stack = core::cell::Cell::new(0u32);
        let released = match self.release_shadowed(state, local, ptr, &free_stack) {
            Some(released) => released,
            None => {
                match quarantine.map_or_else(|| state.table.release_plain(ptr, tid), |_| None) {
                    Some((size, align_log2)) => Release::Was(BlockInfo {
                        size,
                        align_log2,
                        state: block_state::LIVE,
                        alloc_thread: tid,
                        ..Default::default()
                    }),
                    None => state.table.release_with(
                        ptr,
                        tid,
                        |info| {
                            if info.flags & flag::GUARDED == 0
                                && quarantine.is_some_and(|q| q.admits(info.size, info.align()))
                            {
                                block_state::QUARANTINED
                            } else {
                                block_state::FREED
                            }
                        },
                        |info| {
                            // Sampled and guarded blocks get their free stack, captured before the
                            // word changes so it is written with it.
                            let stack = if state.options.free_stacks
                                && (info.alloc_stack != 0 || info.flags & flag::GUARDED != 0)
                            {
                                state.stack_here(local)
                            } else {
                                0
                            };
                            free_stack.set(stack);
                            stack
                        },
                    ),
                }
            }
        };
        let mut info = match released {
            Release::Was(info) => info,
            Release::AlreadyFreed(info) => {
                let facts = state.facts_for(ReportKind::DoubleFree, detection, ptr, ptr, &info);
                state.raise(facts, local);
                return;
            }
            Release::Unknown => {
                if let Some(info) = self.freed_with_its_page(state, ptr) {
                    let facts = state.facts_for(ReportKind::DoubleFree, detection, ptr, ptr, &info);
                    state.raise(facts, local);
                } else {
                    self.report_invalid_free(state, local, ptr, detection);
                }
                return;
            }
        };
        if info.is_internal() {
            self.release_memory(state, ptr, &info);
            return;
        }
        if let Some((size, align)) = layout {
            if size != info.size || align != info.align() {
                let mut facts =
                    state.facts_for(ReportKind::AllocDeallocMismatch, detection, ptr, ptr, &info);
                facts.mismatch = Some(((info.size, info.align()), (size, align)));
                state.raise(facts, local);
            }
        }
        let guarded = info.flags & flag::GUARDED != 0;
        if free_stack.get() != 0 {
            info.free_stack = free_stack.get();
            info.free_thread = tid;
        }
        if emit {
            if let Some(stream) = state.stream() {
                let event = Event::Free {
                    time_ns: stream.now(),
                    addr: ptr as u64,
                    size: info.size as u64,
                    stack: info.free_stack,
                };
                stream.record(local, event);
            }
        }
        if guarded {
            if let Some(pool) = &state.guard {
                if let Some(damage) = pool.free(ptr, info.free_stack, tid) {
                    let facts = state.facts_for(damage.kind, detection, damage.address, ptr, &info);
                    state.raise(facts, local);
                }
            }
            return;
        }
        // SAFETY: the block was live until the release above, which only this thread won; its
        // memory is still ours.
        if let Some((kind, addr)) = unsafe { state.canary_damage(ptr, &info) } {
            let facts = state.facts_for(kind, detection, addr, ptr, &info);
            state.raise(facts, local);
        }
        match quarantine {
            Some(q) if q.admits(info.size, info.align()) => {
                self.hold(state, Reporter::Tracked(local), q, ptr, &info)
            }
            _ => self.release_memory(state, ptr, &info),
        }
    }

    /// Puts a block that was just released (table state `QUARANTINED`) in the quarantine:
    /// poisons it, adds it, and checks and frees the blocks that leave.
    #[inline(always)]
    fn hold(
        &self,
        state: &'static State,
        reporter: Reporter<'_>,
        q: &Quarantine,
        ptr: usize,
        info: &BlockInfo,
    ) {
        // SAFETY: the block is ours until it leaves the quarantine.
        unsafe { canary::poison(ptr, info.size) };
        let held = Held {
            ptr,
            size: info.size,
            align_log2: info.align_log2,
            flags: info.flags,
        };
        // One lock: the block goes in, the oldest come out. A block that leaves a few frees
        // from now was freed long ago and is out of cache: start loading it and its table
        // word now.
        let out = q.exchange(held, |next| {
            next.prefetch();
            state.table.prefetch(next.ptr);
        });
        if !out.held {
            state
                .table
                .transition(ptr, block_state::QUARANTINED, block_state::FREED);
            self.release_memory(state, ptr, info);
        }
        for &old in out.evicted() {
            self.evict(state, reporter, old);
        }
        if out.more {
            while let Some(old) = q.pop_excess() {
                self.evict(state, reporter, old);
            }
        }
    }

    /// A block leaves the quarantine: check the poison, then really free it.
    fn evict(&self, state: &'static State, reporter: Reporter<'_>, held: Held) {
        // SAFETY: a held block stays ours until this function frees it.
        let damaged = unsafe { canary::first_unpoisoned(held.ptr, held.size) };
        let info = BlockInfo {
            size: held.size,
            align_log2: held.align_log2,
            flags: held.flags,
            ..Default::default()
        };
        if let Some(addr) = damaged {
            // The table's entry (stacks, threads) only for the report.
            let info = state.table.get(held.ptr).unwrap_or(info);
            let facts = state.facts_for(
                ReportKind::UseAfterFree,
                Detection::QuarantineExit,
                addr,
                held.ptr,
                &info,
            );
            reporter.raise(state, facts);
        }
        state
            .table
            .transition(held.ptr, block_state::QUARANTINED, block_state::FREED);
        self.release_memory(state, held.ptr, &info);
    }

    /// The general free of a shadow block ([`crate::shadow::Slot::release`]): `None` when the
    /// shadow is off or no shadow block starts at `ptr` (the table decides). A word that says
    /// "freed" is a double free only if the table has no live block there: the granule may
    /// start a block the table records now.
    ///
    /// A sampled block's free gets its stack (with `free_stacks`), set in `free_stack` and
    /// kept with the allocation's in the freed block's header for a later report.
    fn release_shadowed(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        free_stack: &core::cell::Cell<u32>,
    ) -> Option<Release> {
        let slot = state.fast.shadow.as_ref()?.slot(ptr)?;
        match slot.release()? {
            Release::Was(info) => {
                if !state.fast.alloc {
                    state.table.count_shadowed(info.size, -1);
                }
                // A `SAMPLED` byte (now `FREED_SAMPLED`): the stacks replace the header's word.
                if info.alloc_stack != 0 && state.options.free_stacks {
                    let stack = state.stack_here(local);
                    free_stack.set(stack);
                    slot.keep_stacks(info.alloc_stack, stack);
                }
                Some(Release::Was(info))
            }
            Release::AlreadyFreed(_) if table_has_live(state, ptr) => None,
            Release::Unknown => None,
            other => Some(other),
        }
    }

    /// A free that neither a shadow word nor the table knows, of a pointer into an arena page
    /// the core heap has given back (no block of it is live): a double free of a block whose
    /// word went with an earlier tracker's state, or a free of memory never handed out; named
    /// a double free. `None` otherwise (an invalid free). Slow: only on that bad free.
    #[cold]
    fn freed_with_its_page(&self, state: &State, ptr: usize) -> Option<BlockInfo> {
        let gone = state.fast.shadow.is_some()
            && ptr % shadow::GRANULE == 0
            && allocscope_core::heap::in_arena(ptr)
            && allocscope_core::heap::arena_page_in_use(ptr - shadow::HEADER) == Some(false);
        gone.then(|| BlockInfo {
            state: block_state::FREED,
            flags: flag::IN_SHADOW,
            ..Default::default()
        })
    }

    /// What the shadow word of `ptr` says ([`Found::None`] when the shadow is off), with a
    /// "freed" word the table contradicts (a live block of its own there) read as none.
    fn shadow_find(&self, state: &State, ptr: usize) -> Found {
        let Some(shadow) = &state.fast.shadow else {
            return Found::None;
        };
        match shadow.find(ptr) {
            Found::Freed(_) if table_has_live(state, ptr) => Found::None,
            found => found,
        }
    }

    #[cold]
    fn report_invalid_free(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        detection: Detection,
    ) {
        let mut facts = Facts::new(ReportKind::InvalidFree, detection, ptr, thread_id());
        let mut containing = state.table.find_containing(ptr);
        if let (None, Some(shadow)) = (containing, &state.fast.shadow) {
            shadow.for_each_live(&mut |start, info| {
                if (start..start + info.size.max(1)).contains(&ptr) {
                    containing = Some((start, *info));
                }
            });
        }
        if let Some((start, info)) = containing {
            facts.block = Some((start, info.size));
            facts.alloc_stack = info.alloc_stack;
            facts.alloc_thread = info.alloc_thread;
        }
        state.raise(facts, local);
    }

    // -----------------------------------------------------------------------------------------
    // Realloc
    // -----------------------------------------------------------------------------------------

    /// Resizes `ptr` to `new_size` bytes (alignment `align`), moving it if needed; null when out
    /// of memory (the old block stays valid) or when `ptr` is not a live block (reported). A
    /// null `ptr` allocates. `old_layout` as for [`Tracker::deallocate`].
    ///
    /// # Safety
    /// As for [`Tracker::deallocate`]; on success the old pointer must not be used again.
    pub unsafe fn reallocate(
        &self,
        ptr: *mut u8,
        old_layout: Option<(usize, usize)>,
        new_size: usize,
        align: usize,
    ) -> *mut u8 {
        if ptr.is_null() {
            return self.allocate(new_size, align, false);
        }
        if !align.is_power_of_two() {
            record(AllocErrorKind::InvalidRequest);
            return null_mut();
        }
        let Some(busy) = enter() else {
            return self.realloc_nested(ptr as usize, old_layout, new_size, align);
        };
        let Some(state) = self.state() else {
            drop(busy);
            let (size, a) = old_layout.unwrap_or((1, align));
            // SAFETY: no tracking: the block came straight from the inner allocator.
            return unsafe {
                self.inner.realloc(
                    ptr,
                    Layout::from_size_align_unchecked(size.max(1), a),
                    new_size.max(1),
                )
            };
        };
        let p = match with_local(|local| {
            self.realloc_tracked(
                state,
                Some(local),
                ptr as usize,
                old_layout,
                new_size,
                align,
                true,
            )
        }) {
            Some(p) => p,
            None => {
                self.realloc_tracked(state, None, ptr as usize, old_layout, new_size, align, true)
            }
        };
        drop(busy);
        p
    }

    fn realloc_nested(
        &self,
        ptr: usize,
        old_layout: Option<(usize, usize)>,
        new_size: usize,
        align: usize,
    ) -> *mut u8 {
        let new_size = new_size.max(1);
        let Some(state) = self.ready() else {
            let (size, a) = old_layout.unwrap_or((1, align));
            // SAFETY: no tracking: the block came straight from the inner allocator.
            return unsafe {
                self.inner.realloc(
                    ptr as *mut u8,
                    Layout::from_size_align_unchecked(size.max(1), a),
                    new_size,
                )
            };
        };
        if matches!(self.shadow_find(state, ptr), Found::Live(_)) {
            return self.realloc_tracked(state, None, ptr, None, new_size, align, false);
        }
        match state.table.get(ptr) {
            Some(info) if info.is_internal() => {
                // SAFETY: internal blocks come from the inner allocator with exactly this layout.
                let new = unsafe {
                    self.inner.realloc(
                        ptr as *mut u8,
                        Layout::from_size_align_unchecked(info.size, info.align()),
                        new_size,
                    )
                };
                if !new.is_null() {
                    state.table.release(ptr, block_state::FREED, 0, 0);
                    state.table.insert(
                        new as usize,
                        BlockInfo {
                            size: new_size,
                            ..info
                        },
                    );
                }
                new
            }
            Some(_) => self.realloc_tracked(state, None, ptr, None, new_size, align, false),
            None => {
                let (size, a) = old_layout.unwrap_or((1, align));
                // SAFETY: not in the table: allocated before the table existed, by the inner
                // allocator.
                unsafe {
                    self.inner.realloc(
                        ptr as *mut u8,
                        Layout::from_size_align_unchecked(size.max(1), a),
                        new_size,
                    )
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn realloc_tracked(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        old_layout: Option<(usize, usize)>,
        new_size: usize,
        align: usize,
        emit: bool,
    ) -> *mut u8 {
        let found = match self.shadow_find(state, ptr) {
            Found::Live(info) | Found::Freed(info) => Some(info),
            Found::None => state.table.get(ptr),
        };
        let info = match found {
            Some(info) if info.state == block_state::LIVE => info,
            Some(info) => {
                let facts = state.facts_for(
                    ReportKind::UseAfterFree,
                    Detection::Realloc,
                    ptr,
                    ptr,
                    &info,
                );
                state.raise(facts, local);
                return null_mut();
            }
            None => {
                self.report_invalid_free(state, local, ptr, Detection::Realloc);
                return null_mut();
            }
        };
        if let Some((size, a)) = old_layout {
            if size != info.size || a != info.align() {
                let mut facts = state.facts_for(
                    ReportKind::AllocDeallocMismatch,
                    Detection::Realloc,
                    ptr,
                    ptr,
                    &info,
                );
                facts.mismatch = Some(((info.size, info.align()), (size, a)));
                state.raise(facts, local);
            }
        }
        if let Some((new, stack)) = self.realloc_in_place(state, local, ptr, &info, new_size, align)
        {
            if emit && !new.is_null() {
                self.emit_realloc(
                    state,
                    local,
                    ptr,
                    new as usize,
                    info.size,
                    new_size,
                    align,
                    stack,
                );
            }
            return new;
        }
        let new = self.alloc_tracked(state, local, new_size, align, false, false);
        if new.is_null() {
            return null_mut();
        }
        // SAFETY: both blocks are live and distinct; we copy the smaller size.
        unsafe { core::ptr::copy_nonoverlapping(ptr as *const u8, new, info.size.min(new_size)) };
        self.free_tracked(state, local, ptr, None, Detection::Realloc, false);
        if emit {
            let stack = match self.shadow_find(state, new as usize) {
                Found::Live(info) => info.alloc_stack,
                _ => state.table.get(new as usize).map_or(0, |i| i.alloc_stack),
            };
            self.emit_realloc(
                state,
                local,
                ptr,
                new as usize,
                info.size,
                new_size,
                align,
                stack,
            );
        }
        new
    }

    /// Resizes a live block in place through the inner allocator's realloc when that keeps what
    /// is known of it: a shadow block (below) or a plain table block (no flags, no quarantine,
    /// the same alignment; the new size sampled). `None` when neither applies (the caller
    /// moves the block), else the new pointer (null: out of memory, the old block still live)
    /// and its stack.
    ///
    /// A shadow block: when the new block needs no stack and keeps the alignment, its word is
    /// retired first (the inner realloc may free the old block) and written again at the new
    /// place.
    fn realloc_in_place(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        info: &BlockInfo,
        new_size: usize,
        align: usize,
    ) -> Option<(*mut u8, u32)> {
        if info.flags & flag::IN_SHADOW != 0 {
            let shadow = state.fast.shadow.as_ref()?;
            // The core heap turns a block growing past the medium classes into a large block
            // (a mapping of its own, outside the arenas): such a resize, and one to a new
            // alignment, moves through the general allocation instead. (Compared without
            // adding to `new_size`: a size within 16 of `usize::MAX` wrapped to a tiny block,
            // returned as the 0-byte result of `realloc(p, SIZE_MAX)`, which freed `p`.)
            if new_size > allocscope_core::size_class::MEDIUM_MAX - shadow::HEADER
                || align != info.align()
            {
                return None;
            }
            let tid = thread_id();
            if tid == 0 || tid >= crate::thread_state::FAST_THREAD_LIMIT {
                return None;
            }
            let old_slot = shadow.slot(ptr)?;
            // A sample that fires gives the resized block this stack, in its header.
            let stack = if state.should_sample(local, new_size) {
                match state.stack_here(local) {
                    s if s < shadow::STACK_LIMIT => s,
                    _ => {
                        // An id the header cannot hold: the moved block gets the stack.
                        state.rearm_sample();
                        return None;
                    }
                }
            } else {
                info.alloc_stack
            };
            // The block is live and this thread is resizing it (the caller looked it up).
            let old = old_slot.retire();
            // SAFETY: the shadow block came from the inner allocator with exactly this layout,
            // 16 bytes before `ptr`; its byte is retired, so no other free of it succeeds.
            let base = unsafe {
                self.inner.realloc(
                    (ptr - shadow::HEADER) as *mut u8,
                    shadow_layout(info.size),
                    new_size.max(1) + shadow::HEADER,
                )
            };
            if base.is_null() {
                // The retire above, undone: the block is still ours and live.
                old_slot.restore(old);
                return Some((base, 0));
            }
            let p = base.wrapping_add(shadow::HEADER);
            let Some(new_slot) = shadow.slot_for_new(p as usize) else {
                // No state byte for the new place (not an arena block after all: an inner
                // allocator other than the core's, or no memory for the arena's bytes): the
                // table records a copy, this block goes back. Out of memory here loses the old
                // contents (the program gets null, and a later free of its old pointer is
                // reported, not done).
                if !state.fast.alloc {
                    state.table.count_shadowed(info.size, -1);
                }
                let copy = self.alloc_tracked(state, local, new_size, align, false, false);
                // SAFETY: the inner allocator's block holds the program's bytes at +16, at
                // least min(old, new) of them; the copy is distinct and as large.
                unsafe {
                    if !copy.is_null() {
                        core::ptr::copy_nonoverlapping(p, copy, info.size.min(new_size));
                    }
                    self.inner.dealloc(base, shadow_layout(new_size));
                }
                return Some((copy, 0));
            };
            let word = shadow::header_word(new_size, info.align_log2, tid, stack);
            if stack != 0 && state.options.free_stacks {
                new_slot.write_sampled(word);
            } else {
                new_slot.write(shadow::live_byte(new_size, info.align_log2), word);
            }
            if !state.fast.alloc {
                state.table.count_shadowed(new_size, 1);
                state.table.count_shadowed(info.size, -1);
            }
            return Some((p, stack));
        }
        if info.flags & !flag::CANARY == 0 && align == info.align() {
            if let Some(resized) = self.resize_zoned(state, local, ptr, info, new_size) {
                return Some(resized);
            }
        }
        if info.flags != 0
            || state.quarantine.is_some()
            || align != info.align()
            || info.is_internal()
        {
            return None;
        }
        let sampled = state.should_sample(local, new_size);
        let stack = if sampled {
            state.stack_here(local)
        } else {
            info.alloc_stack
        };
        // SAFETY: a plain block was allocated by the inner allocator with exactly
        // (size.max(1), align); it is live (checked by the caller).
        let new = unsafe {
            self.inner.realloc(
                ptr as *mut u8,
                Layout::from_size_align_unchecked(info.size.max(1), info.align()),
                new_size.max(1),
            )
        };
        if new.is_null() {
            return Some((new, 0));
        }
        let moved = BlockInfo {
            size: new_size,
            alloc_stack: stack,
            alloc_thread: thread_id(),
            ..*info
        };
        if new as usize != ptr {
            state.table.release(ptr, block_state::FREED, 0, thread_id());
        }
        state.table.insert(new as usize, moved);
        Some((new, stack))
    }

    /// Resizes a red-zoned table block, or any table block under a quarantine, without the
    /// general paths' move (a new block, a copy, the old one checked and held): `None` when
    /// that move is needed. Over the core heap only (`core_heap`):
    /// - an arena block stays where it is when the core's block under it holds the new size and
    ///   the right zone and wastes no more than half of itself (the core's own rule);
    /// - a large block (a mapping of its own) is resized by the core's realloc, which grows it
    ///   by moving its pages (and keeps it in place within its last page). A moved one is not
    ///   quarantined: its old pages are unmapped, so a use of the old pointer faults.
    ///
    /// The old zones are checked first (damage reported as found by the realloc), the zones
    /// filled at the new end (and before a moved block) and the record takes the new size.
    /// Returns the block (null: out of memory, the old block still live) and its stack.
    ///
    /// Without it every realloc of such a block moved: a buffer grown a byte at a time was
    /// copied at every byte (quadratic: 400 kB took 2.2 s with `canary=16`, 10.8 s with
    /// `quarantine=16m`, against 0.03 s at the default options).
    fn resize_zoned(
        &self,
        state: &'static State,
        local: Option<&Local>,
        ptr: usize,
        info: &BlockInfo,
        new_size: usize,
    ) -> Option<(*mut u8, u32)> {
        let zoned = info.flags & flag::CANARY != 0;
        if !state.fast.core_heap || !(zoned || state.quarantine.is_some()) {
            return None;
        }
        let canary = if zoned { state.options.canary_bytes } else { 0 };
        let align = info.align();
        let left = canary::left_zone(canary, align);
        let base = ptr - left;
        let total = left.checked_add(new_size)?.checked_add(canary)?.max(1);
        let in_arena = allocscope_core::heap::in_arena(base);
        if in_arena {
            // SAFETY: the inner allocator is the core heap (`core_heap`), which gave `base` (the
            // block's start, `left` bytes before it) out of an arena; the block is live (the
            // caller looked it up) and this thread is resizing it.
            let usable = unsafe { allocscope_core::heap::usable_size(base as *const u8) };
            if total > usable || total < usable / 2 {
                return None;
            }
        }
        // SAFETY: the block and its zones are ours (live, resized by this thread).
        if let Some((kind, addr)) = unsafe { state.canary_damage(ptr, info) } {
            let facts = state.facts_for(kind, Detection::Realloc, addr, ptr, info);
            state.raise(facts, local);
        }
        // The bytes it gains are what it allocates (each byte of a buffer grown a byte at a
        // time would otherwise count its whole size again, sampling it at every few resizes).
        let stack = if state.should_sample(local, new_size.saturating_sub(info.size)) {
            state.stack_here(local)
        } else {
            info.alloc_stack
        };
        let resized = BlockInfo {
            size: new_size,
            alloc_stack: stack,
            alloc_thread: thread_id(),
            ..*info
        };
        if in_arena {
            // A scan or leak check running meanwhile may have read the old record. The zone at
            // the new end is filled before the record changes (the pattern is a function of the
            // address, so where the two zones overlap the old one stays whole), and `resize`
            // waits for a walk that may have read the old record before the program may write
            // over the old zone.
            if zoned {
                // SAFETY: `left + new_size + canary <= usable`: the new right zone lies inside
                // the core's block.
                unsafe { canary::fill(ptr + new_size, canary) };
            }
            if !state.table.resize(ptr, resized) {
                // No room for the record's larger entry: the old one stands; the block moves.
                if zoned {
                    // SAFETY: as for the fill above; the old right zone, written again.
                    unsafe { canary::fill(ptr + info.size, canary) };
                }
                return None;
            }
            return Some((ptr as *mut u8, stack));
        }
        // The record goes first (a walk then no longer reads the block, which the core may
        // unmap), and comes back if the core cannot resize it.
        let tid = thread_id();
        if !matches!(
            state.table.release(ptr, block_state::FREED, 0, tid),
            Release::Was(_)
        ) {
            return None;
        }
        let old_total = (left + info.size + canary).max(1);
        // SAFETY: the core gave `base` for exactly this layout (the record's size, its zones and
        // alignment, as every allocation path computes them); its record is released, so no
        // other free of it succeeds.
        let new_base = unsafe {
            self.inner.realloc(
                base as *mut u8,
                Layout::from_size_align_unchecked(old_total, align),
                total,
            )
        };
        if new_base.is_null() {
            state.table.insert(ptr, *info);
            return Some((new_base, 0));
        }
        let p = new_base as usize + left;
        if zoned {
            let filled = canary::left_filled(canary, align);
            // SAFETY: the core's block holds `left + new_size + canary` bytes from `new_base`;
            // the filled part of the left zone ends at `p`.
            unsafe {
                if p != ptr {
                    canary::fill(p - filled, filled);
                }
                canary::fill(p + new_size, canary);
            }
        }
        if !state.table.insert(p, resized) {
            // No room to record it (the OS refused the table memory): as for an allocation,
            // better out of memory than an untracked block. The old contents are lost then; a
            // later free of the old pointer is reported, not done.
            self.release_memory(state, p, &resized);
            record(AllocErrorKind::OutOfMemory);
            return Some((null_mut(), 0));
        }
        Some((p as *mut u8, stack))
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_realloc(
        &self,
        state: &State,
        local: Option<&Local>,
        old: usize,
        new: usize,
        old_size: usize,
        new_size: usize,
        align: usize,
        stack: u32,
    ) {
        if let Some(stream) = state.stream() {
            let event = Event::Realloc {
                time_ns: stream.now(),
                old_addr: old as u64,
                new_addr: new as u64,
                old_size: old_size as u64,
                new_size: new_size as u64,
                align: align as u64,
                stack,
            };
            stream.record(local, event);
        }
    }

    /// The requested size of live block `ptr` (0 if `ptr` is not a live block of this tracker).
    pub fn usable_size(&self, ptr: *const u8) -> usize {
        let Some(state) = self.ready() else { return 0 };
        let _busy = enter_always();
        if let Found::Live(info) = self.shadow_find(state, ptr as usize) {
            return info.size;
        }
        match state.table.get(ptr as usize) {
            Some(info) if info.state == block_state::LIVE => info.size,
            _ => 0,
        }
    }

    // -----------------------------------------------------------------------------------------
    // On demand
    // -----------------------------------------------------------------------------------------

    fn with_state<R>(&self, f: impl FnOnce(&'static State, Option<&Local>) -> R) -> Option<R> {
        let state = self.state()?;
        let _busy = enter_always();
        let mut f = Some(f);
        let mut run = |local: Option<&Local>| f.take().map(|f| f(state, local));
        with_local(|l| run(Some(l))).flatten().or_else(|| run(None))
    }

    /// Checks every live block's red zones and the quarantine now; returns the reports raised.
    pub fn scan(&self) -> Vec<Report> {
        self.with_state(|s, l| s.scan(l)).unwrap_or_default()
    }

    /// Runs a leak check now (LeakSanitizer style); returns one report per leak group. Uses the
    /// configured mode, or `Unreachable` when leak checking at exit is off.
    #[inline(never)]
    pub fn check_leaks(&self) -> Vec<Report> {
        let marker = 0u8;
        let sp = &marker as *const u8 as usize;
        self.with_state(|s, l| {
            let mode = match s.options.leak_check {
                LeakCheck::Off => LeakCheck::Unreachable,
                m => m,
            };
            s.check_leaks(mode, l, sp)
        })
        .unwrap_or_default()
    }

    /// Runs a leak check in the given mode.
    #[inline(never)]
    pub fn check_leaks_with(&self, mode: LeakCheck) -> Vec<Report> {
        let marker = 0u8;
        let sp = &marker as *const u8 as usize;
        self.with_state(|s, l| s.check_leaks(mode, l, sp))
            .unwrap_or_default()
    }

    /// Takes the reports raised so far (each is also printed and streamed when it is raised).
    pub fn take_reports(&self) -> Vec<Report> {
        self.with_state(|s, _| s.take_reports()).unwrap_or_default()
    }

    /// How many reports of `kind` were raised.
    pub fn report_count(&self, kind: ReportKind) -> u64 {
        self.ready().map_or(0, |s| s.count(kind))
    }

    /// Current figures.
    pub fn stats(&self) -> TrackerStats {
        self.with_state(|s, _| s.stats()).unwrap_or_default()
    }

    /// The options in force (after the first allocation).
    pub fn options(&self) -> Option<&Options> {
        self.ready().map(|s| &s.options)
    }

    /// Writes every event recorded so far to the trace and flushes it; `false` on timeout or
    /// when not tracing.
    pub fn flush_trace(&self, timeout: Duration) -> bool {
        self.with_state(|s, l| s.stream().is_some_and(|st| st.flush(l, timeout)))
            .unwrap_or(false)
    }

    /// Ends the trace as [`Tracker::finish_trace`] does, for a process that is about to end
    /// without its exit hooks (`_exit`), which the preload library calls first: the calling
    /// thread's events and everything queued are written, and the end marker. Nothing happens
    /// in a `vfork` child (the trace is its parent's) nor in a `fork` child (its copy of the
    /// stream has no writer).
    pub fn finish_trace_before_exit(&self) {
        self.with_started_stream(|st, l| st.finish_in_own_process(l, Duration::from_secs(2)));
    }

    /// For a process about to `exec` another program, which the preload library calls first:
    /// the trace ends as in [`Tracker::finish_trace_before_exit`] (in the same processes), but
    /// its writer waits — an exec that fails returns, and
    /// [`Tracker::resume_trace_after_failed_exec`] takes the trace up again.
    pub fn end_trace_before_exec(&self) {
        self.with_started_stream(|st, l| st.end_for_exec(l, Duration::from_secs(2)));
    }

    /// After an exec that returned (it failed): the trace [`Tracker::end_trace_before_exec`]
    /// ended goes on, its end marker taken back, so the rest of the program is in it.
    pub fn resume_trace_after_failed_exec(&self) {
        self.with_started_stream(|st, _| st.resume_after_failed_exec(Duration::from_secs(2)));
    }

    /// Runs `f` on the trace's stream, if this tracker started one. A process that never
    /// allocated has no trace (and needs no tracker started now).
    fn with_started_stream(&self, f: impl FnOnce(&'static crate::stream::Stream, Option<&Local>)) {
        if self.ready().is_none() {
            return;
        }
        self.with_state(|s, l| {
            if let Some(st) = s.stream() {
                f(st, l);
            }
        });
    }

    /// Ends the trace now (what exit does): writes everything, the end marker, and stops the
    /// writer. Later events are not recorded.
    pub fn finish_trace(&self) {
        self.with_state(|s, l| {
            if let Some(st) = s.stream() {
                st.finish(l, Duration::from_secs(10));
            }
        });
    }
}

impl<A: GlobalAlloc> Drop for Tracker<A> {
    fn drop(&mut self) {
        // A tracker that is not a static (tests, scoped use): end its trace and take it out of
        // the exit hook. Its state stays allocated: blocks it handed out may outlive it.
        if let Some(state) = self.ready() {
            let _busy = enter_always();
            if let Some(stream) = state.stream() {
                if with_local(|l| stream.finish(Some(l), Duration::from_secs(10))).is_none() {
                    stream.finish(None, Duration::from_secs(10));
                }
            }
            state::unregister(state);
        }
    }
}

/// Who raises a report found while freeing: the general path (re-entrancy flag set, with the
/// thread's local state if it has one), or a fast path, which runs with the flag clear and so
/// sets it first (raising a report allocates).
#[derive(Clone, Copy)]
enum Reporter<'a> {
    Tracked(Option<&'a Local>),
    Fast,
}

impl Reporter<'_> {
    fn raise(self, state: &'static State, facts: Facts) {
        match self {
            Reporter::Tracked(local) => state.raise(facts, local),
            Reporter::Fast => raise_from_fast_path(state, facts),
        }
    }
}

/// [`Reporter::Fast`]'s report: the flag set, then as the general path raises it.
#[cold]
#[inline(never)]
fn raise_from_fast_path(state: &'static State, facts: Facts) {
    // The fast paths run only with the flag clear (their gate says so), so `enter` sets it.
    let _busy = enter();
    let mut facts = Some(facts);
    with_local(|local| {
        if let Some(f) = facts.take() {
            state.raise(f, Some(local));
        }
    });
    if let Some(f) = facts {
        state.raise(f, None);
    }
}

/// The layout a caller gives at free: `align` 0 for none (C's `free`). Two words passed in
/// registers.
#[derive(Clone, Copy)]
struct Given {
    size: usize,
    align: usize,
}

impl Given {
    const NONE: Given = Given { size: 0, align: 0 };

    fn layout(self) -> Option<(usize, usize)> {
        (self.align != 0).then_some((self.size, self.align))
    }
}

/// Whether the table records a live block at `ptr`: then a "freed" shadow word of it is an
/// earlier block's, not a double free (see [`crate::shadow`]).
fn table_has_live(state: &State, ptr: usize) -> bool {
    state
        .table
        .get(ptr)
        .is_some_and(|t| t.state == block_state::LIVE)
}

/// The inner allocator's layout for a shadow block of `size` bytes: the header in front, the
/// block at least one byte (a zero-size block's pointer must stay inside its own block), all
/// aligned to 16 (see [`crate::shadow`]).
#[inline(always)]
fn shadow_layout(size: usize) -> Layout {
    // SAFETY: size < 2^19 and 16 a power of two: a valid layout.
    unsafe { Layout::from_size_align_unchecked(size.max(1) + shadow::HEADER, shadow::MAX_ALIGN) }
}

fn env_options() -> Result<Options, String> {
    // getenv, not std::env: no lock (std's environment lock may be held by this very thread
    // while it allocates) and no allocation.
    // SAFETY: the name is NUL-terminated; the returned pointer is read at once.
    let raw = unsafe { libc::getenv(c"ALLOCSCOPE_OPTIONS".as_ptr()) };
    if raw.is_null() {
        return Ok(Options::default());
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(raw) }
        .to_string_lossy()
        .into_owned();
    Options::parse(&text).map_err(|e| format!("ALLOCSCOPE_OPTIONS: {e}"))
}

// SAFETY: `alloc` returns blocks of at least `layout.size()` bytes aligned to `layout.align()`
// (or null); `dealloc`/`realloc` accept the pointers it returned; see the module docs.
// Not inlined: a sampled block's stack starts at the return address of the call into these
// (`allocate_checked` and the general free are reached by a jump from them). Inlined into a
// program's function, which code that calls a `Tracker` directly allows, the default path
// becomes several call sites of `allocate_checked` there (one allocation site, several stacks)
// and a call in tail position a jump (the site's own frame missing from its stack). Through
// `#[global_allocator]` the shim calls them anyway, and the C ABI's entry points are functions
// of their own.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Tracker<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate_pow2(layout.size(), layout.align(), false)
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate_pow2(layout.size(), layout.align(), true)
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` is not used after this.
        self.deallocate_given(
            ptr,
            Given {
                size: layout.size(),
                align: layout.align(),
            },
        )
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: on success `ptr` is not used again.
        unsafe {
            self.reallocate(
                ptr,
                Some((layout.size(), layout.align())),
                new_size,
                layout.align(),
            )
        }
    }
}

//! The guard-page pool (GWP-ASan's idea): a sample of allocations is placed in slots that sit
//! between inaccessible pages, so that the faulting access itself is caught, not just its
//! traces.
//!
//! ```text
//! | guard | slot 0 data | guard | slot 1 data | guard | ... | slot n-1 data | guard |
//!                 [  block]       <- right-aligned: one byte past the end faults
//!                                 [block   ]       <- left-aligned (a share): one byte before faults
//! ```
//!
//! The slack next to the block, up to [`SLACK_CHECKED`] bytes on each side, is filled with the
//! red-zone pattern at allocation and checked at free, so an overflow that stays in the slack
//! (a block whose size is not a multiple of its alignment, or a left-aligned block's far side)
//! is still caught at free. A freed slot's pages are made inaccessible at once (they stay
//! committed: see `free`), and a freed slot is reused only after half as many guarded
//! allocations as there are free slots, so a dangling pointer into a freed block faults for
//! long. Slot metadata are atomics so the fault handler can read them without a lock.
//!
//! A guarded allocation's price is mostly its two `mprotect`s (one to open the slot, one to
//! close it at free, which must be synchronous: a use-after-free right after the free faults).
//! Each costs a syscall, and on some machines a syscall costs the program several µs more in
//! caches and TLB entries lost; what made them dearer still was the kernel splitting the pool's
//! mapping at every opening and merging it back at every closing. So:
//! - mappings are set apart ([`os_memory::set_apart`]) so that each slot stays one mapping of
//!   its own, and both calls change the protection of one whole mapping;
//! - where the kernel has guard markers ([`os_memory::install_guard_markers`], Linux 6.13),
//!   the guard pages hold them and fault whatever the protection, free slots are reused in
//!   address order (a sweep), and one call opens the next `OPEN_RUN` free slots: most guarded
//!   allocations make no syscall, and a pair costs a little over one instead of two.
//!
//! On the 2026-12-02 VM (Linux 6.18; the overhead bench's 1-in-100 row less the table-only row), a
//! guarded pair cost 2.8–4.7 µs from run to run; leaving parts of the pool out one at a time saved
//! 2.9–3.2 µs without the closing `mprotect` (and so without openings), 1.1–1.4 µs without the
//! check of the whole slack (up to 4 KiB read cold at free); ~0.4 µs remained without both (two
//! stacks, the table, the lock). Measured alone, a call that changes a protection costs 1.1–1.9 µs
//! there and each further slot of a run ~0.6 µs, while `getppid` costs 0.16 µs: the price is the
//! kernel's work on the mapping, not the system call, and the user's pages touched after it cost no
//! more than before it. Hence the slack checked only near the block (see [`SLACK_CHECKED`]); the
//! closing call stays one per free, at once: a use-after-free right after the free must fault. Runs
//! of 32 slots instead of `OPEN_RUN` showed no difference in one alternated run (the kernel's work
//! is mostly per slot); closing with guard markers over the data pages costs 3.4–3.8 µs a call, and
//! the page is then faulted in again at the next use.
//!
//! May touch: [`allocscope_core::os`] (protect), [`crate::os_memory`],
//! [`crate::spin`], [`crate::canary`].

use core::ptr::NonNull;

use allocscope_core::os::{Access, Os, SystemOs};
use allocscope_core::sync::{AtomicU32, AtomicUsize, Ordering};

use crate::canary;
use crate::os_memory;
use crate::spin::SpinLock;
use crate::trace_format::ReportKind;

/// Slot states.
const NEVER_USED: u32 = 0;
const LIVE: u32 = 1;
const FREED: u32 = 2;

/// Largest pool whose mappings are set apart (see `GuardPool::new`): each slot then costs one
/// or two mappings for the pool's whole life, out of the process's limit (`vm.max_map_count`,
/// 65530 by default), which the program needs too; 4096 slots hold 8193.
const SET_APART_MAX_SLOTS: usize = 4096;

/// What the fault handler and the reports need about a slot. All fields are written under the
/// pool's lock before `state` is stored (Release) and read after `state` (Acquire).
#[derive(Default)]
struct SlotMeta {
    state: AtomicU32,
    ptr: AtomicUsize,
    size: AtomicUsize,
    alloc_stack: AtomicU32,
    free_stack: AtomicU32,
    alloc_thread: AtomicU32,
    free_thread: AtomicU32,
}

/// Bytes of slack on each side of a guarded block (less where the slot ends first) that hold
/// the red-zone pattern: written at allocation, checked at free. A write further from the block
/// that stays in the slot goes unseen (one that reaches a guard page faults). Checking the
/// whole slack instead read up to 4 KiB of cold memory at every guarded free, 1.1–1.4 µs, a
/// quarter of a guarded pair's price; 64 or 256 bytes cost no more than no check at all in
/// alternated runs (1024 bytes ~0.6 µs in one noisy run).
/// Bytes beyond it are never read, so damage left there by one block is never blamed on the
/// next one in the slot: each allocation writes its own zones whole.
const SLACK_CHECKED: usize = 256;

/// `FreeSlots::freed_at` of a slot in use (or being freed).
const TAKEN: u64 = u64::MAX;

/// Slots opened with one call when the guard pages are markers (see `GuardPool::open`).
const OPEN_RUN: usize = 8;

/// Slots prepared at a time, at least (see `GuardPool::prepare`).
const PREPARE_RUN: usize = 32;

/// The slots not in use, swept in address order (see `GuardPool::pick`). Touched only under
/// the pool's lock.
struct FreeSlots {
    /// Per slot: `TAKEN`, or `clock` when the slot was last freed (0: never used).
    freed_at: NonNull<u64>,
    /// Per slot: 1 while the free slot's pages are accessible already (opened in a run).
    open: NonNull<u8>,
    /// The next slot the sweep looks at.
    cursor: usize,
    /// Guarded allocations so far, counted from the number of slots (so that a never-used
    /// slot is always old enough).
    clock: u64,
    /// Slots not `TAKEN`.
    free: usize,
    /// Slots below this one are prepared (see `GuardPool::prepare`).
    prepared: usize,
}

impl FreeSlots {
    fn freed_at(&self, slot: usize) -> u64 {
        // SAFETY: callers pass slot < the pool's slots, the arrays' length.
        unsafe { *self.freed_at.as_ptr().add(slot) }
    }

    fn set_freed_at(&mut self, slot: usize, at: u64) {
        // SAFETY: as in `freed_at`; `&mut self` is the lock's.
        unsafe { *self.freed_at.as_ptr().add(slot) = at };
    }

    fn is_open(&self, slot: usize) -> bool {
        // SAFETY: as in `freed_at`.
        unsafe { *self.open.as_ptr().add(slot) != 0 }
    }

    fn set_open(&mut self, slot: usize, open: bool) {
        // SAFETY: as in `set_freed_at`.
        unsafe { *self.open.as_ptr().add(slot) = u8::from(open) };
    }

    /// Whether a free slot has stayed closed long enough to be reused: for half as many
    /// guarded allocations as there are free slots now (a first-in first-out queue would keep
    /// each for all of them; a sweep in address order keeps each between none and all).
    fn old_enough(&self, freed_at: u64) -> bool {
        self.clock - freed_at >= (self.free / 2) as u64
    }
}

// SAFETY: the arrays are memory owned by the pool, touched only under the lock.
unsafe impl Send for FreeSlots {}

/// The parts of a slot's slack that hold the red-zone pattern (see [`SLACK_CHECKED`]), as
/// (start, length): the bytes just before the block and just after it.
struct SlackZones {
    before: (usize, usize),
    after: (usize, usize),
}

/// A damaged byte found when a guarded block was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlackDamage {
    pub(crate) kind: ReportKind,
    pub(crate) address: usize,
}

/// What a fault address means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultInfo {
    pub(crate) kind: ReportKind,
    pub(crate) block_start: usize,
    pub(crate) block_size: usize,
    pub(crate) alloc_stack: u32,
    pub(crate) free_stack: u32,
    pub(crate) alloc_thread: u32,
    pub(crate) free_thread: u32,
}

pub(crate) struct GuardPool {
    base: usize,
    len: usize,
    page: usize,
    /// Bytes of data pages per slot.
    data: usize,
    stride: usize,
    slots: usize,
    meta: NonNull<SlotMeta>,
    free: SpinLock<FreeSlots>,
    underflow_share: f64,
    /// Whether the guard pages are guard markers (see `new`): then each slot is one mapping,
    /// its guard page and data pages, opened and closed whole, and `open` opens a run of free
    /// slots with one call.
    markers: bool,
    /// Whether mappings are set apart (see `prepare`).
    set_apart: bool,
}

// SAFETY: the pool's memory is shared through atomics (metadata) and the lock (free slots);
// slot data belong to whoever holds the slot.
unsafe impl Sync for GuardPool {}
// SAFETY: as above.
unsafe impl Send for GuardPool {}

impl GuardPool {
    /// Reserves the pool: every page starts inaccessible. `None` when the OS refuses.
    pub(crate) fn new(slots: usize, max_size: usize, underflow_share: f64) -> Option<Self> {
        Self::with_layout(slots, max_size, underflow_share, true)
    }

    /// As [`GuardPool::new`]; `try_markers: false` keeps the guard pages plain inaccessible
    /// pages (the layout where the kernel has no guard markers).
    fn with_layout(
        slots: usize,
        max_size: usize,
        underflow_share: f64,
        try_markers: bool,
    ) -> Option<Self> {
        let page = os_memory::page_size();
        let data = max_size.div_ceil(page) * page;
        let stride = data + page;
        let len = stride.checked_mul(slots)?.checked_add(page)?;
        let base = os_memory::map(len)?;
        // SAFETY: the whole mapping is ours and unused.
        if !unsafe { SystemOs.protect(base, len, Access::None) } {
            // SAFETY: the mapping was made just above with this length.
            unsafe { os_memory::unmap(base, len) };
            return None;
        }
        // Guard markers fault whatever the mapping's protection, so a run of slots can be
        // opened with one `mprotect` (guard pages included) and the guard pages between them
        // keep faulting. Whether the kernel has them is asked of the first guard page now; the
        // other slots are prepared as the sweep first reaches them (`prepare`).
        // SAFETY: guard page 0 is the first page of the mapping made above, holding nothing.
        let markers = try_markers && unsafe { os_memory::install_guard_markers(base, page) };
        let set_apart = slots <= SET_APART_MAX_SLOTS;
        if set_apart && !markers {
            // SAFETY: guard page 0, part of our mapping (see `prepare` for the others).
            unsafe { os_memory::set_apart(base, page) };
        }
        let meta = os_memory::map(slots * core::mem::size_of::<SlotMeta>())?.cast::<SlotMeta>();
        let freed_at = os_memory::map(slots * 8)?.cast::<u64>();
        let open = os_memory::map(slots)?;
        Some(GuardPool {
            base: base.as_ptr() as usize,
            len,
            page,
            data,
            stride,
            slots,
            meta,
            free: SpinLock::new(FreeSlots {
                freed_at,
                open,
                cursor: 0,
                clock: slots as u64,
                free: slots,
                prepared: 0,
            }),
            underflow_share,
            markers,
            set_apart,
        })
    }

    /// Prepares the slots from the first unprepared one through `slot` and some beyond (at
    /// least `PREPARE_RUN` in all), under the lock: with guard markers, each one's leading
    /// guard page gets its marker; mappings are set apart (see below). `false` when the OS
    /// refuses (the slots stay unprepared and unused).
    ///
    /// Done as the sweep first reaches the slots rather than when the pool is made: the pool
    /// is made at the tracker's start, and preparing all 256 default slots there took 386
    /// `madvise` calls, ~3 ms of every process's start (`/bin/echo` under the instrumented
    /// library: 3.9 ms of CPU against 1.1 ms), most of which never guards an allocation.
    ///
    /// Mappings that differ in an attribute are never merged. With markers, every other slot
    /// (guard page and data pages) is set apart, slot 0 among them so that it does not merge
    /// with whatever mapping precedes the pool, so each slot stays one mapping and opening or
    /// closing slots changes whole mappings; without them, the guard pages are, so each
    /// slot's data pages stay one mapping. Either way no `mprotect` splits or merges a
    /// mapping (splitting and merging the pool's mapping at each opening and closing cost 11.6
    /// instead of 4.8 µs for the two calls, measured with 64 of 256 slots live). A prepared
    /// run ends after a slot that is set apart (or at the pool's end), so its last slot does
    /// not merge with the unprepared rest either. Where the OS refuses, the pool works as
    /// before, at the higher price; so does a pool of more than `SET_APART_MAX_SLOTS` slots.
    fn prepare(&self, free: &mut FreeSlots, slot: usize) -> bool {
        let from = free.prepared;
        let want = (slot + 1).max(from + PREPARE_RUN);
        // An odd end: slot `to - 1`, the run's last, is even, so set apart with markers.
        let to = if want >= self.slots {
            self.slots
        } else {
            want | 1
        };
        let guard_page = |i: usize| {
            // SAFETY: guard page `i <= slots` lies inside the pool's mapping.
            unsafe { NonNull::new_unchecked((self.base + i * self.stride) as *mut u8) }
        };
        for i in from..to {
            // SAFETY: guard page `i` (and, below, slot `i`'s unit or the next guard page) is
            // part of our mapping and holds nothing: slot `i` was never used.
            unsafe {
                // Slot 0's marker was installed by `with_layout`, which asked for it.
                if self.markers
                    && i > 0
                    && !os_memory::install_guard_markers(guard_page(i), self.page)
                {
                    free.prepared = i;
                    return i > slot;
                }
                if self.set_apart {
                    if !self.markers {
                        os_memory::set_apart(guard_page(i + 1), self.page);
                    } else if i % 2 == 0 {
                        os_memory::set_apart(guard_page(i), self.stride);
                    }
                }
            }
        }
        if to == self.slots && self.markers && self.set_apart && to % 2 == 0 {
            // SAFETY: the last guard page, part of our mapping.
            unsafe { os_memory::set_apart(guard_page(to), self.page) };
        }
        free.prepared = to;
        true
    }

    /// Largest block a slot takes.
    pub(crate) fn max_size(&self) -> usize {
        self.data
    }

    /// Whether `addr` lies anywhere in the pool (guard pages included).
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr < self.base + self.len
    }

    fn meta(&self, slot: usize) -> &SlotMeta {
        // SAFETY: callers pass slot < self.slots; the array is zero-initialised (valid atomics)
        // and lives as long as the pool.
        unsafe { &*self.meta.as_ptr().add(slot) }
    }

    fn data_start(&self, slot: usize) -> usize {
        self.base + self.page + slot * self.stride
    }

    /// Places a block in a free slot. `random` in (0, 1] picks underflow placement. `None`
    /// when every slot is in use (the caller falls back to the ordinary heap).
    /// Takes the lock and keeps it (fork's prepare handler, [`crate::fork`]).
    #[cfg(unix)]
    pub(crate) fn hold_for_fork(&self) {
        self.free.hold();
    }

    /// Releases the lock [`GuardPool::hold_for_fork`] took.
    ///
    /// # Safety
    /// After `hold_for_fork` on this thread (or, in a forked child, the thread that forked),
    /// once.
    #[cfg(unix)]
    pub(crate) unsafe fn release_after_fork(&self) {
        // SAFETY: the caller's contract: held through `hold_for_fork`.
        unsafe { self.free.release_held() };
    }

    pub(crate) fn allocate(
        &self,
        size: usize,
        align: usize,
        random: f64,
        alloc_stack: u32,
        thread: u32,
    ) -> Option<usize> {
        if size > self.data || align > self.page {
            return None;
        }
        let slot = {
            let mut free = self.free.lock();
            let slot = self.pick(&mut free)?;
            if slot >= free.prepared && !self.prepare(&mut free, slot) {
                return None;
            }
            let freed_at = free.freed_at(slot);
            free.set_freed_at(slot, TAKEN);
            free.free -= 1;
            free.clock += 1;
            if !free.is_open(slot) && !self.open(&mut free, slot) {
                free.set_freed_at(slot, freed_at);
                free.free += 1;
                return None;
            }
            free.set_open(slot, false);
            slot
        };
        let start = self.data_start(slot);
        let end = start + self.data;
        let ptr = if random <= self.underflow_share {
            start
        } else {
            (end - size) & !(align - 1)
        };
        let m = self.meta(slot);
        let zones = self.slack_zones(slot, ptr, size);
        // SAFETY: both zones lie in the slot's data pages, accessible and ours; the block is
        // left alone.
        unsafe {
            canary::fill(zones.before.0, zones.before.1);
            canary::fill(zones.after.0, zones.after.1);
        }
        // Relaxed stores, published by the Release store of `state`.
        m.ptr.store(ptr, Ordering::Relaxed);
        m.size.store(size, Ordering::Relaxed);
        m.alloc_stack.store(alloc_stack, Ordering::Relaxed);
        m.free_stack.store(0, Ordering::Relaxed);
        m.alloc_thread.store(thread, Ordering::Relaxed);
        m.state.store(LIVE, Ordering::Release);
        Some(ptr)
    }

    /// The next free slot of the sweep: the first in address order from the cursor that is
    /// open already or has stayed closed long enough (`FreeSlots::old_enough`); failing that,
    /// the one freed longest ago. The sweep, unlike a queue, lets `open` open the slots after
    /// the one it takes, which come next, with the same call.
    fn pick(&self, free: &mut FreeSlots) -> Option<usize> {
        if free.free == 0 {
            return None;
        }
        let mut oldest: Option<(usize, u64)> = None;
        for _ in 0..self.slots {
            let slot = free.cursor;
            free.cursor = if slot + 1 == self.slots { 0 } else { slot + 1 };
            let freed_at = free.freed_at(slot);
            if freed_at == TAKEN {
                continue;
            }
            if free.is_open(slot) || free.old_enough(freed_at) {
                return Some(slot);
            }
            if oldest.is_none_or(|(_, at)| freed_at < at) {
                oldest = Some((slot, freed_at));
            }
        }
        let (slot, _) = oldest?;
        free.cursor = if slot + 1 == self.slots { 0 } else { slot + 1 };
        Some(slot)
    }

    /// Makes `slot`'s data pages accessible (the caller has just taken it); with guard markers
    /// also those of the free slots right after it that are old enough to be reused, up to
    /// `OPEN_RUN` slots in all, in one call: they are the sweep's next ones. `false` when the
    /// OS refuses. Called under the lock, so no slot of the run is taken or freed meanwhile.
    fn open(&self, free: &mut FreeSlots, slot: usize) -> bool {
        if !self.markers {
            // SAFETY: the slot's data pages are part of our mapping and the slot is ours now.
            return unsafe {
                SystemOs.protect(
                    NonNull::new_unchecked(self.data_start(slot) as *mut u8),
                    self.data,
                    Access::ReadWrite,
                )
            };
        }
        let mut end = slot + 1;
        while end < free.prepared && end - slot < OPEN_RUN {
            let freed_at = free.freed_at(end);
            if freed_at == TAKEN || free.is_open(end) || !free.old_enough(freed_at) {
                break;
            }
            end += 1;
        }
        // SAFETY: slots `slot..end` are part of our mapping; the first is ours, the others
        // free, closed and old enough, and nobody takes or frees them while we hold the lock;
        // their guard pages hold guard markers, which fault whatever the protection.
        let ok = unsafe {
            SystemOs.protect(
                NonNull::new_unchecked(self.unit_start(slot) as *mut u8),
                (end - slot) * self.stride,
                Access::ReadWrite,
            )
        };
        if ok {
            for opened in slot + 1..end {
                free.set_open(opened, true);
            }
        }
        ok
    }

    /// The slack zones of a block at `ptr` of `size` bytes in `slot` that hold the pattern.
    fn slack_zones(&self, slot: usize, ptr: usize, size: usize) -> SlackZones {
        let start = self.data_start(slot);
        let end = start + self.data;
        let before = ptr.saturating_sub(SLACK_CHECKED).max(start);
        let after = ptr + size;
        SlackZones {
            before: (before, ptr - before),
            after: (after, (after + SLACK_CHECKED).min(end) - after),
        }
    }

    /// The start of slot `slot`'s unit: its guard page, then its data pages.
    fn unit_start(&self, slot: usize) -> usize {
        self.base + slot * self.stride
    }

    fn slot_of(&self, ptr: usize) -> Option<usize> {
        if !self.contains(ptr) || ptr < self.base + self.page {
            return None;
        }
        let slot = (ptr - self.base - self.page) / self.stride;
        (slot < self.slots).then_some(slot)
    }

    /// Frees a guarded block: checks the slack, makes the slot inaccessible and queues it last
    /// for reuse. Returns the first damage found in the slack.
    pub(crate) fn free(&self, ptr: usize, free_stack: u32, thread: u32) -> Option<SlackDamage> {
        let slot = self.slot_of(ptr)?;
        let m = self.meta(slot);
        // Acquire pairs with the Release in `allocate`.
        if m.state.load(Ordering::Acquire) != LIVE || m.ptr.load(Ordering::Relaxed) != ptr {
            return None;
        }
        let size = m.size.load(Ordering::Relaxed);
        let zones = self.slack_zones(slot, ptr, size);
        // SAFETY: the zones lie in the slot's data pages, live and accessible until we protect
        // them below.
        let damage = unsafe {
            if let Some(a) = canary::first_damaged(zones.after.0, zones.after.1) {
                Some(SlackDamage {
                    kind: ReportKind::HeapBufferOverflow,
                    address: a,
                })
            } else {
                canary::last_damaged(zones.before.0, zones.before.1).map(|a| SlackDamage {
                    kind: ReportKind::HeapBufferUnderflow,
                    address: a,
                })
            }
        };
        m.free_stack.store(free_stack, Ordering::Relaxed);
        m.free_thread.store(thread, Ordering::Relaxed);
        // Release: the free stack is visible to whoever reads the state.
        m.state.store(FREED, Ordering::Release);
        // The pages stay committed (at most `slots` × the slot size of memory, 1 MiB at the
        // default options): decommitting them cost a syscall here and a page fault with
        // zeroing at the slot's next use, most of a guarded allocation's price.
        // With markers the slot's mapping is its guard page and data pages (see `new`), and
        // the guard page faults under any protection.
        let (close, len) = if self.markers {
            (self.unit_start(slot), self.stride)
        } else {
            (self.data_start(slot), self.data)
        };
        // SAFETY: the range is this slot's, ours; nothing may touch it from now on.
        unsafe {
            let p = NonNull::new_unchecked(close as *mut u8);
            SystemOs.protect(p, len, Access::None);
        }
        self.release_slot(slot);
        damage
    }

    /// Returns a closed slot to the free ones.
    fn release_slot(&self, slot: usize) {
        let mut free = self.free.lock();
        let clock = free.clock;
        free.set_freed_at(slot, clock);
        free.set_open(slot, false);
        free.free += 1;
    }

    /// Explains a fault at `addr` inside the pool. Lock-free (called from a signal handler).
    pub(crate) fn classify(&self, addr: usize) -> Option<FaultInfo> {
        if !self.contains(addr) {
            return None;
        }
        let offset = addr - self.base;
        let slot_index = offset / self.stride;
        let within = offset % self.stride;
        let info = |slot: usize, kind: ReportKind| {
            let m = self.meta(slot);
            // Relaxed loads after the Acquire load of the state done by the caller.
            FaultInfo {
                kind,
                block_start: m.ptr.load(Ordering::Relaxed),
                block_size: m.size.load(Ordering::Relaxed),
                alloc_stack: m.alloc_stack.load(Ordering::Relaxed),
                free_stack: m.free_stack.load(Ordering::Relaxed),
                alloc_thread: m.alloc_thread.load(Ordering::Relaxed),
                free_thread: m.free_thread.load(Ordering::Relaxed),
            }
        };
        // Acquire: pairs with the Release stores of the state.
        let state = |slot: usize| {
            if slot < self.slots {
                self.meta(slot).state.load(Ordering::Acquire)
            } else {
                NEVER_USED
            }
        };
        if within >= self.page {
            // Inside slot data: only a freed slot is inaccessible there.
            return match state(slot_index) {
                FREED => Some(info(slot_index, ReportKind::UseAfterFree)),
                _ => None,
            };
        }
        // A guard page: after slot_index - 1, before slot_index. Prefer a live neighbour,
        // then the nearer block.
        let before = slot_index.checked_sub(1);
        let after = (slot_index < self.slots).then_some(slot_index);
        let candidates = [
            before.map(|s| (s, ReportKind::HeapBufferOverflow)),
            after.map(|s| (s, ReportKind::HeapBufferUnderflow)),
        ];
        let mut best: Option<(usize, ReportKind, usize, bool)> = None;
        for (slot, kind) in candidates.into_iter().flatten() {
            let st = state(slot);
            if st == NEVER_USED {
                continue;
            }
            let m = self.meta(slot);
            let start = m.ptr.load(Ordering::Relaxed);
            let end = start + m.size.load(Ordering::Relaxed);
            let distance = if addr >= end {
                addr - end
            } else {
                start.saturating_sub(addr)
            };
            let live = st == LIVE;
            let better = match best {
                None => true,
                Some((_, _, d, l)) => (live && !l) || (live == l && distance < d),
            };
            if better {
                best = Some((slot, kind, distance, live));
            }
        }
        best.map(|(slot, kind, _, live)| {
            info(slot, if live { kind } else { ReportKind::UseAfterFree })
        })
    }

    /// The size of the live guarded block starting at `ptr`.
    #[cfg(test)]
    pub(crate) fn block_size(&self, ptr: usize) -> Option<usize> {
        let slot = self.slot_of(ptr)?;
        let m = self.meta(slot);
        // Acquire: pairs with the Release in `allocate`.
        (m.state.load(Ordering::Acquire) == LIVE && m.ptr.load(Ordering::Relaxed) == ptr)
            .then(|| m.size.load(Ordering::Relaxed))
    }

    /// The pool's address range (start, length), to keep it out of the leak scan's roots.
    pub(crate) fn range(&self) -> (usize, usize) {
        (self.base, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts: with guard markers (where the kernel has them) and without.
    fn pools(slots: usize, max_size: usize, underflow_share: f64) -> [GuardPool; 2] {
        [true, false].map(|markers| {
            GuardPool::with_layout(slots, max_size, underflow_share, markers).unwrap()
        })
    }

    #[test]
    fn right_aligned_blocks_touch_the_guard_page_and_slots_rotate() {
        for pool in pools(4, 100, 0.0) {
            rotate(&pool);
        }
    }

    fn rotate(pool: &GuardPool) {
        let p = pool.allocate(24, 8, 0.5, 1, 1).unwrap();
        let page = os_memory::page_size();
        assert_eq!((p + 24) % page, 0, "block ends at the guard page");
        // SAFETY: the block is live and 24 bytes long.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0xAB, 24) };
        assert_eq!(pool.block_size(p), Some(24));
        let info = pool.classify(p + 24).unwrap();
        assert_eq!(
            (info.kind, info.block_start, info.block_size),
            (ReportKind::HeapBufferOverflow, p, 24)
        );
        assert_eq!(pool.free(p, 2, 1), None);
        let info = pool.classify(p + 3).unwrap();
        assert_eq!((info.kind, info.free_stack), (ReportKind::UseAfterFree, 2));
        // The freed slot is the last to be reused.
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(pool.allocate(8, 8, 0.5, 0, 1).unwrap());
        }
        assert!(others.iter().all(|&o| o / page != p / page));
        assert_eq!(
            pool.allocate(8, 8, 0.5, 0, 1).map(|q| q / page),
            Some(p / page)
        );
    }

    #[test]
    fn slack_damage_and_underflow_placement() {
        for pool in pools(2, 4096, 1.0) {
            underflow_placement(&pool);
        }
    }

    fn underflow_placement(pool: &GuardPool) {
        let p = pool.allocate(13, 8, 0.5, 0, 1).unwrap();
        assert_eq!(p % os_memory::page_size(), 0, "left-aligned for underflow");
        let info = pool.classify(p - 1).unwrap();
        assert_eq!(info.kind, ReportKind::HeapBufferUnderflow);
        // SAFETY: the slot's slack after the block is accessible (the pool's own memory).
        unsafe { *((p + 13) as *mut u8) ^= 0xFF };
        let damage = pool.free(p, 0, 1).unwrap();
        assert_eq!(
            damage,
            SlackDamage {
                kind: ReportKind::HeapBufferOverflow,
                address: p + 13
            }
        );
    }

    #[test]
    fn a_reused_slot_holds_the_pattern_around_the_new_block() {
        // One slot, blocks left-aligned: the second block lies inside the first one's bytes.
        for pool in pools(1, 4096, 1.0) {
            reused_slot(&pool);
        }
    }

    fn reused_slot(pool: &GuardPool) {
        let p = pool.allocate(200, 8, 0.5, 0, 1).unwrap();
        // SAFETY: the block is live and 200 bytes long.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0x5A, 200) };
        assert_eq!(pool.free(p, 0, 1), None, "a clean free");
        let q = pool.allocate(16, 8, 0.5, 0, 1).unwrap();
        assert_eq!(q, p, "the same slot, the same place");
        // SAFETY: the slot's data pages are accessible while it is live (the pool's memory).
        unsafe {
            assert_eq!(canary::first_damaged(q + 16, SLACK_CHECKED), None);
            // A write where the first block's bytes were, now slack, is caught at free.
            *((q + 100) as *mut u8) = 0x5A;
        }
        assert_eq!(
            pool.free(q, 0, 1),
            Some(SlackDamage {
                kind: ReportKind::HeapBufferOverflow,
                address: q + 100
            })
        );
        // After a damaged free, the next use's zone holds the pattern again.
        let r = pool.allocate(16, 8, 0.5, 0, 1).unwrap();
        // SAFETY: as above.
        let zone = unsafe { canary::first_damaged(r + 16, SLACK_CHECKED) };
        assert_eq!(zone, None);
        assert_eq!(pool.free(r, 0, 1), None);
    }

    #[test]
    fn damage_beyond_the_checked_slack_is_never_blamed_on_the_next_block() {
        for pool in pools(1, 4096, 1.0) {
            // A write past the checked zone of a 16-byte block goes unseen at its free...
            let p = pool.allocate(16, 8, 0.5, 0, 1).unwrap();
            let far = p + 16 + SLACK_CHECKED + 10;
            // SAFETY: the slot's data pages are accessible while it is live (the pool's memory).
            unsafe { *(far as *mut u8) ^= 0xFF };
            assert_eq!(pool.free(p, 0, 1), None);
            // ...and the next block, whose zone covers that byte, finds its zone whole.
            let q = pool.allocate(64, 8, 0.5, 0, 1).unwrap();
            assert_eq!(q, p);
            assert!(q + 64 < far && far < q + 64 + SLACK_CHECKED);
            assert_eq!(pool.free(q, 0, 1), None);
        }
    }

    #[test]
    fn the_checked_slack_is_next_to_the_block_on_both_sides() {
        // Right-aligned: the zone before the block is checked up to SLACK_CHECKED bytes away.
        for pool in pools(1, 4096, 0.0) {
            let p = pool.allocate(24, 8, 0.5, 0, 1).unwrap();
            // SAFETY: the byte is in the slot's slack, accessible while the slot is live.
            unsafe { *((p - SLACK_CHECKED) as *mut u8) ^= 0xFF };
            assert_eq!(
                pool.free(p, 0, 1),
                Some(SlackDamage {
                    kind: ReportKind::HeapBufferUnderflow,
                    address: p - SLACK_CHECKED
                })
            );
            // The alignment slack after a right-aligned block is checked too.
            let q = pool.allocate(13, 8, 0.5, 0, 1).unwrap();
            // SAFETY: as above (the three bytes between the block and the guard page).
            unsafe { *((q + 15) as *mut u8) ^= 0xFF };
            assert_eq!(
                pool.free(q, 0, 1),
                Some(SlackDamage {
                    kind: ReportKind::HeapBufferOverflow,
                    address: q + 15
                })
            );
        }
    }

    #[test]
    fn a_slot_just_freed_at_the_cursor_waits_for_an_older_one() {
        for pool in pools(8, 64, 0.0) {
            let slot = |p: usize| pool.slot_of(p).unwrap();
            let live: Vec<usize> = (0..6)
                .map(|_| pool.allocate(8, 8, 0.5, 0, 1).unwrap())
                .collect();
            assert_eq!(
                live.iter().map(|&p| slot(p)).collect::<Vec<_>>(),
                [0, 1, 2, 3, 4, 5]
            );
            assert_eq!(pool.free(live[1], 0, 1), None);
            let six = pool.allocate(8, 8, 0.5, 0, 1).unwrap();
            let seven = pool.allocate(8, 8, 0.5, 0, 1).unwrap();
            assert_eq!((slot(six), slot(seven)), (6, 7), "never-used slots first");
            // The sweep is back at slot 0: freed now, it is younger than slot 1 (freed two
            // allocations ago), which is taken instead.
            assert_eq!(pool.free(live[0], 0, 1), None);
            let next = pool.allocate(8, 8, 0.5, 0, 1).unwrap();
            assert_eq!(slot(next), 1);
            assert_eq!(slot(pool.allocate(8, 8, 0.5, 0, 1).unwrap()), 0);
        }
    }

    #[test]
    fn with_markers_one_call_opens_a_run_and_free_closes_at_once() {
        let pool = GuardPool::with_layout(16, 64, 0.0, true).unwrap();
        if !pool.markers {
            return; // The kernel has no guard markers (before Linux 6.13): nothing to test.
        }
        let p = pool.allocate(8, 8, 0.5, 0, 1).unwrap();
        {
            let free = pool.free.lock();
            let open: Vec<bool> = (0..16).map(|s| free.is_open(s)).collect();
            let mut expected = [false; 16];
            expected[1..OPEN_RUN].fill(true);
            assert_eq!(open, expected, "slot 0 taken, the next ones opened with it");
        }
        // The slots opened ahead are taken without another call, and the pages are there.
        let q = pool.allocate(8, 8, 0.5, 0, 1).unwrap();
        assert_eq!(pool.slot_of(q), Some(1));
        // SAFETY: both blocks are live and 8 bytes long.
        unsafe {
            (p as *mut u64).write(1);
            (q as *mut u64).write(2);
        }
        assert_eq!(pool.free(q, 0, 1), None);
        assert!(
            !pool.free.lock().is_open(1),
            "a freed slot is closed, not open"
        );
        let info = pool.classify(q).unwrap();
        assert_eq!(info.kind, ReportKind::UseAfterFree);
        // The guard page between slots 0 and 1, opened in one call, still faults: it is
        // classified as the pool's (the fault itself is the corruption suite's to show).
        assert_eq!(
            pool.classify(p + 8).map(|i| i.kind),
            Some(ReportKind::HeapBufferOverflow)
        );
        assert_eq!(pool.free(p, 0, 1), None);
    }

    /// Whether the byte at `addr` can be read, asked of the kernel (a write from it into a
    /// pipe fails with EFAULT where it cannot) instead of by faulting.
    #[cfg(unix)]
    fn readable(addr: usize) -> bool {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors, closed below; write reads one byte at `addr`
        // in the kernel, which reports an inaccessible byte instead of faulting.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let n = libc::write(fds[1], addr as *const libc::c_void, 1);
            libc::close(fds[0]);
            libc::close(fds[1]);
            n == 1
        }
    }

    #[cfg(unix)]
    #[test]
    fn slots_are_prepared_as_the_sweep_reaches_them_and_guard_alike() {
        for pool in pools(100, 64, 0.0) {
            assert_eq!(
                pool.free.lock().prepared,
                0,
                "nothing prepared before a guarded block"
            );
            let blocks: Vec<usize> = (0..40)
                .map(|_| pool.allocate(24, 8, 0.5, 0, 1).unwrap())
                .collect();
            // Slot 0 asked for PREPARE_RUN (an odd end: 33), slot 33 for as many more.
            assert_eq!(pool.free.lock().prepared, 65);
            for (i, &p) in blocks.iter().enumerate() {
                assert_eq!(pool.slot_of(p), Some(i));
                assert!(
                    readable(p) && readable(p + 23),
                    "slot {i}'s block is accessible"
                );
                assert!(!readable(p + 24), "slot {i}'s next guard page faults");
                assert!(
                    !readable(pool.data_start(i) - 1),
                    "slot {i}'s guard page faults"
                );
            }
            for p in blocks {
                assert_eq!(pool.free(p, 0, 1), None);
                assert!(!readable(p), "a freed slot faults");
            }
        }
    }
}

//! The stack: bump allocation in one region, freed in LIFO order, by markers, or all at once.
//! The model case is a game loop's per-frame memory:
//!
//! ```
//! use core::mem::MaybeUninit;
//! use allocscope_core::{stack::Stack, typed::TypedAlloc};
//!
//! let mut buffer = [MaybeUninit::<u8>::uninit(); 4096];
//! let mut stack = Stack::from_buffer(&mut buffer);
//! for _frame in 0..3 {
//!     let frame = stack.scope(); // everything allocated through `frame` goes at its end
//!     let mut names = allocator_api2::vec::Vec::new_in(&frame);
//!     names.push(7u32);
//!     let boxed = frame.boxed([0u8; 64]).unwrap();
//!     assert_eq!(boxed.len(), 64);
//! }
//! assert_eq!(stack.stats().used_bytes, 0);
//! ```
//!
//! Freeing the block on top pops it, and the alignment padding in front of it (remembered as a
//! gap when the block was allocated). Freeing any other block is *reported* (counted as misuse
//! and recorded as [`AllocErrorKind::OutOfOrderFree`]) and its bytes become a gap that the top
//! absorbs when it comes down to it. At most [`TRACKED_HOLES`] gaps are remembered; beyond
//! that a gap stays used until a reset (and a padded block's LIFO free may be reported as out
//! of order, which it then is for the padding). A free above the top is refused as
//! [`AllocErrorKind::DoubleFree`], a pointer outside the region as
//! [`AllocErrorKind::InvalidFree`]. These checks are a few comparisons and run in every build.
//!
//! The allocation fast path is a bump of the top: with a constant alignment up to [`GRAIN`],
//! two loads, a compare, an add and a store. Statistics follow from the top; the operation
//! counts are kept with the `stats` feature only.
//!
//! May touch: [`crate::region`], [`crate::os`], [`crate::strategy_stats`], [`crate::error`].

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

use crate::error::AllocErrorKind;
use crate::os::{align_up, Os};
use crate::region::Region;
use crate::strategy_stats::{ratio, Counters, StrategyStats};
use crate::typed::{impl_allocator_api2, TypedAlloc};

/// Block sizes are rounded up to this many bytes and the top stays on it, so the common
/// alignments (up to 8) never need padding — and so never leave a gap a LIFO free must undo.
pub const GRAIN: usize = 8;

/// How many gaps below the top a stack remembers until the top comes down to them: holes of
/// out-of-order frees and the alignment padding in front of live blocks.
pub const TRACKED_HOLES: usize = 32;

/// A position of the top, to return to with [`Stack::reset_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Marker(usize);

/// A freed block below the top: `start..end` addresses.
#[derive(Clone, Copy, Debug, Default)]
struct Hole {
    start: usize,
    end: usize,
}

/// A LIFO / bump allocator. See the [module documentation](self).
pub struct Stack<'a> {
    /// The whole region (what is released to the OS).
    region: Region,
    /// The first byte on the grain; every block pointer derives from it (strict provenance).
    start: NonNull<u8>,
    /// Address one past the region.
    end: usize,
    /// The next free byte; derived from `region.base` (strict provenance).
    top: Cell<*mut u8>,
    holes: [Cell<Hole>; TRACKED_HOLES],
    hole_count: Cell<usize>,
    hole_bytes: Cell<usize>,
    os: Option<&'a dyn Os>,
    /// Failures, misuse, the peak top as of its last descent; the operation counts with the
    /// `stats` feature. `used` is `top - base` less the holes (see stats).
    counters: Counters,
    _buffer: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: the stack owns its region exclusively; moving it moves that ownership. Not Sync.
unsafe impl Send for Stack<'_> {}

impl<'a> Stack<'a> {
    fn over(region: Region, os: Option<&'a dyn Os>) -> Self {
        // Start and end on the grain, so the top always is (see GRAIN).
        let base = region.base.as_ptr() as usize;
        let skip = (align_up(base, GRAIN) - base).min(region.len);
        let len = (region.len - skip) & !(GRAIN - 1);
        // SAFETY: skip <= region.len.
        let start = unsafe { region.at(skip) };
        Stack {
            region,
            start,
            end: start.as_ptr() as usize + len,
            top: Cell::new(start.as_ptr()),
            holes: [const { Cell::new(Hole { start: 0, end: 0 }) }; TRACKED_HOLES],
            hole_count: Cell::new(0),
            hole_bytes: Cell::new(0),
            os,
            counters: Counters::new(),
            _buffer: PhantomData,
        }
    }

    /// A stack over a caller buffer.
    pub fn from_buffer(buffer: &'a mut [MaybeUninit<u8>]) -> Self {
        Self::over(Region::of_buffer(buffer), None)
    }

    /// A stack of `capacity` bytes reserved from `os` (released on drop). `None` if the OS
    /// refuses.
    pub fn with_os(os: &'a dyn Os, capacity: usize) -> Option<Self> {
        let region = Region::reserve(os, capacity.max(1), os.page_size())?;
        Some(Self::over(region, Some(os)))
    }

    /// A stack of `capacity` bytes of the operating system's memory.
    #[cfg(all(feature = "std", any(unix, windows)))]
    pub fn new(capacity: usize) -> Option<Stack<'static>> {
        Stack::with_os(&crate::region::SYSTEM_OS, capacity)
    }

    /// Bytes the stack spans.
    pub fn capacity(&self) -> usize {
        self.end - self.start.as_ptr() as usize
    }

    /// Bytes between the top and the end (the largest unaligned request that fits now).
    pub fn remaining(&self) -> usize {
        self.end - self.top.get() as usize
    }

    fn top_offset(&self) -> usize {
        self.top.get() as usize - self.start.as_ptr() as usize
    }

    /// The current top, to come back to with [`Stack::reset_to`].
    pub fn marker(&self) -> Marker {
        Marker(self.top_offset())
    }

    /// Frees everything allocated since `marker` was taken. A marker above the top (taken
    /// before an earlier, deeper reset) changes nothing.
    ///
    /// # Safety
    /// No block allocated after `marker` was taken is used afterwards. (A [`Scope`] is the safe
    /// way to do this.)
    pub unsafe fn reset_to(&self, marker: Marker) {
        let top = self.top_offset();
        if marker.0 > top {
            return;
        }
        self.note_peak();
        // SAFETY: marker.0 <= top offset: inside the stack.
        self.top.set(unsafe { self.start.as_ptr().add(marker.0) });
        let cut = self.start.as_ptr() as usize + marker.0;
        self.drop_holes_above(cut);
    }

    /// Frees everything.
    pub fn reset(&mut self) {
        // SAFETY: `&mut self` proves no block (and no scope) borrows the stack; raw pointers
        // from allocate_bytes are the caller's to stop using, as after any free.
        unsafe { self.reset_to(Marker(0)) }
    }

    /// A scope: allocate through it; everything it allocated is freed when it is dropped.
    pub fn scope(&mut self) -> Scope<'_, 'a> {
        Scope {
            marker: self.marker(),
            stack: self,
        }
    }

    /// The stack's figures. `fragmentation` is the share of free bytes sitting in gaps below the
    /// top (out-of-order frees and padding), usable again only once the top comes down to them.
    /// `peak_used_bytes` is the highest top, padding included.
    pub fn stats(&self) -> StrategyStats {
        let free = self.end - self.top.get() as usize;
        let holes = self.hole_bytes.get();
        let top = self.top_offset();
        let used = top - holes.min(top);
        let mut stats = self
            .counters
            .snapshot(used, free + holes, ratio(holes, free + holes));
        stats.peak_used_bytes = stats.peak_used_bytes.max(top);
        stats
    }

    /// Records the top as the peak before it comes down (the allocation path does not track
    /// the peak: the top only rises there).
    #[inline]
    fn note_peak(&self) {
        let top = self.top_offset();
        if top > self.counters.peak.get() {
            self.counters.peak.set(top);
        }
    }

    /// The holes tracked now (`hole_count <= TRACKED_HOLES`; read with `get`, so that no
    /// bounds check can panic: tests/no_panic.sh).
    #[inline]
    fn live_holes(&self) -> &[Cell<Hole>] {
        self.holes.get(..self.hole_count.get()).unwrap_or(&[])
    }

    /// Forgets holes starting at or above `cut` (the top came down past them).
    fn drop_holes_above(&self, cut: usize) {
        let mut i = 0;
        while let Some(hole) = self.live_holes().get(i).map(Cell::get) {
            if hole.start >= cut {
                self.remove_hole(i);
            } else {
                i += 1;
            }
        }
    }

    fn remove_hole(&self, i: usize) {
        let holes = self.live_holes();
        let (Some(slot), Some(last)) = (holes.get(i), holes.last()) else {
            return;
        };
        let hole = slot.get();
        self.hole_bytes
            .set(self.hole_bytes.get() - (hole.end - hole.start));
        slot.set(last.get());
        self.hole_count.set(holes.len() - 1);
    }

    /// Lowers the top to `new_top` (an address in the region), then past every hole that
    /// now ends at the top.
    #[inline]
    fn pop_to(&self, new_top: usize) {
        let mut new_top = new_top;
        if self.hole_count.get() != 0 {
            new_top = self.absorb_holes(new_top);
        }
        self.note_peak();
        let top = self.top.get();
        let drop = top as usize - new_top;
        // SAFETY: base <= new_top <= top, so the result stays inside the region.
        self.top.set(unsafe { top.sub(drop) });
    }

    #[cold]
    fn absorb_holes(&self, mut new_top: usize) -> usize {
        let mut i = 0;
        while let Some(hole) = self.live_holes().get(i).map(Cell::get) {
            if hole.end == new_top {
                new_top = hole.start;
                self.remove_hole(i);
                i = 0;
            } else {
                i += 1;
            }
        }
        new_top
    }

    /// Keeps the padding in front of a new block as a gap, so that freeing the block brings
    /// the top back below the padding too.
    #[cold]
    fn remember_padding(&self, start: usize, pad: usize) {
        let count = self.hole_count.get();
        if let Some(slot) = self.holes.get(count) {
            slot.set(Hole {
                start,
                end: start + pad,
            });
            self.hole_count.set(count + 1);
            self.hole_bytes.set(self.hole_bytes.get() + pad);
        }
    }

    /// A free that is not of the top block: classify, report, keep a hole.
    #[cold]
    #[inline(never)]
    fn free_below_top(&self, addr: usize, size: usize) {
        let top = self.top.get() as usize;
        let base = self.start.as_ptr() as usize;
        let Some(end) = addr.checked_add(size).map(grain) else {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        };
        if addr < base || end > self.end {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        }
        if size == 0 {
            // Owns no bytes (and may share its address with the padding the top took back).
            #[cfg(feature = "stats")]
            self.counters.count_deallocation();
            return;
        }
        if addr >= top {
            // Above the top: popped already (freed twice, or used after a reset).
            return self.counters.on_misuse(AllocErrorKind::DoubleFree);
        }
        if end > top {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        }
        for hole in self.live_holes() {
            let hole = hole.get();
            if addr < hole.end && hole.start < end {
                return self.counters.on_misuse(AllocErrorKind::DoubleFree);
            }
        }
        // Accepted, and reported: the bytes wait for the top to come down.
        self.counters.on_misuse(AllocErrorKind::OutOfOrderFree);
        #[cfg(feature = "stats")]
        self.counters.count_deallocation();
        let count = self.hole_count.get();
        if let Some(slot) = self.holes.get(count) {
            slot.set(Hole { start: addr, end });
            self.hole_count.set(count + 1);
            self.hole_bytes.set(self.hole_bytes.get() + (end - addr));
        }
    }
}

// SAFETY: blocks are disjoint pieces of the region between the old and the new top, aligned by
// the padding computed below; the top only comes down past a block when it is freed or when
// the caller resets (whose contract says the blocks above are no longer used).
unsafe impl TypedAlloc for Stack<'_> {
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let top = self.top.get();
        let addr = top as usize;
        // The top is always on the grain: alignments up to it need no padding (with a
        // constant alignment this test folds away, and the fast path is an add and a compare).
        let pad = if align <= GRAIN {
            0
        } else {
            addr.wrapping_neg() & (align - 1)
        };
        // `room` is a multiple of the grain (top and end are on it), so `size <= room` implies
        // `grain(size) <= room`.
        let room = self.end - addr;
        if size > room || pad > room - grain(size) {
            self.counters.on_failure(AllocErrorKind::Exhausted);
            return None;
        }
        // size <= room < usize::MAX - GRAIN: rounding up cannot wrap.
        let size = size.wrapping_add(GRAIN - 1) & !(GRAIN - 1);
        // SAFETY: pad + size <= room: both pointers stay inside the region.
        let (block, new_top) = unsafe { (top.add(pad), top.add(pad + size)) };
        self.top.set(new_top);
        if pad != 0 {
            self.remember_padding(addr, pad);
        }
        // Used bytes and the peak follow from the top (see stats); the count is the `stats`
        // feature's.
        #[cfg(feature = "stats")]
        self.counters.count_allocation();
        // SAFETY: derived from the region's non-null base by an in-bounds offset.
        Some(unsafe { NonNull::new_unchecked(block) })
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, _align: usize) {
        let addr = ptr.as_ptr() as usize;
        if addr.wrapping_add(grain(size)) == self.top.get() as usize
            && addr >= self.start.as_ptr() as usize
        {
            #[cfg(feature = "stats")]
            self.counters.count_deallocation();
            self.pop_to(addr);
        } else {
            self.free_below_top(addr, size);
        }
    }

    unsafe fn resize_in_place(&self, ptr: NonNull<u8>, old: usize, new: usize, _a: usize) -> bool {
        let addr = ptr.as_ptr() as usize;
        let top = self.top.get();
        if addr.wrapping_add(grain(old)) != top as usize || new > self.end - addr {
            return false;
        }
        self.note_peak();
        let offset = addr - self.start.as_ptr() as usize + grain(new);
        // SAFETY: addr + new <= end (end is on the grain) and addr >= start (a live block).
        // Derived from `start`, never from the caller's pointer (strict provenance).
        self.top.set(unsafe { self.start.as_ptr().add(offset) });
        true
    }
}

impl_allocator_api2!(['a] Stack<'a>);

/// `size` rounded up to the grain (sizes come from live blocks or were checked against the
/// room, so this cannot overflow in practice; it saturates if it would).
#[inline(always)]
fn grain(size: usize) -> usize {
    align_up(size, GRAIN)
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        if let Some(os) = self.os {
            // SAFETY: the region came from Region::reserve on this OS; nothing borrows the
            // stack any more.
            unsafe { self.region.release(os) }
        }
    }
}

impl core::fmt::Debug for Stack<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stack")
            .field("capacity", &self.capacity())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Allocations through a scope are freed together when it is dropped; it holds the stack
/// exclusively, so nothing else can allocate above its marker meanwhile.
#[derive(Debug)]
pub struct Scope<'s, 'a> {
    stack: &'s Stack<'a>,
    marker: Marker,
}

impl<'a> Scope<'_, 'a> {
    /// A nested scope, freed before this one can allocate again.
    pub fn scope(&mut self) -> Scope<'_, 'a> {
        Scope {
            stack: self.stack,
            marker: self.stack.marker(),
        }
    }

    /// The stack's figures.
    pub fn stats(&self) -> StrategyStats {
        self.stack.stats()
    }
}

// SAFETY: forwards to the stack, which upholds the contract; blocks stay valid until the scope
// is dropped, and every handle or collection using them borrows the scope.
unsafe impl TypedAlloc for Scope<'_, '_> {
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.stack.allocate_bytes(size, align)
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded unchanged.
        unsafe { self.stack.deallocate_bytes(ptr, size, align) }
    }

    unsafe fn resize_in_place(&self, ptr: NonNull<u8>, old: usize, new: usize, a: usize) -> bool {
        // SAFETY: forwarded unchanged.
        unsafe { self.stack.resize_in_place(ptr, old, new, a) }
    }
}

impl_allocator_api2!(['s, 'a] Scope<'s, 'a>);

impl Drop for Scope<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the scope borrowed the stack mutably since the marker was taken, so every
        // block above it was allocated through this scope (or a nested, already dropped one),
        // and whatever used them borrowed the scope and is gone.
        unsafe { self.stack.reset_to(self.marker) }
    }
}

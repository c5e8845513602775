//! The buddy allocator: power-of-two blocks in one region, split on allocation and coalesced
//! with their buddy on free, both in O(log n) (Knowlton 1965; Knuth, TAOCP vol. 1, 2.5).
//!
//! Blocks are aligned to their size in absolute addresses, so a block's buddy is
//! `address ^ size` and any power-of-two alignment up to the largest block is served by asking
//! for a block at least that large. All buddy state is in bitmaps, none in the blocks (a free
//! block's memory is never touched, so coalescing costs no cache misses on it):
//!
//! * `free`, per order: one bit per block, with summary levels above it (a bit per non-zero
//!   word below) up to a single word. Finding a free block descends the levels — O(log n),
//!   lowest address first, which keeps the heap compact; setting or clearing a bit climbs
//!   only while a word changes between zero and non-zero. A mask of non-empty orders picks
//!   the order to split from with one instruction.
//! * `allocated`, per order: the block was handed out at this order — a free of anything else
//!   (a double free, a foreign pointer, a wrong size) is refused and reported instead of
//!   corrupting the bitmaps. One bit test, so it runs in every build.
//!
//! Coalescing is lazy, with a bound: up to [`DEFERRED`] freed blocks per order wait on a short
//! list (the only use of block memory) and are handed out again first; more frees coalesce at
//! once, and an allocation that finds nothing coalesces the waiting ones before it fails.
//!
//! ```text
//! buffer: [order 0: free L0 | L1 | .. | allocated][order 1: ...] ... [heap: start .. end]
//! order k block index = (address - align_down(start, size_k)) / size_k
//! ```
//! Invariant: every byte of the heap is in exactly one block that is either free at its order
//! or allocated at its order; `used_bytes + free_bytes == heap size`.
//!
//! One thread at a time (no atomics); [`crate::spin::SpinLock`] shares it and makes it a
//! `GlobalAlloc` (see that module for a firmware `#[global_allocator]`).
//!
//! May touch: [`crate::region`], [`crate::os`], [`crate::strategy_stats`], [`crate::error`].

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::{self, NonNull};

use crate::error::AllocErrorKind;
use crate::os::{align_up, Os};
use crate::region::Region;
use crate::strategy_stats::{ratio, Counters, StrategyStats};
use crate::typed::{impl_allocator_api2, TypedAlloc};

/// The most orders a buddy allocator has (the largest block is `min_block << (MAX_ORDERS-1)`).
pub const MAX_ORDERS: usize = if usize::BITS == 64 { 40 } else { 26 };

/// Frees kept per order without coalescing (lazy buddy: Barkley & Lee, "A Lazy Buddy System
/// Bounded by Two Coalescing Delays", SOSP 1989). A program that frees and allocates the same
/// sizes over and over reuses them in O(1); beyond this many, frees coalesce at once.
pub const DEFERRED: usize = 16;

/// Bits per bitmap word, and its log.
const WORD: usize = usize::BITS as usize;
const WORD_LOG: u32 = usize::BITS.trailing_zeros();
/// Summary levels a free bitmap can have (enough for 2^(WORD_LOG * LEVELS) blocks).
const LEVELS: usize = 12;

/// Words of a bitmap of `bits` bits.
const fn words(bits: usize) -> usize {
    bits.div_ceil(WORD)
}

/// Words of a free bitmap of `bits` bits with its summary levels.
fn tree_words(bits: usize) -> usize {
    let (mut total, mut n) = (0, bits.max(1));
    loop {
        let w = words(n);
        total += w;
        if w == 1 {
            return total;
        }
        n = w;
    }
}

/// Where the heap is and where its bitmaps are; written once by `init`.
struct Geometry {
    /// Pointer to `start`, the source of every block pointer (strict provenance).
    base: *mut u8,
    start: usize,
    end: usize,
    /// Number of orders with at least one possible block.
    orders: usize,
    /// The bitmaps; offsets below are in words from here.
    maps: *mut usize,
    /// Per order: block slots (bits of the free bitmap's level 0), where the free bitmap
    /// starts, where its top (single-word) level is, and where the allocated bitmap starts.
    blocks: [usize; MAX_ORDERS],
    free_at: [usize; MAX_ORDERS],
    top_at: [usize; MAX_ORDERS],
    allocated_at: [usize; MAX_ORDERS],
    /// The reserved region, when it came from the OS.
    os_region: Option<Region>,
}

/// A buddy allocator. See the [module documentation](self).
pub struct Buddy<'a> {
    min_block: usize,
    min_shift: u32,
    geo: UnsafeCell<Geometry>,
    /// Bit k set: some block of order k is free in the bitmaps.
    nonempty: Cell<u64>,
    /// Per order: freed blocks not coalesced yet (a LIFO list through their first word, 0
    /// ends it) and how many.
    deferred: [Cell<usize>; MAX_ORDERS],
    deferred_len: [Cell<usize>; MAX_ORDERS],
    heap_bytes: Cell<usize>,
    os: Option<&'a dyn Os>,
    counters: Counters,
    _buffer: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: the buddy owns its region exclusively; moving it moves that ownership. Not Sync.
unsafe impl Send for Buddy<'_> {}

impl<'a> Buddy<'a> {
    /// A buddy allocator without memory, with blocks of at least `min_block` bytes (rounded
    /// up to a power of two, at least 8). Give it its region with [`Buddy::init`]. `const`,
    /// for a `static` inside a [`crate::spin::SpinLock`].
    pub const fn empty(min_block: usize) -> Self {
        let min = if min_block < 8 { 8 } else { min_block };
        let min_block = match min.checked_next_power_of_two() {
            Some(m) => m,
            None => 1 << (usize::BITS - 1),
        };
        Buddy {
            min_block,
            min_shift: min_block.trailing_zeros(),
            geo: UnsafeCell::new(Geometry {
                base: ptr::null_mut(),
                start: 0,
                end: 0,
                orders: 0,
                maps: ptr::null_mut(),
                blocks: [0; MAX_ORDERS],
                free_at: [0; MAX_ORDERS],
                top_at: [0; MAX_ORDERS],
                allocated_at: [0; MAX_ORDERS],
                os_region: None,
            }),
            nonempty: Cell::new(0),
            deferred: [const { Cell::new(0) }; MAX_ORDERS],
            deferred_len: [const { Cell::new(0) }; MAX_ORDERS],
            heap_bytes: Cell::new(0),
            os: None,
            counters: Counters::new(),
            _buffer: PhantomData,
        }
    }

    /// A buddy allocator over a caller buffer (its bitmaps included). `None` when the buffer
    /// cannot hold one block.
    pub fn from_buffer(buffer: &'a mut [MaybeUninit<u8>], min_block: usize) -> Option<Self> {
        let buddy = Self::empty(min_block);
        buddy.init(buffer).then_some(buddy)
    }

    /// A buddy allocator of `capacity` bytes (bitmaps included) reserved from `os`, aligned to
    /// the capacity rounded up to a power of two so the largest blocks are whole.
    pub fn with_os(os: &'a dyn Os, capacity: usize, min_block: usize) -> Option<Self> {
        let mut buddy = Self::empty(min_block);
        let align = capacity.checked_next_power_of_two()?.max(os.page_size());
        let region = Region::reserve(os, capacity, align)?;
        buddy.os = Some(os);
        // SAFETY: a fresh region of ours, released in Drop through geo.os_region.
        if unsafe { buddy.init_region(region) } {
            buddy.geo.get_mut().os_region = Some(region);
            Some(buddy)
        } else {
            // SAFETY: the region just reserved; nothing uses it.
            unsafe { region.release(os) };
            None
        }
    }

    /// A buddy allocator of `capacity` bytes of the operating system's memory, 32-byte
    /// minimum blocks.
    #[cfg(all(feature = "std", any(unix, windows)))]
    pub fn new(capacity: usize) -> Option<Buddy<'static>> {
        Buddy::with_os(&crate::region::SYSTEM_OS, capacity, 32)
    }

    /// Gives an [`empty`](Buddy::empty) allocator its buffer. `false` when it already has one
    /// or the buffer cannot hold a block.
    pub fn init(&self, buffer: &'a mut [MaybeUninit<u8>]) -> bool {
        // SAFETY: the buffer is lent for 'a, which the allocator cannot outlive.
        unsafe { self.init_region(Region::of_buffer(buffer)) }
    }

    fn geo(&self) -> &Geometry {
        // SAFETY: the geometry is written only by init_region while no reference from this
        // function is alive (the allocator is !Sync and init_region holds none).
        unsafe { &*self.geo.get() }
    }

    /// Lays bitmaps and the heap over `region` and frees the heap as maximal aligned blocks.
    ///
    /// # Safety
    /// `region` is memory the allocator may use until dropped, used by nothing else.
    unsafe fn init_region(&self, region: Region) -> bool {
        if self.geo().orders != 0 {
            return false;
        }
        let (b0, b1) = (region.base.as_ptr() as usize, region.end_addr());
        let mut orders = 0;
        while orders < MAX_ORDERS
            && (orders as u32 + self.min_shift) < usize::BITS - 1
            && (self.min_block << orders) <= region.len
        {
            orders += 1;
        }
        if orders == 0 {
            return false;
        }
        // Bitmaps are sized for the whole buffer: the heap is a part of it, so its block
        // indices at every order stay below these counts.
        let mut blocks = [0; MAX_ORDERS];
        let mut free_at = [0; MAX_ORDERS];
        let mut top_at = [0; MAX_ORDERS];
        let mut allocated_at = [0; MAX_ORDERS];
        let mut total = 0;
        for k in 0..orders {
            let size = self.min_block << k;
            blocks[k] = (align_up(b1, size) - (b0 & !(size - 1))) >> (self.min_shift as usize + k);
            free_at[k] = total;
            total += tree_words(blocks[k]);
            top_at[k] = total - 1;
            allocated_at[k] = total;
            total += words(blocks[k]);
        }
        let maps_off = align_up(b0, align_of::<usize>()) - b0;
        let Some(start) = total
            .checked_mul(size_of::<usize>())
            .and_then(|bytes| (b0 + maps_off).checked_add(bytes))
            .map(|end_of_maps| align_up(end_of_maps, self.min_block))
        else {
            return false;
        };
        let end = b1 & !(self.min_block - 1);
        if start >= end {
            return false;
        }
        // SAFETY: the bitmaps end before `start` < b1: inside the region, which is ours.
        let maps = unsafe { region.at(maps_off) }.as_ptr().cast::<usize>();
        // SAFETY: as above.
        unsafe { ptr::write_bytes(maps, 0, total) };
        // SAFETY: start < end <= b1.
        let base = unsafe { region.at(start - b0) }.as_ptr();
        // SAFETY: no reference to the geometry is alive (see geo()).
        unsafe {
            *self.geo.get() = Geometry {
                base,
                start,
                end,
                orders,
                maps,
                blocks,
                free_at,
                top_at,
                allocated_at,
                os_region: None,
            };
        }
        let mut cur = start;
        while cur < end {
            let mut k = orders - 1;
            while cur & ((self.min_block << k) - 1) != 0 || cur + (self.min_block << k) > end {
                k -= 1;
            }
            self.mark_free(k, cur);
            cur += self.min_block << k;
        }
        self.heap_bytes.set(end - start);
        true
    }

    /// The order serving `size` bytes aligned to `align`; `None` if none can.
    #[inline]
    fn order_of(&self, size: usize, align: usize) -> Option<usize> {
        let need = size.max(align).max(self.min_block);
        if need > 1 << (usize::BITS - 2) {
            return None;
        }
        let k = (need.next_power_of_two().trailing_zeros() - self.min_shift) as usize;
        (k < self.geo().orders).then_some(k)
    }

    /// The index of the order-`k` block at `addr`.
    #[inline(always)]
    fn index(&self, k: usize, addr: usize) -> usize {
        let shift = self.min_shift as usize + k;
        (addr - (self.geo().start & !((1usize << shift) - 1))) >> shift
    }

    /// The address of the order-`k` block of index `index`.
    #[inline(always)]
    fn address(&self, k: usize, index: usize) -> usize {
        let shift = self.min_shift as usize + k;
        (self.geo().start & !((1usize << shift) - 1)) + (index << shift)
    }

    #[inline(always)]
    fn word(&self, at: usize) -> *mut usize {
        // Offsets come from the geometry, which sized the bitmaps for every index used.
        self.geo().maps.wrapping_add(at)
    }

    /// Whether the order-`k` block at `addr` is free.
    #[inline]
    fn is_free(&self, k: usize, addr: usize) -> bool {
        let i = self.index(k, addr);
        // SAFETY: addr lies in the heap, so the word lies in order k's level 0.
        unsafe {
            *self.word(self.geo().free_at[k] + (i >> WORD_LOG)) & (1 << (i & (WORD - 1))) != 0
        }
    }

    /// Sets the block's free bit, climbing the summary levels while words turn non-zero.
    #[inline]
    fn mark_free(&self, k: usize, addr: usize) {
        let geo = self.geo();
        let (mut at, mut n, mut i) = (geo.free_at[k], geo.blocks[k], self.index(k, addr));
        loop {
            let word = self.word(at + (i >> WORD_LOG));
            // SAFETY: `i < n` at every level, so the word lies in this level.
            let was = unsafe { word.read() };
            // SAFETY: as above.
            unsafe { word.write(was | 1 << (i & (WORD - 1))) };
            let w = words(n);
            if was != 0 || w == 1 {
                break;
            }
            (at, n, i) = (at + w, w, i >> WORD_LOG);
        }
        self.nonempty.set(self.nonempty.get() | 1 << k);
    }

    /// Clears the block's free bit, climbing the summary levels while words turn zero.
    #[inline]
    fn mark_taken(&self, k: usize, addr: usize) {
        let geo = self.geo();
        let (mut at, mut n, mut i) = (geo.free_at[k], geo.blocks[k], self.index(k, addr));
        loop {
            let word = self.word(at + (i >> WORD_LOG));
            // SAFETY: `i < n` at every level, so the word lies in this level.
            let now = unsafe { word.read() } & !(1 << (i & (WORD - 1)));
            // SAFETY: as above.
            unsafe { word.write(now) };
            let w = words(n);
            if now != 0 || w == 1 {
                break;
            }
            (at, n, i) = (at + w, w, i >> WORD_LOG);
        }
        // SAFETY: top_at[k] is the order's single-word top level.
        if unsafe { self.word(geo.top_at[k]).read() } == 0 {
            self.nonempty.set(self.nonempty.get() & !(1 << k));
        }
    }

    /// The lowest-addressed free block of order `k` (which has one: its `nonempty` bit is set).
    #[inline]
    fn first_free(&self, k: usize) -> usize {
        let geo = self.geo();
        let mut levels = [0usize; LEVELS];
        let (mut depth, mut at, mut n) = (0, geo.free_at[k], geo.blocks[k]);
        loop {
            levels[depth] = at;
            depth += 1;
            let w = words(n);
            if w == 1 || depth == LEVELS {
                break;
            }
            (at, n) = (at + w, w);
        }
        let mut i = 0;
        for &at in levels[..depth].iter().rev() {
            // SAFETY: `i` indexes a word of this level (it is a set bit of the level above).
            let word = unsafe { self.word(at + i).read() };
            i = (i << WORD_LOG) | word.trailing_zeros() as usize;
        }
        self.address(k, i)
    }

    /// The pointer to heap address `addr`, derived from the heap's base (strict provenance).
    #[inline(always)]
    fn pointer(&self, addr: usize) -> *mut u8 {
        let geo = self.geo();
        geo.base.wrapping_add(addr - geo.start)
    }

    /// Takes a block off order `k`'s deferred list.
    #[inline]
    fn pop_deferred(&self, k: usize) -> Option<usize> {
        let head = self.deferred[k].get();
        if head == 0 {
            return None;
        }
        // SAFETY: deferred blocks are free blocks of ours whose first word links the list.
        let next = unsafe { self.pointer(head).cast::<usize>().read() };
        self.deferred[k].set(next);
        self.deferred_len[k].set(self.deferred_len[k].get() - 1);
        Some(head)
    }

    /// A free block of order `k` from the bitmaps, split from a larger one if need be.
    #[inline]
    fn split_from_bitmaps(&self, k: usize) -> Option<usize> {
        let candidates = self.nonempty.get() >> k;
        if candidates == 0 {
            return None;
        }
        let mut j = k + candidates.trailing_zeros() as usize;
        let addr = self.first_free(j);
        self.mark_taken(j, addr);
        while j > k {
            j -= 1;
            self.mark_free(j, addr + (self.min_block << j));
        }
        Some(addr)
    }

    /// Frees an order-`k` block into the bitmaps, merging it with its free buddies.
    fn coalesce(&self, mut k: usize, mut addr: usize) {
        let geo = self.geo();
        while k + 1 < geo.orders {
            let size = self.min_block << k;
            let buddy = addr ^ size;
            if buddy < geo.start || buddy + size > geo.end || !self.is_free(k, buddy) {
                break;
            }
            self.mark_taken(k, buddy);
            addr &= !size;
            k += 1;
        }
        self.mark_free(k, addr);
    }

    /// Coalesces every deferred free. Returns whether there was any.
    #[cold]
    fn settle(&self) -> bool {
        let mut any = false;
        for k in 0..self.geo().orders {
            while let Some(addr) = self.pop_deferred(k) {
                self.coalesce(k, addr);
                any = true;
            }
        }
        any
    }

    #[inline]
    fn flip_allocated(&self, k: usize, addr: usize) {
        let i = self.index(k, addr);
        // SAFETY: as in is_allocated.
        unsafe {
            *self.word(self.geo().allocated_at[k] + (i >> WORD_LOG)) ^= 1 << (i & (WORD - 1))
        };
    }

    /// Clears the allocated bit of a block being freed; if it was not set (or the address is
    /// not a block of this order), says why the free is wrong and changes nothing.
    #[inline]
    fn release_block(&self, addr: usize, k: usize) -> Result<(), AllocErrorKind> {
        let geo = self.geo();
        let size = self.min_block << k;
        if addr < geo.start || addr >= geo.end || addr & (size - 1) != 0 || addr + size > geo.end {
            return Err(AllocErrorKind::InvalidFree);
        }
        let i = self.index(k, addr);
        let word = self.word(geo.allocated_at[k] + (i >> WORD_LOG));
        let bit = 1 << (i & (WORD - 1));
        // SAFETY: addr lies in the heap, so the word lies in order k's allocated bitmap.
        let was = unsafe { word.read() };
        if was & bit == 0 {
            return Err(self.classify_bad_free(addr, k));
        }
        // SAFETY: as above.
        unsafe { word.write(was & !bit) };
        Ok(())
    }

    /// A free of something not allocated at this order: free already (at this order or
    /// inside a larger free block) is a double free; anything else a wrong pointer or size.
    #[cold]
    fn classify_bad_free(&self, addr: usize, k: usize) -> AllocErrorKind {
        let geo = self.geo();
        let mut deferred = self.deferred[k].get();
        while deferred != 0 {
            if deferred == addr {
                return AllocErrorKind::DoubleFree;
            }
            // SAFETY: deferred blocks are free blocks of ours whose first word links the list.
            deferred = unsafe { self.pointer(deferred).cast::<usize>().read() };
        }
        for order in k..geo.orders {
            let block = addr & !((self.min_block << order) - 1);
            if block >= geo.start
                && block + (self.min_block << order) <= geo.end
                && self.is_free(order, block)
            {
                return AllocErrorKind::DoubleFree;
            }
        }
        AllocErrorKind::InvalidFree
    }

    /// The allocator's figures. `fragmentation` is external fragmentation:
    /// `1 - largest free block / free bytes`. Deferred frees are coalesced first, so the
    /// figure describes the heap as it can really serve requests.
    pub fn stats(&self) -> StrategyStats {
        self.settle();
        let used = self.counters.used.get();
        let free = self.heap_bytes.get() - used;
        let mask = self.nonempty.get();
        let largest = if mask == 0 {
            0
        } else {
            self.min_block << (63 - mask.leading_zeros() as usize)
        };
        let fragmentation = if free == 0 {
            0.0
        } else {
            1.0 - ratio(largest, free)
        };
        self.counters.snapshot(free, fragmentation)
    }

    /// Bytes of the heap (the region less the bitmaps).
    pub fn heap_size(&self) -> usize {
        self.heap_bytes.get()
    }

    /// The smallest block size.
    pub fn min_block(&self) -> usize {
        self.min_block
    }
}

// SAFETY: blocks are disjoint (each heap byte is in exactly one free or allocated block), lie
// in the region, are aligned to their size >= the requested alignment, hold >= size bytes, and
// are handed out again only after being freed and coalesced.
unsafe impl TypedAlloc for Buddy<'_> {
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let Some(k) = self.order_of(size, align) else {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        };
        let addr = match self.pop_deferred(k) {
            Some(addr) => addr,
            None => match self.split_from_bitmaps(k) {
                Some(addr) => addr,
                None => {
                    // Deferred frees may coalesce into what is asked for: settle them, retry.
                    if !self.settle() {
                        self.counters.on_failure(AllocErrorKind::Exhausted);
                        return None;
                    }
                    let Some(addr) = self.split_from_bitmaps(k) else {
                        self.counters.on_failure(AllocErrorKind::Exhausted);
                        return None;
                    };
                    addr
                }
            },
        };
        self.flip_allocated(k, addr);
        self.counters.on_alloc(self.min_block << k);
        NonNull::new(self.pointer(addr))
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        let addr = ptr.as_ptr() as usize;
        let Some(k) = self.order_of(size, align) else {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        };
        if let Err(kind) = self.release_block(addr, k) {
            return self.counters.on_misuse(kind);
        }
        self.counters.on_free(self.min_block << k);
        let len = self.deferred_len[k].get();
        if len < DEFERRED {
            // SAFETY: the block is free and ours, at least 8 bytes and 8-aligned: its first
            // word holds the link of the deferred list.
            unsafe {
                self.pointer(addr)
                    .cast::<usize>()
                    .write(self.deferred[k].get())
            };
            self.deferred[k].set(addr);
            self.deferred_len[k].set(len + 1);
        } else {
            self.coalesce(k, addr);
        }
    }

    unsafe fn resize_in_place(
        &self,
        _ptr: NonNull<u8>,
        old: usize,
        new: usize,
        align: usize,
    ) -> bool {
        // The block stays where it is when the new size needs the same order.
        matches!((self.order_of(old, align), self.order_of(new, align)), (Some(a), Some(b)) if a == b)
    }
}

impl_allocator_api2!(['a] Buddy<'a>);

impl Drop for Buddy<'_> {
    fn drop(&mut self) {
        if let (Some(os), Some(region)) = (self.os, self.geo.get_mut().os_region) {
            // SAFETY: the region came from Region::reserve on this OS; nothing borrows the
            // allocator any more.
            unsafe { region.release(os) }
        }
    }
}

impl core::fmt::Debug for Buddy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Buddy")
            .field("min_block", &self.min_block)
            .field("heap_size", &self.heap_size())
            .field("stats", &self.stats())
            .finish()
    }
}

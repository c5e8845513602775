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
//! Coalescing is lazy, with a bound: freed blocks wait on a short list per order (the only use
//! of block memory) and are handed out again first — up to [`DEFERRED`] of them, or up to half
//! as many as are allocated at that order, whichever is more; more frees coalesce at once, and
//! an allocation that finds nothing coalesces the waiting ones before it fails.
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

/// Frees kept per order without coalescing, at least (lazy buddy: Barkley & Lee, "A Lazy Buddy
/// System Bounded by Two Coalescing Delays", SOSP 1989). A program that frees and allocates the
/// same sizes over and over reuses them in O(1); beyond this many, frees coalesce at once —
/// unless the order has more than twice as many blocks allocated: as in Barkley & Lee's slack
/// rule, an order may keep up to half its allocated count waiting, so the share of frees that
/// split or coalesce does not grow with the number of live blocks.
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
    /// Per order: the address of block 0 (`start` rounded down to the block size), block
    /// slots (bits of the free bitmap's level 0), where the free bitmap starts, where its top
    /// (single-word) level is, and the allocated bitmap (a pointer: the free path's one
    /// bitmap access costs no offset arithmetic).
    origin: [usize; MAX_ORDERS],
    blocks: [usize; MAX_ORDERS],
    free_at: [usize; MAX_ORDERS],
    top_at: [usize; MAX_ORDERS],
    allocated: [*mut usize; MAX_ORDERS],
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
    /// Per order: freed blocks not coalesced yet (a LIFO list through their first word, null
    /// ends it) and how many.
    deferred: [Cell<*mut u8>; MAX_ORDERS],
    deferred_len: [Cell<usize>; MAX_ORDERS],
    heap_bytes: Cell<usize>,
    /// Blocks out of the bitmaps (allocated, or freed and deferred) per order, their bytes and
    /// the bytes' high-water mark. They change only where blocks leave the bitmaps (a split)
    /// or come back (a coalesce), never on the fast paths: `used = out - deferred`.
    out_blocks: [Cell<usize>; MAX_ORDERS],
    out_bytes: Cell<usize>,
    peak_out: Cell<usize>,
    os: Option<&'a dyn Os>,
    /// Failures and misuse; with the `stats` feature allocations too (frees are
    /// `allocations - live blocks`).
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
                origin: [0; MAX_ORDERS],
                blocks: [0; MAX_ORDERS],
                free_at: [0; MAX_ORDERS],
                top_at: [0; MAX_ORDERS],
                allocated: [ptr::null_mut(); MAX_ORDERS],
                os_region: None,
            }),
            nonempty: Cell::new(0),
            deferred: [const { Cell::new(ptr::null_mut()) }; MAX_ORDERS],
            deferred_len: [const { Cell::new(0) }; MAX_ORDERS],
            heap_bytes: Cell::new(0),
            out_blocks: [const { Cell::new(0) }; MAX_ORDERS],
            out_bytes: Cell::new(0),
            peak_out: Cell::new(0),
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

    /// The number of orders, which `init_region` keeps at most [`MAX_ORDERS`]; the `min`
    /// (never taken) lets the compiler see that every order below it indexes the per-order
    /// tables, so those reads need no bounds check and cannot panic.
    #[inline(always)]
    fn orders(&self) -> usize {
        self.geo().orders.min(MAX_ORDERS)
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
        // The loop stops at MAX_ORDERS; the (never taken) `min` lets the compiler see it, so
        // the per-order tables below are indexed without bounds checks that could panic.
        let orders = orders.min(MAX_ORDERS);
        // Bitmaps are sized for the whole buffer: the heap is a part of it, so its block
        // indices at every order stay below these counts.
        let mut origin = [0; MAX_ORDERS];
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
        let mut allocated = [ptr::null_mut(); MAX_ORDERS];
        for k in 0..orders {
            origin[k] = start & !((self.min_block << k) - 1);
            allocated[k] = maps.wrapping_add(allocated_at[k]);
        }
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
                origin,
                blocks,
                free_at,
                top_at,
                allocated,
                os_region: None,
            };
        }
        let mut cur = start;
        while cur < end {
            // The largest order whose block at `cur` is aligned and fits before `end` (both
            // conditions hold for every smaller order too). `cur` and `end` are multiples of
            // `min_block` with `0 < cur < end`, so `units >= 1` and `cur` has at least
            // `min_shift` trailing zeros; `k <= orders - 1 < MAX_ORDERS`, in the tables.
            let units = (end - cur) >> self.min_shift;
            let fits = (usize::BITS - 1 - units.leading_zeros()) as usize;
            let aligned = (cur.trailing_zeros() - self.min_shift) as usize;
            let k = (orders - 1).min(fits).min(aligned);
            self.mark_free(k, cur);
            cur += self.min_block << k;
        }
        self.heap_bytes.set(end - start);
        true
    }

    /// The order serving `size` bytes aligned to `align`; `None` if none can.
    ///
    /// An order-`k` block holds `min_block << k` bytes, so `k` is the bit length of
    /// `(need - 1) >> min_shift` (0 for anything up to `min_block`). No overflow check: a
    /// need near `usize::MAX` gives `k = BITS - min_shift`, above every order (`init` keeps
    /// `orders + min_shift < BITS - 1`).
    #[inline(always)]
    fn order_of(&self, size: usize, align: usize) -> Option<usize> {
        // A need of 0 (only with an align of 0, which no caller passes) wraps to no order.
        let units = size.max(align).wrapping_sub(1) >> self.min_shift;
        let k = (usize::BITS - units.leading_zeros()) as usize;
        (k < self.orders()).then_some(k)
    }

    /// The index of the order-`k` block at `addr` (`addr` a block of that order).
    #[inline(always)]
    fn index(&self, k: usize, addr: usize) -> usize {
        (addr - self.geo().origin[k]) >> (self.min_shift as usize + k)
    }

    /// The address of the order-`k` block of index `index`.
    #[inline(always)]
    fn address(&self, k: usize, index: usize) -> usize {
        self.geo().origin[k] + (index << (self.min_shift as usize + k))
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
    #[inline(always)]
    fn pop_deferred(&self, k: usize) -> Option<*mut u8> {
        let head = self.deferred[k].get();
        if head.is_null() {
            return None;
        }
        // SAFETY: deferred blocks are free blocks of ours whose first word links the list.
        let next = unsafe { head.cast::<*mut u8>().read() };
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
        // mark_free sets bits for existing orders only, so this never returns; it lets the
        // compiler see that `j` indexes the per-order tables (no bounds check to panic).
        if j >= self.orders() {
            return None;
        }
        let addr = self.first_free(j);
        self.mark_taken(j, addr);
        while j > k {
            j -= 1;
            self.mark_free(j, addr + (self.min_block << j));
        }
        let out = self.out_bytes.get() + (self.min_block << k);
        self.out_bytes.set(out);
        self.peak_out.set(self.peak_out.get().max(out));
        self.out_blocks[k].set(self.out_blocks[k].get() + 1);
        Some(addr)
    }

    /// The slow path of allocation: no deferred free of order `k`. Splits a larger block from
    /// the bitmaps; if there is none, coalesces the deferred frees and tries again.
    #[cold]
    #[inline(never)]
    fn allocate_slow(&self, k: usize) -> Option<*mut u8> {
        if let Some(addr) = self.split_from_bitmaps(k) {
            return Some(self.pointer(addr));
        }
        // Deferred frees may coalesce into what is asked for: settle them, retry.
        if self.settle() {
            if let Some(addr) = self.split_from_bitmaps(k) {
                return Some(self.pointer(addr));
            }
        }
        self.counters.on_failure(AllocErrorKind::Exhausted);
        None
    }

    /// Frees an order-`k` block into the bitmaps, merging it with its free buddies.
    #[inline]
    fn coalesce(&self, mut k: usize, mut addr: usize) {
        self.out_bytes
            .set(self.out_bytes.get() - (self.min_block << k));
        self.out_blocks[k].set(self.out_blocks[k].get() - 1);
        let geo = self.geo();
        while k + 1 < self.orders() {
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
        for k in 0..self.orders() {
            while let Some(block) = self.pop_deferred(k) {
                self.coalesce(k, block as usize);
                any = true;
            }
        }
        any
    }

    /// Sets the allocated bit of the order-`k` block at `addr`, a block just taken.
    #[inline(always)]
    fn set_allocated(&self, k: usize, addr: usize) {
        let i = self.index(k, addr);
        // SAFETY: addr is a block of the heap, so its index lies in order k's allocated
        // bitmap, which init sized for every block of the region.
        unsafe { *self.geo().allocated[k].add(i >> WORD_LOG) |= 1 << (i & (WORD - 1)) };
    }

    /// Clears the allocated bit of a block being freed; if it was not set (or the address is
    /// not a block of this order), says why the free is wrong and changes nothing.
    ///
    /// The bit alone proves the block is ours, allocated at this order (so inside the heap):
    /// the address only has to name a bit of the bitmap. One rotation does both checks — an
    /// address off the order's block boundary rotates its low bits to the top, beyond every
    /// index, as does one below the heap (the subtraction wraps) or above it.
    #[inline(always)]
    fn release_block(&self, addr: usize, k: usize) -> Result<(), AllocErrorKind> {
        let geo = self.geo();
        let i = addr
            .wrapping_sub(geo.origin[k])
            .rotate_right(self.min_shift + k as u32);
        if i >= geo.blocks[k] {
            return Err(AllocErrorKind::InvalidFree);
        }
        // SAFETY: i < blocks[k]: the word lies in order k's allocated bitmap.
        let word = unsafe { geo.allocated[k].add(i >> WORD_LOG) };
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
        // `k` is an order (from order_of); were it not, there would be no list to search.
        let mut deferred = self.deferred.get(k).map_or(ptr::null_mut(), Cell::get);
        while !deferred.is_null() {
            if deferred as usize == addr {
                return AllocErrorKind::DoubleFree;
            }
            // SAFETY: deferred blocks are free blocks of ours whose first word links the list.
            deferred = unsafe { deferred.cast::<*mut u8>().read() };
        }
        for order in k..self.orders() {
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
    /// figure describes the heap as it can really serve requests. `peak_used_bytes` is the
    /// high-water mark of bytes out of the bitmaps: allocated, or freed and still deferred
    /// (at most the deferral bound of each order above the true peak, see [`DEFERRED`]) —
    /// kept where blocks split off, so the fast paths count nothing (allocations with the
    /// `stats` feature only; frees follow from them).
    pub fn stats(&self) -> StrategyStats {
        self.settle();
        // Settled: every block out of the bitmaps is allocated.
        let used = self.out_bytes.get();
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
        let mut stats = self.counters.snapshot(used, free, fragmentation);
        stats.peak_used_bytes = self.peak_out.get();
        // With the `stats` feature allocations are counted and frees follow from the live
        // blocks; without it both stay 0.
        let live: usize = self.out_blocks.iter().map(Cell::get).sum();
        stats.deallocations = stats.allocations.saturating_sub(live as u64);
        stats
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
        // Fast path: a deferred free of this order; falls back to allocate_slow.
        let block = match self.pop_deferred(k) {
            Some(block) => block,
            None => self.allocate_slow(k)?,
        };
        self.set_allocated(k, block as usize);
        // The only count on the fast paths (see `out_blocks`), the `stats` feature's.
        #[cfg(feature = "stats")]
        self.counters.count_allocation();
        NonNull::new(block)
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
        let len = self.deferred_len[k].get();
        // out = allocated + deferred, so 3 * deferred < out says deferred < allocated / 2.
        if len < DEFERRED || 3 * len < self.out_blocks[k].get() {
            // The link goes through a pointer derived from the heap's base, never from the
            // caller's (strict provenance).
            let block = self.pointer(addr);
            // SAFETY: the block is free and ours, at least 8 bytes and 8-aligned: its first
            // word holds the link of the deferred list.
            unsafe { block.cast::<*mut u8>().write(self.deferred[k].get()) };
            self.deferred[k].set(block);
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

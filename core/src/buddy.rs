//! The buddy allocator: power-of-two blocks in one region, split on allocation and coalesced
//! with their buddy on free, both in O(log n) (Knowlton 1965; Knuth, TAOCP vol. 1, 2.5).
//!
//! Blocks are aligned to their size in absolute addresses, so a block's buddy is
//! `address ^ size` and any power-of-two alignment up to the largest block is served by asking
//! for a block at least that large. All buddy state is in bitmaps and in small stacks beside
//! them, none in the blocks (a free block's memory is never touched, so freeing, reusing and
//! coalescing cost no cache misses on it):
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
//! Coalescing is lazy, with a bound (Barkley & Lee's lazy buddy): freed blocks wait
//! uncoalesced on a stack per order and are handed out again first, newest first. The stacks
//! hold block indices (`u32`) and lie beside the bitmaps, not in the blocks, so neither a free
//! nor an allocation reads or writes block memory: in a random mix of frees and allocations
//! the freed block is a cold line, and a list linked through it (the previous design) made
//! every free write that line and a reuse of an older one wait for its link. An order keeps
//! up to [`DEFERRED`] frees waiting, or up to half as many as it has allocated, whichever is
//! more, and never more than its stack holds: `blocks / 64` entries (at least `DEFERRED`, at
//! most [`DEFERRED_MAX`]), which is about a quarter of the bitmaps' size in a large heap and
//! 64 bytes an order in a small one. A free beyond that coalesces at once, and an allocation
//! that finds neither a waiting block nor a free one in the bitmaps coalesces the waiting
//! ones before it fails.
//!
//! ```text
//! buffer: [order 0: free L0 | L1 | .. | allocated][order 1: ...] ... [stack 0][stack 1] ...
//!         [heap: start .. end]
//! order k block index = (address - align_down(start, size_k)) / size_k  (< 2^32)
//! ```
//! Invariant: every byte of the heap is in exactly one block that is either free at its order
//! or allocated at its order; `used_bytes + free_bytes == heap size`.
//!
//! One thread at a time (no atomics); [`crate::spin::SpinLock`] shares it and makes it a
//! `GlobalAlloc` (see that module for a firmware `#[global_allocator]`). The allocator itself
//! is a fixed-size value (bitmaps and stacks are in its memory): under 1.2 KiB on 32-bit
//! targets ([`MAX_ORDERS`] = 26), 3 KiB on 64-bit (40 orders), nearly all of it per-order
//! geometry and counts; `tests/strategy_buddy.rs` checks the bound.
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

/// Frees kept waiting per order without coalescing, at least (lazy buddy: Barkley & Lee, "A
/// Lazy Buddy System Bounded by Two Coalescing Delays", SOSP 1989), when the order's stack
/// holds that many. A program that frees and allocates the same sizes over and over reuses
/// them in O(1); beyond this many, frees coalesce at once — unless the order has more than
/// twice as many blocks allocated: as in Barkley & Lee's slack rule, an order may keep up to
/// half its allocated count waiting, so the share of frees that split or coalesce does not
/// grow with the number of live blocks, up to the stack's size (see [`DEFERRED_MAX`]).
pub const DEFERRED: usize = 16;

/// The most entries an order's waiting stack has. In a random mix of frees and allocations
/// the waiting count wanders between empty and full, and one operation of the order in about
/// `capacity + 1` splits or coalesces (a branch the processor cannot predict). With 16
/// entries for every order (one in 17), `buddy_random` ran 17 more instructions a free +
/// allocate than the previous list-linked design (cachegrind) and was no faster.
pub const DEFERRED_MAX: usize = 256;

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
    start: usize,
    end: usize,
    /// Number of orders with at least one possible block.
    orders: usize,
    /// The bitmaps; offsets below are in words from here.
    maps: *mut usize,
    /// Per order: block 0 (`start` rounded down to the block size), a pointer derived from
    /// the region's (strict provenance: the source of every block pointer; never itself
    /// dereferenced, it may lie before the heap), so an allocation forms its block's pointer
    /// with one shift and add; block slots (bits of the free bitmap's level 0), where the free bitmap
    /// starts, where its top (single-word) level is, and the allocated bitmap (a pointer: the
    /// free path's one bitmap access costs no offset arithmetic).
    origin: [*mut u8; MAX_ORDERS],
    blocks: [usize; MAX_ORDERS],
    free_at: [usize; MAX_ORDERS],
    top_at: [usize; MAX_ORDERS],
    allocated: [*mut usize; MAX_ORDERS],
    /// Per order: the waiting stack (block indices, in the buffer after the bitmaps) and how
    /// many entries it has (`min(blocks, max(DEFERRED, min(blocks / 64, DEFERRED_MAX)))`).
    waiting: [*mut u32; MAX_ORDERS],
    waiting_cap: [usize; MAX_ORDERS],
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
    /// Per order: how many freed blocks wait on its stack, not coalesced yet, and how many
    /// may (the deferral bound, see [`DEFERRED`]: `min(waiting_cap, max(DEFERRED, ⌈out / 3⌉))`,
    /// recomputed where `out_blocks` changes, so a free compares once). `len <= limit`, except
    /// just after a coalesce lowered the limit: the excess is reused or settled as usual.
    waiting_len: [Cell<u32>; MAX_ORDERS],
    waiting_limit: [Cell<u32>; MAX_ORDERS],
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
                start: 0,
                end: 0,
                orders: 0,
                maps: ptr::null_mut(),
                origin: [ptr::null_mut(); MAX_ORDERS],
                blocks: [0; MAX_ORDERS],
                free_at: [0; MAX_ORDERS],
                top_at: [0; MAX_ORDERS],
                allocated: [ptr::null_mut(); MAX_ORDERS],
                waiting: [ptr::null_mut(); MAX_ORDERS],
                waiting_cap: [0; MAX_ORDERS],
                os_region: None,
            }),
            nonempty: Cell::new(0),
            waiting_len: [const { Cell::new(0) }; MAX_ORDERS],
            waiting_limit: [const { Cell::new(0) }; MAX_ORDERS],
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
        let mut blocks = [0; MAX_ORDERS];
        let mut free_at = [0; MAX_ORDERS];
        let mut top_at = [0; MAX_ORDERS];
        let mut allocated_at = [0; MAX_ORDERS];
        let mut waiting_at = [0; MAX_ORDERS];
        let mut waiting_cap = [0; MAX_ORDERS];
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
        // The waiting stacks follow the bitmaps (u32 entries in whole words).
        for k in 0..orders {
            waiting_cap[k] = (blocks[k] / 64)
                .clamp(DEFERRED, DEFERRED_MAX)
                .min(blocks[k]);
            waiting_at[k] = total;
            total += (waiting_cap[k] * size_of::<u32>()).div_ceil(size_of::<usize>());
        }
        let maps_off = align_up(b0, align_of::<usize>()) - b0;
        let Some(start) = total
            .checked_mul(size_of::<usize>())
            .and_then(|bytes| (b0 + maps_off).checked_add(bytes))
            .map(|end_of_maps| align_up(end_of_maps, self.min_block))
        else {
            return false;
        };
        // At most u32::MAX minimum blocks (more only on 64-bit, from 32 GiB of 8-byte blocks
        // up), so that every block index fits a waiting stack's u32 entry.
        let most = start.saturating_add(self.min_block.saturating_mul(u32::MAX as usize));
        let end = b1.min(most) & !(self.min_block - 1);
        if start >= end {
            return false;
        }
        // SAFETY: the bitmaps end before `start` < b1: inside the region, which is ours.
        let maps = unsafe { region.at(maps_off) }.as_ptr().cast::<usize>();
        // SAFETY: as above.
        unsafe { ptr::write_bytes(maps, 0, total) };
        // SAFETY: start < end <= b1.
        let base = unsafe { region.at(start - b0) }.as_ptr();
        let mut origin = [ptr::null_mut(); MAX_ORDERS];
        let mut allocated = [ptr::null_mut(); MAX_ORDERS];
        let mut waiting = [ptr::null_mut(); MAX_ORDERS];
        for k in 0..orders {
            origin[k] = base.wrapping_sub(start & ((self.min_block << k) - 1));
            allocated[k] = maps.wrapping_add(allocated_at[k]);
            waiting[k] = maps.wrapping_add(waiting_at[k]).cast::<u32>();
        }
        // SAFETY: no reference to the geometry is alive (see geo()).
        unsafe {
            *self.geo.get() = Geometry {
                start,
                end,
                orders,
                maps,
                origin,
                blocks,
                free_at,
                top_at,
                allocated,
                waiting,
                waiting_cap,
                os_region: None,
            };
        }
        for k in 0..orders {
            self.set_out_blocks(k, 0);
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
    /// `(need - 1) >> min_shift` (0 for anything up to `min_block`), which is the log of
    /// `2 * units + 1`: never zero, so the log is one instruction (`min_shift >= 3`, so the
    /// doubling cannot overflow). No overflow check: a need near `usize::MAX` gives
    /// `k = BITS - min_shift`, above every order (`init` keeps `orders + min_shift < BITS - 1`).
    #[inline(always)]
    fn order_of(&self, size: usize, align: usize) -> Option<usize> {
        // A need of 0 (only with an align of 0, which no caller passes) wraps to no order.
        let units = size.max(align).wrapping_sub(1) >> self.min_shift;
        let k = (usize::BITS - 1 - (units << 1 | 1).leading_zeros()) as usize;
        (k < self.orders()).then_some(k)
    }

    /// The index of the order-`k` block at `addr` (`addr` a block of that order).
    #[inline(always)]
    fn index(&self, k: usize, addr: usize) -> usize {
        (addr - self.geo().origin[k].addr()) >> (self.min_shift as usize + k)
    }

    /// The order-`k` block of index `index` (a pointer derived from the heap's base).
    #[inline(always)]
    fn block(&self, k: usize, index: usize) -> *mut u8 {
        self.geo().origin[k].wrapping_add(index << (self.min_shift as usize + k))
    }

    /// The address of the order-`k` block of index `index`.
    #[inline(always)]
    fn address(&self, k: usize, index: usize) -> usize {
        self.block(k, index).addr()
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

    /// Takes the newest waiting block of order `k`: its index.
    #[inline(always)]
    fn pop_waiting(&self, k: usize) -> Option<usize> {
        let len = self.waiting_len[k].get() as usize;
        if len == 0 {
            return None;
        }
        self.waiting_len[k].set(len as u32 - 1);
        // SAFETY: 0 < len <= waiting_cap[k]: the entry lies in order k's stack, which init
        // laid inside the buffer.
        Some(unsafe { self.geo().waiting[k].add(len - 1).read() } as usize)
    }

    /// Keeps the freed order-`k` block of index `i` waiting, if the deferral bound allows
    /// (see [`DEFERRED`]); `false` (nothing kept) if not.
    #[inline(always)]
    fn push_waiting(&self, k: usize, i: usize) -> bool {
        let len = self.waiting_len[k].get();
        if len >= self.waiting_limit[k].get() {
            return false;
        }
        // SAFETY: len < limit <= waiting_cap[k]: the entry lies in order k's stack. `i` fits
        // a u32: init keeps the heap below u32::MAX minimum blocks.
        unsafe { self.geo().waiting[k].add(len as usize).write(i as u32) };
        self.waiting_len[k].set(len + 1);
        true
    }

    /// Sets order `k`'s count of blocks out of the bitmaps and the deferral bound that
    /// follows from it. out = allocated + waiting, so `3 * waiting < out` says
    /// waiting < allocated / 2, that is waiting < ⌈out / 3⌉.
    #[inline]
    fn set_out_blocks(&self, k: usize, out: usize) {
        self.out_blocks[k].set(out);
        let slack = out.div_ceil(3).max(DEFERRED);
        // The cap is at most DEFERRED_MAX, so the limit fits a u32.
        self.waiting_limit[k].set(self.geo().waiting_cap[k].min(slack) as u32);
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
        self.set_out_blocks(k, self.out_blocks[k].get() + 1);
        Some(addr)
    }

    /// The slow path of allocation: no deferred free of order `k`. Splits a larger block from
    /// the bitmaps; if there is none, coalesces the deferred frees and tries again.
    #[cold]
    #[inline(never)]
    fn allocate_slow(&self, k: usize) -> Option<usize> {
        if let Some(addr) = self.split_from_bitmaps(k) {
            return Some(addr);
        }
        // Deferred frees may coalesce into what is asked for: settle them, retry.
        if self.settle() {
            if let Some(addr) = self.split_from_bitmaps(k) {
                return Some(addr);
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
        self.set_out_blocks(k, self.out_blocks[k].get() - 1);
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
            while let Some(index) = self.pop_waiting(k) {
                self.coalesce(k, self.address(k, index));
                any = true;
            }
        }
        any
    }

    /// Sets the allocated bit of the order-`k` block of index `i`, a block just taken.
    #[inline(always)]
    fn set_allocated(&self, k: usize, i: usize) {
        // SAFETY: `i` indexes a block of the heap, so it lies in order k's allocated bitmap,
        // which init sized for every block of the region.
        let word = unsafe { self.geo().allocated[k].add(i >> WORD_LOG) };
        // SAFETY: as above. A read, a bit-test-and-set and a write: shorter on x86 than an
        // `or` into memory with a shifted mask.
        unsafe { word.write(word.read() | 1 << (i & (WORD - 1))) };
    }

    /// Clears the allocated bit of a block being freed and returns its index; if the bit was
    /// not set (or the address is not a block of this order), says why the free is wrong and
    /// changes nothing.
    ///
    /// The bit alone proves the block is ours, allocated at this order (so inside the heap):
    /// the address only has to name a bit of the bitmap. One rotation does both checks — an
    /// address off the order's block boundary rotates its low bits to the top, beyond every
    /// index, as does one below the heap (the subtraction wraps) or above it.
    #[inline(always)]
    fn release_block(&self, addr: usize, k: usize) -> Result<usize, AllocErrorKind> {
        let geo = self.geo();
        let i = addr
            .wrapping_sub(geo.origin[k].addr())
            .rotate_right(self.min_shift + k as u32);
        if i >= geo.blocks[k] {
            return Err(AllocErrorKind::InvalidFree);
        }
        // SAFETY: i < blocks[k]: the word lies in order k's allocated bitmap.
        let word = unsafe { geo.allocated[k].add(i >> WORD_LOG) };
        // SAFETY: addr lies in the heap, so the word lies in order k's allocated bitmap.
        let was = unsafe { word.read() };
        // Clearing the bit and comparing is one bit-test-and-reset on x86.
        let now = was & !(1 << (i & (WORD - 1)));
        if now == was {
            return Err(self.classify_bad_free(addr, k));
        }
        // SAFETY: as above.
        unsafe { word.write(now) };
        Ok(i)
    }

    /// A free of something not allocated at this order: free already (at this order or
    /// inside a larger free block) is a double free; anything else a wrong pointer or size.
    #[cold]
    fn classify_bad_free(&self, addr: usize, k: usize) -> AllocErrorKind {
        let geo = self.geo();
        // `k` is an order (from order_of) and `addr` a block of it (release_block checked).
        if let (Some(stack), Some(len)) = (geo.waiting.get(k), self.waiting_len.get(k)) {
            let i = self.index(k, addr);
            // SAFETY: the first `len` entries of order k's stack are written (push_waiting).
            let waiting = unsafe { core::slice::from_raw_parts(*stack, len.get() as usize) };
            if waiting.iter().any(|&w| w as usize == i) {
                return AllocErrorKind::DoubleFree;
            }
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
        let i = match self.pop_waiting(k) {
            Some(i) => i,
            None => self.index(k, self.allocate_slow(k)?),
        };
        self.set_allocated(k, i);
        // The only count on the fast paths (see `out_blocks`), the `stats` feature's.
        #[cfg(feature = "stats")]
        self.counters.count_allocation();
        NonNull::new(self.block(k, i))
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        let addr = ptr.as_ptr() as usize;
        let Some(k) = self.order_of(size, align) else {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        };
        let i = match self.release_block(addr, k) {
            Ok(i) => i,
            Err(kind) => return self.counters.on_misuse(kind),
        };
        // Fast path: the block waits; when the order's array is full it coalesces.
        if !self.push_waiting(k, i) {
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

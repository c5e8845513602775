//! The buddy allocator: power-of-two blocks in one region, split on allocation and coalesced
//! with their buddy on free, both in O(log n) (Knowlton 1965; Knuth, TAOCP vol. 1, 2.5).
//!
//! Blocks are aligned to their size in absolute addresses, so a block's buddy is
//! `address ^ size` and any power-of-two alignment up to the largest block is served by asking
//! for a block at least that large. Per order there is a doubly linked free list (threaded
//! through the free blocks, so removing a buddy is O(1)) and two bitmaps:
//!
//! * `free`: the block at this order is on the free list — coalescing asks it instead of
//!   scanning a list;
//! * `allocated`: the block was handed out at this order — a free of anything else (a double
//!   free, a foreign pointer, a wrong size) is refused and reported instead of corrupting the
//!   lists. One bit test, so it runs in every build.
//!
//! ```text
//! buffer: [bitmaps: order 0 free|allocated, order 1 ..., ...][heap: start .. end]
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
pub const MAX_ORDERS: usize = 48;

/// The link at the start of every free block.
#[repr(C)]
struct FreeNode {
    next: *mut FreeNode,
    prev: *mut FreeNode,
}

/// Where the heap is and where its bitmaps are; written once by `init`.
struct Geometry {
    /// Pointer to `start`, the source of every block pointer (strict provenance).
    base: *mut u8,
    start: usize,
    end: usize,
    /// Number of orders with at least one possible block.
    orders: usize,
    /// Bitmap words (free, then allocated) of each order, from `maps`.
    maps: *mut usize,
    map_at: [usize; MAX_ORDERS],
    map_words: [usize; MAX_ORDERS],
    /// The reserved region, when it came from the OS.
    os_region: Option<Region>,
}

/// Which bitmap of an order.
#[derive(Clone, Copy)]
enum Map {
    Free = 0,
    Allocated = 1,
}

/// A buddy allocator. See the [module documentation](self).
pub struct Buddy<'a> {
    min_block: usize,
    min_shift: u32,
    geo: UnsafeCell<Geometry>,
    heads: [Cell<*mut FreeNode>; MAX_ORDERS],
    /// Bit k set: the free list of order k is not empty.
    nonempty: Cell<u64>,
    heap_bytes: Cell<usize>,
    os: Option<&'a dyn Os>,
    counters: Counters,
    _buffer: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: the buddy owns its region exclusively; moving it moves that ownership. Not Sync.
unsafe impl Send for Buddy<'_> {}

impl<'a> Buddy<'a> {
    /// A buddy allocator without memory, with blocks of at least `min_block` bytes (rounded
    /// up to a power of two of at least two pointers). Give it its region with
    /// [`Buddy::init`]. `const`, for a `static` inside a [`crate::spin::SpinLock`].
    pub const fn empty(min_block: usize) -> Self {
        let floor = 2 * size_of::<*mut u8>();
        let min = if min_block < floor { floor } else { min_block };
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
                map_at: [0; MAX_ORDERS],
                map_words: [0; MAX_ORDERS],
                os_region: None,
            }),
            heads: [const { Cell::new(ptr::null_mut()) }; MAX_ORDERS],
            nonempty: Cell::new(0),
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
        let words_of = |k: usize| {
            let size = self.min_block << k;
            let blocks = (align_up(b1, size) - (b0 & !(size - 1))) >> (self.min_shift as usize + k);
            2 * blocks.div_ceil(usize::BITS as usize)
        };
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
        let mut map_at = [0; MAX_ORDERS];
        let mut map_words = [0; MAX_ORDERS];
        let mut words = 0;
        for k in 0..orders {
            map_at[k] = words;
            map_words[k] = words_of(k) / 2;
            words += words_of(k);
        }
        let maps_off = align_up(b0, align_of::<usize>()) - b0;
        let start = align_up(b0 + maps_off + words * size_of::<usize>(), self.min_block);
        let end = b1 & !(self.min_block - 1);
        if start >= end {
            return false;
        }
        // SAFETY: the bitmaps end before `start` <= b1: inside the region, which is ours.
        let maps = unsafe { region.at(maps_off) }.as_ptr().cast::<usize>();
        // SAFETY: as above.
        unsafe { ptr::write_bytes(maps, 0, words) };
        // SAFETY: start < end <= b1.
        let base = unsafe { region.at(start - b0) }.as_ptr();
        // SAFETY: no reference to the geometry is alive (see geo()).
        unsafe {
            let geo = &mut *self.geo.get();
            *geo = Geometry {
                base,
                start,
                end,
                orders,
                maps,
                map_at,
                map_words,
                os_region: None,
            };
        }
        let mut cur = start;
        while cur < end {
            let mut k = orders - 1;
            while cur & ((self.min_block << k) - 1) != 0 || cur + (self.min_block << k) > end {
                k -= 1;
            }
            self.push_free(cur, k);
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

    #[inline]
    fn node(&self, addr: usize) -> *mut FreeNode {
        let geo = self.geo();
        // Derived from the heap's base pointer: provenance of the whole region.
        geo.base.wrapping_add(addr - geo.start).cast()
    }

    /// Word pointer and bit mask of block `addr` in bitmap `map` of order `k`.
    #[inline]
    fn bit(&self, map: Map, k: usize, addr: usize) -> (*mut usize, usize) {
        let geo = self.geo();
        let shift = self.min_shift as usize + k;
        let index = (addr - (geo.start & !((1usize << shift) - 1))) >> shift;
        let bits = usize::BITS as usize;
        let word = geo.map_at[k] + map as usize * geo.map_words[k] + index / bits;
        (geo.maps.wrapping_add(word), 1 << (index % bits))
    }

    #[inline]
    fn test(&self, map: Map, k: usize, addr: usize) -> bool {
        let (word, mask) = self.bit(map, k, addr);
        // SAFETY: addr lies in the heap, so the word lies in order k's bitmap.
        unsafe { *word & mask != 0 }
    }

    #[inline]
    fn flip(&self, map: Map, k: usize, addr: usize) {
        let (word, mask) = self.bit(map, k, addr);
        // SAFETY: as in test().
        unsafe { *word ^= mask };
    }

    fn push_free(&self, addr: usize, k: usize) {
        let node = self.node(addr);
        let head = self.heads[k].get();
        // SAFETY: `addr` is a free block of order k (>= two pointers) inside the heap; `head`
        // is null or another free block.
        unsafe {
            node.write(FreeNode {
                next: head,
                prev: ptr::null_mut(),
            });
            if !head.is_null() {
                (*head).prev = node;
            }
        }
        self.heads[k].set(node);
        self.nonempty.set(self.nonempty.get() | 1 << k);
        self.flip(Map::Free, k, addr);
    }

    fn remove_free(&self, node: *mut FreeNode, k: usize) {
        // SAFETY: `node` is on free list k, so it and its neighbours are valid free nodes.
        unsafe {
            let FreeNode { next, prev } = node.read();
            if prev.is_null() {
                self.heads[k].set(next);
                if next.is_null() {
                    self.nonempty.set(self.nonempty.get() & !(1 << k));
                }
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
        }
        self.flip(Map::Free, k, node as usize);
    }

    /// Why freeing `addr` at order `k` is wrong, or `None` if it is a live block.
    #[inline]
    fn check_free(&self, addr: usize, k: usize) -> Option<AllocErrorKind> {
        let geo = self.geo();
        let size = self.min_block << k;
        if addr < geo.start || addr >= geo.end || addr & (size - 1) != 0 || addr + size > geo.end {
            return Some(AllocErrorKind::InvalidFree);
        }
        if self.test(Map::Allocated, k, addr) {
            return None;
        }
        Some(self.classify_bad_free(addr, k))
    }

    /// A free of something not allocated at this order: free already (at this order or
    /// inside a larger free block) is a double free; anything else a wrong pointer or size.
    #[cold]
    fn classify_bad_free(&self, addr: usize, k: usize) -> AllocErrorKind {
        let geo = self.geo();
        for order in k..geo.orders {
            let block = addr & !((self.min_block << order) - 1);
            if block >= geo.start
                && block + (self.min_block << order) <= geo.end
                && self.test(Map::Free, order, block)
            {
                return AllocErrorKind::DoubleFree;
            }
        }
        AllocErrorKind::InvalidFree
    }

    /// The allocator's figures. `fragmentation` is external fragmentation:
    /// `1 - largest free block / free bytes`.
    pub fn stats(&self) -> StrategyStats {
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
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let Some(k) = self.order_of(size, align) else {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        };
        let candidates = self.nonempty.get() >> k;
        if candidates == 0 {
            self.counters.on_failure(AllocErrorKind::Exhausted);
            return None;
        }
        let mut j = k + candidates.trailing_zeros() as usize;
        let node = self.heads[j].get();
        self.remove_free(node, j);
        let addr = node as usize;
        while j > k {
            j -= 1;
            self.push_free(addr + (self.min_block << j), j);
        }
        self.flip(Map::Allocated, k, addr);
        self.counters.on_alloc(self.min_block << k);
        NonNull::new(node.cast())
    }

    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        let addr = ptr.as_ptr() as usize;
        let Some(mut k) = self.order_of(size, align) else {
            return self.counters.on_misuse(AllocErrorKind::InvalidFree);
        };
        if let Some(kind) = self.check_free(addr, k) {
            return self.counters.on_misuse(kind);
        }
        self.flip(Map::Allocated, k, addr);
        self.counters.on_free(self.min_block << k);
        let geo = self.geo();
        let mut addr = addr;
        while k + 1 < geo.orders {
            let size = self.min_block << k;
            let buddy = addr ^ size;
            if buddy < geo.start || buddy + size > geo.end || !self.test(Map::Free, k, buddy) {
                break;
            }
            self.remove_free(self.node(buddy), k);
            addr &= !size;
            k += 1;
        }
        self.push_free(addr, k);
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

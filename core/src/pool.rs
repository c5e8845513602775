//! The pool: fixed-size blocks, O(1) allocate and free through an intrusive free list (a free
//! block's first word points to the next free block). Memory comes in chunks: from an [`Os`]
//! (fixed once, or grown chunk by chunk as the caller chooses) or from buffers the caller lends.
//!
//! A pool is used by one thread at a time: its fast path is a load and a store, no atomics.
//! Share it with [`crate::spin::SpinLock`] (which also makes it a `GlobalAlloc`), or use
//! [`crate::lock_free::LockFreePool`] for many threads.
//!
//! ```text
//! chunk:  [Chunk header][live bitmap][block 0][block 1] ... [block n-1]
//!                                     ^-- carved lazily: `carved` blocks handed out at least once
//! free list: head -> block -> block -> null      (through the blocks' first words)
//! ```
//! Invariant: `used_blocks + free-list length + uncarved blocks == capacity_blocks`.
//!
//! Misuse checks (debug builds only, as they cost a chunk lookup per call): a pointer outside
//! every chunk or not at a block boundary is refused as [`AllocErrorKind::InvalidFree`], a block
//! freed twice as [`AllocErrorKind::DoubleFree`]. Release builds trust the caller.
//!
//! Statistics cost the fast paths nothing: the peak is the number of blocks ever carved (a
//! block is carved only when the free list is empty, that is when every carved block is in
//! use), and [`Pool::stats`] counts the used blocks by walking the free list. Operation counts
//! and the wasted tails (the bytes of live blocks no request asked for) need a count on every
//! call, which costs more than the rest of an allocation and free together (a counter in memory
//! is a dependency chain from one call to the next: 0.44 ns a pair, measured): they are kept
//! with the `stats` feature only.
//!
//! May touch: [`crate::region`], [`crate::os`], [`crate::strategy_stats`], [`crate::error`].

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::{self, NonNull};

use crate::error::AllocErrorKind;
use crate::os::{align_up, Os};
use crate::region::Region;
#[cfg(feature = "stats")]
use crate::strategy_stats::ratio;
use crate::strategy_stats::{Counters, StrategyStats};
use crate::typed::{impl_allocator_api2, TypedAlloc};

/// How a pool backed by an [`Os`] gets its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Reserve room for this many blocks once, at construction; never grow.
    Fixed(usize),
    /// Reserve a chunk of this many blocks whenever the pool runs out.
    Chunks(usize),
}

/// Blocks per chunk of [`Pool::new`]'s growth (a chunk never smaller than 64 KiB).
#[cfg(all(feature = "std", any(unix, windows)))]
const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// The header at the start of every chunk.
#[repr(C)]
struct Chunk {
    /// Next chunk of the pool (null ends the list).
    next: *mut Chunk,
    /// The whole chunk, header included.
    region: Region,
    /// Whether `region` came from the pool's OS (and is released on drop).
    from_os: bool,
    /// First block.
    first: *mut u8,
    /// Blocks in the chunk.
    blocks: usize,
    /// Blocks handed out at least once (the rest were never touched).
    carved: usize,
    /// Debug builds: one bit per block, set while the block is allocated.
    live: *mut usize,
}

/// A fixed-size block allocator. See the [module documentation](self).
pub struct Pool<'a> {
    /// Size of a block (a multiple of `block_align`, at least a pointer); 0 when the pool was
    /// built with an impossible layout and refuses everything.
    block_size: usize,
    block_align: usize,
    /// Head of the intrusive free list (null: empty).
    free: Cell<*mut u8>,
    /// The chunk being carved, or null.
    current: Cell<*mut Chunk>,
    /// Every chunk, newest first.
    chunks: Cell<*mut Chunk>,
    capacity_blocks: Cell<usize>,
    /// With the `stats` feature: bytes asked for by live allocations (the wasted-tail figure).
    #[cfg(feature = "stats")]
    requested: Cell<usize>,
    os: Option<&'a dyn Os>,
    growth: Growth,
    /// Failures and misuse; with the `stats` feature, the operation counts too (the peak is
    /// derived, see the module documentation).
    counters: Counters,
    _buffers: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: the pool owns its chunks exclusively (from its OS or from buffers lent for 'a); moving
// it to another thread moves that ownership. It is not Sync (Cells): one thread at a time.
unsafe impl Send for Pool<'_> {}

/// The block layout for `size` and `align`, or `None` when impossible.
const fn block_layout(size: usize, align: usize) -> Option<(usize, usize)> {
    if !align.is_power_of_two() || size > isize::MAX as usize / 2 {
        return None;
    }
    let align = if align < align_of::<*mut u8>() {
        align_of::<*mut u8>()
    } else {
        align
    };
    let size = if size < size_of::<*mut u8>() {
        size_of::<*mut u8>()
    } else {
        size
    };
    Some((align_up(size, align), align))
}

impl<'a> Pool<'a> {
    /// A pool of `block_size`-byte blocks aligned to `align` with no memory yet: give it
    /// buffers with [`Pool::add_buffer`]. `const`, so it can sit in a `static` (inside a
    /// [`crate::spin::SpinLock`]). An impossible layout (alignment not a power of two) gives a
    /// pool that refuses every request with [`AllocErrorKind::InvalidRequest`].
    pub const fn empty(block_size: usize, align: usize) -> Self {
        let (block_size, block_align) = match block_layout(block_size, align) {
            Some(layout) => layout,
            None => (0, 1),
        };
        Pool {
            block_size,
            block_align,
            free: Cell::new(ptr::null_mut()),
            current: Cell::new(ptr::null_mut()),
            chunks: Cell::new(ptr::null_mut()),
            capacity_blocks: Cell::new(0),
            #[cfg(feature = "stats")]
            requested: Cell::new(0),
            os: None,
            growth: Growth::Fixed(0),
            counters: Counters::new(),
            _buffers: PhantomData,
        }
    }

    /// A pool over one caller buffer. `None` when the buffer cannot hold a single block or
    /// the layout is impossible.
    pub fn from_buffer(
        buffer: &'a mut [MaybeUninit<u8>],
        block_size: usize,
        align: usize,
    ) -> Option<Self> {
        let pool = Self::empty(block_size, align);
        pool.add_buffer(buffer).then_some(pool)
    }

    /// A pool whose chunks come from `os`. With [`Growth::Fixed`] the memory is reserved now
    /// (`None` if the OS refuses); with [`Growth::Chunks`] on first need.
    pub fn with_os(
        os: &'a dyn Os,
        block_size: usize,
        align: usize,
        growth: Growth,
    ) -> Option<Self> {
        let mut pool = Self::empty(block_size, align);
        if pool.block_size == 0 {
            crate::error::record(AllocErrorKind::InvalidRequest);
            return None;
        }
        pool.os = Some(os);
        pool.growth = growth;
        if let Growth::Fixed(blocks) = growth {
            if !pool.grow(blocks) {
                return None;
            }
        }
        Some(pool)
    }

    /// A growable pool over the operating system's memory (chunks of at least 64 KiB).
    #[cfg(all(feature = "std", any(unix, windows)))]
    pub fn new(block_size: usize, align: usize) -> Option<Pool<'static>> {
        let per_chunk = (DEFAULT_CHUNK_BYTES / block_size.max(1)).max(16);
        Pool::with_os(
            &crate::region::SYSTEM_OS,
            block_size,
            align,
            Growth::Chunks(per_chunk),
        )
    }

    /// The size of every block (the requested size rounded up to the alignment).
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks the pool holds, used or free.
    pub fn capacity(&self) -> usize {
        self.capacity_blocks.get()
    }

    /// Adds a buffer as one more chunk. `false` when it cannot hold a block.
    pub fn add_buffer(&self, buffer: &'a mut [MaybeUninit<u8>]) -> bool {
        // SAFETY: the buffer is lent to the pool for 'a, which the pool cannot outlive.
        unsafe { self.add_chunk(Region::of_buffer(buffer), false) }
    }

    /// The pool's figures. Walks the free list (O(free blocks)): the fast paths keep no
    /// count. `peak_used_bytes` is the blocks ever carved, which is the peak exactly (see the
    /// module documentation). With the `stats` feature, `allocations` and `deallocations` are
    /// counted and `fragmentation` is the share of used bytes that no allocation asked for
    /// (the tails of blocks larger than the requests); without it they are 0 (a free block of a
    /// pool can always serve the next request, so the pool has no other fragmentation).
    pub fn stats(&self) -> StrategyStats {
        let mut carved = 0;
        let mut chunk = self.chunks.get();
        while !chunk.is_null() {
            // SAFETY: chunk pointers stay valid until the pool is dropped.
            let c = unsafe { &*chunk };
            carved += c.carved;
            chunk = c.next;
        }
        let mut free_listed = 0;
        let mut block = self.free.get();
        while !block.is_null() {
            free_listed += 1;
            // SAFETY: a free block's first word holds the next free block.
            block = unsafe { block.cast::<*mut u8>().read() };
        }
        let used = carved.saturating_sub(free_listed) * self.block_size;
        let free = self.capacity_blocks.get() * self.block_size - used;
        #[cfg(feature = "stats")]
        let fragmentation = ratio(used.saturating_sub(self.requested.get()), used);
        #[cfg(not(feature = "stats"))]
        let fragmentation = 0.0;
        let mut stats = self.counters.snapshot(used, free, fragmentation);
        stats.peak_used_bytes = carved * self.block_size;
        stats
    }

    /// Lays a chunk header over `region` and links it. `false` when no block fits.
    ///
    /// # Safety
    /// `region` is memory the pool may use until it is dropped (released through its OS when
    /// `from_os`), not used by anything else.
    unsafe fn add_chunk(&self, region: Region, from_os: bool) -> bool {
        if self.block_size == 0 {
            return false;
        }
        let start = region.base.as_ptr() as usize;
        let header_at = align_up(start, align_of::<Chunk>()) - start;
        // Upper bound of the blocks, for the bitmap's size.
        let max_blocks = region.len / self.block_size;
        let words = max_blocks.div_ceil(usize::BITS as usize);
        let bitmap_at = header_at + size_of::<Chunk>();
        let first_at = align_up(
            start + bitmap_at + words * size_of::<usize>(),
            self.block_align,
        )
        .saturating_sub(start);
        if first_at >= region.len {
            return false;
        }
        let blocks = (region.len - first_at) / self.block_size;
        if blocks == 0 {
            return false;
        }
        // SAFETY: every offset is below region.len (checked above: the bitmap ends before
        // `first_at`); the region is ours (the caller's contract).
        unsafe {
            let live = region.at(bitmap_at).as_ptr().cast::<usize>();
            ptr::write_bytes(live, 0, words);
            let chunk = region.at(header_at).as_ptr().cast::<Chunk>();
            chunk.write(Chunk {
                next: self.chunks.get(),
                region,
                from_os,
                first: region.at(first_at).as_ptr(),
                blocks,
                carved: 0,
                live,
            });
            self.chunks.set(chunk);
            if self.current.get().is_null() {
                self.current.set(chunk);
            }
        }
        self.capacity_blocks
            .set(self.capacity_blocks.get() + blocks);
        true
    }

    /// Reserves a chunk of `blocks` blocks from the OS. `false` when there is no OS or it
    /// refuses.
    #[cold]
    fn grow(&self, blocks: usize) -> bool {
        let Some(os) = self.os else { return false };
        let overhead = size_of::<Chunk>() + blocks.div_ceil(8) + self.block_align + 16;
        let Some(bytes) = blocks
            .checked_mul(self.block_size)
            .and_then(|b| b.checked_add(overhead))
        else {
            return false;
        };
        let Some(region) = Region::reserve(os, bytes, self.block_align.max(os.page_size())) else {
            return false;
        };
        // SAFETY: a fresh region from the pool's OS, released in Drop.
        unsafe { self.add_chunk(region, true) }
    }

    /// The slow path of allocation, with the free list empty: a block never handed out before
    /// (carved from a chunk), growing when all are carved. Counts the failure when there is
    /// none.
    #[cold]
    #[inline(never)]
    fn carve(&self) -> Option<*mut u8> {
        let block = self.carve_or_grow();
        if block.is_none() {
            self.counters.on_failure(AllocErrorKind::Exhausted);
        }
        block
    }

    fn carve_or_grow(&self) -> Option<*mut u8> {
        loop {
            let mut chunk = self.current.get();
            // SAFETY: chunk pointers come from add_chunk and stay valid until the pool is
            // dropped; only this thread touches them (the pool is !Sync).
            unsafe {
                if chunk.is_null() || (*chunk).carved == (*chunk).blocks {
                    // Look for any chunk with uncarved blocks (buffers added later).
                    chunk = self.chunks.get();
                    while !chunk.is_null() && (*chunk).carved == (*chunk).blocks {
                        chunk = (*chunk).next;
                    }
                }
                if !chunk.is_null() {
                    self.current.set(chunk);
                    let c = &mut *chunk;
                    // carved < blocks: the block lies inside the chunk.
                    let block = c.first.add(c.carved * self.block_size);
                    c.carved += 1;
                    return Some(block);
                }
            }
            let Growth::Chunks(blocks) = self.growth else {
                return None;
            };
            if !self.grow(blocks) {
                return None;
            }
        }
    }

    /// The chunk holding `addr` and the block index in it; `None` for foreign or misaligned
    /// pointers.
    fn locate(&self, addr: usize) -> Option<(*mut Chunk, usize)> {
        let mut chunk = self.chunks.get();
        while !chunk.is_null() {
            // SAFETY: chunk pointers stay valid until the pool is dropped.
            let c = unsafe { &*chunk };
            let offset = addr.wrapping_sub(c.first as usize);
            if offset < c.blocks * self.block_size {
                if offset % self.block_size != 0 {
                    return None;
                }
                return Some((chunk, offset / self.block_size));
            }
            chunk = c.next;
        }
        None
    }

    /// Debug builds: flips the block's live bit to `live`; `Err` when it already was (a
    /// double free, or a bug) or the pointer is not a block of this pool.
    fn set_live(&self, addr: usize, live: bool) -> Result<(), AllocErrorKind> {
        let (chunk, index) = self.locate(addr).ok_or(AllocErrorKind::InvalidFree)?;
        let bits = usize::BITS as usize;
        // SAFETY: index < blocks, so the word lies inside the chunk's bitmap.
        let word = unsafe { &mut *(*chunk).live.add(index / bits) };
        let mask = 1usize << (index % bits);
        if (*word & mask != 0) == live {
            return Err(AllocErrorKind::DoubleFree);
        }
        *word ^= mask;
        Ok(())
    }
}

// SAFETY: blocks are disjoint block_size-byte pieces of chunks the pool owns, aligned to
// block_align (chunks place the first block aligned and block_size is a multiple of it); a
// block is handed out again only after it was freed; chunks live until the pool is dropped.
unsafe impl TypedAlloc for Pool<'_> {
    /// Fast path: a compare of the size (and of the alignment, when it is above a pointer's,
    /// which every block has: with a constant alignment up to 8 the test folds away), a pop
    /// off the free list; falls back to `carve`. Seven instructions on x86-64 in release
    /// builds without the `stats` feature.
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let over_aligned = align > align_of::<*mut u8>() && align > self.block_align;
        if size > self.block_size || over_aligned {
            self.counters.on_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let head = self.free.get();
        let block = if !head.is_null() {
            // SAFETY: a free block's first word holds the next free block (written by
            // deallocate_bytes); blocks are pointer-aligned.
            self.free.set(unsafe { head.cast::<*mut u8>().read() });
            head
        } else {
            self.carve()?
        };
        if cfg!(debug_assertions) {
            // Cannot fail: the free list holds only blocks whose live bit was cleared.
            let _ = self.set_live(block as usize, true);
        }
        #[cfg(feature = "stats")]
        {
            self.counters.count_allocation();
            self.requested.set(self.requested.get() + size);
        }
        // SAFETY: blocks come from chunks, which are non-null memory.
        Some(unsafe { NonNull::new_unchecked(block) })
    }

    /// Fast path: a push on the free list (three instructions on x86-64 in release builds
    /// without the `stats` feature).
    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, _align: usize) {
        if cfg!(debug_assertions) {
            if let Err(kind) = self.set_live(ptr.as_ptr() as usize, false) {
                self.counters.on_misuse(kind);
                return;
            }
        }
        // SAFETY: the caller guarantees `ptr` is a block of this pool that nobody uses any
        // more; its first word becomes the free-list link.
        unsafe { ptr.as_ptr().cast::<*mut u8>().write(self.free.get()) };
        self.free.set(ptr.as_ptr());
        #[cfg(feature = "stats")]
        {
            self.counters.count_deallocation();
            self.requested
                .set(self.requested.get().saturating_sub(size));
        }
        #[cfg(not(feature = "stats"))]
        let _ = size;
    }

    unsafe fn resize_in_place(&self, _ptr: NonNull<u8>, old: usize, new: usize, _a: usize) -> bool {
        // Every block already has block_size bytes.
        if new > self.block_size {
            return false;
        }
        #[cfg(feature = "stats")]
        self.requested
            .set((self.requested.get() + new).saturating_sub(old));
        #[cfg(not(feature = "stats"))]
        let _ = old;
        true
    }
}

impl_allocator_api2!(['a] Pool<'a>);

impl Drop for Pool<'_> {
    fn drop(&mut self) {
        let mut chunk = self.chunks.get();
        while !chunk.is_null() {
            // SAFETY: chunk headers are valid until their region is released, which happens
            // after the header was read; buffers are simply forgotten (they are the caller's).
            unsafe {
                let Chunk {
                    next,
                    region,
                    from_os,
                    ..
                } = chunk.read();
                if let (true, Some(os)) = (from_os, self.os) {
                    region.release(os);
                }
                chunk = next;
            }
        }
    }
}

impl core::fmt::Debug for Pool<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("block_size", &self.block_size)
            .field("capacity", &self.capacity())
            .field("stats", &self.stats())
            .finish()
    }
}

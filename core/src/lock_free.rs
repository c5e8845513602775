//! The lock-free pool: fixed-size blocks shared by many threads, with per-thread caches in
//! front of one lock-free shared list.
//!
//! # The shared list
//! A Treiber stack (R. K. Treiber, "Systems Programming: Coping with Parallelism", IBM RJ 5118,
//! 1986) whose entries are *batches* of blocks: a thread moves up to [`BATCH`] blocks with one
//! CAS. Links never live in the blocks (a block in use belongs to its user, and reading it
//! while another thread writes would be a data race); they live in pool-owned atomics beside
//! the blocks. An entry is one of two kinds, told apart by its number (see [`Entry`]):
//! * a *chain*: a head block whose [`Link`] (a side table of atomics, one per block) names the
//!   next entry and the next block of the batch, and so on down the chain;
//! * an *array*: a [`BatchArray`] that lists the batch's blocks and names the next entry.
//!
//! A cache's flush writes an array: taking it is the one CAS of the pop, and handing it to a
//! cache is a copy of independent loads (the array's few lines are fetched together) and a
//! push that frees the array. Walking a chain is one dependent load per block, each on a
//! side-table line last written by the freeing thread's core: a producer's refill stalled on
//! every one of them in turn.
//!
//! # The free arrays
//! The pool keeps `capacity / BATCH + 1` arrays. The unclaimed ones sit on a second tagged
//! Treiber stack, linked through their `batch_next` (unused while an array is off the shared
//! list): a flusher claims an array by popping it, and the thread that emptied an array's
//! batch (a refill, or the cacheless path's last take) pushes it back. A claim therefore finds
//! an array whenever one is free, wherever the free ones lie. (Probing a few array ids from the
//! cache's last one missed in producer/consumer use, where most arrays sit deep in the LIFO
//! shared list and the free ones are scattered: 16% of the flushes fell back to chains.) Only
//! when no array is free — arrays on the list may hold as few as 2 blocks — does a flush make
//! a chain (the fallback; chains are also the initial batches and the cacheless path's
//! one-block batches). An array is on at most one of the two stacks, or held by one thread.
//!
//! # ABA
//! A pop reads the head entry `A` and its successor, then CASes the head from `A` to the
//! successor. If meanwhile `A` was popped, other entries changed, and `A` was pushed back (for
//! an array: freed, claimed again and pushed), a bare CAS would succeed and install a stale
//! successor. So the head word packs the entry number with a version tag incremented by every
//! successful CAS, in the *same* atomic word: `head = tag << INDEX_BITS | entry`. The CAS
//! succeeds only if no other update happened, unless the tag wrapped all the way round to the
//! same value with the same entry on top. The free-array stack's head has the same layout and
//! the same argument (its pop reads `batch_next` the same way), so the same widths suffice.
//! With 64-bit atomics the tag has 32 bits: 2^32
//! successful updates (about 40 s at 10 ns each, faster than any contended CAS loop runs)
//! would have to happen while one thread sits between two adjacent instructions of `pop`.
//! Targets with only 32-bit atomics (`thumbv7em`) split the word 16/16: at most 65 535
//! entries (blocks and arrays), and 65 536 updates inside that window — an interrupt handler
//! would have to run that many pool operations while it preempts a pop; pools on such targets
//! are small and handlers short.
//!
//! # Per-thread caches
//! A [`LocalCache`] (from [`LockFreePool::cache`], one per thread; it is `!Sync`) keeps up to
//! [`CACHE_SLOTS`] block indices. Allocation pops from it, free pushes to it: no atomics. An
//! empty cache refills with one batch (one CAS); a full cache flushes its older half as one
//! batch (one CAS, and one to claim an array; the refill that empties the array pushes it back
//! with one more). Every [`REBALANCE_PERIOD`] operations a cache that did not flush in the
//! period returns half of the blocks that sat unused for the whole period (its low-water mark),
//! so an idle thread does not strand memory. Producer/consumer — one thread allocating, another
//! freeing — costs a few CASes per [`BATCH`] blocks: the producer refills, the consumer
//! flushes.
//!
//! Caches are values a thread holds, not thread-locals the pool looks up. A pool-keyed
//! thread-local would cost every call a TLS access and a search by pool identity, and it would
//! have to be flushed at whichever comes first of the thread's exit and the pool's drop: the
//! pool would have to reach into other threads' caches (a registry of caches, and records that
//! outlive both sides). A program that allocates from many threads keeps one cache in each
//! thread's own state (a `thread_local!`, a worker struct); the pool's own [`TypedAlloc`] is
//! the cacheless path, correct from any thread at one or two CASes per call.
//!
//! Freeing a pointer that is not a block of this pool (outside it, or not at a block boundary)
//! is refused as [`AllocErrorKind::InvalidFree`] in every build; in debug builds a per-block
//! flag also refuses double frees ([`AllocErrorKind::DoubleFree`]).
//!
//! May touch: [`crate::sync`], [`crate::region`], [`crate::os`], [`crate::strategy_stats`],
//! [`crate::error`].

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::num::NonZeroUsize;
use core::ptr::NonNull;

use crate::error::{record, AllocErrorKind};
use crate::os::{align_up, Os};
use crate::region::Region;
use crate::strategy_stats::{ratio, StrategyStats};
use crate::sync::{spin_hint, AtomicU32, AtomicUsize, Ordering};
use crate::typed::{impl_allocator_api2, TypedAlloc};

// The head word: 64 bits where the target has 64-bit atomics, else 32. `--cfg
// allocscope_narrow_word` forces the 32-bit layout on any target, so the host's tests cover the
// layout thumbv7em uses.
#[cfg(all(target_has_atomic = "64", not(allocscope_narrow_word)))]
type Word = u64;
#[cfg(all(target_has_atomic = "64", not(allocscope_narrow_word)))]
type AtomicWord = crate::sync::AtomicU64;
#[cfg(any(not(target_has_atomic = "64"), allocscope_narrow_word))]
type Word = u32;
#[cfg(any(not(target_has_atomic = "64"), allocscope_narrow_word))]
type AtomicWord = AtomicU32;

/// Bits of the head word holding the top entry's number; the rest is the ABA tag.
const INDEX_BITS: u32 = Word::BITS / 2;
const INDEX_MASK: Word = (1 << INDEX_BITS) - 1;
/// One tag step.
const TAG_ONE: Word = 1 << INDEX_BITS;

/// Block indices a per-thread cache holds (128 rather than 64: a batch move's cross-core
/// traffic — the list head, the statistics, the links — is paid per batch, and producer/consumer
/// ran 12.7 instead of 16.3 ns a block).
pub const CACHE_SLOTS: usize = 128;
/// Blocks moved between a cache and the shared list at once (half a cache).
pub const BATCH: usize = CACHE_SLOTS / 2;
/// Operations of a cache between two rebalances.
pub const REBALANCE_PERIOD: u32 = 256;

/// Keeps a hot atomic on its own cache line (no false sharing with its neighbours).
#[repr(align(64))]
struct CachePadded<T>(T);

/// The side-table entry of one block. Links hold `index + 1`, 0 meaning none. Release builds
/// keep 8 bytes per block, so a refill walking a batch's chain (lines last written by the
/// freeing thread's core) crosses as few cache lines as possible.
struct Link {
    /// The next block of the same chain.
    next: AtomicU32,
    /// For the head block of a chain on the shared list: the next entry (an [`Entry`] number).
    batch_next: AtomicU32,
    /// Debug builds: 1 while the block is allocated.
    #[cfg(debug_assertions)]
    live: AtomicU32,
}

/// The blocks of one batch, listed: a batch on the shared list, or in flight between a flush
/// and its push or between a pop and the copy into a cache. `len` and `blocks` belong to whoever
/// claimed the array (popped it off the free-array stack) until its push, then to whoever pops
/// it; they are atomics only so that loom checks that hand-over (Relaxed loads and stores
/// compile to plain ones).
#[repr(C, align(64))]
struct BatchArray {
    /// On the shared list: the next entry (an [`Entry`] number). On the free-array stack: the
    /// next free array's `id + 1` (0: none). Read by pops of either stack that may lose their
    /// CAS, hence atomic.
    batch_next: AtomicU32,
    /// Blocks in `blocks` (2 to BATCH when pushed; the cacheless path takes them one by one).
    len: AtomicU32,
    blocks: [AtomicU32; BATCH],
}

/// What an entry number of the shared list (the head word's low bits, a `batch_next`) names:
/// 0 is none, `1..=capacity` the chain whose head is block `number - 1`, and the next
/// `array_count` numbers the arrays.
#[derive(Clone, Copy)]
enum Entry {
    Chain(u32),
    Array(u32),
}

/// Statistics shared by every thread: relaxed counters, updated at batch moves (caches) or per
/// operation (the cacheless path). `repr(C)`: the ones a batch move writes come first, on the
/// head words' line (see [`Top`]); `failures` and `misuse` are cold.
#[repr(C)]
struct Shared {
    /// Blocks on the shared list.
    shared_free: AtomicUsize,
    /// Blocks sitting in caches.
    cached: AtomicUsize,
    /// High-water mark of blocks off the shared list (in use or cached).
    peak_out: AtomicUsize,
    allocations: AtomicUsize,
    deallocations: AtomicUsize,
    failures: AtomicUsize,
    misuse: AtomicUsize,
    /// With the `stats` feature: the caches' batch moves, indexed by [`Move`].
    #[cfg(feature = "stats")]
    moves: [AtomicUsize; 4],
}

/// With the `stats` feature: how the caches' batches moved (see [`LockFreePool::batch_moves`]).
#[cfg(feature = "stats")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchMoves {
    /// Flushes that wrote their blocks into a claimed array.
    pub flushes_to_array: u64,
    /// Flushes of 2 to [`BATCH`] blocks that found no free array and made a chain (the
    /// fallback; one-block flushes are chains by design and not counted).
    pub flushes_to_chain: u64,
    /// Refills that took an array batch.
    pub refills_from_array: u64,
    /// Refills that took a chain batch (walking its links).
    pub refills_from_chain: u64,
}

/// A kind of batch move, counted with the `stats` feature.
#[derive(Clone, Copy)]
enum Move {
    FlushToArray,
    FlushToChain,
    RefillFromArray,
    RefillFromChain,
}

/// The two stacks' head words and the shared statistics, on one cache line (the first 64
/// bytes hold both heads and every counter a batch move writes, with 64-bit words): every batch
/// move CASes both heads (a flush pops a free array and pushes the batch, a refill pops the
/// batch and pushes the emptied array back) and then updates a counter or two, so one line
/// moves between the cores per batch move, not two or three. A line of its own for the
/// free-array head would add a transfer per move and separate nothing: the same two threads
/// write both heads. The counters are written only by the thread that just won a CAS, which
/// holds the line, so they do not slow the CAS loops.
#[repr(C)]
struct Top {
    /// `tag << INDEX_BITS | number of the top entry` (an [`Entry`] number, 0 when empty).
    head: AtomicWord,
    /// The free-array stack: `tag << INDEX_BITS | id + 1` of the top free array (0: none).
    free_arrays: AtomicWord,
    stats: Shared,
}

// The heads and the counters of a batch move share the first line (loom's atomics are larger).
#[cfg(not(loom))]
const _: () = assert!(
    core::mem::offset_of!(Top, stats)
        + core::mem::offset_of!(Shared, deallocations)
        + size_of::<AtomicUsize>()
        <= 64
);

/// A fixed-size block allocator for many threads. See the [module documentation](self).
pub struct LockFreePool<'a> {
    /// The shared list's and the free-array stack's head words and the statistics (see
    /// [`Top`]).
    top: CachePadded<Top>,
    links: NonNull<Link>,
    arrays: NonNull<BatchArray>,
    /// Number of batch arrays (at least 1).
    array_count: u32,
    blocks: NonNull<u8>,
    /// Distance between blocks: the block size rounded up to the alignment. Non-zero by type,
    /// so dividing by it (`index_of`) needs no check that could panic.
    stride: NonZeroUsize,
    /// `log2(stride)` when it is a power of two (the common case: a shift instead of a
    /// division on free), else `u32::MAX`.
    stride_shift: u32,
    capacity: usize,
    block_size: usize,
    block_align: usize,
    region: Region,
    os: Option<&'a dyn Os>,
    _buffer: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: all shared state is atomic (head, links, statistics); a block is accessed only by the
// thread that popped it until it pushes it back, and a push (Release) happens-before the pop
// (Acquire) that hands it to another thread. The region is owned by the pool.
unsafe impl Sync for LockFreePool<'_> {}
// SAFETY: as above; moving the pool moves ownership of its region.
unsafe impl Send for LockFreePool<'_> {}

/// Where the parts of a pool of `capacity` blocks lie, as offsets from a region starting at
/// address `start`: the side table of links, the batch arrays, the blocks.
struct Layout {
    links: usize,
    arrays: usize,
    array_count: usize,
    blocks: usize,
    end: usize,
}

/// The layout of `capacity` blocks of `stride` bytes aligned to `align` (a power of two);
/// `None` if the sizes overflow.
fn layout(start: usize, capacity: usize, align: usize, stride: usize) -> Option<Layout> {
    let offset =
        |addr: usize, to: usize| (addr.checked_add(to - 1)? & !(to - 1)).checked_sub(start);
    let links = offset(start, align_of::<Link>())?;
    let links_end = start
        .checked_add(links)?
        .checked_add(capacity.checked_mul(size_of::<Link>())?)?;
    let arrays = offset(links_end, align_of::<BatchArray>())?;
    let array_count = capacity / BATCH + 1;
    let arrays_end = start
        .checked_add(arrays)?
        .checked_add(array_count.checked_mul(size_of::<BatchArray>())?)?;
    let blocks = offset(arrays_end, align)?;
    let end = blocks.checked_add(capacity.checked_mul(stride)?)?;
    Some(Layout {
        links,
        arrays,
        array_count,
        blocks,
        end,
    })
}

impl<'a> LockFreePool<'a> {
    /// Lays the side table and at most `max_blocks` blocks over `region`.
    fn over(
        region: Region,
        os: Option<&'a dyn Os>,
        block_size: usize,
        align: usize,
        max_blocks: usize,
    ) -> Option<Self> {
        if !align.is_power_of_two() || block_size > isize::MAX as usize / 2 {
            record(AllocErrorKind::InvalidRequest);
            return None;
        }
        // At least 1, and no overflow to 0: block_size <= isize::MAX / 2, align a power of two.
        let Some(stride) = NonZeroUsize::new(align_up(block_size.max(1), align)) else {
            record(AllocErrorKind::InvalidRequest);
            return None;
        };
        let start = region.base.as_ptr() as usize;
        // The largest capacity whose layout fits (the end offset grows with the capacity) and
        // whose entries (blocks and arrays) have numbers in the head word's index field and in
        // a u32: a binary search over at most `usize::BITS` steps.
        let max_entry = INDEX_MASK.min(Word::from(u32::MAX)) as usize;
        let fits = |n: usize| {
            layout(start, n, align, stride.get())
                .is_some_and(|l| l.end <= region.len && n + l.array_count <= max_entry)
        };
        let (mut lo, mut hi) = (0, (region.len / stride).min(max_entry).min(max_blocks));
        while lo < hi {
            let mid = hi - (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let capacity = lo;
        if capacity == 0 {
            return None;
        }
        let layout = layout(start, capacity, align, stride.get())?;
        // SAFETY: the offsets lie inside the region (the layout fits, checked above).
        let (links, arrays, blocks) = unsafe {
            (
                region.at(layout.links).cast::<Link>(),
                region.at(layout.arrays).cast::<BatchArray>(),
                region.at(layout.blocks),
            )
        };
        for a in 0..layout.array_count {
            // Every array starts free: the free-array stack lists them in id order.
            let next_free = if a + 1 < layout.array_count {
                a as u32 + 2
            } else {
                0
            };
            // SAFETY: a < array_count: the array lies in its table, which nobody uses yet.
            unsafe {
                arrays.as_ptr().add(a).write(BatchArray {
                    batch_next: AtomicU32::new(next_free),
                    len: AtomicU32::new(0),
                    blocks: core::array::from_fn(|_| AtomicU32::new(0)),
                })
            };
        }
        // Initial shared list: batches of BATCH consecutive blocks, in index order.
        for i in 0..capacity {
            let batch_end = (i / BATCH + 1) * BATCH;
            let next = if i + 1 < batch_end.min(capacity) {
                i as u32 + 2
            } else {
                0
            };
            let batch_next = if i % BATCH == 0 && batch_end < capacity {
                batch_end as u32 + 1
            } else {
                0
            };
            // SAFETY: i < capacity: the entry lies in the side table, which nobody uses yet.
            unsafe {
                links.as_ptr().add(i).write(Link {
                    next: AtomicU32::new(next),
                    batch_next: AtomicU32::new(batch_next),
                    #[cfg(debug_assertions)]
                    live: AtomicU32::new(0),
                })
            };
        }
        let pool = LockFreePool {
            top: CachePadded(Top {
                head: AtomicWord::new(1),
                // Array 0 on top (array_count >= 1).
                free_arrays: AtomicWord::new(1),
                stats: Shared {
                    shared_free: AtomicUsize::new(capacity),
                    cached: AtomicUsize::new(0),
                    peak_out: AtomicUsize::new(0),
                    allocations: AtomicUsize::new(0),
                    deallocations: AtomicUsize::new(0),
                    failures: AtomicUsize::new(0),
                    misuse: AtomicUsize::new(0),
                    #[cfg(feature = "stats")]
                    moves: core::array::from_fn(|_| AtomicUsize::new(0)),
                },
            }),
            links,
            arrays,
            // capacity + array_count fits in a u32 (checked by `fits`).
            array_count: layout.array_count as u32,
            blocks,
            stride,
            stride_shift: if stride.is_power_of_two() {
                stride.trailing_zeros()
            } else {
                u32::MAX
            },
            capacity,
            block_size,
            block_align: align,
            region,
            os,
            _buffer: PhantomData,
        };
        Some(pool)
    }

    /// A pool of `block_size`-byte blocks aligned to `align`, as many as fit in `buffer`
    /// (the side table included). `None` if none fits or the layout is impossible.
    pub fn from_buffer(
        buffer: &'a mut [MaybeUninit<u8>],
        block_size: usize,
        align: usize,
    ) -> Option<Self> {
        Self::over(
            Region::of_buffer(buffer),
            None,
            block_size,
            align,
            usize::MAX,
        )
    }

    /// A pool of exactly `capacity` blocks reserved from `os` (released on drop).
    pub fn with_os(
        os: &'a dyn Os,
        block_size: usize,
        align: usize,
        capacity: usize,
    ) -> Option<Self> {
        let stride = align_up(block_size.max(1), align.max(1));
        // From a page-aligned start the layout is the one computed here; the slack covers the
        // alignment of the blocks should `align` exceed a page.
        let bytes = layout(0, capacity, align.max(1), stride)?
            .end
            .checked_add(align)?;
        let region = Region::reserve(os, bytes, os.page_size())?;
        let pool = Self::over(region, Some(os), block_size, align, capacity);
        if pool.is_none() {
            // SAFETY: the region just reserved; nothing uses it.
            unsafe { region.release(os) };
        }
        pool
    }

    /// A pool of `capacity` blocks of the operating system's memory.
    #[cfg(all(feature = "std", any(unix, windows)))]
    pub fn new(block_size: usize, align: usize, capacity: usize) -> Option<LockFreePool<'static>> {
        LockFreePool::with_os(&crate::region::SYSTEM_OS, block_size, align, capacity)
    }

    /// A per-thread cache in front of the pool. Keep one per thread and allocate through it.
    pub fn cache(&self) -> LocalCache<'_, 'a> {
        LocalCache {
            pool: self,
            slots: [const { Cell::new(0) }; CACHE_SLOTS],
            len: Cell::new(0),
            low_water: Cell::new(0),
            flushed: Cell::new(false),
            ticks: Cell::new(0),
            published_ticks: Cell::new(0),
            published_len: Cell::new(0),
        }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The usable size of a block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The pool's figures. `fragmentation` is the share of free blocks stranded in per-thread
    /// caches (free, but not available to other threads). `used_bytes`, the operation counts
    /// and the cached blocks are as each cache published them at its last batch move or
    /// rebalance (at least every [`REBALANCE_PERIOD`] of its operations; a cache derives its
    /// allocations and frees from its operation count and the blocks it moved);
    /// `peak_used_bytes` is the high-water mark of blocks off the shared list (used or cached).
    pub fn stats(&self) -> StrategyStats {
        let s = &self.top.0.stats;
        // Relaxed (all loads): statistics, a snapshot that may be slightly stale.
        let shared = s.shared_free.load(Ordering::Relaxed);
        // Above the capacity only while wrapped below zero (see `note_taken`): none then.
        let shared = if shared > self.capacity { 0 } else { shared };
        let cached = s.cached.load(Ordering::Relaxed);
        let free = shared.saturating_add(cached).min(self.capacity);
        StrategyStats {
            used_bytes: (self.capacity - free) * self.stride.get(),
            free_bytes: free * self.stride.get(),
            peak_used_bytes: s.peak_out.load(Ordering::Relaxed) * self.stride.get(),
            allocations: s.allocations.load(Ordering::Relaxed) as u64,
            deallocations: s.deallocations.load(Ordering::Relaxed) as u64,
            failures: s.failures.load(Ordering::Relaxed) as u64,
            misuse: s.misuse.load(Ordering::Relaxed) as u64,
            fragmentation: ratio(cached, free),
        }
    }

    #[inline(always)]
    fn link(&self, index: u32) -> &Link {
        // SAFETY: callers pass indices of blocks (< capacity); entries live as long as the pool.
        unsafe { &*self.links.as_ptr().add(index as usize) }
    }

    #[inline(always)]
    fn block(&self, index: u32) -> NonNull<u8> {
        // SAFETY: index < capacity, so the block lies inside the region.
        unsafe {
            NonNull::new_unchecked(self.blocks.as_ptr().add(index as usize * self.stride.get()))
        }
    }

    #[inline(always)]
    fn array(&self, id: u32) -> &BatchArray {
        // SAFETY: callers pass array numbers (< array_count): the free-array stack holds only
        // `id + 1` of those (pushed by `over` and `release_array`), and `entry` decodes only
        // those. The arrays live as long as the pool.
        unsafe { &*self.arrays.as_ptr().add(id as usize) }
    }

    /// Claims a free batch array: pops the free-array stack. `None` only when no array is free.
    #[inline]
    fn claim_array(&self) -> Option<u32> {
        // The pop's Acquire pairs with the Release CAS of `release_array`: the last batch's
        // reads of `len` and `blocks` happen-before our writes (none of them may see those).
        let number = pop_tagged(&self.top.0.free_arrays, |number| {
            &self.array(number.wrapping_sub(1)).batch_next
        })?;
        Some(number - 1)
    }

    /// Frees array `id`, whose batch this thread popped, once its blocks have been read: pushes
    /// it on the free-array stack.
    #[inline]
    fn release_array(&self, id: u32) {
        // The push's Release CAS: our reads of `len` and `blocks` happen-before the writes of
        // the next flusher to claim the array (its Acquire pop reads this CAS or a later RMW of
        // the same head).
        push_tagged(&self.top.0.free_arrays, id + 1, &self.array(id).batch_next);
    }

    /// With the `stats` feature: how the caches' batches moved so far (relaxed counters, a
    /// snapshot that may be slightly stale while caches work).
    #[cfg(feature = "stats")]
    pub fn batch_moves(&self) -> BatchMoves {
        // Relaxed (all): statistics.
        let m = |kind: Move| self.top.0.stats.moves[kind as usize].load(Ordering::Relaxed) as u64;
        BatchMoves {
            flushes_to_array: m(Move::FlushToArray),
            flushes_to_chain: m(Move::FlushToChain),
            refills_from_array: m(Move::RefillFromArray),
            refills_from_chain: m(Move::RefillFromChain),
        }
    }

    /// Counts a batch move (with the `stats` feature; nothing otherwise).
    #[inline(always)]
    fn note_move(&self, kind: Move) {
        // Relaxed: a statistic.
        #[cfg(feature = "stats")]
        self.top.0.stats.moves[kind as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(not(feature = "stats"))]
        let _ = kind;
    }

    /// The index of the block at `ptr`; `None` if it is not a block of this pool.
    #[inline(always)]
    fn index_of(&self, ptr: NonNull<u8>) -> Option<u32> {
        let offset = (ptr.as_ptr() as usize).wrapping_sub(self.blocks.as_ptr() as usize);
        let index = if self.stride_shift != u32::MAX {
            if offset & (self.stride.get() - 1) != 0 {
                return None;
            }
            offset >> self.stride_shift
        } else {
            if offset % self.stride != 0 {
                return None;
            }
            offset / self.stride
        };
        (index < self.capacity).then_some(index as u32)
    }

    /// The entry numbered `number` (non-zero, as pushed: see [`Entry`]).
    #[inline(always)]
    fn entry(&self, number: u32) -> Entry {
        match number.checked_sub(1) {
            Some(block) if (block as usize) < self.capacity => Entry::Chain(block),
            // Numbers past the blocks are arrays: `number - 1 - capacity < array_count`.
            _ => Entry::Array(number.wrapping_sub(1).wrapping_sub(self.capacity as u32)),
        }
    }

    /// The number of `entry`.
    #[inline(always)]
    fn number(&self, entry: Entry) -> u32 {
        match entry {
            Entry::Chain(block) => block + 1,
            // capacity + array_count fits in a u32 (see `over`).
            Entry::Array(id) => self.capacity as u32 + 1 + id,
        }
    }

    /// Where `entry` keeps the number of the entry below it on the list.
    #[inline(always)]
    fn batch_next(&self, entry: Entry) -> &AtomicU32 {
        match entry {
            Entry::Chain(block) => &self.link(block).batch_next,
            Entry::Array(id) => &self.array(id).batch_next,
        }
    }

    /// Takes the top entry off the shared list.
    #[inline]
    fn pop_batch(&self) -> Option<Entry> {
        let number = pop_tagged(&self.top.0.head, |number| {
            self.batch_next(self.entry(number))
        })?;
        Some(self.entry(number))
    }

    /// Like [`Self::pop_batch`], but when the list is empty while the counter says blocks
    /// are free, another thread is between its pop and its bookkeeping (splitting a batch, or
    /// refilling a cache): wait for it rather than report a false exhaustion. Only a nearly
    /// exhausted pool waits, and only on a thread already past its CAS.
    #[inline]
    fn take_batch(&self) -> Option<Entry> {
        loop {
            if let Some(entry) = self.pop_batch() {
                return Some(entry);
            }
            // Relaxed: any value will do; a stale positive one only costs another pop.
            if self.top.0.stats.shared_free.load(Ordering::Relaxed) == 0 {
                return None;
            }
            spin_hint();
        }
    }

    /// Puts `entry` (a chain with its `next` links written, the last one 0, or an array with
    /// its blocks and `len` written) on the shared list.
    #[inline]
    fn push_batch(&self, entry: Entry) {
        push_tagged(&self.top.0.head, self.number(entry), self.batch_next(entry));
    }

    /// Debug builds: marks a block live (`true`) or free; `false` if it already was.
    #[cfg(debug_assertions)]
    #[inline]
    fn set_live(&self, index: u32, live: bool) -> bool {
        // Relaxed: the flag only detects misuse by one thread of a block it holds; ordering
        // with other threads comes from the list operations.
        self.link(index)
            .live
            .swap(u32::from(live), Ordering::Relaxed)
            != u32::from(live)
    }

    /// Release builds keep no flag (callers test `cfg!(debug_assertions)` first).
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn set_live(&self, _index: u32, _live: bool) -> bool {
        true
    }

    /// Checks a free; `Some(index)` when it may proceed, otherwise reports the misuse.
    #[inline]
    fn accept_free(&self, ptr: NonNull<u8>) -> Option<u32> {
        let Some(index) = self.index_of(ptr) else {
            self.report_misuse(AllocErrorKind::InvalidFree);
            return None;
        };
        if cfg!(debug_assertions) && !self.set_live(index, false) {
            self.report_misuse(AllocErrorKind::DoubleFree);
            return None;
        }
        Some(index)
    }

    #[cold]
    fn report_misuse(&self, kind: AllocErrorKind) {
        // Relaxed: a statistic.
        self.top.0.stats.misuse.fetch_add(1, Ordering::Relaxed);
        record(kind);
    }

    #[cold]
    fn report_failure(&self, kind: AllocErrorKind) {
        // Relaxed: a statistic.
        self.top.0.stats.failures.fetch_add(1, Ordering::Relaxed);
        record(kind);
    }

    /// Records that `taken` blocks left the shared list (peak tracking).
    fn note_taken(&self, taken: usize) {
        // Relaxed (all): statistics; the figure may lag the list by a few operations. A flush
        // adds its blocks to the count after pushing them, so a refill on another thread can
        // take them first and subtract from a count that does not have them yet: the count
        // wraps below zero for that moment (the flush's add brings it back), and the figures
        // here saturate (a debug build's overflow check panicked on it in the producer/consumer
        // test, on the allocation path).
        let before = self
            .top
            .0
            .stats
            .shared_free
            .fetch_sub(taken, Ordering::Relaxed);
        let left = before.saturating_sub(taken);
        let out = self.capacity.saturating_sub(left);
        // A plain load first: the line is ours after the fetch_sub, and in a steady state the
        // peak holds, so the compare-and-swap loop of fetch_max is rarely run.
        if out > self.top.0.stats.peak_out.load(Ordering::Relaxed) {
            self.top.0.stats.peak_out.fetch_max(out, Ordering::Relaxed);
        }
    }

    fn fits(&self, size: usize, align: usize) -> bool {
        size <= self.block_size && align <= self.block_align
    }
}

/// Pops the top of the tagged Treiber stack whose head word is `head` (either of the pool's:
/// the shared list, the free arrays); `link(number)` is where entry `number` keeps the number
/// below it. Returns the popped entry's number, `None` when the stack is empty.
#[inline(always)]
fn pop_tagged<'s>(head: &AtomicWord, link: impl Fn(u32) -> &'s AtomicU32) -> Option<u32> {
    // Acquire: pairs with the Release CAS of the push that published this entry (or of any
    // later update: every write to `head` is an RMW, so release sequences continue through
    // them), making its link, and for a batch its chain or array, visible before we read them.
    let mut cur = head.load(Ordering::Acquire);
    loop {
        let number = (cur & INDEX_MASK) as u32;
        if number == 0 {
            return None;
        }
        // Relaxed: if another thread took this entry meanwhile the value may be stale, but
        // then the tag moved and the CAS below fails.
        let next = link(number).load(Ordering::Relaxed);
        let new = ((cur & !INDEX_MASK).wrapping_add(TAG_ONE)) | Word::from(next);
        // Success Acquire: the entry (a batch with its blocks' contents, the freeing threads'
        // last writes released by their push; or a free array with the reads of its last
        // batch done) becomes ours. Failure Acquire: `seen` is used as the first load was.
        match head.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => return Some(number),
            Err(seen) => cur = seen,
        }
    }
}

/// Pushes entry `number` (non-zero), whose link is `link`, on the tagged Treiber stack whose
/// head word is `head`.
#[inline(always)]
fn push_tagged(head: &AtomicWord, number: u32, link: &AtomicU32) {
    // Relaxed: nothing is read through the old head; the CAS validates it.
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        // Relaxed: published by the Release CAS below.
        link.store((cur & INDEX_MASK) as u32, Ordering::Relaxed);
        let new = ((cur & !INDEX_MASK).wrapping_add(TAG_ONE)) | Word::from(number);
        // Success Release: everything the pusher did with the entry (the links or the array
        // and the blocks' contents; for a freed array, the reads of its last batch)
        // happens-before the pop that takes it. Failure Relaxed: we only rewrite our own link
        // and retry.
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

// SAFETY: a block is handed out only after it was popped from the shared list, which it joined
// free; blocks are disjoint stride-sized pieces of the region aligned to block_align (the first
// is aligned and stride is a multiple of it), valid until the pool is dropped.
unsafe impl TypedAlloc for LockFreePool<'_> {
    /// The cacheless path: one or two CASes per call. Prefer a [`LocalCache`] per thread.
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !self.fits(size, align) {
            self.report_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let index = loop {
            let Some(batch) = self.take_batch() else {
                self.report_failure(AllocErrorKind::Exhausted);
                return None;
            };
            match batch {
                Entry::Chain(first) => {
                    // Relaxed: the batch is ours since the Acquire pop.
                    let rest = self.link(first).next.load(Ordering::Relaxed);
                    if rest != 0 {
                        self.push_batch(Entry::Chain(rest - 1));
                    }
                    break first;
                }
                Entry::Array(id) => {
                    // Take the last listed block; the rest goes back unless it was the last.
                    let array = self.array(id);
                    // Relaxed (len, blocks): the array is ours since the Acquire pop.
                    let len = array.len.load(Ordering::Relaxed);
                    let last = len
                        .checked_sub(1)
                        .and_then(|l| Some((l, array.blocks.get(l as usize)?)));
                    let Some((left, block)) = last else {
                        // Never pushed empty; freed should one ever be, and the next taken.
                        self.release_array(id);
                        continue;
                    };
                    let taken = block.load(Ordering::Relaxed);
                    if left == 0 {
                        self.release_array(id);
                    } else {
                        // Relaxed: published by push_batch's Release CAS.
                        array.len.store(left, Ordering::Relaxed);
                        self.push_batch(batch);
                    }
                    break taken;
                }
            }
        };
        self.note_taken(1);
        if cfg!(debug_assertions) {
            self.set_live(index, true);
        }
        // Relaxed: a statistic.
        self.top.0.stats.allocations.fetch_add(1, Ordering::Relaxed);
        Some(self.block(index))
    }

    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, _size: usize, _align: usize) {
        let Some(index) = self.accept_free(ptr) else {
            return;
        };
        // Relaxed: published by push_batch's Release CAS.
        self.link(index).next.store(0, Ordering::Relaxed);
        self.push_batch(Entry::Chain(index));
        // Relaxed (both): statistics.
        self.top.0.stats.shared_free.fetch_add(1, Ordering::Relaxed);
        self.top
            .0
            .stats
            .deallocations
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl_allocator_api2!(['a] LockFreePool<'a>);

impl Drop for LockFreePool<'_> {
    fn drop(&mut self) {
        for i in 0..self.capacity {
            // SAFETY: every entry was written in `over`; nothing uses the pool any more.
            unsafe { core::ptr::drop_in_place(self.links.as_ptr().add(i)) };
        }
        for a in 0..self.array_count as usize {
            // SAFETY: as above, for the batch arrays.
            unsafe { core::ptr::drop_in_place(self.arrays.as_ptr().add(a)) };
        }
        if let Some(os) = self.os {
            // SAFETY: the region came from Region::reserve on this OS.
            unsafe { self.region.release(os) }
        }
    }
}

impl core::fmt::Debug for LockFreePool<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockFreePool")
            .field("block_size", &self.block_size)
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A per-thread cache of a [`LockFreePool`]: allocation and free without atomics, batches to
/// and from the shared list. Dropping it returns its blocks to the pool.
pub struct LocalCache<'p, 'a> {
    pool: &'p LockFreePool<'a>,
    /// Block indices; `slots[..len]` are free blocks, the newest (hottest) on top.
    slots: [Cell<u32>; CACHE_SLOTS],
    len: Cell<usize>,
    /// The lowest `len` since the last rebalance: that many blocks sat unused all along.
    low_water: Cell<usize>,
    /// Whether the cache flushed since the last rebalance (see `rebalance`).
    flushed: Cell<bool>,
    /// Operations since the cache was made (wrapping): a rebalance every
    /// [`REBALANCE_PERIOD`]. It is the only count the fast paths keep: the statistics derive
    /// allocations and frees from it and the blocks moved (see `publish`).
    ticks: Cell<u32>,
    /// `ticks` and the fill level as last published to the pool's statistics.
    published_ticks: Cell<u32>,
    published_len: Cell<usize>,
}

impl LocalCache<'_, '_> {
    /// Free blocks held by this cache.
    pub fn cached(&self) -> usize {
        self.len.get()
    }

    /// `len`, which every store keeps at most [`CACHE_SLOTS`] (refill stops at a full cache,
    /// a free into a full one flushes first). The `min` is never taken; it lets the compiler
    /// see that `slots[..len]` is in bounds, so the slot accesses have no check to panic.
    #[inline(always)]
    fn len(&self) -> usize {
        self.len.get().min(CACHE_SLOTS)
    }

    /// Moves `count` blocks from the bottom (the coldest) to the shared list as one batch.
    #[cold]
    #[inline(never)]
    fn flush(&self, count: usize) {
        let len = self.len();
        let count = count.min(len);
        if count == 0 {
            return;
        }
        let pool = self.pool;
        let Some(out) = self.slots.get(..count) else {
            return;
        };
        let array = if (2..=BATCH).contains(&count) {
            pool.claim_array()
        } else {
            None
        };
        let batch = match array {
            Some(id) => {
                let array = pool.array(id);
                for (to, from) in array.blocks.iter().zip(out) {
                    // Relaxed: published by push_batch's Release CAS.
                    to.store(from.get(), Ordering::Relaxed);
                }
                // Relaxed: as above. count <= BATCH fits in u32.
                array.len.store(count as u32, Ordering::Relaxed);
                pool.note_move(Move::FlushToArray);
                Entry::Array(id)
            }
            None => {
                // No array is free (or one block): a chain.
                if count >= 2 {
                    pool.note_move(Move::FlushToChain);
                }
                for (i, slot) in out.iter().enumerate() {
                    let next = out.get(i + 1).map_or(0, |n| n.get() + 1);
                    // Relaxed: published by push_batch's Release CAS.
                    pool.link(slot.get()).next.store(next, Ordering::Relaxed);
                }
                // count >= 1, so out[0] exists; the 0 is never used.
                Entry::Chain(out.first().map_or(0, Cell::get))
            }
        };
        pool.push_batch(batch);
        for i in count..len {
            self.slots[i - count].set(self.slots[i].get());
        }
        self.len.set(len - count);
        self.low_water.set(self.low_water.get().min(len - count));
        self.flushed.set(true);
        // Relaxed: a statistic.
        pool.top
            .0
            .stats
            .shared_free
            .fetch_add(count, Ordering::Relaxed);
        self.publish(0, count);
    }

    /// Refills an empty cache with one batch (none when the pool is empty).
    #[cold]
    #[inline(never)]
    fn refill(&self) {
        let pool = self.pool;
        let Some(batch) = pool.take_batch() else {
            return;
        };
        let before = self.len();
        let len = match batch {
            Entry::Array(id) => {
                pool.note_move(Move::RefillFromArray);
                self.take_array(before, id)
            }
            Entry::Chain(first) => {
                pool.note_move(Move::RefillFromChain);
                self.take_chain(before, first)
            }
        };
        self.len.set(len);
        let taken = len - before;
        pool.note_taken(taken);
        self.publish(taken, 0);
    }

    /// Moves the blocks of the popped array `id` to `slots[len..]` and frees the array; returns
    /// the new length. Whatever does not fit (nothing, for a refill of an empty cache: an array
    /// holds at most BATCH <= CACHE_SLOTS blocks) goes back to the list in the array.
    fn take_array(&self, len: usize, id: u32) -> usize {
        let pool = self.pool;
        let array = pool.array(id);
        // Relaxed (len, blocks): the array is ours since the Acquire pop.
        let listed = (array.len.load(Ordering::Relaxed) as usize).min(BATCH);
        let moved = listed.min(CACHE_SLOTS.saturating_sub(len));
        let (Some(to), Some(from)) = (
            self.slots.get(len..len + moved),
            array.blocks.get(listed - moved..listed),
        ) else {
            pool.push_batch(Entry::Array(id));
            return len;
        };
        for (to, from) in to.iter().zip(from) {
            to.set(from.load(Ordering::Relaxed));
        }
        if moved == listed {
            pool.release_array(id);
        } else {
            // Relaxed: published by push_batch's Release CAS.
            array.len.store((listed - moved) as u32, Ordering::Relaxed);
            pool.push_batch(Entry::Array(id));
        }
        len + moved
    }

    /// Moves the blocks of the popped chain batch starting at `index` to `slots[len..]` by
    /// walking its links; returns the new length.
    fn take_chain(&self, mut len: usize, mut index: u32) -> usize {
        let pool = self.pool;
        loop {
            let Some(slot) = self.slots.get(len) else {
                // The cache is full. Batches are never longer than BATCH; kept safe should
                // one ever be: the rest of the batch goes back.
                pool.push_batch(Entry::Chain(index));
                return len;
            };
            slot.set(index);
            len += 1;
            // Relaxed: the batch is ours since the Acquire pop.
            let next = pool.link(index).next.load(Ordering::Relaxed);
            if next == 0 {
                return len;
            }
            index = next - 1;
        }
    }

    /// Counts an operation; every REBALANCE_PERIOD, returns half of what sat unused.
    #[inline(always)]
    fn tick(&self) {
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if ticks % REBALANCE_PERIOD == 0 {
            self.rebalance();
        }
    }

    #[cold]
    #[inline(never)]
    fn rebalance(&self) {
        let idle = self.low_water.get();
        // A cache that flushed during the period gives blocks back already, and its low-water
        // mark is what its last flush kept (a consumer's hot half), not blocks that sat idle.
        // Flushing half of that anyway made batches of BATCH / 2 in producer/consumer use,
        // more of them than the arrays (sized for full batches), and flushes fell back to
        // chains. Only a period without a flush rebalances.
        if idle >= 2 && !self.flushed.get() {
            self.flush(idle / 2);
        } else {
            // Publishes at least once a period, so the wrapping tick count never laps the
            // published one.
            self.publish(0, 0);
        }
        self.flushed.set(false);
        self.low_water.set(self.len.get());
    }

    /// Adds this cache's operation counts and fill level to the pool's statistics, after a
    /// move of `taken` blocks in and `flushed` out since the last call. Only what changed is
    /// written: each write is an atomic on a line both sides of a producer/consumer pair touch,
    /// and a producer never frees, a consumer never allocates, and a steady cache refills or
    /// flushes back to the level it published last time.
    ///
    /// The operations are `ticks` since the last call; their split follows from the blocks
    /// moved: `len_now = len_before + taken - flushed - allocations + frees`, so
    /// `allocations - frees = taken - flushed - (len_now - len_before)`.
    fn publish(&self, taken: usize, flushed: usize) {
        let stats = &self.pool.top.0.stats;
        let ticks = self.ticks.get();
        let ops = ticks.wrapping_sub(self.published_ticks.replace(ticks)) as usize;
        let (now, before) = (self.len.get(), self.published_len.replace(self.len.get()));
        // `net = allocations - frees`, as a wrapping difference (it may be negative).
        let net = taken
            .wrapping_sub(flushed)
            .wrapping_sub(now.wrapping_sub(before));
        let allocations = ops.wrapping_add(net) / 2;
        let deallocations = ops - allocations.min(ops);
        // Relaxed (all): statistics.
        if allocations != 0 {
            stats.allocations.fetch_add(allocations, Ordering::Relaxed);
        }
        if deallocations != 0 {
            stats
                .deallocations
                .fetch_add(deallocations, Ordering::Relaxed);
        }
        if now > before {
            stats.cached.fetch_add(now - before, Ordering::Relaxed);
        } else if now < before {
            stats.cached.fetch_sub(before - now, Ordering::Relaxed);
        }
    }
}

// SAFETY: blocks come from the pool's shared list (see the pool's implementation) and are held
// by this cache alone until handed out; a freed block is checked to be a block of the pool.
unsafe impl TypedAlloc for LocalCache<'_, '_> {
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let pool = self.pool;
        if !pool.fits(size, align) {
            pool.report_failure(AllocErrorKind::InvalidRequest);
            return None;
        }
        let mut len = self.len();
        if len == 0 {
            self.refill();
            len = self.len();
            if len == 0 {
                pool.report_failure(AllocErrorKind::Exhausted);
                return None;
            }
        }
        len -= 1;
        self.len.set(len);
        if len < self.low_water.get() {
            self.low_water.set(len);
        }
        let index = self.slots[len].get();
        if cfg!(debug_assertions) {
            pool.set_live(index, true);
        }
        self.tick();
        Some(pool.block(index))
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, _size: usize, _align: usize) {
        let Some(index) = self.pool.accept_free(ptr) else {
            return;
        };
        let mut len = self.len();
        // Full: make room (one flush of BATCH does; the loop lets the compiler see that `len`
        // indexes a slot).
        while len == CACHE_SLOTS {
            self.flush(BATCH);
            len = self.len();
        }
        self.slots[len].set(index);
        self.len.set(len + 1);
        self.tick();
    }
}

impl_allocator_api2!(['p, 'a] LocalCache<'p, 'a>);

impl Drop for LocalCache<'_, '_> {
    fn drop(&mut self) {
        while self.len.get() != 0 {
            self.flush(BATCH);
        }
        self.publish(0, 0);
    }
}

impl core::fmt::Debug for LocalCache<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalCache")
            .field("cached", &self.cached())
            .finish()
    }
}

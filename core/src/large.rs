//! Large blocks (over 512 KiB, or alignments pages cannot give): one OS mapping each, aligned
//! to the segment size so that `free` finds its header by the same address arithmetic as for
//! small blocks.
//!
//! ```text
//! mapping base (4 MiB-aligned)                     base + offset
//! | header: a Segment of kind LARGE, pages[0] ...  | the block ...                  |
//! ```
//!
//! `offset` is the header size rounded up to the alignment asked for, up to half a segment
//! (2 MiB). A larger alignment puts the block at the start of the mapping's second segment
//! (`offset` = 4 MiB, the mapping reserved so that this address is aligned and the excess
//! unmapped at once; the rest of the first segment is never touched), where
//! [`Segment::of_block`] still finds the header. Any power of two is served while the mapping
//! and its reservation fit in `isize::MAX` bytes; beyond that the request fails as out of
//! memory (ENOMEM, as glibc's). Freed spans go to the freeing thread's [`SpanCache`] and are
//! reused by size before the OS is asked again; spans unused for the purge delay are released.
//!
//! May touch: [`crate::os`], [`crate::segment`], [`crate::sync`], [`crate::error`].

use core::ptr::{null_mut, NonNull};

use crate::error::{record, AllocErrorKind};
use crate::heap::{empty_heap, owns_nothing, Heap};
use crate::os::{align_up, monotonic_ms, Os, SystemOs};
use crate::segment::{Segment, HEADER_SIZE, KIND_LARGE, SEGMENT_SHIFT, SEGMENT_SIZE};
use crate::sync::{AtomicUsize, Ordering};

/// Largest alignment served inside the mapping's first segment (half a segment). Above it the
/// block starts at the mapping's second segment.
pub(crate) const IN_SEGMENT_ALIGN: usize = SEGMENT_SIZE / 2;
/// log2 of a large mapping's one page: two segments, so that the block's start (inside the
/// first segment, or at the start of the second) is page 0 for [`Segment::page_of`].
const LARGE_PAGE_SHIFT: u8 = SEGMENT_SHIFT as u8 + 1;
/// The largest mapping (and reservation) for a large block: Rust's limit for one object, and
/// C's `PTRDIFF_MAX`.
const MAX_MAPPING: usize = isize::MAX as usize;
/// Spans kept per thread, the largest span worth keeping, and the most bytes a thread's cache
/// holds (RSS a program does not see: keep it small).
const CACHE_SLOTS: usize = 8;
const CACHE_MAX_SPAN: usize = 32 << 20;
const CACHE_MAX_BYTES: usize = 64 << 20;

/// Statistics: bytes mapped for large blocks (live and cached), bytes of live large blocks,
/// live large blocks. Relaxed RMWs: counters, on a path that makes a syscall anyway.
static MAPPED_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// (mapped bytes, live bytes, live blocks) of large blocks.
pub(crate) fn totals() -> (usize, usize, usize) {
    // Relaxed: statistics.
    (
        MAPPED_BYTES.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    )
}

#[derive(Clone, Copy)]
struct Span {
    base: *mut u8,
    size: usize,
    freed_at: u64,
}

const NO_SPAN: Span = Span {
    base: null_mut(),
    size: 0,
    freed_at: 0,
};

/// A thread's cache of freed spans. Owner only.
pub(crate) struct SpanCache {
    spans: [Span; CACHE_SLOTS],
}

impl SpanCache {
    pub(crate) const fn new() -> Self {
        SpanCache {
            spans: [NO_SPAN; CACHE_SLOTS],
        }
    }

    /// Takes a cached span of at least `size` bytes wasting at most half of it.
    fn take(&mut self, size: usize) -> Option<(*mut u8, usize)> {
        let mut best: Option<usize> = None;
        for (i, s) in self.spans.iter().enumerate() {
            if !s.base.is_null()
                && s.size >= size
                && s.size - size <= s.size / 2
                && best.is_none_or(|b| self.spans[b].size > s.size)
            {
                best = Some(i);
            }
        }
        let i = best?;
        let span = core::mem::replace(&mut self.spans[i], NO_SPAN);
        Some((span.base, span.size))
    }

    /// Keeps a span; evicts (releases) the oldest when full.
    fn put(&mut self, base: *mut u8, size: usize) {
        let now = monotonic_ms();
        // Evict the oldest spans until the new one fits the byte budget.
        while self.spans.iter().map(|s| s.size).sum::<usize>() + size > CACHE_MAX_BYTES {
            let Some(oldest) = (0..CACHE_SLOTS)
                .filter(|&i| !self.spans[i].base.is_null())
                .min_by_key(|&i| self.spans[i].freed_at)
            else {
                break;
            };
            let old = core::mem::replace(&mut self.spans[oldest], NO_SPAN);
            release(old.base, old.size);
        }
        let slot = match self.spans.iter().position(|s| s.base.is_null()) {
            Some(i) => i,
            None => {
                let oldest = (0..CACHE_SLOTS)
                    .min_by_key(|&i| self.spans[i].freed_at)
                    .unwrap_or(0);
                let old = self.spans[oldest];
                release(old.base, old.size);
                oldest
            }
        };
        self.spans[slot] = Span {
            base,
            size,
            freed_at: now,
        };
    }

    /// Releases spans cached for longer than `delay` ms (all of them with `force`).
    pub(crate) fn purge(&mut self, now: u64, delay: u64, force: bool) {
        for s in self.spans.iter_mut() {
            if !s.base.is_null() && (force || now >= s.freed_at + delay) {
                release(s.base, s.size);
                *s = NO_SPAN;
            }
        }
    }

    /// Releases every cached span.
    pub(crate) fn release_all(&mut self) {
        self.purge(0, 0, true);
    }
}

fn release(base: *mut u8, size: usize) {
    if let Some(p) = NonNull::new(base) {
        // Relaxed: statistics.
        MAPPED_BYTES.fetch_sub(size, Ordering::Relaxed);
        // SAFETY: `base`/`size` are exactly one mapping of ours that nobody uses.
        unsafe { SystemOs.release(p, size) };
    }
}

/// Allocates a large block. `align` is a power of two (callers check); any is served that the
/// address space can hold.
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    let align = align.max(16);
    if !align.is_power_of_two() {
        record(AllocErrorKind::InvalidRequest);
        return null_mut();
    }
    let os = SystemOs;
    // The block's offset in the mapping, and the slack the reservation adds to place it (only
    // above half a segment: `reserve_backed_at` maps size + align and unmaps the excess).
    let (offset, slack) = if align <= IN_SEGMENT_ALIGN {
        (align_up(HEADER_SIZE, align), 0)
    } else {
        (SEGMENT_SIZE, align)
    };
    // Every sum is checked (align_up saturates): a size or alignment near usize::MAX is
    // refused here, never wrapped into a small mapping.
    let Some(total) = offset
        .checked_add(size)
        .map(|t| align_up(t, os.page_size()))
        .filter(|&t| t <= MAX_MAPPING && slack <= MAX_MAPPING - t)
    else {
        // More than the address space can hold: out of memory, as C reports it (ENOMEM).
        record(AllocErrorKind::OutOfMemory);
        return null_mut();
    };
    // A thread whose first allocation is large gets its heap now, so that its large frees
    // are cached too.
    let mut heap = crate::thread::current();
    if heap == empty_heap() {
        heap = crate::thread::attach().unwrap_or(heap);
    }
    // Cached spans are only segment-aligned: not for alignments above half a segment.
    let cached = if slack == 0 && !owns_nothing(heap) {
        // SAFETY: the calling thread's own heap.
        unsafe { (*heap).large_cache.take(total) }
    } else {
        None
    };
    let (base, mapped, fresh) = match cached {
        Some((base, mapped)) => (base, mapped, false),
        None => match if slack == 0 {
            os.reserve_backed(total, SEGMENT_SIZE)
        } else {
            // `base + SEGMENT_SIZE` aligned to `align` (a multiple of SEGMENT_SIZE): the base
            // is segment-aligned too.
            os.reserve_backed_at(total, align, SEGMENT_SIZE)
        } {
            Some(p) => {
                if total >= 2 * SEGMENT_SIZE && crate::options::huge_pages() {
                    os.hint_huge_pages(p, total);
                }
                // Relaxed: statistics.
                MAPPED_BYTES.fetch_add(total, Ordering::Relaxed);
                (p.as_ptr(), total, true)
            }
            None => {
                record(AllocErrorKind::OutOfMemory);
                return null_mut();
            }
        },
    };
    let seg = base.cast::<Segment>();
    // SAFETY: the mapping is ours, at least offset + size bytes (offset >= HEADER_SIZE),
    // 4 MiB-aligned.
    unsafe {
        let s = &mut *seg;
        // Relaxed: the header is published through the block, which the program hands over
        // with its own synchronisation.
        s.owner.store(null_mut(), Ordering::Relaxed);
        s.kind.store(KIND_LARGE, Ordering::Relaxed);
        s.page_shift.store(LARGE_PAGE_SHIFT, Ordering::Relaxed);
        s.page_count.store(1, Ordering::Relaxed);
        s.mapping_size.store(mapped, Ordering::Relaxed);
        let page = &mut s.pages[0];
        page.start = base.add(offset);
        page.block_size.store(mapped - offset, Ordering::Relaxed);
        page.is_zero_init = fresh;
        page.flags.store(0, Ordering::Relaxed);
        page.used.store(1, Ordering::Relaxed);
        // Relaxed: statistics.
        LIVE_BYTES.fetch_add(mapped, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        page.start
    }
}

/// Whether a large block's memory is fresh from the OS (reads as zero).
///
/// # Safety
/// `seg` is the header of a live large block.
pub(crate) unsafe fn is_fresh(seg: *mut Segment) -> bool {
    // SAFETY: forwarded.
    unsafe { (*seg).pages[0].is_zero_init }
}

/// Frees a large block into the calling thread's span cache (or to the OS).
///
/// # Safety
/// `seg` is the header of a live large block, not used afterwards.
pub(crate) unsafe fn free(seg: *mut Segment, heap: *mut Heap) {
    // SAFETY: forwarded; the heap is the calling thread's.
    unsafe {
        // Relaxed: fixed while the block is live.
        let mapped = (*seg).mapping_size.load(Ordering::Relaxed);
        // Relaxed: statistics.
        LIVE_BYTES.fetch_sub(mapped, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        (*seg).pages[0].used.store(0, Ordering::Relaxed);
        if owns_nothing(heap) || mapped > CACHE_MAX_SPAN {
            release(seg.cast(), mapped);
        } else {
            (*heap).large_cache.put(seg.cast(), mapped);
        }
    }
}

/// Grows a large block to hold `new_size` bytes without copying it, with headroom (see below):
/// in place when the addresses after its mapping are free (`mremap` without moving), else into
/// a new 4 MiB-aligned region whose start the old pages are moved to (`mremap` to a fixed
/// address). Null when both fail (the caller then copies); the old block is untouched then.
///
/// # Safety
/// `seg` is the header of a live large block; on success the old address is not used again.
#[cfg(target_os = "linux")]
pub(crate) unsafe fn grow(seg: *mut Segment, new_size: usize) -> *mut u8 {
    let os = SystemOs;
    // SAFETY: the caller guarantees `seg` is a live large block's header.
    unsafe {
        // Relaxed: fixed while the block is live, and we own it.
        let old_mapped = (*seg).mapping_size.load(Ordering::Relaxed);
        let offset = (*seg).pages[0].start as usize - seg as usize;
        // The largest page-rounded mapping; `needed` must fit it (align_up saturates).
        let limit = MAX_MAPPING & !(os.page_size() - 1);
        let Some(needed) = offset
            .checked_add(new_size)
            .map(|t| align_up(t, os.page_size()))
            .filter(|&t| t <= limit)
        else {
            return null_mut();
        };
        // No overflow: old_mapped <= isize::MAX, so half as much again fits a usize. The
        // headroom is capped at the limit, which `needed` does not exceed.
        // Headroom: a block grown once is likely grown again. Three quarters of the mapping
        // on 64 bits (addresses only: pages are backed where touched), half on 32 bits, whose
        // address space is scarce. Under twice the mapping: `realloc` keeps a block in place
        // only while the request is at least half of it, and a buffer grown a byte at a time
        // asks for just over the old size right after a grow (with twice the mapping it moved
        // at every other page: 2,055 moves from 60 kB to 700 kB, against 7). With half the
        // mapping a buffer grown by a quarter at a time from 1 KiB to 32 MiB (the comparison's
        // `realloc` workload) took 3.8x glibc's time, every grow a move (a fresh aligned
        // mapping and `mremap` into it); growing in place first and the larger headroom bring
        // it to glibc's.
        let headroom = if usize::BITS >= 64 {
            old_mapped / 4 * 3
        } else {
            old_mapped / 2
        };
        let total = align_up(needed.max(old_mapped + headroom), os.page_size()).min(limit);
        // In place first, where the addresses after the mapping are free: no page tables
        // moved, no TLB flush, the block where it was (flags 0: the kernel may not move it).
        let mut total = total;
        let mut grown = libc::mremap(seg.cast(), old_mapped, total, 0);
        if grown == libc::MAP_FAILED && needed < total {
            // Without the headroom: the gap after the mapping may hold what is needed.
            total = needed.max(old_mapped);
            grown = libc::mremap(seg.cast(), old_mapped, total, 0);
        }
        if grown != libc::MAP_FAILED {
            // Relaxed: the block is ours alone until we return it.
            (*seg).mapping_size.store(total, Ordering::Relaxed);
            let page = &mut (*seg).pages[0];
            page.block_size.store(total - offset, Ordering::Relaxed);
            // Relaxed: statistics.
            MAPPED_BYTES.fetch_add(total - old_mapped, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(total - old_mapped, Ordering::Relaxed);
            return page.start;
        }
        let total = align_up(needed.max(old_mapped + headroom), os.page_size()).min(limit);
        let Some(new_base) = os.reserve_backed(total, SEGMENT_SIZE) else {
            return null_mut();
        };
        let moved = libc::mremap(
            seg.cast(),
            old_mapped,
            old_mapped,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new_base.as_ptr().cast::<libc::c_void>(),
        );
        if moved == libc::MAP_FAILED {
            os.release(new_base, total);
            return null_mut();
        }
        let seg = new_base.as_ptr().cast::<Segment>();
        // Relaxed: the block is ours alone until we return it.
        (*seg).mapping_size.store(total, Ordering::Relaxed);
        let page = &mut (*seg).pages[0];
        page.start = new_base.as_ptr().add(offset);
        page.block_size.store(total - offset, Ordering::Relaxed);
        // Relaxed: statistics.
        MAPPED_BYTES.fetch_add(total - old_mapped, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(total - old_mapped, Ordering::Relaxed);
        page.start
    }
}

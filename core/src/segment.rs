//! Arenas and segments: where pages come from.
//!
//! ```text
//! arena    256 MiB (8 segments × 4 MiB on 32-bit) reserved from the OS in one piece, bound
//!          to the NUMA node of the thread that created it; never released (its segments are
//!          decommitted when free), so a walk over arenas never touches unmapped memory
//! segment  4 MiB, aligned to 4 MiB: a header (this struct) then 64 small pages of 64 KiB,
//!          8 medium pages of 512 KiB, or one big page of the rest of the segment; all pages
//!          of a segment belong to one heap
//! large    a block over 512 KiB gets a mapping of its own, also 4 MiB-aligned, whose header
//!          describes the one block (see `large`)
//! ```
//!
//! A block's segment is its address with the low 22 bits cleared; its page is the offset
//! shifted by the segment's page shift. No table lookup, no lock: that is how `free` finds the
//! owner of any pointer.
//!
//! Segments are claimed from an arena's bitmap with one CAS (only when a heap needs a new
//! segment: rare) and given back with one atomic AND.
//!
//! May touch: [`crate::os`], [`crate::page`], [`crate::sync`].

use core::ptr::{null_mut, NonNull};

use crate::os::{align_up, arena_node, Os, SystemOs, SystemTopology};
use crate::page::Page;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

pub(crate) const SEGMENT_SHIFT: usize = 22;
/// Size and alignment of a segment (4 MiB).
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
pub(crate) const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;
pub(crate) const SMALL_PAGE_SHIFT: u8 = 16;
pub(crate) const MEDIUM_PAGE_SHIFT: u8 = 19;
pub(crate) const MAX_PAGES: usize = SEGMENT_SIZE >> SMALL_PAGE_SHIFT;

/// Bytes at the start of every segment and large mapping that hold the header. Always
/// committed while the segment's arena exists.
pub(crate) const HEADER_SIZE: usize = align_up(core::mem::size_of::<Segment>(), 4096);

pub(crate) const KIND_FREE: u8 = 0;
pub(crate) const KIND_SMALL: u8 = 1;
pub(crate) const KIND_MEDIUM: u8 = 2;
/// One page spanning the whole segment, for the classes above 64 KiB.
pub(crate) const KIND_BIG: u8 = 3;
/// A large block's own mapping (see `large`), not an arena segment.
pub(crate) const KIND_LARGE: u8 = 4;

/// The segment kind of each page kind of [`crate::size_class::page_kind`].
pub(crate) const PAGE_KINDS: [u8; 3] = [KIND_SMALL, KIND_MEDIUM, KIND_BIG];

/// Segments per arena: as many as a bitmap word has bits (64 on 64-bit, 8 on 32-bit so
/// that an arena stays a small share of a 32-bit address space).
pub(crate) const ARENA_SEGMENTS: usize = if usize::BITS == 64 { 64 } else { 8 };
pub(crate) const ARENA_SIZE: usize = ARENA_SEGMENTS * SEGMENT_SIZE;
/// 4096 arenas of 256 MiB: 1 TiB of heap on 64-bit; 96 × 32 MiB on 32-bit.
pub(crate) const MAX_ARENAS: usize = if usize::BITS == 64 { 4096 } else { 96 };

/// Base address of each arena (null until published). Never changes once set.
static ARENA_BASE: [AtomicPtr<u8>; MAX_ARENAS] = [const { AtomicPtr::new(null_mut()) }; MAX_ARENAS];
/// Bit i set = segment i of the arena is claimed.
static ARENA_USED: [AtomicUsize; MAX_ARENAS] = [const { AtomicUsize::new(0) }; MAX_ARENAS];
/// NUMA node + 1 the arena is bound to (0 = unbound).
static ARENA_NODE: [AtomicUsize; MAX_ARENAS] = [const { AtomicUsize::new(0) }; MAX_ARENAS];
/// Number of arena slots handed out (some may still be publishing their base).
static ARENA_COUNT: AtomicUsize = AtomicUsize::new(0);

/// log2 of [`ARENA_SIZE`]: arenas are reserved aligned to their size, so an address's arena
/// unit is its address shifted by this.
const ARENA_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
/// Addresses [`in_arena`] answers for: 48 bits on 64-bit targets (user space on x86-64 and
/// aarch64), all of them on 32-bit.
const MAP_ADDRESS_BITS: u32 = if usize::BITS == 64 { 48 } else { 32 };
const MAP_UNITS: usize = 1 << (MAP_ADDRESS_BITS - ARENA_SHIFT);
const MAP_WORDS: usize = MAP_UNITS.div_ceil(usize::BITS as usize);
/// One bit per arena-sized unit of the address space: set once an arena occupies the unit
/// (never cleared: arenas are never released). 128 KiB of zero-initialised statics on 64-bit,
/// of which a program touches one line per 128 GiB of arenas.
static ARENA_MAP: [AtomicUsize; MAP_WORDS] = [const { AtomicUsize::new(0) }; MAP_WORDS];

/// Whether `addr` lies in one of the heap's arenas. Every arena stays mapped, readable and
/// writable, for the process's life (its free segments are decommitted with `MADV_DONTNEED`,
/// which reads back as zero), so a caller that sees `true` may read any aligned word of the
/// arena without faulting — whatever the address points at. Large blocks (their own mappings)
/// are not in an arena. One load and a bit test.
///
/// An address in an arena reaches a thread only after the arena was published to the thread
/// that allocated there, and through whatever hand-over the program used: the bit, stored
/// before that publication, is then visible here.
#[inline(always)]
pub fn in_arena(addr: usize) -> bool {
    let unit = addr >> ARENA_SHIFT;
    if unit >= MAP_UNITS {
        return false;
    }
    let bits = usize::BITS as usize;
    // Relaxed: see above (the store happens-before any use of a block of the arena).
    ARENA_MAP[unit / bits].load(Ordering::Relaxed) & (1 << (unit % bits)) != 0
}

/// The header at the start of every segment (and of every large mapping).
///
/// Fields read by other threads (the free path of any thread, statistics, the page walk) are
/// atomics; `owner` is the only one they compare. Owner-only fields are plain.
#[repr(C)]
pub(crate) struct Segment {
    /// The heap owning every page of the segment; null for large mappings. The free path
    /// compares it with the calling thread's heap.
    pub owner: AtomicPtr<crate::heap::Heap>,
    /// `KIND_*`.
    pub kind: AtomicU8,
    /// log2 of the page size (of two segments for a large mapping: its one page).
    pub page_shift: AtomicU8,
    /// Pages in the segment.
    pub page_count: AtomicU32,
    /// Bytes of the mapping (large mappings); `SEGMENT_SIZE` otherwise.
    pub mapping_size: AtomicUsize,
    /// Pages handed to the owner (not free). Owner only.
    pub used_pages: u32,
    /// Bit i set = page i is free. Owner only.
    pub free_mask: u64,
    /// Neighbours in the owner's list of all its segments. Owner only.
    pub next: *mut Segment,
    pub prev: *mut Segment,
    /// Neighbours in the owner's list of segments with free pages, per kind. Owner only.
    pub free_next: *mut Segment,
    pub free_prev: *mut Segment,
    /// Whether the segment is in that list. Owner only.
    pub in_free_list: bool,
    /// The page descriptors (a large mapping uses the first).
    pub pages: [Page; MAX_PAGES],
}

impl Segment {
    /// The segment containing `p` (any pointer inside a segment or large mapping).
    #[inline(always)]
    pub fn of(p: *const u8) -> *mut Segment {
        p.map_addr(|a| a & !SEGMENT_MASK).cast_mut().cast()
    }

    /// The segment of a block start (or of an aligned pointer inside a block): the address
    /// one byte below, rounded down. No block starts at a segment's first byte (a header is
    /// there) except a large block aligned to more than half a segment, which starts one
    /// segment after its header (see `large`): this finds that header too, where [`Self::of`]
    /// would read the block. The same cost as `of` (a `lea` instead of a `mov`).
    #[inline(always)]
    pub fn of_block(p: *const u8) -> *mut Segment {
        p.map_addr(|a| a.wrapping_sub(1) & !SEGMENT_MASK)
            .cast_mut()
            .cast()
    }

    /// The page descriptor for `p`.
    ///
    /// # Safety
    /// `p` points into a live segment or large mapping of this allocator.
    #[inline(always)]
    pub unsafe fn page_of(seg: *mut Segment, p: *const u8) -> *mut Page {
        // SAFETY: the caller guarantees `seg` is a live segment header. Relaxed: the shift is
        // fixed while any block of the segment is live.
        unsafe {
            let shift = (*seg).page_shift.load(Ordering::Relaxed);
            let index = (p as usize - seg as usize) >> shift;
            core::ptr::addr_of_mut!((*seg).pages)
                .cast::<Page>()
                .add(index)
        }
    }

    /// Start and size of page `index`'s block area (page 0 begins after the header).
    pub fn page_area(seg: *mut Segment, index: usize, shift: u8) -> (*mut u8, usize) {
        let page_size = 1usize << shift;
        let offset = if index == 0 {
            HEADER_SIZE
        } else {
            index * page_size
        };
        let end = (index + 1) * page_size;
        (seg.cast::<u8>().wrapping_add(offset), end - offset)
    }
}

/// Claims a free segment, preferring an arena bound to `node` (when the machine has several
/// nodes), creating an arena when all are full. The header is reset for `kind`.
/// Returns `None` when the OS refuses memory.
pub(crate) fn claim(kind: u8) -> Option<*mut Segment> {
    let node = arena_node(&SystemTopology);
    let wanted = node.map_or(0, |n| n + 1);
    // Relaxed: a stale count only makes us skip an arena that is still being published.
    let count = ARENA_COUNT.load(Ordering::Relaxed).min(MAX_ARENAS);
    for pass in 0..2 {
        for (i, node_slot) in ARENA_NODE.iter().enumerate().take(count) {
            // Relaxed: the node is a placement preference, not a correctness condition.
            let arena_node = node_slot.load(Ordering::Relaxed);
            if pass == 0 && arena_node != wanted {
                continue;
            }
            if let Some(seg) = claim_in(i) {
                return Some(init(seg, kind));
            }
        }
        if wanted == 0 {
            break;
        }
    }
    let index = new_arena(node)?;
    claim_in(index).map(|seg| init(seg, kind))
}

fn claim_in(index: usize) -> Option<*mut Segment> {
    // Acquire: pairs with the Release store of the base, so the arena memory is visible.
    let base = ARENA_BASE[index].load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    let full: usize = if ARENA_SEGMENTS == usize::BITS as usize {
        usize::MAX
    } else {
        (1 << ARENA_SEGMENTS) - 1
    };
    // Relaxed: the CAS validates.
    let mut used = ARENA_USED[index].load(Ordering::Relaxed);
    loop {
        if used == full {
            return None;
        }
        let bit = (!used).trailing_zeros() as usize;
        // Acquire: the segment may have been released by another thread; its decommit and
        // header writes (Release in `release`) must happen-before our reuse.
        match ARENA_USED[index].compare_exchange_weak(
            used,
            used | (1 << bit),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(base.wrapping_add(bit * SEGMENT_SIZE).cast()),
            Err(seen) => used = seen,
        }
    }
}

#[cold]
fn new_arena(node: Option<usize>) -> Option<usize> {
    let os = SystemOs;
    // Aligned to its own size: `in_arena` is then one bit per arena.
    let base = os.reserve(ARENA_SIZE, ARENA_SIZE)?;
    if let Some(node) = node {
        os.bind_to_node(base, ARENA_SIZE, node);
    }
    if crate::options::huge_pages() {
        os.hint_huge_pages(base, ARENA_SIZE);
    }
    // Relaxed: slot numbers only need to be unique; the base is published with Release.
    let index = ARENA_COUNT.fetch_add(1, Ordering::Relaxed);
    if index >= MAX_ARENAS {
        // SAFETY: the region was just reserved and is unused.
        unsafe { os.release(base, ARENA_SIZE) };
        return None;
    }
    // Relaxed: read together with the base, which is published with Release below.
    ARENA_NODE[index].store(node.map_or(0, |n| n + 1), Ordering::Relaxed);
    let unit = base.as_ptr() as usize >> ARENA_SHIFT;
    if unit < MAP_UNITS {
        let bits = usize::BITS as usize;
        // Relaxed: published with the base below (see `in_arena`).
        ARENA_MAP[unit / bits].fetch_or(1 << (unit % bits), Ordering::Relaxed);
    }
    // Release: publishes the node and the (zeroed) memory to claimers that Acquire the base.
    ARENA_BASE[index].store(base.as_ptr(), Ordering::Release);
    Some(index)
}

/// Resets a claimed segment's header for `kind`. Page descriptors keep their `committed` flag
/// (decommitted memory reads as zero, which the pages' `is_zero_init` relies on).
fn init(seg: *mut Segment, kind: u8) -> *mut Segment {
    let shift = match kind {
        KIND_SMALL => SMALL_PAGE_SHIFT,
        KIND_MEDIUM => MEDIUM_PAGE_SHIFT,
        _ => SEGMENT_SHIFT as u8,
    };
    let count = SEGMENT_SIZE >> shift;
    // SAFETY: we just claimed the segment: nobody else touches its header; the header is
    // committed (never decommitted while the arena exists; fresh arenas read as zero).
    unsafe {
        let s = &mut *seg;
        // Relaxed: the segment is published to other threads only through blocks, which the
        // program hands over with its own synchronisation.
        s.owner.store(null_mut(), Ordering::Relaxed);
        s.kind.store(kind, Ordering::Relaxed);
        s.page_shift.store(shift, Ordering::Relaxed);
        s.page_count.store(count as u32, Ordering::Relaxed);
        s.mapping_size.store(SEGMENT_SIZE, Ordering::Relaxed);
        s.used_pages = 0;
        s.free_mask = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        s.next = null_mut();
        s.prev = null_mut();
        s.free_next = null_mut();
        s.free_prev = null_mut();
        s.in_free_list = false;
        for page in s.pages.iter_mut() {
            page.in_use.store(0, Ordering::Relaxed);
        }
        // Every page is decommitted here: fresh arenas read as zero and `release`
        // decommits the whole body, so `committed` is 0 for all descriptors already.
        debug_assert!(s
            .pages
            .iter()
            .all(|p| p.committed.load(Ordering::Relaxed) == 0));
    }
    seg
}

/// Gives a segment (no page in use) back to its arena, decommitting its pages.
///
/// # Safety
/// The caller owns the segment and no page of it is in use.
pub(crate) unsafe fn release(seg: *mut Segment) {
    let os = SystemOs;
    // SAFETY: the caller owns the segment; the range after the header is ours and unused.
    unsafe {
        let s = &mut *seg;
        let any_committed = s
            .pages
            .iter()
            .any(|p| p.committed.load(Ordering::Relaxed) != 0);
        if any_committed {
            let body = NonNull::new_unchecked(seg.cast::<u8>().add(HEADER_SIZE));
            os.decommit(body, SEGMENT_SIZE - HEADER_SIZE);
        }
        for page in s.pages.iter_mut() {
            // Relaxed: the bitmap Release below publishes these.
            page.committed.store(0, Ordering::Relaxed);
            page.in_use.store(0, Ordering::Relaxed);
        }
        s.kind.store(KIND_FREE, Ordering::Relaxed);
        s.owner.store(null_mut(), Ordering::Relaxed);
    }
    if let Some((index, bit)) = locate(seg) {
        // Release: our header writes and the decommit happen-before the next claimer's
        // Acquire.
        ARENA_USED[index].fetch_and(!(1 << bit), Ordering::Release);
    }
}

/// The arena slot and bit of a segment.
pub(crate) fn locate(seg: *mut Segment) -> Option<(usize, usize)> {
    let addr = seg as usize;
    // Relaxed: a segment we own was claimed from a published arena.
    let count = ARENA_COUNT.load(Ordering::Relaxed).min(MAX_ARENAS);
    (0..count).find_map(|i| {
        // Relaxed: the base of an arena we claimed from was already published to us.
        let base = ARENA_BASE[i].load(Ordering::Relaxed) as usize;
        (base != 0 && addr >= base && addr < base + ARENA_SIZE)
            .then(|| (i, (addr - base) / SEGMENT_SIZE))
    })
}

/// Calls `f` on every claimed segment of every arena (statistics, the page walk). The headers
/// read are always committed memory; their figures may be stale.
pub(crate) fn for_each_claimed(mut f: impl FnMut(*mut Segment)) {
    // Acquire on the count and bases: see arenas published before this call.
    let count = ARENA_COUNT.load(Ordering::Acquire).min(MAX_ARENAS);
    for i in 0..count {
        let base = ARENA_BASE[i].load(Ordering::Acquire);
        if base.is_null() {
            continue;
        }
        // Relaxed: a snapshot; a segment claimed or released meanwhile is reported or not.
        let used = ARENA_USED[i].load(Ordering::Relaxed);
        for bit in 0..ARENA_SEGMENTS {
            if used & (1 << bit) != 0 {
                f(base.wrapping_add(bit * SEGMENT_SIZE).cast());
            }
        }
    }
}

/// Bytes of address space reserved for arenas.
pub(crate) fn reserved_bytes() -> usize {
    // Relaxed: a statistic.
    ARENA_COUNT.load(Ordering::Relaxed).min(MAX_ARENAS) * ARENA_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    // The header leaves most of the first small page usable, and keeps page starts 4 KiB
    // aligned (aligned allocation relies on it).
    const _: () = assert!(HEADER_SIZE <= (1 << SMALL_PAGE_SHIFT) / 4);
    const _: () = assert!(HEADER_SIZE % 4096 == 0);

    #[test]
    fn page_areas_tile_the_segment() {
        let seg = core::ptr::without_provenance_mut::<Segment>(SEGMENT_SIZE); // never dereferenced
        for shift in [SMALL_PAGE_SHIFT, MEDIUM_PAGE_SHIFT, SEGMENT_SHIFT as u8] {
            let count = SEGMENT_SIZE >> shift;
            let mut expected = seg as usize + HEADER_SIZE;
            for i in 0..count {
                let (start, size) = Segment::page_area(seg, i, shift);
                assert_eq!(start as usize, expected);
                expected += size;
            }
            assert_eq!(expected, seg as usize + SEGMENT_SIZE);
        }
    }

    #[cfg(not(miri))] // needs a 256 MiB mapping and madvise
    #[test]
    fn claimed_segments_are_aligned_and_released_ones_are_reused() {
        let a = claim(KIND_SMALL).expect("claim");
        assert_eq!(a as usize % SEGMENT_SIZE, 0);
        // SAFETY: `a` is ours and has no page in use.
        unsafe { release(a) };
        let mut seen = false;
        for _ in 0..ARENA_SEGMENTS * 2 {
            let b = claim(KIND_MEDIUM).expect("claim");
            seen |= b == a;
            // SAFETY: as above.
            unsafe { release(b) };
            if seen {
                break;
            }
        }
        assert!(seen, "a released segment is claimed again");
    }
}

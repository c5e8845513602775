//! Block headers: where the default path records a plain block, inside the block's own memory
//! instead of the block table.
//!
//! The table's word for a block sits in a direct map by address, one word per 8 heap bytes, so
//! the map's footprint doubles the heap's: on the overhead bench (4096 live blocks of 8-256 B)
//! its words cost two L1 misses per alloc+free pair beyond the core's three, and the default
//! options ran at ~3x the core. A header costs none of that: the tracker asks the core heap
//! for 16 more bytes and keeps the record in front of the block, in the line the core's own
//! free-list work touches anyway. This is the design of hardened allocators (Scudo's chunk
//! header), not of a separate shadow.
//!
//! ```text
//! base (the core's block)            base + 16 = the program's pointer
//! | check (8) | word (8) | program's bytes ...
//! ```
//!
//! - `word`: state (2 bits), log2 alignment (6), thread (12: the allocating one while live, the
//!   freeing one once freed), tag (20), requested size (24) — the exact layout, so the layout
//!   check at dealloc is exact.
//! - `check`: a keyed hash of the address, the tag, the size and the alignment. A free accepts a
//!   header only if its check matches, so a pointer that is not a header block's start (a
//!   pointer inside a block, into a block the table records, another tracker's block) is told
//!   apart with certainty but for a 2^-64 chance: the key is random per tracker, so no program
//!   data forges it.
//! - Freed: the core writes its free-list link over `check` (offset 0), so `word` alone says
//!   "freed"; its tag (20 bits of the address's keyed hash) tells a second free of the block
//!   (reported as a double free) from a pointer that only lands on stale memory (1 in 2^20 of
//!   those is named a double free instead of an invalid free; both are reported and ignored).
//!
//! Only blocks the core heap gives out of an arena get headers: an arena stays mapped for the
//! process's life ([`allocscope_core::heap::in_arena`]), so the 16 bytes before any 8-aligned
//! pointer into one can be read whatever the pointer is; every other pointer goes to the block
//! table as before. Live header blocks are found for the leak check by walking the core's pages
//! (`for_each_live`). Sampled, guarded, red-zoned, quarantined and internal blocks, and every
//! block of a tracker over another allocator, stay in the table.
//!
//! May touch: [`allocscope_core::heap`] (arena membership), [`allocscope_core::stats`] (the
//! page walk).

use allocscope_core::sync::{AtomicU64, Ordering};

use crate::block_table::{state, BlockInfo};

/// Bytes in front of every header block.
pub(crate) const HEADER: usize = 16;
/// The largest alignment a header block serves (the header keeps the block 16-aligned when
/// the core's block is).
pub(crate) const MAX_ALIGN: usize = 16;
/// Sizes a header block serves: what the core gives out of an arena, header included (larger
/// blocks get mappings of their own, outside the arenas: the table records them).
pub(crate) const SIZE_LIMIT: usize = allocscope_core::size_class::CLASS_MAX - HEADER;

const STATE_MASK: u64 = 0b11;
const ALIGN_SHIFT: u32 = 2;
const THREAD_SHIFT: u32 = 8;
const THREAD_MASK: u64 = ((1 << 12) - 1) << THREAD_SHIFT;
const TAG_SHIFT: u32 = 20;
const TAG_MASK: u64 = ((1 << 20) - 1) << TAG_SHIFT;
const SIZE_SHIFT: u32 = 40;
/// The fields `check` covers: all but the state and the thread, which change at free.
const FIXED: u64 = !(STATE_MASK | THREAD_MASK);

/// A tracker's header key: random, odd, never 0 (0 is "headers off").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) u64);

impl Key {
    /// The keyed hash of a program pointer: one multiply (the tag takes its well-mixed high
    /// half).
    #[inline(always)]
    fn hash(self, p: usize) -> u64 {
        ((p as u64) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The tag bits of `p`'s word, in place.
    #[inline(always)]
    fn tag(h: u64) -> u64 {
        (h >> 32) & TAG_MASK
    }
}

/// The live word of a block of `size` bytes aligned to `1 << align_log2`, allocated by
/// `thread`, without its tag (built before the address is known, as the default path builds
/// the table's word). `size < SIZE_LIMIT`, `thread < 4096`, `align_log2 < 64`.
#[inline(always)]
pub(crate) fn live_word(size: usize, align_log2: u8, thread: u32) -> u64 {
    debug_assert!(size < SIZE_LIMIT && thread < (1 << 12) && align_log2 < 64);
    u64::from(state::LIVE)
        | (u64::from(align_log2) << ALIGN_SHIFT)
        | (u64::from(thread) << THREAD_SHIFT)
        | ((size as u64) << SIZE_SHIFT)
}

/// The two header words of the block whose program pointer is `p`.
///
/// # Safety
/// `p - 16 .. p` is memory of an arena ([`allocscope_core::heap::in_arena`] of `p`, which stays
/// mapped), 8-aligned.
#[inline(always)]
unsafe fn words<'a>(p: usize) -> (&'a AtomicU64, &'a AtomicU64) {
    // SAFETY: the caller's contract: both words are mapped, aligned memory for the process's
    // life. They may be program data (a pointer that is not a header block's), which is only
    // read through them, and written only once `check` proved the header ours.
    unsafe {
        (
            &*((p - HEADER) as *const AtomicU64),
            &*((p - HEADER + 8) as *const AtomicU64),
        )
    }
}

/// Whether `p` may be a header block's pointer: 8-aligned, in an arena, and the 16 bytes
/// before it too (an arena starts with a segment header, so no block starts in its first 16
/// bytes).
#[inline(always)]
pub(crate) fn candidate(p: usize) -> bool {
    p & 7 == 0
        && p & (allocscope_core::heap::ARENA_ALIGN - 1) >= HEADER
        && allocscope_core::heap::in_arena(p)
}

/// Writes the header of a block just allocated: `base` is the core's block, `w` its
/// [`live_word`]. Returns the program's pointer.
///
/// # Safety
/// `base .. base + 16` is the start of a block of at least 16 + size bytes this thread owns,
/// 8-aligned.
#[inline(always)]
pub(crate) unsafe fn write(key: Key, base: usize, w: u64) -> usize {
    let p = base + HEADER;
    let h = key.hash(p);
    let w = w | Key::tag(h);
    // SAFETY: the caller's contract (the block's first 16 bytes, ours).
    let (check, word) = unsafe { words(p) };
    // Relaxed: the block reaches other threads through the program's own hand-over.
    word.store(w, Ordering::Relaxed);
    // Relaxed: as above.
    check.store(h ^ (w & FIXED), Ordering::Relaxed);
    p
}

/// The default path's free, by the thread that allocated the block: if `p` is a live header
/// block of `thread` with exactly `expect` = (size, log2 alignment) (or any layout when
/// `None`), marks it freed and returns its size and log2 alignment. `None` (nothing written)
/// in every other case, which [`release`] then decides.
///
/// A plain load and store, as the table's owner path (see `BlockTable::release_with`): no
/// other thread writes a live block's word but a racing free of the same pointer, whose
/// compare-and-swap then sees this store — unless both run at the same moment (a data race
/// between two frees in the program, which only a locked instruction on every free settles).
///
/// # Safety
/// `candidate(p)`.
#[inline(always)]
pub(crate) unsafe fn release_owned(
    key: Key,
    p: usize,
    thread: u32,
    expect: Option<(usize, u8)>,
) -> Option<(usize, u8)> {
    // SAFETY: `candidate(p)`: the words are arena memory.
    let (check, word) = unsafe { words(p) };
    // Relaxed: see above.
    let w = word.load(Ordering::Relaxed);
    let h = key.hash(p);
    let mine = u64::from(state::LIVE) | (u64::from(thread) << THREAD_SHIFT) | Key::tag(h);
    let ok = match expect {
        Some((size, align_log2)) => {
            size < SIZE_LIMIT && w == mine | (live_word(size, align_log2, 0) & !STATE_MASK)
        }
        None => w & (STATE_MASK | THREAD_MASK | TAG_MASK) == mine,
    };
    // Relaxed: the check word is only ever written by the block's allocation.
    if !ok || check.load(Ordering::Relaxed) != h ^ (w & FIXED) {
        return None;
    }
    // Relaxed: see above; the core's free, which follows, orders the block's reuse.
    word.store(freed_word(w, thread), Ordering::Relaxed);
    Some(((w >> SIZE_SHIFT) as usize, ((w >> ALIGN_SHIFT) & 63) as u8))
}

/// What a header says of a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A live header block.
    Live(BlockInfo),
    /// A header block freed already.
    Freed(BlockInfo),
    /// No header block starts here (the table decides).
    None,
}

fn info(w: u64) -> BlockInfo {
    let thread = ((w & THREAD_MASK) >> THREAD_SHIFT) as u32;
    let live = w & STATE_MASK == u64::from(state::LIVE);
    BlockInfo {
        size: (w >> SIZE_SHIFT) as usize,
        align_log2: ((w >> ALIGN_SHIFT) & 63) as u8,
        state: (w & STATE_MASK) as u8,
        flags: crate::block_table::flag::HEADER,
        alloc_stack: 0,
        free_stack: 0,
        alloc_thread: if live { thread } else { 0 },
        free_thread: if live { 0 } else { thread },
    }
}

/// `w` (a live header's word) marked freed by `thread` (the thread field then names the
/// freeing thread).
#[inline(always)]
fn freed_word(w: u64, thread: u32) -> u64 {
    (w & !(STATE_MASK | THREAD_MASK))
        | u64::from(state::FREED)
        | (u64::from(thread.min((1 << 12) - 1)) << THREAD_SHIFT)
}

/// What word `w` in front of `p`, with `check` beside it, says.
fn classify(key: Key, p: usize, w: u64, check: &AtomicU64) -> Found {
    let h = key.hash(p);
    if w & TAG_MASK != Key::tag(h) {
        return Found::None;
    }
    match (w & STATE_MASK) as u8 {
        // Relaxed: written once, by the allocation.
        state::LIVE if check.load(Ordering::Relaxed) == h ^ (w & FIXED) => Found::Live(info(w)),
        state::FREED => Found::Freed(info(w)),
        _ => Found::None,
    }
}

/// What the header in front of `p` says.
///
/// # Safety
/// `candidate(p)`.
pub(crate) unsafe fn find(key: Key, p: usize) -> Found {
    // SAFETY: forwarded.
    let (check, word) = unsafe { words(p) };
    // Relaxed: a snapshot; `release` decides with a compare-and-swap.
    classify(key, p, word.load(Ordering::Relaxed), check)
}

/// The general free of a header block by any thread: one compare-and-swap from live to freed,
/// so that racing frees of one pointer have exactly one winner. `None`: no header block starts
/// at `p` (the table decides). `AlreadyFreed` is only what the header says: a freed header's
/// word may be stale memory 16 bytes before a block the table records, which the caller asks
/// the table about before reporting a double free.
///
/// # Safety
/// `candidate(p)`.
pub(crate) unsafe fn release(
    key: Key,
    p: usize,
    thread: u32,
) -> Option<crate::block_table::Release> {
    use crate::block_table::Release;
    // SAFETY: forwarded.
    let (check, word) = unsafe { words(p) };
    // Relaxed: the exchange below decides.
    let mut w = word.load(Ordering::Relaxed);
    loop {
        let info = match classify(key, p, w, check) {
            Found::Live(info) => info,
            Found::Freed(info) => return Some(Release::AlreadyFreed(info)),
            Found::None => return None,
        };
        // Relaxed: the exchange only decides which free wins; the core's free of the block
        // orders its reuse.
        match word.compare_exchange(
            w,
            freed_word(w, thread),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(Release::Was(info)),
            Err(now) => w = now,
        }
    }
}

/// Marks live header block `p` freed by `thread` without a free (a resize that hands the memory
/// to the core's realloc); returns the word it had, for [`restore`].
///
/// # Safety
/// `p` is a live header block this thread just looked up and is resizing.
pub(crate) unsafe fn retire(p: usize, thread: u32) -> u64 {
    // SAFETY: a live header block's words.
    let (_, word) = unsafe { words(p) };
    // Relaxed: as for `release`.
    let old = word.load(Ordering::Relaxed);
    word.store(freed_word(old, thread), Ordering::Relaxed);
    old
}

/// Puts back the word [`retire`] took (the resize failed; the block is live again).
///
/// # Safety
/// As for [`retire`], whose result `w` is.
pub(crate) unsafe fn restore(p: usize, w: u64) {
    // SAFETY: forwarded.
    let (_, word) = unsafe { words(p) };
    // Relaxed: as for `release`.
    word.store(w, Ordering::Relaxed);
}

/// Calls `f(pointer, info)` for every live header block of `key`, by walking the core heap's
/// pages. A snapshot: blocks allocated or freed meanwhile may be seen or not. Allocates
/// nothing.
pub(crate) fn for_each_live(key: Key, f: &mut dyn FnMut(usize, &BlockInfo)) {
    allocscope_core::stats::walk_pages(&mut |page| {
        if page.class.is_none() || page.block_size <= HEADER || !page.committed {
            return;
        }
        for i in 0..page.capacity as usize {
            let p = page.address + i * page.block_size + HEADER;
            if !candidate(p) {
                continue;
            }
            // SAFETY: `candidate(p)`: the header's words are arena memory, mapped for good.
            if let Found::Live(info) = unsafe { find(key, p) } {
                if info.size + HEADER <= page.block_size {
                    f(p, &info);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte block of our own, 16-aligned, standing in for a core block (the functions
    /// below that need an arena are tested through the tracker).
    #[repr(C, align(16))]
    struct Block([u64; 8]);

    #[test]
    fn a_header_is_found_live_then_freed_and_only_by_its_own_key() {
        let key = Key(0x1234_5678_9abc_def1);
        let other = Key(0x0fed_cba9_8765_4321);
        let mut b = Block([0; 8]);
        let base = b.0.as_mut_ptr() as usize;
        // SAFETY: our own 64 bytes, 16-aligned.
        let p = unsafe { write(key, base, live_word(40, 3, 7)) };
        assert_eq!(p, base + HEADER);
        // SAFETY: as above (the words are in `b`).
        unsafe {
            match find(key, p) {
                Found::Live(i) => {
                    assert_eq!((i.size, i.align_log2, i.alloc_thread), (40, 3, 7));
                }
                f => panic!("{f:?}"),
            }
            assert_eq!(find(other, p), Found::None);
            // Another thread, or another layout: not the owner path's.
            assert_eq!(release_owned(key, p, 8, None), None);
            assert_eq!(release_owned(key, p, 7, Some((41, 3))), None);
            assert_eq!(release_owned(key, p, 7, Some((40, 4))), None);
            assert_eq!(release_owned(key, p, 7, Some((40, 3))), Some((40, 3)));
            match find(key, p) {
                Found::Freed(i) => assert_eq!((i.size, i.free_thread), (40, 7)),
                f => panic!("{f:?}"),
            }
            // A second free: not released again.
            assert_eq!(release_owned(key, p, 7, None), None);
            assert!(matches!(
                release(key, p, 9),
                Some(crate::block_table::Release::AlreadyFreed(_))
            ));
        }
    }

    #[test]
    fn a_damaged_check_or_a_moved_header_is_not_a_block() {
        let key = Key(0x5555_0000_aaaa_0001);
        let mut b = Block([0; 8]);
        let base = b.0.as_mut_ptr() as usize;
        // SAFETY: our own 64 bytes.
        let p = unsafe { write(key, base, live_word(24, 3, 1)) };
        let words = base as *mut u64;
        // SAFETY: our own memory, through the one pointer used for every access below.
        unsafe {
            // The same two words copied 16 bytes further: keyed by address, not a header there.
            *words.add(2) = *words;
            *words.add(3) = *words.add(1);
            assert_eq!(find(key, p + 16), Found::None);
            assert_eq!(release(key, p + 16, 1), None);
            // A damaged check: not a live block either.
            *words ^= 1;
            assert_eq!(find(key, p), Found::None);
            assert_eq!(release_owned(key, p, 1, None), None);
        }
    }

    #[test]
    fn a_free_by_another_thread_wins_once() {
        let key = Key(0x0101_0202_0303_0405);
        let mut b = Block([0; 8]);
        let base = b.0.as_mut_ptr() as usize;
        // SAFETY: our own memory throughout.
        unsafe {
            let p = write(key, base, live_word(8, 0, 3));
            match release(key, p, 5) {
                Some(crate::block_table::Release::Was(i)) => {
                    assert_eq!((i.size, i.alloc_thread), (8, 3))
                }
                r => panic!("{r:?}"),
            }
            match release(key, p, 6) {
                Some(crate::block_table::Release::AlreadyFreed(i)) => {
                    assert_eq!(i.free_thread, 5)
                }
                r => panic!("{r:?}"),
            }
        }
    }
}

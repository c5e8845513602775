//! The shadow: where the default path records a plain block — a state byte per 16-byte
//! granule of the core heap's arenas, in a map of the tracker's own beside the heap, and a
//! header in front of the block, instead of the block table.
//!
//! ```text
//! state byte (per granule, 1/16 of the heap)   0 none · FREED · FREED_SAMPLED · SAMPLED ·
//!                                               LIVE_BIT | layout hash (127 values)
//! header (16 bytes in front of the block)       spare (8) | align 3 · thread 12 · size 19 ·
//!                                               allocation stack id 30
//! ```
//!
//! What a free must *read* has to be dense, and what an allocation writes has to be where it
//! writes anyway. The header alone (this module's first design, Scudo's) had to be loaded at
//! free, and in a program that frees blocks it has not touched for a while that load missed the
//! cache and the free waited for it (45–53 % of the tracker's free samples, perf over the
//! overhead bench), where the core's own free only stores into the block; a 32-bit word per
//! granule beside the heap had the same wait at free and added a cold line to every allocation
//! (its store then held up the store buffer: a third of the allocation's samples). The state
//! byte covers 1 KiB of heap per cache line, so the bytes of a working set stay in cache where
//! its blocks do not; the header is written with the block's first line, which the program is
//! about to write, and read only off the default path: by the general free, a report,
//! `usable_size`, a resize, the leak check and the figures.
//!
//! - The byte decides. A free with no layout (C's) accepts any live byte; a free with a layout
//!   (Rust's) accepts only the byte its layout hashes to, so a mismatched layout takes the
//!   general path, which compares it with the header exactly and reports it — but for the 1 in
//!   127 mismatches whose hash collides, which free silently (the core's free needs no layout).
//!   The program cannot forge a byte (it is the tracker's memory), so a live byte is certain.
//! - Owner frees (the segment's owner is the calling thread's heap,
//!   `allocscope_core::heap::owned_here`) are a plain load and store of the byte: no other
//!   thread writes a live block's byte but a racing free of the same pointer, whose
//!   compare-and-swap then sees the store — unless both run at the same moment (a data race
//!   between two frees in the program, which only a locked instruction on every free settles).
//!   Every other free takes the general path's compare-and-swap ([`Slot::release`]), so racing
//!   frees among other threads have one winner.
//! - A block gets a record only if the core gives it out of an arena (every block the tracker
//!   asks for with the header in front, aligned to 16, is then 16-aligned and at least 32
//!   bytes, so no two blocks share a granule), is below [`SIZE_LIMIT`] and aligned to at most
//!   [`MAX_ALIGN`]; everything else stays in the table.
//! - A freed byte stays until the granule starts a block again, so a second free is a double
//!   free; when the core has reused the memory for another size class, a free of a pointer
//!   inside a block that lands on such a byte is named a double free instead of an invalid free
//!   (both are reported and ignored). A live byte is never stale: every free and resize of a
//!   shadow block goes through [`Slot::release_owned`], [`Slot::release`] or [`Slot::retire`]
//!   before the core sees the block. The header is not updated at free (the byte says the
//!   state), so a freed block's record names no freeing thread.
//! - The map: a top array of one pointer per arena (its 8 MiB reserved at the tracker's start,
//!   touched only where arenas are), and per arena a sixteenth of its size, reserved and only
//!   touched where the heap is. Each tracker has its own (another tracker's blocks are not this
//!   one's). Only over the core heap itself ([`Shadow::usable_over`]).
//!
//! May touch: [`allocscope_core::heap`] (arena membership, segment ownership),
//! [`allocscope_core::stats`] (the page walk), [`crate::os_memory`].

use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use crate::block_table::{flag, state, BlockInfo, Release};

/// The bytes one state byte describes; shadow blocks start at a multiple of it.
pub(crate) const GRANULE: usize = 16;
const GRANULE_SHIFT: u32 = GRANULE.trailing_zeros();
/// Bytes in front of every shadow block (the core's block starts there).
pub(crate) const HEADER: usize = 16;
/// The largest alignment a shadow block serves (the header keeps the block 16-aligned).
pub(crate) const MAX_ALIGN: usize = 16;
/// Sizes a shadow block serves: what the core gives out of an arena, header included (larger
/// blocks get mappings of their own, outside the arenas: the table records them).
pub(crate) const SIZE_LIMIT: usize = allocscope_core::size_class::CLASS_MAX - HEADER;

const ARENA: usize = allocscope_core::heap::ARENA_ALIGN;
const ARENA_SHIFT: u32 = ARENA.trailing_zeros();
/// Addresses the top array covers (x86-64's and aarch64's 48-bit user space; all of 32-bit).
const ADDRESS_BITS: u32 = if usize::BITS == 64 { 48 } else { 32 };
const TOP_LEN: usize = 1 << (ADDRESS_BITS - ARENA_SHIFT);
/// State bytes per arena.
const GRANULES: usize = ARENA >> GRANULE_SHIFT;

/// State byte: a freed block; its header is still its allocation's.
const FREED: u8 = 1;
/// State byte: a freed block that had a stack; its header word holds the allocation's and the
/// free's stack ids (the size and thread are gone).
const FREED_SAMPLED: u8 = 2;
/// State byte: set in every live block's, with a hash of its layout beside it (a value below
/// [`SAMPLED`]).
const LIVE_BIT: u8 = 0x80;
/// State byte: a live block whose free records its stack (a sampled block, with
/// `free_stacks`): its free takes the general path, which captures it, whatever the layout.
/// Sampled blocks whose free records nothing get a layout's byte: their stack id is in the
/// header either way.
const SAMPLED: u8 = 0xFF;

const ALIGN_MASK: u64 = 0b111;
const THREAD_SHIFT: u32 = 3;
/// Thread ids a header holds: below 4096 ([`crate::thread_state::FAST_THREAD_LIMIT`]).
const THREAD_BITS: u32 = 12;
const THREAD_MASK: u64 = ((1 << THREAD_BITS) - 1) << THREAD_SHIFT;
const SIZE_SHIFT: u32 = THREAD_SHIFT + THREAD_BITS;
const SIZE_BITS: u32 = 19;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;
const STACK_SHIFT: u32 = SIZE_SHIFT + SIZE_BITS;
/// Stack ids a header holds (below 2^30; a block with a larger one goes to the table).
pub(crate) const STACK_LIMIT: u32 = 1 << (64 - STACK_SHIFT);
const _: () = assert!(SIZE_LIMIT <= 1 << SIZE_BITS && STACK_SHIFT == 34);
const _: () = assert!(1 << THREAD_BITS == crate::thread_state::FAST_THREAD_LIMIT);

/// The state byte of a live block of `size` bytes aligned to `1 << align_log2`: [`LIVE_BIT`]
/// and a multiplicative hash of the layout reduced to 0..=126 (127 values: [`SAMPLED`] is the
/// 128th). Two multiplies, on both sides.
#[inline(always)]
pub(crate) fn live_byte(size: usize, align_log2: u8) -> u8 {
    let key = ((size as u32) << 3) | u32::from(align_log2);
    let h = u64::from(key.wrapping_mul(0x9E37_79B1));
    LIVE_BIT | ((h * 127) >> 32) as u8
}

/// The header word of a block of `size` bytes aligned to `1 << align_log2`, allocated by
/// `thread` with allocation stack `stack` (0: none). `size < SIZE_LIMIT`, `thread < 4096`,
/// `1 << align_log2 <= MAX_ALIGN`, `stack < STACK_LIMIT`.
#[inline(always)]
pub(crate) fn header_word(size: usize, align_log2: u8, thread: u32, stack: u32) -> u64 {
    debug_assert!(size < SIZE_LIMIT && thread < (1 << THREAD_BITS) && align_log2 <= 4);
    debug_assert!(stack < STACK_LIMIT);
    u64::from(align_log2)
        | (u64::from(thread) << THREAD_SHIFT)
        | ((size as u64) << SIZE_SHIFT)
        | (u64::from(stack) << STACK_SHIFT)
}

/// What a record says: the byte decides the state, the header gives the rest. A freed block's
/// header may since be another block's bytes (the core reused the memory for another class):
/// a size out of range reads as 0.
fn info(w: u64, live: bool) -> BlockInfo {
    let size = ((w >> SIZE_SHIFT) & SIZE_MASK) as usize;
    BlockInfo {
        size: if size < SIZE_LIMIT { size } else { 0 },
        align_log2: (w & ALIGN_MASK).min(4) as u8,
        state: if live { state::LIVE } else { state::FREED },
        flags: flag::IN_SHADOW,
        alloc_stack: (w >> STACK_SHIFT) as u32,
        free_stack: 0,
        alloc_thread: ((w & THREAD_MASK) >> THREAD_SHIFT) as u32,
        free_thread: 0,
    }
}

/// What the shadow says of a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A live shadow block.
    Live(BlockInfo),
    /// A shadow block freed already.
    Freed(BlockInfo),
    /// No shadow block starts here (the table decides).
    None,
}

/// One tracker's shadow map (a reference to it: copies share the map).
#[derive(Clone, Copy)]
pub(crate) struct Shadow {
    /// One pointer per arena to its state bytes, null until the default path first records a
    /// block there. Reserved whole, zero, touched only where arenas are.
    top: &'static [AtomicPtr<u8>],
}

impl core::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Shadow({:p})", self.top.as_ptr())
    }
}

/// The record of the block that would start at one granule: its state byte and, where the
/// byte says a block starts there, its header.
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    byte: &'static AtomicU8,
    /// The block's program pointer (the header is the 16 bytes before it).
    p: usize,
}

impl Shadow {
    /// Whether a tracker over `A` may use the shadow: only over the core heap itself, whose
    /// free needs no layout (a C free gives none, and the shadow's fast free reads no size),
    /// whose blocks are the arenas' (`inner_is_arena_heap` checks that too) and whose arenas
    /// stay mapped and readable (a header may be read in front of any block start).
    pub(crate) fn usable_over<A>() -> bool {
        core::any::type_name::<A>() == core::any::type_name::<allocscope_core::Allocscope>()
    }

    /// Reserves the top array; `None` when the OS refuses (the table records every block).
    pub(crate) fn new() -> Option<Shadow> {
        let bytes = TOP_LEN * core::mem::size_of::<AtomicPtr<u8>>();
        let base = crate::os_memory::map(bytes)?;
        // SAFETY: `map` gives `bytes` of zeroed, aligned memory that stays mapped (the
        // tracker's state lives for the process); zero is a null `AtomicPtr`.
        let top =
            unsafe { core::slice::from_raw_parts(base.as_ptr() as *const AtomicPtr<u8>, TOP_LEN) };
        Some(Shadow { top })
    }

    /// The record of `p` if `p` may be a shadow block (16-aligned, in an arena whose bytes
    /// exist). One bounds test and one load beyond the alignment test.
    #[inline(always)]
    pub(crate) fn slot(&self, p: usize) -> Option<Slot> {
        if p & (GRANULE - 1) != 0 {
            return None;
        }
        // Acquire: pairs with the Release publication in `map_arena`, after which the bytes
        // are readable (the mapping is zero).
        let bytes = self.top.get(p >> ARENA_SHIFT)?.load(Ordering::Acquire);
        if bytes.is_null() {
            return None;
        }
        let i = (p & (ARENA - 1)) >> GRANULE_SHIFT;
        // SAFETY: `bytes` maps GRANULES bytes for the process's life (`map_arena`), `i <
        // GRANULES`.
        let byte = unsafe { &*(bytes.add(i) as *const AtomicU8) };
        Some(Slot { byte, p })
    }

    /// As [`Shadow::slot`], mapping the bytes of `p`'s arena on first use: the allocation
    /// side, for a block the core heap just gave out (`p` its program pointer). `None` when
    /// `p` is not in an arena or not 16-aligned, or the OS refuses the bytes (the table
    /// records the block).
    #[inline(always)]
    pub(crate) fn slot_for_new(&self, p: usize) -> Option<Slot> {
        match self.slot(p) {
            Some(s) => Some(s),
            None => self.map_arena(p),
        }
    }

    #[cold]
    #[inline(never)]
    fn map_arena(&self, p: usize) -> Option<Slot> {
        if p & (GRANULE - 1) != 0 || !allocscope_core::heap::in_arena(p) {
            return None;
        }
        let entry = self.top.get(p >> ARENA_SHIFT)?;
        let bytes = crate::os_memory::map(GRANULES)?;
        // Release: publishes the (zero) bytes with the pointer; Acquire on failure: the
        // winner's bytes are then readable.
        if entry
            .compare_exchange(
                null_mut(),
                bytes.as_ptr(),
                Ordering::Release,
                Ordering::Acquire,
            )
            .is_err()
        {
            // SAFETY: mapped just above with this length, never published.
            unsafe { crate::os_memory::unmap(bytes, GRANULES) };
        }
        self.slot(p)
    }

    /// What the record of `p` says ([`Found::None`] when `p` has no slot).
    pub(crate) fn find(&self, p: usize) -> Found {
        self.slot(p).map_or(Found::None, Slot::find)
    }

    /// Calls `f(pointer, info)` for every live shadow block, by walking the core heap's pages.
    /// A snapshot: blocks allocated or freed meanwhile may be seen or not. Allocates nothing.
    pub(crate) fn for_each_live(&self, f: &mut dyn FnMut(usize, &BlockInfo)) {
        allocscope_core::stats::walk_pages(&mut |page| {
            if page.class.is_none() || page.block_size <= HEADER || !page.committed {
                return;
            }
            for i in 0..page.capacity as usize {
                let p = page.address + i * page.block_size + HEADER;
                if let Found::Live(info) = self.find(p) {
                    if info.size + HEADER <= page.block_size {
                        f(p, &info);
                    }
                }
            }
        });
    }

    /// The live shadow blocks' count and requested bytes (a walk: the default path keeps no
    /// counters).
    pub(crate) fn live_figures(&self) -> (usize, usize) {
        let (mut blocks, mut bytes) = (0, 0);
        self.for_each_live(&mut |_, info| {
            blocks += 1;
            bytes += info.size;
        });
        (blocks, bytes)
    }
}

impl Slot {
    /// The block's header word.
    ///
    /// # Safety
    /// The byte said a block starts here (live or freed): the 16 bytes before `p` are then a
    /// block's header in an arena, mapped and readable for the process's life — for a freed
    /// block, possibly another block's bytes by now, only ever read.
    unsafe fn header(self) -> &'static AtomicU64 {
        // SAFETY: the caller's contract; `p` is 16-aligned, so the word is 8-aligned.
        unsafe { &*((self.p - 8) as *const AtomicU64) }
    }

    /// Records a block just allocated whose free is to record its stack: its header and the
    /// [`SAMPLED`] byte. As for [`Slot::write`].
    pub(crate) fn write_sampled(self, word: u64) {
        self.write(SAMPLED, word);
    }

    /// After the general free of a sampled block (its byte now [`FREED_SAMPLED`], this thread
    /// the free's winner, the core's free still to come): keeps the two stack ids in the header
    /// word, which the core's free-list link does not overwrite, for a later report.
    pub(crate) fn keep_stacks(self, alloc_stack: u32, free_stack: u32) {
        // SAFETY: the byte says a block starts here, and the block is still this thread's.
        // Relaxed: read only by a later report, after the program's own ordering of the frees.
        unsafe { self.header() }.store(
            u64::from(alloc_stack) | (u64::from(free_stack) << 32),
            Ordering::Relaxed,
        );
    }

    /// Records a block just allocated: its header (the core's block starts 16 bytes before
    /// `p`, and this thread owns it) and its state byte.
    #[inline(always)]
    pub(crate) fn write(self, byte: u8, word: u64) {
        // SAFETY: `p - 16 .. p` is the start of the core's block just handed to this thread.
        // Relaxed: the block reaches other threads through the program's own hand-over, which
        // carries both stores.
        unsafe { self.header() }.store(word, Ordering::Relaxed);
        // Relaxed: as above.
        self.byte.store(byte, Ordering::Relaxed);
    }

    /// The default path's free, by the thread whose heap owns the block's segment: if the byte
    /// is live and, with a layout given, the byte `expect` that layout hashes to, marks it freed
    /// and returns `true`. `false` (nothing written) in every other case, which the general
    /// path ([`Slot::release`]) then decides. A plain load and store: see the module's notes.
    #[inline(always)]
    pub(crate) fn release_owned(self, expect: Option<u8>) -> bool {
        // Relaxed: see the module's notes; the core's free, which follows, orders the reuse.
        let b = self.byte.load(Ordering::Relaxed);
        // A layout's byte is never SAMPLED, so only plain blocks pass.
        let ok = match expect {
            Some(e) => b == e,
            None => b & LIVE_BIT != 0 && b != SAMPLED,
        };
        if ok {
            // Relaxed: as above.
            self.byte.store(FREED, Ordering::Relaxed);
        }
        ok
    }

    /// The record of a [`SAMPLED`] block, or `None` if the byte says anything else: `find` for
    /// the default path's free of a sampled block, which takes no other, with one load of the
    /// byte and one of the header (`find` out of line built its whole answer in memory: about
    /// 75 instructions per free of the overhead bench's `sample=1` row).
    #[inline(always)]
    pub(crate) fn find_sampled(self) -> Option<BlockInfo> {
        // Relaxed: a snapshot; the free that follows decides as `release_owned` does (the owner's
        // plain store).
        if self.byte.load(Ordering::Relaxed) != SAMPLED {
            return None;
        }
        // SAFETY: the byte says a (live) block starts at `p`. Relaxed: as in `classify`.
        let w = unsafe { self.header() }.load(Ordering::Relaxed);
        Some(info(w, true))
    }

    /// The owner's free of a [`SAMPLED`] block the caller just found live with the layout
    /// given (`find_sampled`): a plain store, as in `release_owned`, then the stacks kept as
    /// the general path keeps them ([`Slot::keep_stacks`]).
    pub(crate) fn release_sampled_owned(self, alloc_stack: u32, free_stack: u32) {
        // Relaxed: as in `release_owned`.
        self.byte.store(FREED_SAMPLED, Ordering::Relaxed);
        self.keep_stacks(alloc_stack, free_stack);
    }

    /// What the record says.
    pub(crate) fn find(self) -> Found {
        // Relaxed: a snapshot; `release` decides with a compare-and-swap.
        classify(self, self.byte.load(Ordering::Relaxed))
    }

    /// The general free of a shadow block by any thread: one compare-and-swap of the byte from
    /// live to freed, so that racing frees of one pointer have exactly one winner. `None`: no
    /// shadow block starts here (the table decides). `AlreadyFreed` is only what the byte says:
    /// the granule may start a block the table records now, which the caller asks the table
    /// about before reporting a double free.
    pub(crate) fn release(self) -> Option<Release> {
        // Relaxed: the exchange below decides.
        let mut b = self.byte.load(Ordering::Relaxed);
        loop {
            let info = match classify(self, b) {
                Found::Live(info) => info,
                Found::Freed(info) => return Some(Release::AlreadyFreed(info)),
                Found::None => return None,
            };
            let freed = if b == SAMPLED { FREED_SAMPLED } else { FREED };
            // Relaxed: the exchange only decides which free wins; the core's free of the block
            // orders its reuse.
            match self
                .byte
                .compare_exchange(b, freed, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(Release::Was(info)),
                Err(now) => b = now,
            }
        }
    }

    /// Marks the live block freed without a free (a resize that hands the memory to the
    /// core's realloc); returns the byte it had, for [`Slot::restore`]. The caller just found
    /// the block live and is resizing it (and carries its stack id over itself).
    pub(crate) fn retire(self) -> u8 {
        // Relaxed: as for `release`.
        self.byte.swap(FREED, Ordering::Relaxed)
    }

    /// Puts back the byte [`Slot::retire`] took (the resize failed; the block is live again).
    pub(crate) fn restore(self, byte: u8) {
        // Relaxed: as for `release`.
        self.byte.store(byte, Ordering::Relaxed);
    }
}

/// What byte `b` of `slot` says, with the header read where a block starts.
fn classify(slot: Slot, b: u8) -> Found {
    if b & LIVE_BIT == 0 && b != FREED && b != FREED_SAMPLED {
        return Found::None;
    }
    // SAFETY: the byte says a block starts at `slot.p`. Relaxed: written before the byte by
    // the allocation, whose hand-over to this thread (for a block it may free) carries it; for
    // a walk, a snapshot.
    let w = unsafe { slot.header() }.load(Ordering::Relaxed);
    match b {
        FREED => Found::Freed(info(w, false)),
        FREED_SAMPLED => Found::Freed(BlockInfo {
            state: state::FREED,
            flags: flag::IN_SHADOW,
            alloc_stack: w as u32,
            free_stack: (w >> 32) as u32,
            ..BlockInfo::default()
        }),
        _ => Found::Live(info(w, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of our own standing in for a core block, with a state byte (the map itself,
    /// over real arena blocks, is tested below outside miri and through the tracker).
    #[repr(C, align(16))]
    struct Block([AtomicU64; 8]);

    fn slot(block: &'static Block, byte: &'static AtomicU8) -> Slot {
        byte.store(0, Ordering::Relaxed);
        Slot {
            byte,
            p: block.0.as_ptr() as usize + HEADER,
        }
    }

    #[allow(clippy::declare_interior_mutable_const)] // only copied into the statics' arrays
    const ZERO: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn a_record_is_found_live_then_freed() {
        static BLOCK: Block = Block([ZERO; 8]);
        static B: AtomicU8 = AtomicU8::new(0);
        let s = slot(&BLOCK, &B);
        assert_eq!(s.find(), Found::None);
        s.write(live_byte(40, 3), header_word(40, 3, 7, 0));
        match s.find() {
            Found::Live(i) => assert_eq!((i.size, i.align_log2, i.alloc_thread), (40, 3, 7)),
            f => panic!("{f:?}"),
        }
        // Another layout: not the default path's.
        assert!(!s.release_owned(Some(live_byte(41, 3))));
        assert!(!s.release_owned(Some(live_byte(40, 4))));
        assert!(s.release_owned(Some(live_byte(40, 3))));
        match s.find() {
            Found::Freed(i) => assert_eq!(i.size, 40),
            f => panic!("{f:?}"),
        }
        // A second free: not released again, by either path.
        assert!(!s.release_owned(None));
        assert!(matches!(s.release(), Some(Release::AlreadyFreed(_))));
    }

    #[test]
    fn layouts_that_differ_a_little_hash_apart() {
        // Sizes one apart and the alignments of one size all get distinct bytes; over every
        // pair of nearby layouts, a collision (a mismatch the default path lets through) is
        // rare.
        for size in 0..SIZE_LIMIT - 1 {
            assert_ne!(live_byte(size, 3), live_byte(size + 1, 3), "{size}");
            assert_ne!(live_byte(size, 3), live_byte(size, 4), "{size}");
            assert!(live_byte(size, 0) & LIVE_BIT != 0);
        }
        let (mut pairs, mut same) = (0u32, 0u32);
        for size in 1..4096 {
            for other in size + 1..(size + 64).min(4096) {
                pairs += 1;
                same += u32::from(live_byte(size, 3) == live_byte(other, 3));
            }
        }
        assert!(same * 64 < pairs, "{same} of {pairs} collide");
    }

    #[test]
    fn the_largest_fields_survive_the_packing() {
        static BLOCK: Block = Block([ZERO; 8]);
        static B: AtomicU8 = AtomicU8::new(0);
        let s = slot(&BLOCK, &B);
        s.write(
            live_byte(SIZE_LIMIT - 1, 4),
            header_word(SIZE_LIMIT - 1, 4, 4095, STACK_LIMIT - 1),
        );
        match s.find() {
            Found::Live(i) => {
                assert_eq!(
                    (i.size, i.align_log2, i.alloc_thread),
                    (SIZE_LIMIT - 1, 4, 4095)
                )
            }
            f => panic!("{f:?}"),
        }
        assert!(s.release_owned(None));
    }

    #[test]
    fn a_general_free_wins_once_and_a_retired_record_comes_back() {
        static BLOCK: Block = Block([ZERO; 8]);
        static B: AtomicU8 = AtomicU8::new(0);
        let s = slot(&BLOCK, &B);
        s.write(live_byte(8, 0), header_word(8, 0, 3, 0));
        match s.release() {
            Some(Release::Was(i)) => assert_eq!((i.size, i.alloc_thread), (8, 3)),
            r => panic!("{r:?}"),
        }
        assert!(matches!(s.release(), Some(Release::AlreadyFreed(_))));
        s.write(live_byte(100, 4), header_word(100, 4, 2, 0));
        let old = s.retire();
        assert!(matches!(s.find(), Found::Freed(_)));
        s.restore(old);
        assert!(matches!(s.find(), Found::Live(i) if i.size == 100));
    }

    #[test]
    fn a_sampled_record_keeps_both_stacks_once_freed() {
        static BLOCK: Block = Block([ZERO; 8]);
        static B: AtomicU8 = AtomicU8::new(0);
        let s = slot(&BLOCK, &B);
        s.write_sampled(header_word(24, 3, 5, 77));
        match s.find() {
            Found::Live(i) => assert_eq!((i.size, i.alloc_stack, i.alloc_thread), (24, 77, 5)),
            f => panic!("{f:?}"),
        }
        // The default path's look at it sees the same record.
        let i = s.find_sampled().expect("sampled");
        assert_eq!(
            (i.size, i.align_log2, i.alloc_stack, i.alloc_thread),
            (24, 3, 77, 5)
        );
        // Its free records a stack: never the default path's plain release.
        assert!(!s.release_owned(None));
        assert!(!s.release_owned(Some(live_byte(24, 3))));
        assert!(matches!(s.release(), Some(Release::Was(i)) if i.alloc_stack == 77));
        s.keep_stacks(77, 88);
        match s.find() {
            Found::Freed(i) => assert_eq!((i.alloc_stack, i.free_stack), (77, 88)),
            f => panic!("{f:?}"),
        }
        assert!(matches!(s.release(), Some(Release::AlreadyFreed(i)) if i.free_stack == 88));
        // The owner's short path writes the same.
        s.write_sampled(header_word(24, 3, 5, 78));
        s.release_sampled_owned(78, 89);
        assert!(matches!(s.find(), Found::Freed(i) if (i.alloc_stack, i.free_stack) == (78, 89)));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // the OS mappings of the map and the heap
    fn only_16_aligned_arena_pointers_have_slots() {
        let shadow = Shadow::new().expect("the top array maps");
        let base = allocscope_core::heap::alloc(64, 16) as usize;
        let p = base + HEADER;
        assert!(allocscope_core::heap::in_arena(p));
        assert!(shadow.slot(p).is_none(), "no bytes before the first record");
        let s = shadow.slot_for_new(p).expect("the arena's bytes map");
        s.write(live_byte(48, 4), header_word(48, 4, 1, 0));
        assert!(matches!(shadow.find(p), Found::Live(i) if i.size == 48));
        assert!(shadow.slot(p + 8).is_none());
        assert_eq!(shadow.find(p + 16), Found::None);
        let local = [0u8; 64];
        assert!(shadow.slot_for_new(local.as_ptr() as usize & !15).is_none());
        assert!(s.release_owned(Some(live_byte(48, 4))));
        // SAFETY: allocated above by the heap, freed once.
        unsafe { allocscope_core::heap::free(base as *mut u8) };
    }
}

//! The record of every block the tracker handed out but the default path's shadow blocks
//! ([`crate::shadow`]): address -> size, alignment, state and stacks.
//! It is what makes double and invalid frees certain to be caught, what the layout check at
//! dealloc compares against, and what the leak check and canary scan walk.
//!
//! Design: a direct map, ordered by address. The address space is cut into 4 MiB regions; a
//! region that holds a block gets a lazily mapped array of one 64-bit word per 8-byte granule,
//! found through a top-level array of region pointers. A block's word packs its state, flags,
//! alignment, a thread id and its size, so the default paths do no hashing, no probing and take
//! no lock: an insert is one store, and a free by the thread that allocated the block (the
//! owner path, see [`BlockTable::release_with`]) one load and one store; a free by any other
//! thread is one compare-and-swap, which makes racing frees of one pointer on those threads
//! resolve to exactly one winner. Walks pair the owner path's plain store with an asymmetric
//! barrier ([`crate::barrier`]). Addresses close together have their words close together, so
//! the map's cache footprint follows the heap's.
//!
//! Keying core blocks by their segment slot instead (one word per block rather than per
//! granule, through a read-only geometry lookup in the core) was measured and dropped: the
//! lookup cost more instructions than the smaller footprint saved (see the design document).
//!
//! What a word cannot hold — free stacks, stack ids above 65535, thread ids above 4095, sizes
//! of 16 MiB or more — goes to the hashed [`ColdTable`] beside it (the word's `COLD` bit says
//! so); so do whole entries for addresses the map does not cover (not 8-aligned, as guard-slot
//! blocks often are, or above 2^47). Only blocks freed with a recorded stack, guarded and
//! unusual blocks pay for the cold table's locks.
//!
//! A freed block's word stays (state `Freed`, with the freeing thread in place of the allocating
//! one) until the address is handed out again: that is how a second free of the same pointer is
//! told apart from a free of a pointer that was never allocated. Internal blocks (allocated by
//! the tracker's own code while its re-entrancy flag was set) are recorded too, so they can be
//! freed from any context, and are removed outright when freed.
//!
//! Figures (live blocks and bytes) are kept per thread: a thread owns one counter slot of each
//! table while it runs ([`crate::thread_state::counter_slot`]) and updates it with plain loads
//! and stores.
//!
//! May touch: [`crate::cold_table`], [`crate::spin`], [`crate::os_memory`], [`crate::barrier`],
//! [`crate::thread_state`] (the thread's counter slot).

use core::ptr::{null_mut, NonNull};

use allocscope_core::sync::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::barrier;
use crate::cold_table::ColdTable;
use crate::os_memory;
use crate::spin::SpinLock;
use crate::thread_state::{counter_slot, COUNTER_SLOTS, FAST_THREAD_LIMIT};

/// Block states (`u8` so that an all-zero word is an empty one).
pub(crate) mod state {
    /// In use by the program.
    pub(crate) const LIVE: u8 = 1;
    /// Freed by the program, held poisoned in the quarantine.
    pub(crate) const QUARANTINED: u8 = 2;
    /// Freed and returned to the inner allocator (kept to recognise a double free).
    pub(crate) const FREED: u8 = 3;
}

/// Block flags.
pub(crate) mod flag {
    /// Allocated by the tracker for itself: not the program's, never reported.
    pub(crate) const INTERNAL: u8 = 1;
    /// Surrounded by red zones.
    pub(crate) const CANARY: u8 = 2;
    /// Lives in the guard-page pool.
    pub(crate) const GUARDED: u8 = 4;
    /// A cold-table entry that completes a direct-map word (never set in a [`super::BlockInfo`]
    /// handed out of the table).
    pub(crate) const SHADOW: u8 = 8;
    /// Recorded in a shadow word ([`crate::shadow`]), not in the table: never in a table word
    /// (which holds the three flags above), only in the entries shadow words give.
    pub(crate) const IN_SHADOW: u8 = 16;
}

/// What the table knows of one block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockInfo {
    /// Requested size.
    pub(crate) size: usize,
    /// log2 of the requested alignment.
    pub(crate) align_log2: u8,
    /// One of [`state`].
    pub(crate) state: u8,
    /// A set of [`flag`]s.
    pub(crate) flags: u8,
    /// Allocation stack id (0 = not sampled).
    pub(crate) alloc_stack: u32,
    /// Free stack id (0 = not recorded).
    pub(crate) free_stack: u32,
    /// Thread that allocated (0 = not known).
    pub(crate) alloc_thread: u32,
    /// Thread that freed (0 = not known).
    pub(crate) free_thread: u32,
}

impl BlockInfo {
    pub(crate) fn align(&self) -> usize {
        1usize << self.align_log2
    }

    pub(crate) fn is_internal(&self) -> bool {
        self.flags & flag::INTERNAL != 0
    }
}

/// A live, plain block's word (no flags, no stack, no cold entry), built by the default path
/// before it has the address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlainWord(u64);

impl PlainWord {
    /// Requires (checked in debug builds only; a violation garbles the word, nothing worse):
    /// `size < PLAIN_SIZE_LIMIT`, `0 < thread < FAST_THREAD_LIMIT`, `align_log2 < 64`.
    #[inline(always)]
    pub(crate) fn new(size: usize, align_log2: u8, thread: u32) -> Self {
        debug_assert!(size < PLAIN_SIZE_LIMIT && thread != 0 && thread < word::THREAD_LIMIT);
        debug_assert!(align_log2 < 64);
        PlainWord(
            u64::from(state::LIVE)
                | (u64::from(align_log2) << word::ALIGN_SHIFT)
                | (u64::from(thread) << word::THREAD_SHIFT)
                | ((size as u64) << word::SIZE_SHIFT),
        )
    }

    /// The same word for a block surrounded by red zones ([`flag::CANARY`]: the checked fast
    /// paths' blocks).
    #[inline(always)]
    pub(crate) fn with_canary(self) -> Self {
        PlainWord(self.0 | (u64::from(flag::CANARY) << word::FLAGS_SHIFT))
    }

    /// The entry the word stands for.
    pub(crate) fn info(self) -> BlockInfo {
        unpack(self.0)
    }

    #[inline(always)]
    fn size(self) -> usize {
        (self.0 >> word::SIZE_SHIFT) as usize
    }
}

/// Figures summed over the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableTotals {
    pub(crate) live_blocks: usize,
    pub(crate) live_bytes: usize,
    pub(crate) internal_blocks: usize,
    pub(crate) internal_bytes: usize,
    pub(crate) table_bytes: usize,
}

/// The outcome of [`BlockTable::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// The block was live; here is what it was. The entry now has the new state (or is gone,
    /// for an internal block).
    Was(BlockInfo),
    /// The block was freed already (double free); here is its entry, unchanged.
    AlreadyFreed(BlockInfo),
    /// No block starts at this address (invalid free).
    Unknown,
}

/// Addresses the direct map covers: below 2^47 (user space on x86-64 and aarch64 with 48-bit
/// addresses), in 8-byte granules.
const ADDRESS_BITS: u32 = 47;
const GRANULE_SHIFT: u32 = 3;
const REGION_SHIFT: u32 = 22;
const REGIONS: usize = 1 << (ADDRESS_BITS - REGION_SHIFT);
const WORDS_PER_REGION: usize = 1 << (REGION_SHIFT - GRANULE_SHIFT);
const REGION_MAP_BYTES: usize = WORDS_PER_REGION * 8;
/// Bytes of words one first-write mark covers (a 4 KiB page; larger pages only mean several
/// marks each, see [`BlockTable::word_to_write`]).
const MARKED_SHIFT: u32 = 12;
/// First-write marks after a region's words: one byte per page of words.
const MARKS_PER_REGION: usize = REGION_MAP_BYTES >> MARKED_SHIFT;
/// A region's mapping: its words, then its marks (a page).
const REGION_MAPPING_BYTES: usize = REGION_MAP_BYTES + 4096;
const _: () = assert!(MARKS_PER_REGION <= 4096);
/// Sizes below this fit a live table word: the default path's blocks.
pub(crate) const PLAIN_SIZE_LIMIT: usize = word::SIZE_LIMIT;
/// Regions remembered in creation order, for walks (beyond this, walks scan the top level).
const LISTED_REGIONS: usize = 1 << 16;

/// Word layouts. Both start with state (2 bits), flags (3), cold (1). A live block's word
/// goes on with align_log2 (6), allocation stack (16), allocating thread (12), size (24); a
/// freed block's with allocation stack (16), free stack (16), freeing thread (12), size (14) —
/// its alignment and allocating thread are not kept (unless in a cold entry). So most sampled
/// blocks, freed with their stack recorded or not, never touch the cold table.
mod word {
    pub(super) const STATE_MASK: u64 = 0b11;
    pub(super) const FLAGS_SHIFT: u32 = 2;
    pub(super) const FLAGS_MASK: u64 = 0b111 << FLAGS_SHIFT;
    pub(super) const COLD: u64 = 1 << 5;
    pub(super) const STACK_LIMIT: u32 = 1 << 16;
    pub(super) const THREAD_LIMIT: u32 = super::FAST_THREAD_LIMIT;
    // Live layout.
    pub(super) const ALIGN_SHIFT: u32 = 6;
    pub(super) const STACK_SHIFT: u32 = 12;
    pub(super) const THREAD_SHIFT: u32 = 28;
    pub(super) const SIZE_SHIFT: u32 = 40;
    pub(super) const SIZE_LIMIT: usize = 1 << 24;
    // Freed layout.
    pub(super) const FREED_STACK_SHIFT: u32 = 6;
    pub(super) const FREE_STACK_SHIFT: u32 = 22;
    pub(super) const FREED_THREAD_SHIFT: u32 = 38;
    pub(super) const FREED_SIZE_SHIFT: u32 = 50;
    pub(super) const FREED_SIZE_LIMIT: usize = 1 << 14;
}

/// `v` if it is below `limit`, else 0 (the field then lives in a cold entry).
fn fit(v: u32, limit: u32) -> u64 {
    if v < limit {
        u64::from(v)
    } else {
        0
    }
}

/// Packs what fits in a word (with the cold bit set if needed); `cold` says whether the rest
/// needs a cold entry. A freed entry's alignment and allocating thread are dropped.
fn pack(info: &BlockInfo) -> (u64, bool) {
    let head = u64::from(info.state) | (u64::from(info.flags & 0b111) << word::FLAGS_SHIFT);
    let (w, cold) = if info.state == state::LIVE {
        let cold = info.alloc_stack >= word::STACK_LIMIT
            || info.free_stack != 0
            || info.alloc_thread >= word::THREAD_LIMIT
            || info.size >= word::SIZE_LIMIT;
        let size = if info.size >= word::SIZE_LIMIT {
            0
        } else {
            info.size as u64
        };
        let w = head
            | (u64::from(info.align_log2 & 63) << word::ALIGN_SHIFT)
            | (fit(info.alloc_stack, word::STACK_LIMIT) << word::STACK_SHIFT)
            | (fit(info.alloc_thread, word::THREAD_LIMIT) << word::THREAD_SHIFT)
            | (size << word::SIZE_SHIFT);
        (w, cold)
    } else {
        let cold = info.alloc_stack >= word::STACK_LIMIT
            || info.free_stack >= word::STACK_LIMIT
            || info.free_thread >= word::THREAD_LIMIT
            || info.size >= word::FREED_SIZE_LIMIT;
        let size = if info.size >= word::FREED_SIZE_LIMIT {
            0
        } else {
            info.size as u64
        };
        let w = head
            | (fit(info.alloc_stack, word::STACK_LIMIT) << word::FREED_STACK_SHIFT)
            | (fit(info.free_stack, word::STACK_LIMIT) << word::FREE_STACK_SHIFT)
            | (fit(info.free_thread, word::THREAD_LIMIT) << word::FREED_THREAD_SHIFT)
            | (size << word::FREED_SIZE_SHIFT);
        (w, cold)
    };
    (w | if cold { word::COLD } else { 0 }, cold)
}

/// What a word says on its own.
fn unpack(w: u64) -> BlockInfo {
    let state = (w & word::STATE_MASK) as u8;
    let flags = ((w & word::FLAGS_MASK) >> word::FLAGS_SHIFT) as u8;
    let field = |shift: u32, limit: u32| ((w >> shift) as u32) & (limit - 1);
    if state == state::LIVE {
        BlockInfo {
            size: (w >> word::SIZE_SHIFT) as usize,
            align_log2: ((w >> word::ALIGN_SHIFT) & 63) as u8,
            state,
            flags,
            alloc_stack: field(word::STACK_SHIFT, word::STACK_LIMIT),
            free_stack: 0,
            alloc_thread: field(word::THREAD_SHIFT, word::THREAD_LIMIT),
            free_thread: 0,
        }
    } else {
        BlockInfo {
            size: (w >> word::FREED_SIZE_SHIFT) as usize,
            align_log2: 0,
            state,
            flags,
            alloc_stack: field(word::FREED_STACK_SHIFT, word::STACK_LIMIT),
            free_stack: field(word::FREE_STACK_SHIFT, word::STACK_LIMIT),
            alloc_thread: 0,
            free_thread: field(word::FREED_THREAD_SHIFT, word::THREAD_LIMIT),
        }
    }
}

/// Whether a direct map can hold `key`.
#[inline]
fn mappable(key: usize) -> bool {
    key != 0 && key & ((1 << GRANULE_SHIFT) - 1) == 0 && (key as u64) < (1u64 << ADDRESS_BITS)
}

/// The first store into a page of words (see [`BlockTable::word_to_write`]): a compare-and-swap
/// that changes nothing but is a write access (an idempotent `fetch_or(0)` may be compiled to a
/// fenced load), then the page's mark.
#[cold]
#[inline(never)]
fn first_write(word: &AtomicU64, mark: &AtomicU8) {
    // Relaxed: only the access matters; the word's value is unchanged whatever the outcome.
    let _ = word.compare_exchange(0, 0, Ordering::Relaxed, Ordering::Relaxed);
    // Relaxed: a hint (see `word_to_write`).
    mark.store(1, Ordering::Relaxed);
}

/// Starts loading the cache line holding `addr` (a hint: never faults, whatever `addr` is).
#[inline]
pub(crate) fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault, even for an unmapped
    // address.
    unsafe {
        core::arch::asm!("prefetcht0 [{}]", in(reg) addr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above (PRFM never faults).
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{}]", in(reg) addr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = addr;
}

// -------------------------------------------------------------------------------------------
// Per-thread figures
// -------------------------------------------------------------------------------------------

#[derive(Default)]
#[repr(align(64))]
struct Counts {
    live_blocks: AtomicUsize,
    live_bytes: AtomicUsize,
    internal_blocks: AtomicUsize,
    internal_bytes: AtomicUsize,
}

impl Counts {
    /// Adds `sign` × (1 block, `size` bytes) to the figures of a live block with `flags`.
    #[inline(always)]
    fn add(&self, shared: bool, flags: u8, size: usize, sign: isize) {
        let (blocks, bytes) = if flags & flag::INTERNAL != 0 {
            (&self.internal_blocks, &self.internal_bytes)
        } else {
            (&self.live_blocks, &self.live_bytes)
        };
        let size = (size as isize).wrapping_mul(sign) as usize;
        let one = sign as usize;
        // Relaxed throughout: statistics. An owned slot has a single writer, so a load and a
        // store are enough; the shared slot needs read-modify-writes.
        if shared {
            blocks.fetch_add(one, Ordering::Relaxed);
            bytes.fetch_add(size, Ordering::Relaxed);
        } else {
            blocks.store(
                blocks.load(Ordering::Relaxed).wrapping_add(one),
                Ordering::Relaxed,
            );
            bytes.store(
                bytes.load(Ordering::Relaxed).wrapping_add(size),
                Ordering::Relaxed,
            );
        }
    }
}

// -------------------------------------------------------------------------------------------
// The table
// -------------------------------------------------------------------------------------------

/// The address -> block table.
pub(crate) struct BlockTable {
    /// `REGIONS` region pointers (each to `WORDS_PER_REGION` words), or null when the top
    /// level could not be mapped (then every entry goes to the cold table).
    top: *mut AtomicPtr<AtomicU64>,
    /// Indexes of created regions, in creation order (`LISTED_REGIONS` entries).
    listed: *mut AtomicUsize,
    /// Regions created (may exceed `LISTED_REGIONS`).
    regions: AtomicUsize,
    cold: ColdTable,
    counts: Box<[Counts; COUNTER_SLOTS]>,
    /// Walks in progress; a free that sees one waits for `walk_lock` before the block's memory
    /// is given back (see [`BlockTable::for_each`]).
    walking: AtomicUsize,
    walk_lock: SpinLock<()>,
}

// SAFETY: the raw pointers are to mappings owned by the table and only reached through atomics.
unsafe impl Send for BlockTable {}
// SAFETY: as above: every shared access goes through atomics or the cold table's locks.
unsafe impl Sync for BlockTable {}

impl BlockTable {
    pub(crate) fn new() -> Self {
        let top = os_memory::map(REGIONS * core::mem::size_of::<usize>());
        let listed = top.and_then(|_| os_memory::map(LISTED_REGIONS * 8));
        let (top, listed) = match (top, listed) {
            (Some(t), Some(l)) => (t.as_ptr().cast(), l.as_ptr().cast()),
            (Some(t), None) => {
                // SAFETY: `t` was just mapped with this length and is not used elsewhere.
                unsafe { os_memory::unmap(t, REGIONS * core::mem::size_of::<usize>()) };
                (null_mut(), null_mut())
            }
            _ => (null_mut(), null_mut()),
        };
        barrier::init();
        BlockTable {
            top,
            listed,
            regions: AtomicUsize::new(0),
            cold: ColdTable::new(),
            counts: Box::new(core::array::from_fn(|_| Counts::default())),
            walking: AtomicUsize::new(0),
            walk_lock: SpinLock::new(()),
        }
    }

    /// Takes the walk lock, then the cold table's, and keeps them (fork's prepare handler,
    /// [`crate::fork`]): the walk lock first, as a walk takes the others while it holds it.
    #[cfg(unix)]
    pub(crate) fn hold_for_fork(&self) {
        self.walk_lock.hold();
        self.cold.hold_for_fork();
    }

    /// Releases the locks [`BlockTable::hold_for_fork`] took.
    ///
    /// # Safety
    /// As for [`ColdTable::release_after_fork`].
    #[cfg(unix)]
    pub(crate) unsafe fn release_after_fork(&self) {
        // SAFETY: the caller's contract: both held through `hold_for_fork`.
        unsafe {
            self.cold.release_after_fork();
            self.walk_lock.release_held();
        }
    }

    /// Whether `key`'s entry lives in the direct map (else in the cold table).
    #[inline]
    fn covers(&self, key: usize) -> bool {
        !self.top.is_null() && mappable(key)
    }

    /// The word for `key` (which [`BlockTable::covers`]), creating its region when `create`.
    #[inline]
    fn word(&self, key: usize, create: bool) -> Option<&AtomicU64> {
        let region = key >> REGION_SHIFT;
        // SAFETY: `region < REGIONS` since `key < 2^47`; `top` holds REGIONS zero-initialised
        // atomics for the table's life.
        let slot = unsafe { &*self.top.add(region) };
        // Acquire: pairs with the Release CAS that published the region.
        let mut words = slot.load(Ordering::Acquire);
        if words.is_null() {
            if !create {
                return None;
            }
            words = self.create_region(slot, region)?;
        }
        let index = (key & ((1 << REGION_SHIFT) - 1)) >> GRANULE_SHIFT;
        // SAFETY: a published region holds WORDS_PER_REGION atomics for the table's life.
        Some(unsafe { &*words.add(index) })
    }

    /// [`BlockTable::word`] for a store that may be the first into its page of words. A page
    /// first read maps the kernel's shared zero page, and the store after it then replaces that
    /// mapping, which flushes the TLB of every CPU the process runs on: an inter-processor
    /// interrupt per page of words in a multithreaded program (`perf`: a third of 50 threads'
    /// time under a quarantine, `ptep_clear_flush`). The insert loads the word before storing
    /// it, so the first access of each page is a locked compare-and-swap instead (a write
    /// fault: a zeroed page, no zero page), marked in the region's first-write marks.
    #[inline]
    fn word_to_write(&self, key: usize) -> Option<&AtomicU64> {
        let word = self.word(key, true)?;
        let index = (key & ((1 << REGION_SHIFT) - 1)) >> GRANULE_SHIFT;
        // SAFETY: the word is one of its region's WORDS_PER_REGION words, which the region's
        // MARKS_PER_REGION mark bytes follow in the same mapping (`create_region`).
        let mark = unsafe {
            let words = (word as *const AtomicU64).sub(index);
            &*words
                .add(WORDS_PER_REGION)
                .cast::<AtomicU8>()
                .add((index * 8) >> MARKED_SHIFT)
        };
        // Relaxed: a hint; a thread that misses another's mark only writes first once more.
        if mark.load(Ordering::Relaxed) == 0 {
            first_write(word, mark);
        }
        Some(word)
    }

    #[cold]
    fn create_region(&self, slot: &AtomicPtr<AtomicU64>, region: usize) -> Option<*mut AtomicU64> {
        // 4 KiB pages, not huge ones, as AddressSanitizer keeps its shadow
        // (`no_huge_pages_for_shadow`): a huge page commits the words of 4 MiB of address space
        // wherever the heap has one block there. Hinted, regions gained ~1-2 ns per pair on
        // the overhead bench's guard-page row, but a python3 workload's peak RSS went from 78
        // to 335 MiB and its time from 1.5 to 1.8-2.1 s (zeroing huge pages). Hinted only under
        // a quarantine (a dense heap reached in random order) they gained ~5 % on that bench's
        // quarantine row and cost everywhere else: a JSON round trip of 300,000 lists in
        // python3 under canary=16,quarantine=16m took 5.2-5.7 s at 500 MB peak RSS instead of
        // 3.8-5.0 s at 322 MB, and 50 threads reallocating under a quarantine peaked at 620-900
        // MB instead of 395 MB, a third of their time zeroing huge pages.
        let mapping = os_memory::map(REGION_MAPPING_BYTES)?;
        let new: *mut AtomicU64 = mapping.as_ptr().cast();
        // AcqRel: publishes the zeroed mapping, or sees the winner's.
        match slot.compare_exchange(null_mut(), new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // Relaxed: the counter only hands out list positions.
                let n = self.regions.fetch_add(1, Ordering::Relaxed);
                if n < LISTED_REGIONS {
                    // SAFETY: `listed` holds LISTED_REGIONS atomics; position n is ours.
                    // Release: pairs with the Acquire in `for_each_region`. The index is
                    // stored plus one so that 0 means "not written yet".
                    unsafe { &*self.listed.add(n) }.store(region + 1, Ordering::Release);
                }
                Some(new)
            }
            Err(winner) => {
                // SAFETY: `new` was mapped above with this length and never published.
                unsafe {
                    os_memory::unmap(NonNull::new_unchecked(new.cast()), REGION_MAPPING_BYTES)
                };
                Some(winner)
            }
        }
    }

    #[inline(always)]
    fn count(&self, flags: u8, size: usize, sign: isize) {
        self.count_at(counter_slot(), flags, size, sign);
    }

    /// Counts a shadow block ([`crate::shadow`]) in or out of the live figures (`sign` 1 or
    /// -1), for the current thread. Only where the default paths are off (an event stream):
    /// elsewhere the figures of shadow blocks come from a walk.
    pub(crate) fn count_shadowed(&self, size: usize, sign: isize) {
        self.count_at(counter_slot(), 0, size, sign);
    }

    /// As `count`, for the current thread's counter `slot` (which the caller read).
    #[inline(always)]
    fn count_at(&self, slot: usize, flags: u8, size: usize, sign: isize) {
        // The mask keeps the index in range without a bounds check (and its panic path) on the
        // default path; slots are below COUNTER_SLOTS already.
        let slot = slot & (COUNTER_SLOTS - 1);
        self.counts[slot].add(slot == 0, flags, size, sign);
    }

    /// The full entry for a word at `key`.
    fn info(&self, key: usize, w: u64) -> BlockInfo {
        let hot = unpack(w);
        if w & word::COLD == 0 {
            return hot;
        }
        match self.cold.get(key) {
            Some(c) => BlockInfo {
                state: hot.state,
                flags: hot.flags,
                ..c
            },
            // Dropped by the cold table to make room (freed entries only).
            None => hot,
        }
    }

    /// Records a newly handed-out block (replacing a stale entry for the same address). Returns
    /// `false` when the table cannot grow (the OS refused memory): the block is then untracked.
    pub(crate) fn insert(&self, key: usize, info: BlockInfo) -> bool {
        if !self.covers(key) {
            return self.cold.insert(key, info);
        }
        let Some(slot) = self.word_to_write(key) else {
            return false;
        };
        let (w, cold) = pack(&info);
        if cold {
            let shadow = BlockInfo {
                flags: info.flags | flag::SHADOW,
                ..info
            };
            if !self.cold.insert(key, shadow) {
                return false;
            }
        }
        // Acquire/Release: the cold entry written above is visible to whoever sees the word.
        // A load and a store suffice: the address was just handed to this thread, so no other
        // thread may legitimately change its word now (a racing bad free only CASes a live
        // word, and this one is not live).
        let old = slot.load(Ordering::Acquire);
        slot.store(w, Ordering::Release);
        if old != 0 {
            if old & word::COLD != 0 && !cold {
                self.cold.remove(key);
            }
            if old & word::STATE_MASK == u64::from(state::LIVE) {
                let o = unpack(old);
                self.count(o.flags, o.size, -1);
            }
        }
        self.count(info.flags, info.size, 1);
        true
    }

    /// Gives the live block at `key`, resized where it is by the calling thread, its new entry
    /// ([`BlockTable::insert`] over the live one), then waits for a walk that may have read the
    /// old entry, so that no walk checks the old size's red zone once the program may write
    /// over it. `false` (the old entry stands) when the table cannot hold the new one.
    pub(crate) fn resize(&self, key: usize, info: BlockInfo) -> bool {
        if !self.insert(key, info) {
            return false;
        }
        self.wait_for_walks_after_store();
        true
    }

    /// Marks the block at `key` freed (`new_state`, with the free stack and thread) if it is
    /// live, removing internal blocks outright.
    pub(crate) fn release(
        &self,
        key: usize,
        new_state: u8,
        free_stack: u32,
        free_thread: u32,
    ) -> Release {
        self.release_with(key, free_thread, |_| new_state, |_| free_stack)
    }

    /// As [`BlockTable::release`], with the new state and the free stack chosen from the
    /// entry (quarantine or not; sampled or not).
    ///
    /// While a walk ([`BlockTable::for_each`]) runs, this waits for it to end before returning
    /// a block that was live, so the walk's callback never sees a block's memory given back.
    ///
    /// `free_stack` gives the free stack to record (0 = none) from the live entry; it is called
    /// at most once, before the word changes, so that the freed word is written once with it
    /// (recording it afterwards took a second compare-and-swap).
    pub(crate) fn release_with(
        &self,
        key: usize,
        free_thread: u32,
        new_state: impl Fn(&BlockInfo) -> u8,
        free_stack: impl FnOnce(&BlockInfo) -> u32,
    ) -> Release {
        let mut free_stack = Some(free_stack);
        let mut stack_of = |info: &BlockInfo, known: &mut Option<u32>| -> u32 {
            *known.get_or_insert_with(|| free_stack.take().map_or(0, |f| f(info)))
        };
        let mut known = None;
        let Some(slot) = self.covers(key).then(|| self.word(key, false)).flatten() else {
            if self.covers(key) {
                return Release::Unknown;
            }
            let released = self.cold.release_with(key, free_thread, new_state);
            if let Release::Was(old) = released {
                let stack = stack_of(&old, &mut known);
                if stack != 0 {
                    self.cold.set_free_stack(key, stack);
                }
            }
            self.wait_for_walks();
            return released;
        };
        // Acquire: see the cold entry of a word with the COLD bit.
        let mut w = slot.load(Ordering::Acquire);
        let (old, next, freed) = loop {
            if w == 0 {
                return Release::Unknown;
            }
            if w & word::STATE_MASK != u64::from(state::LIVE) {
                return Release::AlreadyFreed(self.info(key, w));
            }
            let old = self.info(key, w);
            let next = new_state(&old);
            let freed = BlockInfo {
                state: next,
                free_stack: if old.is_internal() {
                    0
                } else {
                    stack_of(&old, &mut known)
                },
                free_thread,
                ..old
            };
            let (packed, needs_cold) = pack(&freed);
            let new = if old.is_internal() {
                0
            } else {
                // A word that had a cold entry keeps it (updated below); one that did not gets
                // one below if the freed layout cannot hold the entry.
                packed | (w & word::COLD)
            };
            if old.alloc_thread == free_thread
                && free_thread != 0
                && w & word::COLD == 0
                && !needs_cold
                && !old.is_internal()
            {
                // Owner path: the thread that allocated the block frees it. A plain store
                // instead of the compare-and-swap (a locked instruction costs as much as the
                // rest of the free). Who else may write this word meanwhile:
                // - inserts: the address is live, so it is not handed out again before this
                //   free; the block's own allocating thread is this one;
                // - `transition`: freed words only (quarantine eviction);
                // - another thread freeing the same pointer: that is a double free. Its CAS
                //   sees this store (it is caught) unless both frees run at the very same
                //   moment, the other thread's CAS landing between our load above and this
                //   store: a data race between two frees in the program, which only a locked
                //   instruction on every free could settle. Two frees of one block racing on
                //   threads that are both not its allocator are settled by their CASes.
                // Relaxed: nothing but the word itself is published by it (a double free reads
                // its report from the word; the cold entry is not used on this path).
                slot.store(new, Ordering::Relaxed);
                self.count(old.flags, old.size, -1);
                self.wait_for_walks_after_store();
                return Release::Was(old);
            }
            // SeqCst: ordered with the load of `walking` below against a walk's store of it
            // and its load of this word (either the walk sees the block freed, or we see the
            // walk and wait). AcqRel would allow both to miss each other.
            match slot.compare_exchange_weak(w, new, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => break (old, next, freed),
                Err(now) => w = now,
            }
        };
        self.count(old.flags, old.size, -1);
        if w & word::COLD == 0 && !old.is_internal() && pack(&freed).1 {
            let shadow = BlockInfo {
                flags: old.flags | flag::SHADOW,
                ..freed
            };
            // A failed insert leaves the word's own (partial) account; the cold bit then only
            // makes lookups try the cold table and fall back to the word.
            self.cold.insert(key, shadow);
        } else if w & word::COLD != 0 {
            if old.is_internal() {
                self.cold.remove(key);
            } else {
                self.cold.update(key, |c| {
                    c.state = next;
                    c.free_stack = freed.free_stack;
                    c.free_thread = free_thread;
                });
            }
        }
        self.wait_for_walks();
        Release::Was(old)
    }

    /// As [`BlockTable::wait_for_walks`], after a plain store of a freed word (owner path).
    #[inline(always)]
    fn wait_for_walks_after_store(&self) {
        // Before the walk flag is read: the cheap half of an asymmetric barrier whose heavy
        // half every walk runs (see `crate::barrier` and `for_each`).
        barrier::light();
        // Relaxed: ordered after the store by the barrier above.
        if self.walking.load(Ordering::Relaxed) != 0 {
            self.wait_for_walk();
        }
    }

    /// Waits for the running walk to end (rare: walks are leak checks and scans).
    #[cold]
    #[inline(never)]
    fn wait_for_walk(&self) {
        drop(self.walk_lock.lock());
    }

    /// The default path's insert: a plain block (no flags, no stack) of `size` bytes aligned
    /// to `1 << align_log2`, allocated by `thread`. `false` (nothing written) when it needs the
    /// general [`BlockTable::insert`]: a field too large for the word or an address the direct
    /// map does not cover.
    #[inline(always)]
    pub(crate) fn insert_plain(
        &self,
        key: usize,
        size: usize,
        align_log2: u8,
        thread: u32,
    ) -> bool {
        if size >= PLAIN_SIZE_LIMIT || thread == 0 || thread >= word::THREAD_LIMIT {
            return false;
        }
        let w = PlainWord::new(size, align_log2, thread);
        self.insert_owned(key, w, counter_slot())
    }

    /// [`BlockTable::insert_plain`] of a word built beforehand (the default path builds it
    /// before the inner allocation, so that one register, not four, lives across that call),
    /// with the current thread's counter `slot`. `false` (nothing written) for an address the
    /// direct map does not cover.
    #[inline(always)]
    pub(crate) fn insert_owned(&self, key: usize, w: PlainWord, slot: usize) -> bool {
        if !self.covers(key) {
            return false;
        }
        let Some(slot_word) = self.word_to_write(key) else {
            return false;
        };
        // Relaxed: the address was just handed to this thread (see `insert`). The store does
        // not wait for the load: the word is usually far out of cache, and nothing here needs
        // the old value before writing the new one (what a stale word needs is done after).
        let old = slot_word.load(Ordering::Relaxed);
        // Relaxed: the word is all there is to see (no cold entry); another thread learns of
        // the block through the program's own hand-over, which orders this store before it.
        slot_word.store(w.0, Ordering::Relaxed);
        if old & word::COLD != 0 || old & word::STATE_MASK == u64::from(state::LIVE) {
            self.replaced_stale(key, old);
        }
        self.count_at(slot, 0, w.size(), 1);
        true
    }

    /// What `insert` does for the word it replaced, after the default path's blind store: a
    /// cold entry of the old block is dropped, a word still live (a block the inner allocator
    /// handed out twice) leaves the figures.
    #[cold]
    #[inline(never)]
    fn replaced_stale(&self, key: usize, old: u64) {
        if old & word::COLD != 0 {
            self.cold.remove(key);
        }
        if old & word::STATE_MASK == u64::from(state::LIVE) {
            let o = unpack(old);
            self.count(o.flags, o.size, -1);
        }
    }

    /// The default path's free, by the thread that allocated the block: if `addr` is a live,
    /// plain block (no flags, no stack, no cold entry) allocated by `thread`, marks it freed and
    /// returns its size and log2 alignment. `None` (nothing written) in every other case, which
    /// the general [`BlockTable::release_with`] then decides (double and invalid frees among
    /// them). The reasoning for the plain store is in `release_with`'s owner path.
    #[inline(always)]
    pub(crate) fn release_plain(&self, key: usize, thread: u32) -> Option<(usize, u8)> {
        if thread == 0 || thread >= word::THREAD_LIMIT {
            return None;
        }
        self.release_owned(key, thread, counter_slot(), None, 0, 0)
    }

    /// [`BlockTable::release_plain`] for a caller that checked `0 < thread <
    /// FAST_THREAD_LIMIT`, with the current thread's counter `slot`; with `expect` = (size,
    /// log2 alignment), only a block of exactly that layout is released (the layout check
    /// folded into the word's comparison: anything else, a mismatch among them, is `None`).
    ///
    /// `flags` is the block's expected flag set (0, or [`flag::CANARY`] on the checked fast
    /// paths), part of the comparison and kept in the freed word; a block smaller than
    /// `hold_below` bytes and aligned to at most [`crate::quarantine::HELD_ALIGN_LOG2_MAX`]
    /// goes to state `QUARANTINED` (the caller hands it to the quarantine), any other to `FREED`
    /// (0: no quarantine).
    #[inline(always)]
    pub(crate) fn release_owned(
        &self,
        key: usize,
        thread: u32,
        slot: usize,
        expect: Option<(usize, u8)>,
        flags: u8,
        hold_below: usize,
    ) -> Option<(usize, u8)> {
        debug_assert!(thread != 0 && thread < word::THREAD_LIMIT);
        if !self.covers(key) {
            return None;
        }
        let slot_word = self.word(key, false)?;
        // Relaxed: only this thread writes a word it allocated while the block is live (see
        // `release_with`); nothing beyond the word is read.
        let w = slot_word.load(Ordering::Relaxed);
        let stack = u64::from(word::STACK_LIMIT - 1) << word::STACK_SHIFT;
        let owner = u64::from(word::THREAD_LIMIT - 1) << word::THREAD_SHIFT;
        let plain = word::STATE_MASK | word::FLAGS_MASK | word::COLD | stack | owner;
        let mine = u64::from(state::LIVE)
            | (u64::from(flags & 0b111) << word::FLAGS_SHIFT)
            | (u64::from(thread) << word::THREAD_SHIFT);
        // A size that a freed word cannot hold takes the general release (with its cold
        // entry), like any word that is not this thread's live plain block.
        let (mask, want) = match expect {
            Some((size, align_log2)) => {
                if size >= word::FREED_SIZE_LIMIT || align_log2 > 63 {
                    return None;
                }
                (
                    plain | (63 << word::ALIGN_SHIFT) | (!0u64 << word::SIZE_SHIFT),
                    mine | (u64::from(align_log2) << word::ALIGN_SHIFT)
                        | ((size as u64) << word::SIZE_SHIFT),
                )
            }
            None => {
                let too_large = !((word::FREED_SIZE_LIMIT as u64) - 1) << word::SIZE_SHIFT;
                (plain | too_large, mine)
            }
        };
        if w & mask != want {
            return None;
        }
        let size = (w >> word::SIZE_SHIFT) as usize;
        let align_log2 = ((w >> word::ALIGN_SHIFT) & 63) as u8;
        let to = if size < hold_below && align_log2 <= crate::quarantine::HELD_ALIGN_LOG2_MAX {
            state::QUARANTINED
        } else {
            state::FREED
        };
        let freed = u64::from(to)
            | (u64::from(flags & 0b111) << word::FLAGS_SHIFT)
            | (u64::from(thread) << word::FREED_THREAD_SHIFT)
            | ((size as u64) << word::FREED_SIZE_SHIFT);
        // Relaxed: as for `release_with`'s owner path.
        slot_word.store(freed, Ordering::Relaxed);
        self.count_at(slot, 0, size, -1);
        self.wait_for_walks_after_store();
        Some((size, align_log2))
    }

    #[inline]
    fn wait_for_walks(&self) {
        // SeqCst: see `release_with`.
        if self.walking.load(Ordering::SeqCst) != 0 {
            drop(self.walk_lock.lock());
        }
    }

    /// Moves the block at `key` from `from` to `to` state (both freed states: a live word has
    /// another layout); `false` if it was not in `from`.
    ///
    /// The caller must be the one thread that owns the block in state `from` — for
    /// `QUARANTINED`, the thread the quarantine handed the block to (the freeing thread when the
    /// quarantine did not keep it, else the one whose insert evicted it: one `Held` entry, one
    /// thread). That is what lets a word without a cold entry change with a plain load and
    /// store instead of a compare-and-swap. Who else may write a freed word meanwhile:
    /// - inserts: not at this address, whose memory the inner allocator does not have back
    ///   until the owner gives it after this call;
    /// - frees (`release_with`, `release_owned`): they write live words only; a double free
    ///   of this block reads the word and reports;
    /// - other `transition`s: only the owner calls it for this block;
    /// - walks and lookups: they only read (and see one state or the other, both freed).
    ///
    /// A word with a cold entry keeps the compare-and-swap, which orders the state change
    /// with the entry's update.
    pub(crate) fn transition(&self, key: usize, from: u8, to: u8) -> bool {
        debug_assert!(from != state::LIVE && to != state::LIVE);
        let Some(slot) = self.covers(key).then(|| self.word(key, false)).flatten() else {
            return !self.covers(key) && self.cold.transition(key, from, to);
        };
        // Relaxed: the owner reads the word it alone writes (see above); the compare-and-swap
        // below decides for a word with a cold entry.
        let mut w = slot.load(Ordering::Relaxed);
        if w != 0 && w & word::STATE_MASK == u64::from(from) && w & word::COLD == 0 {
            // Relaxed: nothing but the word itself is published (no cold entry). The block's
            // memory goes back to the inner allocator after this store, and whoever inserts at
            // this address next gets the block through the inner allocator's own hand-over,
            // which orders this store before that insert's.
            slot.store((w & !word::STATE_MASK) | u64::from(to), Ordering::Relaxed);
            return true;
        }
        loop {
            if w == 0 || w & word::STATE_MASK != u64::from(from) {
                return false;
            }
            let new = (w & !word::STATE_MASK) | u64::from(to);
            // AcqRel: orders the state change with the cold entry's update below.
            match slot.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    if w & word::COLD != 0 {
                        self.cold.update(key, |c| c.state = to);
                    }
                    return true;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Starts loading the word for `key` into the cache (a hint; never faults).
    pub(crate) fn prefetch(&self, key: usize) {
        if let Some(slot) = self.covers(key).then(|| self.word(key, false)).flatten() {
            prefetch(slot as *const AtomicU64 as usize);
        }
    }

    /// The entry for `key`, if any.
    pub(crate) fn get(&self, key: usize) -> Option<BlockInfo> {
        if !self.covers(key) {
            return self.cold.get(key);
        }
        let slot = self.word(key, false)?;
        // Acquire: see the cold entry of a word with the COLD bit.
        let w = slot.load(Ordering::Acquire);
        (w != 0).then(|| self.info(key, w))
    }

    /// Calls `f(address, info)` for every entry. Frees of live blocks wait until the walk
    /// ends, so a block seen live here cannot be given back until `f` returns for good. `f`
    /// must neither allocate through the tracker nor free.
    pub(crate) fn for_each(&self, f: &mut dyn FnMut(usize, &BlockInfo)) {
        let _walk = self.walk_lock.lock();
        // SeqCst: see `release_with`.
        self.walking.fetch_add(1, Ordering::SeqCst);
        // Owner-path frees store without a barrier of their own: make every thread's stores
        // visible before the words are read (see `crate::barrier`).
        barrier::heavy();
        self.for_each_region(&mut |region, words| {
            // Only the pages of words ever written can hold a word.
            os_memory::for_each_touched(words, &mut |first, part| {
                for (i, w) in part.iter().enumerate() {
                    // SeqCst: see `release_with` (a plain load on the usual targets).
                    let w = w.load(Ordering::SeqCst);
                    if w != 0 {
                        let key = (region << REGION_SHIFT) | ((first + i) << GRANULE_SHIFT);
                        f(key, &self.info(key, w));
                    }
                }
            });
        });
        self.cold.for_each(&mut |key, info| {
            if info.flags & flag::SHADOW == 0 {
                f(key, info);
            }
        });
        // Relaxed: the lock's release orders what follows.
        self.walking.fetch_sub(1, Ordering::Relaxed);
    }

    fn for_each_region(&self, f: &mut dyn FnMut(usize, &[AtomicU64])) {
        if self.top.is_null() {
            return;
        }
        let visit = |region: usize, f: &mut dyn FnMut(usize, &[AtomicU64])| {
            // SAFETY: region < REGIONS; see `word`.
            let slot = unsafe { &*self.top.add(region) };
            // Acquire: see `word`.
            let words = slot.load(Ordering::Acquire);
            if !words.is_null() {
                // SAFETY: a published region holds WORDS_PER_REGION atomics.
                f(region, unsafe {
                    core::slice::from_raw_parts(words, WORDS_PER_REGION)
                });
            }
        };
        // Relaxed: a region published after this load is not needed by this walk.
        let n = self.regions.load(Ordering::Relaxed);
        if n > LISTED_REGIONS {
            for region in 0..REGIONS {
                visit(region, f);
            }
            return;
        }
        for i in 0..n {
            // SAFETY: i < LISTED_REGIONS atomics in `listed`.
            // Acquire: pairs with the Release store in `create_region`.
            let r = unsafe { &*self.listed.add(i) }.load(Ordering::Acquire);
            if r != 0 {
                visit(r - 1, f);
            }
        }
    }

    /// The live program block that contains `addr` (a slow scan, for describing bad frees).
    pub(crate) fn find_containing(&self, addr: usize) -> Option<(usize, BlockInfo)> {
        let mut hit = None;
        self.for_each(&mut |key, info| {
            if info.state == state::LIVE
                && !info.is_internal()
                && addr >= key
                && addr < key + info.size.max(1)
            {
                hit = Some((key, *info));
            }
        });
        hit
    }

    /// Totals over the table.
    pub(crate) fn totals(&self) -> TableTotals {
        let mut t = self.cold.totals();
        for c in self.counts.iter() {
            // Relaxed: statistics.
            t.live_blocks = t
                .live_blocks
                .wrapping_add(c.live_blocks.load(Ordering::Relaxed));
            t.live_bytes = t
                .live_bytes
                .wrapping_add(c.live_bytes.load(Ordering::Relaxed));
            t.internal_blocks = t
                .internal_blocks
                .wrapping_add(c.internal_blocks.load(Ordering::Relaxed));
            t.internal_bytes = t
                .internal_bytes
                .wrapping_add(c.internal_bytes.load(Ordering::Relaxed));
        }
        // Relaxed: statistics.
        let regions = self.regions.load(Ordering::Relaxed);
        t.table_bytes += regions * REGION_MAPPING_BYTES;
        t
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        if self.top.is_null() {
            return;
        }
        self.for_each_region(&mut |region, _| {
            // SAFETY: region < REGIONS; `&mut self` means nobody else uses the table.
            let slot = unsafe { &*self.top.add(region) };
            let words = slot.swap(null_mut(), Ordering::Relaxed);
            if let Some(p) = NonNull::new(words) {
                // SAFETY: the region was mapped with this length and is no longer reachable.
                unsafe { os_memory::unmap(p.cast(), REGION_MAPPING_BYTES) };
            }
        });
        // SAFETY: both were mapped in `new` with these lengths and are no longer used.
        unsafe {
            os_memory::unmap(
                NonNull::new_unchecked(self.top.cast()),
                REGIONS * core::mem::size_of::<usize>(),
            );
            os_memory::unmap(
                NonNull::new_unchecked(self.listed.cast()),
                LISTED_REGIONS * 8,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(size: usize) -> BlockInfo {
        BlockInfo {
            size,
            align_log2: 3,
            state: state::LIVE,
            alloc_thread: 5,
            ..Default::default()
        }
    }

    fn sampled(size: usize, alloc_stack: u32) -> BlockInfo {
        BlockInfo {
            alloc_stack,
            ..live(size)
        }
    }

    /// Minor page faults of the calling thread so far.
    #[cfg(target_os = "linux")]
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage writes one rusage through a valid pointer.
        unsafe {
            let mut usage: libc::rusage = core::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// The first insert into each page of words faults once, as a write: it used to read the
    /// word first (mapping the zero page, a fault) and then store it (replacing that mapping:
    /// a second fault and a TLB flush on every CPU of a multithreaded process).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_first_insert_into_a_page_of_words_faults_once() {
        let t = BlockTable::new();
        // 4 KiB of heap addresses per page of words: each key in a page of its own, and the
        // region created by the first (its mapping and marks) before counting.
        let base = 0x7000_0000_0000usize;
        assert!(t.insert(base, live(16)));
        let pages = 200;
        for (general, offset) in [(true, 0), (false, pages)] {
            let before = thread_minor_faults();
            for i in 1..=pages {
                let key = base + (offset + i) * 4096;
                if general {
                    assert!(t.insert(key, live(16)));
                } else {
                    assert!(t.insert_plain(key, 16, 3, 5));
                }
            }
            let faults = thread_minor_faults() - before;
            assert!(
                faults <= pages as i64 + 8,
                "{faults} faults for {pages} fresh pages of words (general insert: {general})"
            );
        }
        for i in 1..=2 * pages {
            assert_eq!(t.get(base + i * 4096).map(|b| b.size), Some(16));
        }
    }

    #[test]
    fn free_then_free_again_is_told_apart_from_unknown() {
        let t = BlockTable::new();
        assert!(t.insert(0x1000, live(16)));
        assert_eq!(
            t.release(0x1000, state::FREED, 7, 1),
            Release::Was(live(16))
        );
        match t.release(0x1000, state::FREED, 0, 1) {
            Release::AlreadyFreed(info) => {
                assert_eq!(info.free_stack, 7);
                assert_eq!(info.free_thread, 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.release(0x2000, state::FREED, 0, 1), Release::Unknown);
        assert_eq!(t.release(0x1008, state::FREED, 0, 1), Release::Unknown);
        assert_eq!(t.find_containing(0x1008), None);
        assert!(t.insert(0x1000, live(32)));
        assert_eq!(t.find_containing(0x1008).map(|(k, _)| k), Some(0x1000));
        assert_eq!(t.totals().live_bytes, 32);
        assert_eq!(t.get(0x1000).map(|i| i.free_stack), Some(0));
    }

    #[test]
    fn entries_that_do_not_fit_a_word_keep_every_field() {
        let t = BlockTable::new();
        let big = BlockInfo {
            size: 1 << 41,
            alloc_stack: 70_000,
            alloc_thread: 70_000,
            ..live(0)
        };
        let odd = BlockInfo {
            flags: flag::GUARDED,
            ..live(13)
        };
        assert!(t.insert(0x4000, big));
        assert!(t.insert(0x5003, odd));
        assert_eq!(t.get(0x4000), Some(big));
        assert_eq!(t.get(0x5003), Some(odd));
        let mut seen = Vec::new();
        t.for_each(&mut |k, i| seen.push((k, *i)));
        seen.sort_by_key(|e| e.0);
        assert_eq!(seen, vec![(0x4000, big), (0x5003, odd)]);
        assert_eq!(t.totals().live_blocks, 2);
        assert_eq!(t.totals().live_bytes, (1 << 41) + 13);
        assert!(matches!(
            t.release(0x4000, state::QUARANTINED, 0, 3),
            Release::Was(i) if i == big
        ));
        assert!(t.transition(0x4000, state::QUARANTINED, state::FREED));
        assert!(!t.transition(0x4000, state::QUARANTINED, state::FREED));
        let freed = t.get(0x4000).unwrap();
        assert_eq!(
            (freed.state, freed.alloc_stack, freed.free_thread),
            (state::FREED, 70_000, 3)
        );
        // Handing the address out again as a plain block drops the stale cold entry.
        assert!(t.insert(0x4000, live(8)));
        assert_eq!(t.get(0x4000), Some(live(8)));
        assert_eq!(t.totals().live_blocks, 2);
    }

    #[test]
    fn a_quarantined_word_without_a_cold_entry_leaves_the_quarantine_once() {
        let t = BlockTable::new();
        let sampled = sampled(40, 12);
        assert!(t.insert(0x6000, sampled));
        assert!(matches!(
            t.release(0x6000, state::QUARANTINED, 34, 5),
            Release::Was(i) if i == sampled
        ));
        // A double free while quarantined is told apart and changes nothing.
        assert!(matches!(
            t.release(0x6000, state::FREED, 0, 6),
            Release::AlreadyFreed(i) if i.state == state::QUARANTINED
        ));
        assert!(!t.transition(0x6000, state::FREED, state::QUARANTINED));
        assert!(t.transition(0x6000, state::QUARANTINED, state::FREED));
        assert!(!t.transition(0x6000, state::QUARANTINED, state::FREED));
        let freed = t.get(0x6000).unwrap();
        assert_eq!(
            (
                freed.state,
                freed.size,
                freed.alloc_stack,
                freed.free_stack,
                freed.free_thread
            ),
            (state::FREED, 40, 12, 34, 5)
        );
        // Unknown addresses: nothing to move.
        assert!(!t.transition(0x6008, state::QUARANTINED, state::FREED));
        assert!(!t.transition(0x7_0000_0000, state::QUARANTINED, state::FREED));
        assert_eq!(t.totals().live_blocks, 0);
    }

    /// Keys at `base + 16 i`: 8-aligned bases go to the direct map, odd ones to the cold table
    /// (which grows through this many entries).
    fn many_blocks_survive_deletion(base: usize) {
        let t = BlockTable::new();
        let n = 200_000usize;
        for i in 0..n {
            let mut info = live(i % 100 + 1);
            if i % 3 == 0 {
                info.flags = flag::INTERNAL;
            }
            assert!(t.insert(base + i * 16, info));
        }
        for i in (0..n).step_by(2) {
            assert!(matches!(
                t.release(base + i * 16, state::FREED, 0, 0),
                Release::Was(_)
            ));
        }
        for i in 0..n {
            let got = t.get(base + i * 16);
            if i % 2 == 1 {
                assert_eq!(got.map(|g| g.state), Some(state::LIVE), "block {i}");
            } else if i % 3 == 0 {
                assert_eq!(got, None, "internal block {i} is removed");
            } else {
                assert_eq!(got.map(|g| g.state), Some(state::FREED), "block {i}");
            }
        }
        let totals = t.totals();
        let live_user = (0..n).filter(|i| i % 2 == 1 && i % 3 != 0).count();
        assert_eq!(totals.live_blocks, live_user);
    }

    #[test]
    fn many_blocks_survive_deletion_in_the_direct_map() {
        many_blocks_survive_deletion(0x10_0000);
    }

    #[test]
    fn many_blocks_survive_growth_and_deletion_in_the_cold_table() {
        many_blocks_survive_deletion(0x10_0001);
    }

    #[test]
    fn freed_words_keep_both_stacks_and_large_freed_blocks_go_cold() {
        let t = BlockTable::new();
        let sampled = sampled(40, 12);
        assert!(t.insert(0x8000, sampled));
        assert_eq!(
            t.release(0x8000, state::FREED, 34, 6),
            Release::Was(sampled)
        );
        let freed = t.get(0x8000).unwrap();
        assert_eq!(
            (
                freed.size,
                freed.alloc_stack,
                freed.free_stack,
                freed.free_thread
            ),
            (40, 12, 34, 6)
        );
        // 1 MiB fits a live word but not a freed one: the freed entry keeps it in the cold table.
        let large = BlockInfo {
            alloc_stack: 5,
            ..live(1 << 20)
        };
        assert!(t.insert(0x9000, large));
        assert_eq!(
            t.release(0x9000, state::FREED, 77_000, 6),
            Release::Was(large)
        );
        match t.release(0x9000, state::FREED, 0, 7) {
            Release::AlreadyFreed(info) => assert_eq!(
                (
                    info.size,
                    info.alloc_stack,
                    info.free_stack,
                    info.alloc_thread
                ),
                (1 << 20, 5, 77_000, 5)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.totals().live_blocks, 0);
    }

    #[test]
    fn owner_and_remote_frees_of_heap_blocks_catch_every_second_free() {
        let t = BlockTable::new();
        let blocks: Vec<usize> = (0..200)
            .map(|i| allocscope_core::heap::alloc(16 + (i % 40) * 8, 8) as usize)
            .collect();
        for &p in &blocks {
            assert!(t.insert(p, live(8)));
        }
        // An address inside a live block is no block: invalid, and the block stays live.
        assert_eq!(
            t.release(blocks[0] + 8, state::FREED, 0, 5),
            Release::Unknown
        );
        // The allocating thread (5) frees on the owner path, another (9) on the CAS path;
        // either way a second free is told apart.
        assert!(matches!(
            t.release(blocks[0], state::FREED, 0, 5),
            Release::Was(_)
        ));
        assert!(matches!(
            t.release(blocks[1], state::FREED, 0, 9),
            Release::Was(_)
        ));
        for (p, tid) in [
            (blocks[0], 9),
            (blocks[0], 5),
            (blocks[1], 5),
            (blocks[1], 9),
        ] {
            assert!(matches!(
                t.release(p, state::FREED, 0, tid),
                Release::AlreadyFreed(_)
            ));
        }
        let mut seen = Vec::new();
        t.for_each(&mut |k, i| {
            if i.state == state::LIVE {
                seen.push(k);
            }
        });
        seen.sort_unstable();
        let mut want = blocks[2..].to_vec();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert_eq!(
            t.find_containing(blocks[3] + 4).map(|b| b.0),
            Some(blocks[3])
        );
        assert_eq!(t.totals().live_blocks, blocks.len() - 2);
        for p in blocks {
            // SAFETY: allocated above from the core heap, freed once.
            unsafe { allocscope_core::heap::free(p as *mut u8) };
        }
    }

    #[test]
    fn the_default_paths_insert_over_stale_words_keeps_entries_and_figures_right() {
        let t = BlockTable::new();
        // A large block freed with a stack: its freed word needs a cold entry.
        let large = BlockInfo {
            alloc_stack: 9,
            ..live(1 << 20)
        };
        assert!(t.insert(0x7000, large));
        assert!(matches!(
            t.release(0x7000, state::FREED, 80_000, 5),
            Release::Was(_)
        ));
        // The address comes back as a small plain block through the short insert.
        assert!(t.insert_plain(0x7000, 24, 3, 5));
        assert_eq!(t.get(0x7000), Some(live(24)));
        assert_eq!(t.release_plain(0x7000, 5), Some((24, 3)));
        assert!(matches!(
            t.release(0x7000, state::FREED, 0, 5),
            Release::AlreadyFreed(i) if i.size == 24 && i.free_stack == 0
        ));
        // A word still live (an address handed out twice) leaves the figures once.
        assert!(t.insert_plain(0x7100, 16, 3, 5));
        assert!(t.insert_plain(0x7100, 40, 3, 5));
        let totals = t.totals();
        assert_eq!((totals.live_blocks, totals.live_bytes), (1, 40));
        let mut seen = Vec::new();
        t.for_each(&mut |k, i| seen.push((k, i.state, i.size)));
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![(0x7000, state::FREED, 24), (0x7100, state::LIVE, 40)]
        );
    }

    #[test]
    fn racing_frees_of_one_block_have_one_winner() {
        let t = std::sync::Arc::new(BlockTable::new());
        for round in 0..500usize {
            let key = 0x2000_0000 + round * 64;
            assert!(t.insert(key, live(8)));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || {
                        matches!(t.release(key, state::FREED, 0, 0), Release::Was(_))
                    })
                })
                .collect();
            let winners = threads
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|w| *w)
                .count();
            assert_eq!(winners, 1, "round {round}");
        }
        assert_eq!(t.totals().live_blocks, 0);
    }

    #[test]
    fn concurrent_inserts_and_releases_balance() {
        let t = std::sync::Arc::new(BlockTable::new());
        let threads: Vec<_> = (0..4)
            .map(|tid| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for round in 0..20_000usize {
                        let key = 0x1000_0000 + (tid * 1_000_000 + round) * 32;
                        assert!(t.insert(key, live(8)));
                        assert!(matches!(
                            t.release(key, state::FREED, 0, 0),
                            Release::Was(_)
                        ));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.totals().live_blocks, 0);
    }
}

//! A page: a run of equal-sized blocks carved from a segment, with three free lists.
//!
//! ```text
//! free         blocks ready for allocation            owner only, popped by the fast path
//! local_free   blocks the owner freed                 owner only, pushed by the fast path
//! thread_free  blocks other threads freed             atomic: CAS push by anyone, taken
//!                                                     whole by the owner with one RMW
//! ```
//!
//! A remote freer pushes a chain of one or more blocks of the page with one CAS and then adds
//! the chain's length to `remote_count`; the owner takes the list with one CAS and the count
//! with one swap, and never walks the list. Walking it was what a producer/consumer pair paid
//! most for: the list's link words were written by the other core, so the walk was a chain of
//! dependent cross-core misses (37 % of the producing thread's time, `perf` over the C
//! harness's prodcons with the two threads on two cores).
//!
//! Keeping the owner's frees apart from `free` makes the point where lists are merged
//! ([`Page::collect`], in the slow path) the only place that learns about remote frees, and lets
//! `free_is_zero` describe exactly the blocks of `free` (calloc skips the memset for those).
//!
//! Invariant: `used == blocks handed out - owner frees - remote frees counted so far`, where
//! a remote free is counted when the owner takes `remote_count`. A freer adds to
//! `remote_count` only after its push, so `counted <= pushed` and `used` never drops below the
//! blocks really in use: `used == 0` means every block is free *and* every remote freer is done
//! with the page (the add is its last access), so the page may be given back. The other way,
//! `used` may run ahead of the truth: blocks taken off the list before their count arrived and
//! handed out again are counted twice until the owner takes the count (so `used` may briefly
//! exceed `reserved`; statistics read a snapshot).
//!
//! `thread_free` also carries a two-bit state in its low bits (blocks are 8-aligned), the
//! "delayed free" protocol that tells remote freers whether the owner can see this page:
//! * `NO_DELAYED`: the page is in a class queue; a remote free is one CAS push here;
//! * `USE_DELAYED`: the page is full and parked in the heap's full list where the owner does not
//!   look; the first remote freer instead pushes the block onto the heap's `delayed` list (the
//!   owner checks that list in every slow path) and flips the state back to `NO_DELAYED`;
//! * `DELAYED_FREEING`: a remote freer is between those two steps; the owner waits it out before
//!   changing the state.
//!
//! May touch: [`crate::sync`], [`crate::os`] (via the segment), nothing else.

use core::ptr::{self, null_mut};

use crate::sync::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

/// A free block: its first word links to the next free block.
///
/// The link word is plain memory, written by one thread and read by another only across the
/// Release/Acquire pairs of `thread_free` and the delayed list. Under `cfg(loom)` it is one of
/// loom's cells and this module reaches it through [`Block::next_of`] / [`Block::set_next`], so
/// the models below also check that every read of a link word happens after its write.
#[repr(C)]
pub(crate) struct Block {
    #[cfg(not(loom))]
    pub next: *mut Block,
    #[cfg(loom)]
    next: loom::cell::UnsafeCell<*mut Block>,
}

impl Block {
    /// The link word of `block` (only the models read link words in this module: the owner
    /// takes remote lists without walking them).
    ///
    /// # Safety
    /// `block` is a free block the caller may read (owned, or published to it).
    #[cfg(loom)]
    #[inline(always)]
    pub(crate) unsafe fn next_of(block: *mut Block) -> *mut Block {
        // SAFETY: forwarded.
        #[cfg(not(loom))]
        unsafe {
            (*block).next
        }
        // SAFETY: forwarded; loom checks the access against the last write.
        #[cfg(loom)]
        unsafe {
            (*block).next.with(|p| *p)
        }
    }

    /// Sets the link word of `block`.
    ///
    /// # Safety
    /// `block` is a free block the caller owns and has not published yet.
    #[inline(always)]
    pub(crate) unsafe fn set_next(block: *mut Block, next: *mut Block) {
        // SAFETY: forwarded.
        #[cfg(not(loom))]
        unsafe {
            (*block).next = next
        }
        // SAFETY: forwarded; loom checks the access against other threads' accesses.
        #[cfg(loom)]
        unsafe {
            (*block).next.with_mut(|p| *p = next)
        }
    }
}

pub(crate) const NO_DELAYED: usize = 0;
pub(crate) const USE_DELAYED: usize = 1;
pub(crate) const DELAYED_FREEING: usize = 2;
pub(crate) const STATE_MASK: usize = 3;

/// Page flags (owner writes, relaxed; remote freers read `HAS_ALIGNED`).
pub(crate) const FLAG_IN_FULL: u8 = 1;
pub(crate) const FLAG_HAS_ALIGNED: u8 = 2;

/// Starts a new cache line inside a `#[repr(C)]` struct (a zero-sized field aligned to 64).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct LineBreak;

/// One page of a segment. Owner-only fields are plain; fields other threads read (statistics,
/// page walk, remote frees) are atomics the owner updates with relaxed load + store (never an
/// atomic read-modify-write: the fast path stays free of them).
///
/// Two cache lines, split by who writes them: the first holds what the owner's fast paths
/// read and write on every allocation and free; the second what a remote free touches — the
/// list it pushes onto, the delayed list, and the copy of [`FLAG_HAS_ALIGNED`] it needs to find
/// a block's start — plus the page's geometry, read on slow paths only. With one line, every
/// remote free invalidated the line the owner was allocating from, and every owner allocation
/// the line the remote freer read: in a producer/consumer pair working on the same page each
/// operation paid a cross-core miss (the workload ran at 15–35 or at 75–220 ns per pair
/// depending on whether the two threads happened to share pages).
#[repr(C)]
pub(crate) struct Page {
    // ---- owner line ----
    /// Blocks ready for allocation. Owner only.
    pub free: *mut Block,
    /// Blocks in use, remote frees not yet collected included. Owner writes (load + store).
    pub used: AtomicU32,
    /// `FLAG_*` bits; the free fast path takes the local path only when zero.
    pub flags: AtomicU8,
    /// Size class of the blocks, valid while `in_use`.
    pub class: AtomicU8,
    /// 1 while the page belongs to a class (allocated from its segment). Read by walkers.
    pub in_use: AtomicU8,
    /// Whether the page's memory is committed (else it reads as zero once touched).
    pub committed: AtomicU8,
    /// Blocks owner-freed since the last collect. Owner only.
    pub local_free: *mut Block,
    /// Blocks whose memory has been linked into a free list so far (lazy extension).
    pub capacity: u32,
    /// Whether every block of `free` is zero but for its link word.
    pub free_is_zero: bool,
    /// Whether the page's never-used blocks read as zero (fresh or decommitted memory).
    pub is_zero_init: bool,
    /// Neighbours in the heap's class queue or full list. Owner only.
    pub next: *mut Page,
    pub prev: *mut Page,
    /// While the page is free in its segment: when it was freed (milliseconds, for the purge
    /// delay). While in use: when a purge pass first saw it empty (0 = not seen empty).
    pub freed_at: u64,
    // ---- remote line ----
    /// Where the remote line starts.
    pub line: LineBreak,
    /// Remote frees, with the delayed-free state in the low two bits of the pointer (tagged
    /// with `map_addr`, so provenance is kept: miri's strict-provenance mode checks it).
    pub thread_free: AtomicPtr<Block>,
    /// The delayed-free list of the heap that owns the page (remote freers push there while
    /// the page is parked full). Heaps are never freed, so the pointer stays valid.
    pub delayed: AtomicPtr<DelayedList>,
    /// Blocks pushed on `thread_free` and not yet subtracted from `used`: a freer adds its
    /// chain's length after the push, the owner takes the whole count with one swap.
    pub remote_count: AtomicU32,
    /// 1 once an aligned (interior-start) block was handed out of the page: remote freers read
    /// this rather than `flags`, which sits on the owner's line.
    pub remote_aligned: AtomicU8,
    /// Blocks the page can hold.
    pub reserved: AtomicU32,
    /// Block size in bytes (a copy of the class's size, or the large block's size).
    pub block_size: AtomicUsize,
    /// First byte of the page's block area.
    pub start: *mut u8,
}

impl Page {
    /// A page with nothing: the sentinel every empty heap slot points at, so the fast path
    /// needs no null check (its `free` is null: any allocation from it takes the slow path).
    #[cfg(not(loom))]
    #[allow(clippy::declare_interior_mutable_const)] // only ever copied into the one static
    pub const EMPTY: Page = Page {
        free: null_mut(),
        used: AtomicU32::new(0),
        flags: AtomicU8::new(0),
        class: AtomicU8::new(0),
        in_use: AtomicU8::new(0),
        committed: AtomicU8::new(0),
        local_free: null_mut(),
        thread_free: AtomicPtr::new(null_mut()),
        remote_count: AtomicU32::new(0),
        delayed: AtomicPtr::new(null_mut()),
        block_size: AtomicUsize::new(0),
        reserved: AtomicU32::new(0),
        capacity: 0,
        free_is_zero: false,
        is_zero_init: false,
        start: null_mut(),
        next: null_mut(),
        prev: null_mut(),
        freed_at: 0,
        line: LineBreak,
        remote_aligned: AtomicU8::new(0),
    };

    /// Owner-side relaxed increment (load + store: not an RMW, nobody else writes `used`).
    #[inline(always)]
    pub fn used_add(&self, n: u32) {
        // Relaxed: only the owner writes; readers (statistics) tolerate stale values.
        self.used.store(
            self.used.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Owner-side relaxed decrement; returns the new value.
    #[inline(always)]
    pub fn used_sub(&self, n: u32) -> u32 {
        // Relaxed: as for `used_add`.
        let v = self.used.load(Ordering::Relaxed).wrapping_sub(n);
        self.used.store(v, Ordering::Relaxed);
        v
    }

    /// Prepares an unused page for blocks of `class` (`block_size` bytes) in `area_size` bytes
    /// starting at `start`, owned by `heap`.
    ///
    /// # Safety
    /// The page is not in use by anyone; `start..start+area_size` is committed memory of the
    /// page's segment.
    pub unsafe fn init(
        &mut self,
        delayed: *mut DelayedList,
        class: usize,
        block_size: usize,
        start: *mut u8,
        area_size: usize,
        is_zero: bool,
    ) {
        self.free = null_mut();
        self.local_free = null_mut();
        self.capacity = 0;
        self.start = start;
        self.next = null_mut();
        self.prev = null_mut();
        self.free_is_zero = false;
        self.is_zero_init = is_zero;
        self.freed_at = 0;
        // Relaxed stores: the page is unpublished (no block exists yet); the heap pointer and
        // the flags reach remote freers through the program's own hand-off of a block.
        self.used.store(0, Ordering::Relaxed);
        self.flags.store(0, Ordering::Relaxed);
        self.remote_aligned.store(0, Ordering::Relaxed);
        self.class.store(class as u8, Ordering::Relaxed);
        self.block_size.store(block_size, Ordering::Relaxed);
        self.reserved
            .store((area_size / block_size) as u32, Ordering::Relaxed);
        self.thread_free
            .store(tagged(null_mut(), NO_DELAYED), Ordering::Relaxed);
        // Relaxed: the page was given back with `used == 0`, so every remote freer had added
        // its count (and that add was its last access to the page, see the invariant above).
        self.remote_count.store(0, Ordering::Relaxed);
        self.delayed.store(delayed, Ordering::Relaxed);
        self.in_use.store(1, Ordering::Relaxed);
    }

    /// Links up to `max_bytes` worth of never-used blocks into `free` (which must be empty).
    /// Extending lazily keeps a fresh page's untouched memory untouched (RSS and cache).
    ///
    /// # Safety
    /// Owner only; the page is initialised and `free` is empty.
    #[inline(never)]
    pub unsafe fn extend(&mut self, max_bytes: usize) {
        debug_assert!(self.free.is_null());
        let reserved = self.reserved.load(Ordering::Relaxed);
        if self.capacity >= reserved {
            return;
        }
        // `max(1)`: never 0 for a page in use; it only spares the division its panic branch.
        let size = self.block_size.load(Ordering::Relaxed).max(1);
        let wanted = (max_bytes / size).max(1) as u32;
        let count = wanted.min(reserved - self.capacity) as usize;
        // SAFETY: blocks capacity..capacity+count lie inside the page area (count is bounded
        // by `reserved`, computed from the area size at init).
        unsafe {
            let first = self.start.add(self.capacity as usize * size);
            let mut block = first;
            for _ in 1..count {
                let next = block.add(size);
                Block::set_next(block.cast(), next.cast());
                block = next;
            }
            Block::set_next(block.cast(), null_mut());
            self.free = first.cast();
        }
        self.capacity += count as u32;
        self.free_is_zero = self.is_zero_init;
    }

    /// Refills `free` (called when it ran dry) from the owner's frees and the remote frees,
    /// without walking either list: the owner's frees become `free` and the remote list takes
    /// their place in `local_free` (the next collect hands it out), or the remote list becomes
    /// `free` when the owner freed nothing. Returns `true` when `free` is non-empty afterwards.
    ///
    /// # Safety
    /// Owner only; the page is initialised and `free` is empty.
    pub unsafe fn collect(&mut self) -> bool {
        debug_assert!(self.free.is_null());
        // SAFETY: forwarded precondition (owner).
        let remote = unsafe { self.take_remote() };
        if self.local_free.is_null() {
            self.free = remote;
        } else {
            self.free = self.local_free;
            self.local_free = remote;
        }
        self.free_is_zero = false;
        !self.free.is_null()
    }

    /// Takes the whole remote list with one CAS (repeated only if a push raced in; the state
    /// bits stay) and subtracts the remote count from `used` (see [`Page::take_remote_count`]).
    /// Returns the list, which the caller now owns; it is not walked.
    ///
    /// # Safety
    /// Owner only.
    pub unsafe fn take_remote(&mut self) -> *mut Block {
        // Cheap check first: most pages have no remote frees. Relaxed: a stale empty list only
        // means the blocks are taken at the next collect.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        let mut head = null_mut();
        if !untagged(old).is_null() {
            // Acquire: pairs with the Release of the pushes, so the link words written by
            // remote freers are visible before anyone walks them. No ABA: blocks are only
            // ever pushed by others and taken all at once by us; nobody pops a single block.
            head = loop {
                let keep = tagged(null_mut(), state_of(old));
                match self.thread_free.compare_exchange_weak(
                    old,
                    keep,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break untagged(old),
                    Err(seen) => old = seen,
                }
            };
        }
        // SAFETY: forwarded precondition (owner).
        unsafe { self.take_remote_count() };
        head
    }

    /// Subtracts the remote frees counted so far from `used`, leaving their blocks where they
    /// are (a purge pass only needs to know whether the page is empty). Returns the count.
    ///
    /// # Safety
    /// Owner only.
    pub unsafe fn take_remote_count(&mut self) -> u32 {
        // Relaxed pre-check: a count arriving just after is taken next time (until then `used`
        // only overstates the page's use, which is the safe side).
        if self.remote_count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // Acquire: pairs with the freers' Release add, so everything a freer did to the page
        // (its push, its writes to the blocks) happens before whatever we do once `used`
        // says the page is empty — give it back, reuse its memory for another class.
        let n = self.remote_count.swap(0, Ordering::Acquire);
        self.used_sub(n);
        n
    }

    /// Pushes `block` on the remote list: [`Page::free_remote_chain`] of one block.
    ///
    /// # Safety
    /// `block` is a live block of this page, freed by a thread that does not own the page.
    #[inline]
    pub unsafe fn free_remote(&self, block: *mut Block) {
        // SAFETY: forwarded; a single block is a chain from itself to itself.
        unsafe { self.free_remote_chain(block, block, 1) }
    }

    /// Pushes the chain `head ..= tail` of `count` blocks (linked through their link words,
    /// `tail`'s link free to overwrite) on the remote list with one CAS in the common case,
    /// then adds `count` to `remote_count`. When the page is parked full (`USE_DELAYED`), the
    /// chain goes to the owning heap's delayed list instead, which counts its blocks one by
    /// one as it frees them.
    ///
    /// # Safety
    /// The chain holds `count` distinct live blocks of this page, linked from `head` to
    /// `tail`, freed by a thread that does not own the page.
    pub unsafe fn free_remote_chain(&self, head: *mut Block, tail: *mut Block, count: u32) {
        // Relaxed: the CAS below validates it.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        loop {
            let state = state_of(old);
            let new = if state == USE_DELAYED {
                tagged(untagged(old), DELAYED_FREEING)
            } else {
                // SAFETY: the chain is ours to write until the CAS publishes it.
                unsafe { Block::set_next(tail, untagged(old)) };
                tagged(head, state)
            };
            // Release: publishes the link word (and the program's last writes to the block)
            // to the owner, which takes the list with Acquire. Acquire: when we take
            // DELAYED_FREEING, we must see the `delayed` pointer the owner stored before it
            // published USE_DELAYED (adoption by another heap).
            match self.thread_free.compare_exchange_weak(
                old,
                new,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if state != USE_DELAYED {
                        // After the push, never before: the owner may give the page back
                        // once `used` reaches 0, so the count must not run ahead of the
                        // blocks. Release: our push and our writes to the blocks happen before
                        // the owner's Acquire swap of the count (this add is our last access
                        // to the page).
                        self.remote_count.fetch_add(count, Ordering::Release);
                        return;
                    }
                    break;
                }
                Err(seen) => {
                    old = seen;
                    if state_of(old) == DELAYED_FREEING {
                        // Another freer is publishing to the delayed list: wait for it to
                        // flip the state back, then push normally.
                        crate::sync::spin_hint();
                    }
                }
            }
        }
        // We own DELAYED_FREEING: the owner will not change the state until we reset it.
        // Acquire: pairs with the Release store of `delayed` when a heap adopts the page, so
        // we push onto the list of the heap that owns it now (a push onto the previous owner's
        // list is still handled: whoever drains a delayed list frees blocks of foreign pages
        // remotely).
        let list = self.delayed.load(Ordering::Acquire);
        // SAFETY: delayed lists live in heaps, which are never freed (they are recycled); the
        // chain is ours until this push publishes it.
        unsafe { (*list).push_chain(head, tail) };
        // Back to NO_DELAYED: later remote frees go straight to this page's list.
        // Relaxed load: the CAS validates; Release on success: orders our delayed push before
        // the owner's observation of NO_DELAYED.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        loop {
            let new = tagged(untagged(old), NO_DELAYED);
            match self.thread_free.compare_exchange_weak(
                old,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => old = seen,
            }
        }
    }

    /// Sets the delayed-free state to `state`, waiting while a remote freer is mid-way.
    /// Returns `false` (and leaves the state alone) if `require_empty` and remote frees are
    /// pending: a page with pending remote frees is not full.
    ///
    /// # Safety
    /// Owner only.
    pub unsafe fn set_delayed_state(&self, state: usize, require_empty: bool) -> bool {
        // Relaxed: the CAS validates.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        loop {
            if state_of(old) == DELAYED_FREEING {
                crate::sync::spin_hint();
                // Acquire: see the freer's reset (and its delayed push) before retrying.
                old = self.thread_free.load(Ordering::Acquire);
                continue;
            }
            if require_empty && !untagged(old).is_null() {
                return false;
            }
            let new = tagged(untagged(old), state);
            // AcqRel: acquire what freers published; release our state to the next freer.
            match self.thread_free.compare_exchange_weak(
                old,
                new,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => old = seen,
            }
        }
    }

    /// Start of the block containing `p` (for pages with aligned, interior pointers).
    #[inline]
    pub fn block_start(&self, p: *mut u8) -> *mut u8 {
        // Relaxed: block_size is fixed while any block of the page is live (and never 0 then;
        // `max(1)` only spares the remainder its panic branch).
        let size = self.block_size.load(Ordering::Relaxed).max(1);
        let offset = (p as usize).wrapping_sub(self.start as usize);
        p.wrapping_sub(offset % size)
    }
}

/// `block` with the delayed-free `state` in its low bits (blocks are at least 8-aligned).
#[inline(always)]
pub(crate) fn tagged(block: *mut Block, state: usize) -> *mut Block {
    block.map_addr(|a| a | state)
}

/// The block pointer without its state bits.
#[inline(always)]
pub(crate) fn untagged(word: *mut Block) -> *mut Block {
    word.map_addr(|a| a & !STATE_MASK)
}

/// The delayed-free state of a `thread_free` word.
#[inline(always)]
pub(crate) fn state_of(word: *mut Block) -> usize {
    word.addr() & STATE_MASK
}

/// A multi-producer list of blocks taken whole by one consumer: a heap's delayed frees.
/// Pushes are CAS loops; the consumer takes everything with one swap, so there is no ABA.
pub(crate) struct DelayedList {
    head: AtomicPtr<Block>,
}

impl DelayedList {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        DelayedList {
            head: AtomicPtr::new(null_mut()),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        DelayedList {
            head: AtomicPtr::new(null_mut()),
        }
    }

    /// Pushes the chain `head ..= tail` (linked through the link words; `tail`'s is
    /// overwritten) with one CAS.
    ///
    /// # Safety
    /// The chain's blocks are blocks nobody else uses until the consumer takes them.
    pub unsafe fn push_chain(&self, head: *mut Block, tail: *mut Block) {
        // Relaxed: the CAS validates.
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it.
            unsafe { Block::set_next(tail, old) };
            // Release: publishes the link words to the consumer's Acquire swap.
            match self
                .head
                .compare_exchange_weak(old, head, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => old = seen,
            }
        }
    }

    /// Takes every block pushed so far.
    pub fn take_all(&self) -> *mut Block {
        // Relaxed pre-check: the common case is an empty list, and a load is cheaper than a
        // swap; a block pushed just after is taken next time.
        if self.head.load(Ordering::Relaxed).is_null() {
            return null_mut();
        }
        // Acquire: pairs with the pushes' Release so the link words are visible.
        self.head.swap(null_mut(), Ordering::Acquire)
    }
}

/// Doubly linked list of pages (a class queue or the full list). Owner only.
#[derive(Clone, Copy)]
pub(crate) struct PageQueue {
    pub first: *mut Page,
    pub last: *mut Page,
}

impl PageQueue {
    pub const EMPTY: PageQueue = PageQueue {
        first: null_mut(),
        last: null_mut(),
    };

    /// # Safety
    /// `page` is valid and in no queue.
    pub unsafe fn push_front(&mut self, page: *mut Page) {
        // SAFETY: the caller guarantees `page` is valid; queue members are valid.
        unsafe {
            (*page).prev = null_mut();
            (*page).next = self.first;
            if self.first.is_null() {
                self.last = page;
            } else {
                (*self.first).prev = page;
            }
        }
        self.first = page;
    }

    /// # Safety
    /// `page` is valid and in no queue.
    pub unsafe fn push_back(&mut self, page: *mut Page) {
        // SAFETY: the caller guarantees `page` is valid; queue members are valid.
        unsafe {
            (*page).next = null_mut();
            (*page).prev = self.last;
            if self.last.is_null() {
                self.first = page;
            } else {
                (*self.last).next = page;
            }
        }
        self.last = page;
    }

    /// # Safety
    /// `page` is in this queue.
    pub unsafe fn remove(&mut self, page: *mut Page) {
        // SAFETY: the caller guarantees `page` and its neighbours are in this queue.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                self.first = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.last = prev;
            } else {
                (*next).prev = prev;
            }
            (*page).next = null_mut();
            (*page).prev = null_mut();
        }
    }
}

/// Writes zero over `len` bytes (used by calloc when the block is not known to be zero).
///
/// # Safety
/// `p..p+len` is writable.
#[inline]
pub(crate) unsafe fn zero(p: *mut u8, len: usize) {
    // SAFETY: forwarded.
    unsafe { ptr::write_bytes(p, 0, len) }
}

/// Model checks of the remote-free list and the delayed-free hand-off, from the code above
/// with loom's atomics: `RUSTFLAGS="--cfg loom" cargo test -p allocscope-core --lib --release
/// page::loom_models`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    /// A page with only the fields the protocols touch set up.
    fn model_page(list: *mut DelayedList) -> Page {
        Page {
            free: null_mut(),
            used: AtomicU32::new(0),
            flags: AtomicU8::new(0),
            class: AtomicU8::new(0),
            in_use: AtomicU8::new(1),
            committed: AtomicU8::new(1),
            local_free: null_mut(),
            thread_free: AtomicPtr::new(null_mut()),
            delayed: AtomicPtr::new(list),
            block_size: AtomicUsize::new(16),
            reserved: AtomicU32::new(4),
            capacity: 4,
            free_is_zero: false,
            is_zero_init: false,
            start: null_mut(),
            next: null_mut(),
            prev: null_mut(),
            freed_at: 0,
            line: LineBreak,
            remote_aligned: AtomicU8::new(0),
            remote_count: AtomicU32::new(0),
        }
    }

    struct Shared {
        page: core::cell::UnsafeCell<Page>,
        list: Box<DelayedList>,
    }
    // SAFETY: the model gives the owner thread the only `&mut` access to owner fields; other
    // threads use the atomic entry points only, as in the heap.
    unsafe impl Sync for Shared {}
    // SAFETY: as above.
    unsafe impl Send for Shared {}

    fn blocks(n: usize) -> Vec<*mut Block> {
        (0..n)
            .map(|_| {
                Box::into_raw(Box::new(Block {
                    next: loom::cell::UnsafeCell::new(null_mut()),
                }))
            })
            .collect()
    }

    fn count(mut b: *mut Block) -> usize {
        let mut n = 0;
        while !b.is_null() {
            n += 1;
            // SAFETY: blocks of the model, alive until the end.
            b = unsafe { Block::next_of(b) };
        }
        n
    }

    fn shared() -> Arc<Shared> {
        let mut list = Box::new(DelayedList::new());
        let page = model_page(&mut *list);
        Arc::new(Shared {
            page: core::cell::UnsafeCell::new(page),
            list,
        })
    }

    /// Links `chain` through the link words (a freer's batch), returning head and tail.
    fn link(chain: &[usize]) -> (*mut Block, *mut Block) {
        for pair in chain.windows(2) {
            // SAFETY: blocks of the model the calling freer owns.
            unsafe { Block::set_next(pair[0] as *mut Block, pair[1] as *mut Block) };
        }
        (chain[0] as *mut Block, chain[chain.len() - 1] as *mut Block)
    }

    #[test]
    fn remote_frees_racing_the_owner_are_collected_exactly_once() {
        loom::model(|| {
            let s = shared();
            // SAFETY: set-up before any other thread exists.
            unsafe { (*s.page.get()).used.store(3, Ordering::Relaxed) };
            let b = blocks(3);
            let all = [b[0] as usize, b[1] as usize, b[2] as usize];
            let s1 = s.clone();
            let t1 = loom::thread::spawn(move || {
                // SAFETY: remote freer: only the atomic entry point.
                unsafe { (*s1.page.get()).free_remote(all[0] as *mut Block) };
            });
            let s2 = s.clone();
            let t2 = loom::thread::spawn(move || {
                // A batch of two blocks, pushed with one CAS.
                let (head, tail) = link(&all[1..]);
                // SAFETY: as above; the chain holds two live blocks of the page.
                unsafe { (*s2.page.get()).free_remote_chain(head, tail, 2) };
            });
            // The owner collects while the frees happen (yielding so they interleave with
            // its loads and CASes). When `used` says the page is empty it reuses it at once,
            // as a purge pass would give it back: it rewrites every block and resets the
            // page's remote words as `init` does. The model fails if a freer's write to a
            // block or to the page is not ordered before that (a count that ran ahead of its
            // push, or a weaker ordering on the count).
            let mut got = 0;
            let mut reused = false;
            for _ in 0..3 {
                // SAFETY: the owner thread.
                unsafe {
                    let p = &mut *s.page.get();
                    got += count(p.take_remote());
                    if p.used.load(Ordering::Relaxed) == 0 {
                        for &block in &all {
                            Block::set_next(block as *mut Block, null_mut());
                        }
                        p.thread_free.store(null_mut(), Ordering::Relaxed);
                        p.remote_count.store(0, Ordering::Relaxed);
                        reused = true;
                        break;
                    }
                }
                loom::thread::yield_now();
            }
            t1.join().unwrap();
            t2.join().unwrap();
            // SAFETY: the owner thread; the freers are done.
            unsafe {
                let p = &mut *s.page.get();
                if reused {
                    // Nobody touched the page after it was given back.
                    assert_eq!(p.thread_free.load(Ordering::Relaxed), null_mut());
                    assert_eq!(p.remote_count.load(Ordering::Relaxed), 0);
                    assert_eq!(p.used.load(Ordering::Relaxed), 0);
                } else {
                    got += count(p.take_remote());
                    assert_eq!(got, 3);
                    assert_eq!(p.used.load(Ordering::Relaxed), 0);
                    assert_eq!(p.thread_free.load(Ordering::Relaxed), null_mut());
                }
            }
        });
    }

    #[test]
    fn a_free_into_a_parked_page_reaches_the_owner_exactly_once() {
        loom::model(|| {
            let s = shared();
            // The owner parks the (full) page: frees must now be announced.
            // SAFETY: set-up before any other thread exists.
            unsafe {
                let p = &*s.page.get();
                p.used.store(3, Ordering::Relaxed);
                assert!(p.set_delayed_state(USE_DELAYED, true));
            }
            let b = blocks(3);
            let all = [b[0] as usize, b[1] as usize, b[2] as usize];
            let s1 = s.clone();
            let t1 = loom::thread::spawn(move || {
                // SAFETY: remote freer.
                unsafe { (*s1.page.get()).free_remote(all[0] as *mut Block) };
            });
            let s2 = s.clone();
            let t2 = loom::thread::spawn(move || {
                let (head, tail) = link(&all[1..]);
                // SAFETY: remote freer of a chain of two live blocks of the page.
                unsafe { (*s2.page.get()).free_remote_chain(head, tail, 2) };
            });
            // Meanwhile the owner looks at its delayed list (as slow paths would).
            let mut early = 0;
            for _ in 0..2 {
                early += count(s.list.take_all());
                loom::thread::yield_now();
            }
            t1.join().unwrap();
            t2.join().unwrap();
            let late = count(s.list.take_all());
            // SAFETY: the owner; the freers are done.
            let on_page = count(unsafe { (*s.page.get()).take_remote() });
            // Exactly the first push is announced through the delayed list (the state goes
            // back to NO_DELAYED after it), whole; the other lands on the page's own list and
            // is counted there. The owner counts announced blocks as it frees them.
            let announced = early + late;
            assert!(announced == 1 || announced == 2, "{announced} announced");
            assert_eq!(announced + on_page, 3);
            // SAFETY: the owner.
            unsafe {
                let p = &*s.page.get();
                assert_eq!(p.used.load(Ordering::Relaxed) as usize, announced);
                let state = state_of(p.thread_free.load(Ordering::Relaxed));
                assert_eq!(state, NO_DELAYED);
            }
        });
    }
}

/// The free lists and queues over a plain buffer (no OS): runs under miri with strict
/// provenance (`cargo +nightly miri test -p allocscope-core --lib page::`).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(align(4096))]
    struct Area([u8; 4096]);

    fn page_over(area: &mut Area, list: &mut DelayedList, block: usize) -> Page {
        let mut page = Page::EMPTY;
        // SAFETY: the page is new; the area is 4096 writable bytes that outlive the test.
        unsafe { page.init(list, 3, block, area.0.as_mut_ptr(), 4096, true) };
        page
    }

    fn pop(page: &mut Page) -> Option<*mut Block> {
        let b = page.free;
        if b.is_null() {
            return None;
        }
        // SAFETY: `b` is the head of the page's free list.
        page.free = unsafe { (*b).next };
        page.used_add(1);
        Some(b)
    }

    /// A page over `area` whose blocks of `block` bytes are all handed out (returned).
    fn all_handed_out(
        area: &mut Area,
        list: &mut DelayedList,
        block: usize,
    ) -> (Page, Vec<*mut Block>) {
        let mut page = page_over(area, list, block);
        // SAFETY: owner; `free` is empty.
        unsafe { page.extend(4096) };
        let blocks: Vec<*mut Block> = core::iter::from_fn(|| pop(&mut page)).collect();
        assert_eq!(blocks.len(), 4096 / block);
        (page, blocks)
    }

    #[test]
    fn extension_links_distinct_blocks_lazily() {
        let mut area = Box::new(Area([0; 4096]));
        let mut list = DelayedList::new();
        let mut page = page_over(&mut area, &mut list, 48);
        assert_eq!(page.reserved.load(Ordering::Relaxed), 4096 / 48);
        // SAFETY: owner; `free` is empty.
        unsafe { page.extend(1024) };
        assert_eq!(page.capacity, 1024 / 48);
        assert!(page.free_is_zero);
        let mut seen = Vec::new();
        while let Some(b) = pop(&mut page) {
            assert_eq!((b as usize - page.start as usize) % 48, 0);
            seen.push(b as usize);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1024 / 48);
        // SAFETY: as above.
        unsafe { page.extend(1 << 20) };
        let mut rest = 0;
        while pop(&mut page).is_some() {
            rest += 1;
        }
        assert_eq!(seen.len() + rest, 4096 / 48);
        assert_eq!(page.used.load(Ordering::Relaxed) as usize, 4096 / 48);
    }

    #[test]
    fn local_and_remote_frees_come_back_through_collect() {
        let mut area = Box::new(Area([0; 4096]));
        let mut list = DelayedList::new();
        let (mut page, blocks) = all_handed_out(&mut area, &mut list, 64);
        // The owner frees the even blocks, "another thread" the odd ones.
        for (i, &b) in blocks.iter().enumerate() {
            if i % 2 == 0 {
                // SAFETY: live block of the page, freed once.
                unsafe { (*b).next = page.local_free };
                page.local_free = b;
                page.used_sub(1);
            }
        }
        // Raw pointers are not `Send`: wrap them to hand them over, as the heap's users do.
        struct Handover(*const Page, Vec<*mut Block>);
        // SAFETY: the page outlives the scope; the blocks are given away.
        unsafe impl Send for Handover {}
        let odd = Handover(&page, blocks.iter().skip(1).step_by(2).copied().collect());
        std::thread::scope(|s| {
            s.spawn(move || {
                let odd = odd;
                for &b in &odd.1 {
                    // SAFETY: the page outlives the scope; each block is live and freed once
                    // by a non-owner.
                    unsafe { (*odd.0).free_remote(b) };
                }
            });
        });
        // SAFETY: owner; `free` is empty.
        assert!(unsafe { page.collect() });
        assert!(!page.free_is_zero);
        assert_eq!(page.used.load(Ordering::Relaxed), 0);
        // The owner's frees come first; the remote list waits in `local_free`.
        let mut again: Vec<*mut Block> = core::iter::from_fn(|| pop(&mut page)).collect();
        assert_eq!(again.len(), 32);
        // SAFETY: owner; `free` is empty again.
        assert!(unsafe { page.collect() });
        again.extend(core::iter::from_fn(|| pop(&mut page)));
        again.sort_unstable();
        again.dedup();
        assert_eq!(again.len(), 64);
        assert_eq!(page.used.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_parked_page_announces_its_first_remote_free() {
        let mut area = Box::new(Area([0; 4096]));
        let mut list = DelayedList::new();
        let mut page = page_over(&mut area, &mut list, 2048);
        // SAFETY: owner; `free` is empty.
        unsafe { page.extend(4096) };
        let a = pop(&mut page).unwrap();
        let b = pop(&mut page).unwrap();
        // SAFETY: owner parks the full page.
        assert!(unsafe { page.set_delayed_state(USE_DELAYED, true) });
        // SAFETY: live blocks, freed once by a non-owner.
        unsafe {
            page.free_remote(a);
            page.free_remote(b);
        }
        let announced = list.take_all();
        assert_eq!(
            announced, a,
            "the first free goes to the heap's delayed list"
        );
        let mut on_page = 0;
        // SAFETY: owner; the list is ours after the take.
        let mut block = unsafe { page.take_remote() };
        while !block.is_null() {
            on_page += 1;
            // SAFETY: a block of the list we took.
            block = unsafe { (*block).next };
        }
        assert_eq!(on_page, 1, "the second stays on the page");
        assert_eq!(page.used.load(Ordering::Relaxed), 1, "and is counted there");
    }

    #[test]
    fn a_chain_is_pushed_whole_and_counted_without_a_walk() {
        let mut area = Box::new(Area([0; 4096]));
        let mut list = DelayedList::new();
        let (mut page, blocks) = all_handed_out(&mut area, &mut list, 256);
        // Two batches of a "remote freer": blocks 0..5 and 5..16, each linked, pushed once.
        for batch in [&blocks[..5], &blocks[5..]] {
            for pair in batch.windows(2) {
                // SAFETY: live blocks of the page, handed to the freer.
                unsafe { (*pair[0]).next = pair[1] };
            }
            let (head, tail) = (batch[0], batch[batch.len() - 1]);
            // SAFETY: a chain of distinct live blocks of this page, freed once.
            unsafe { page.free_remote_chain(head, tail, batch.len() as u32) };
        }
        assert_eq!(page.remote_count.load(Ordering::Relaxed), 16);
        // SAFETY: owner; `free` is empty.
        assert!(unsafe { page.collect() });
        assert_eq!(page.used.load(Ordering::Relaxed), 0);
        assert_eq!(page.remote_count.load(Ordering::Relaxed), 0);
        let mut back: Vec<*mut Block> = core::iter::from_fn(|| pop(&mut page)).collect();
        // The later batch first, each in its own order.
        assert_eq!(&back[..11], &blocks[5..]);
        assert_eq!(&back[11..], &blocks[..5]);
        back.sort_unstable();
        back.dedup();
        assert_eq!(back.len(), 16);
    }

    #[test]
    fn queues_link_and_unlink() {
        let mut pages = [Page::EMPTY, Page::EMPTY, Page::EMPTY];
        let [a, b, c] = pages.each_mut().map(|p| p as *mut Page);
        let mut q = PageQueue::EMPTY;
        // SAFETY: the pages are valid and in no queue / in this queue as each call requires.
        unsafe {
            q.push_back(a);
            q.push_back(b);
            q.push_front(c);
            assert_eq!((q.first, q.last), (c, b));
            q.remove(a);
            assert_eq!((*c).next, b);
            assert_eq!((*b).prev, c);
            q.remove(c);
            q.remove(b);
        }
        assert!(q.first.is_null() && q.last.is_null());
    }
}

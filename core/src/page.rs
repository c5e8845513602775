//! A page: a run of equal-sized blocks carved from a segment, with three free lists.
//!
//! ```text
//! free         blocks ready for allocation            owner only, popped by the fast path
//! local_free   blocks the owner freed                 owner only, pushed by the fast path
//! thread_free  blocks other threads freed             atomic: CAS push by anyone, taken
//!                                                     whole by the owner with one RMW
//! ```
//!
//! Keeping the owner's frees apart from `free` makes the point where lists are merged
//! ([`Page::collect`], in the slow path) the only place that learns about remote frees, and lets
//! `free_is_zero` describe exactly the blocks of `free` (calloc skips the memset for those).
//!
//! Invariant: `used == blocks handed out - blocks in local_free (already subtracted) - 0`, i.e.
//! `used + |free| + |local_free| + |thread_free| == capacity` where remote frees stay counted as
//! used until collected.
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
#[repr(C)]
pub(crate) struct Block {
    pub next: *mut Block,
}

pub(crate) const NO_DELAYED: usize = 0;
pub(crate) const USE_DELAYED: usize = 1;
pub(crate) const DELAYED_FREEING: usize = 2;
pub(crate) const STATE_MASK: usize = 3;

/// Page flags (owner writes, relaxed; remote freers read `HAS_ALIGNED`).
pub(crate) const FLAG_IN_FULL: u8 = 1;
pub(crate) const FLAG_HAS_ALIGNED: u8 = 2;

/// One page of a segment. Owner-only fields are plain; fields other threads read (statistics,
/// page walk, remote frees) are atomics the owner updates with relaxed load + store (never an
/// atomic read-modify-write: the fast path stays free of them).
#[repr(C)]
pub(crate) struct Page {
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
    /// Remote frees, with the delayed-free state in the low two bits of the pointer (tagged
    /// with `map_addr`, so provenance is kept: miri's strict-provenance mode checks it).
    pub thread_free: AtomicPtr<Block>,
    /// The delayed-free list of the heap that owns the page (remote freers push there while
    /// the page is parked full). Heaps are never freed, so the pointer stays valid.
    pub delayed: AtomicPtr<DelayedList>,
    /// Block size in bytes (a copy of the class's size, or the large block's size).
    pub block_size: AtomicUsize,
    /// Blocks the page can hold.
    pub reserved: AtomicU32,
    /// Blocks whose memory has been linked into a free list so far (lazy extension).
    pub capacity: u32,
    /// Whether every block of `free` is zero but for its link word.
    pub free_is_zero: bool,
    /// Whether the page's never-used blocks read as zero (fresh or decommitted memory).
    pub is_zero_init: bool,
    /// First byte of the page's block area.
    pub start: *mut u8,
    /// Neighbours in the heap's class queue or full list. Owner only.
    pub next: *mut Page,
    pub prev: *mut Page,
    /// While the page is free in its segment: when it was freed (milliseconds, for the purge
    /// delay). While in use: the purge pass that first saw it empty (0 = not empty).
    pub freed_at: u64,
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
        self.class.store(class as u8, Ordering::Relaxed);
        self.block_size.store(block_size, Ordering::Relaxed);
        self.reserved
            .store((area_size / block_size) as u32, Ordering::Relaxed);
        self.thread_free
            .store(tagged(null_mut(), NO_DELAYED), Ordering::Relaxed);
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
        let size = self.block_size.load(Ordering::Relaxed);
        let wanted = (max_bytes / size).max(1) as u32;
        let count = wanted.min(reserved - self.capacity) as usize;
        // SAFETY: blocks capacity..capacity+count lie inside the page area (count is bounded
        // by `reserved`, computed from the area size at init).
        unsafe {
            let first = self.start.add(self.capacity as usize * size);
            let mut block = first;
            for _ in 1..count {
                let next = block.add(size);
                (*block.cast::<Block>()).next = next.cast();
                block = next;
            }
            (*block.cast::<Block>()).next = null_mut();
            self.free = first.cast();
        }
        self.capacity += count as u32;
        self.free_is_zero = self.is_zero_init;
    }

    /// Moves owner frees and remote frees into `free` (called when `free` ran dry). Returns
    /// `true` when `free` is non-empty afterwards.
    ///
    /// # Safety
    /// Owner only; the page is initialised and `free` is empty.
    pub unsafe fn collect(&mut self) -> bool {
        debug_assert!(self.free.is_null());
        if !self.local_free.is_null() {
            self.free = self.local_free;
            self.local_free = null_mut();
            self.free_is_zero = false;
        }
        // SAFETY: forwarded precondition (owner).
        unsafe { self.collect_remote() };
        !self.free.is_null()
    }

    /// Takes the whole remote list with one CAS (repeated only if a push raced in; the state
    /// bits stay) and prepends it to `free`. Returns the number of blocks taken.
    ///
    /// # Safety
    /// Owner only.
    pub unsafe fn collect_remote(&mut self) -> u32 {
        // Cheap check first: most pages have no remote frees. Relaxed: a stale empty list only
        // means the blocks are taken at the next collect.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        if untagged(old).is_null() {
            return 0;
        }
        // Acquire: pairs with the Release of the pushes, so the link words written by remote
        // freers are visible before we walk them. No ABA: blocks are only ever pushed by
        // others and taken all at once by us; nobody pops a single block.
        let head = loop {
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
        if head.is_null() {
            return 0;
        }
        let mut tail = head;
        let mut count = 1u32;
        // SAFETY: every block on the list was pushed by a remote free and is owned by us now.
        unsafe {
            while !(*tail).next.is_null() {
                tail = (*tail).next;
                count += 1;
            }
            (*tail).next = self.free;
        }
        self.free = head;
        self.free_is_zero = false;
        self.used_sub(count);
        count
    }

    /// Pushes `block` on the remote list: one CAS in the common case. When the page is parked
    /// full (`USE_DELAYED`), the block goes to the owning heap's delayed list instead.
    ///
    /// # Safety
    /// `block` is a live block of this page, freed by a thread that does not own the page.
    pub unsafe fn free_remote(&self, block: *mut Block) {
        // Relaxed: the CAS below validates it.
        let mut old = self.thread_free.load(Ordering::Relaxed);
        loop {
            let state = state_of(old);
            let new = if state == USE_DELAYED {
                tagged(untagged(old), DELAYED_FREEING)
            } else {
                // SAFETY: the block is ours to write until the CAS publishes it.
                unsafe { (*block).next = untagged(old) };
                tagged(block, state)
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
        // SAFETY: delayed lists live in heaps, which are never freed (they are recycled).
        unsafe { (*list).push(block) };
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
        // Relaxed: block_size is fixed while any block of the page is live.
        let size = self.block_size.load(Ordering::Relaxed);
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

    /// # Safety
    /// `block` is a block nobody else uses until the consumer takes it.
    pub unsafe fn push(&self, block: *mut Block) {
        // Relaxed: the CAS validates.
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is ours until the CAS publishes it.
            unsafe { (*block).next = old };
            // Release: publishes the link word to the consumer's Acquire swap.
            match self
                .head
                .compare_exchange_weak(old, block, Ordering::Release, Ordering::Relaxed)
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
            .map(|_| Box::into_raw(Box::new(Block { next: null_mut() })))
            .collect()
    }

    fn count(mut b: *mut Block) -> usize {
        let mut n = 0;
        while !b.is_null() {
            n += 1;
            // SAFETY: blocks of the model, alive until the end.
            b = unsafe { (*b).next };
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

    #[test]
    fn remote_frees_racing_the_owner_are_collected_exactly_once() {
        loom::model(|| {
            let s = shared();
            // SAFETY: set-up before any other thread exists.
            unsafe { (*s.page.get()).used.store(3, Ordering::Relaxed) };
            let b = blocks(3);
            let (b0, b1, b2) = (b[0] as usize, b[1] as usize, b[2] as usize);
            let s1 = s.clone();
            let t1 = loom::thread::spawn(move || {
                // SAFETY: remote freer: only the atomic entry point.
                unsafe { (*s1.page.get()).free_remote(b0 as *mut Block) };
            });
            let s2 = s.clone();
            let t2 = loom::thread::spawn(move || {
                // SAFETY: as above.
                unsafe {
                    (*s2.page.get()).free_remote(b1 as *mut Block);
                    (*s2.page.get()).free_remote(b2 as *mut Block);
                }
            });
            // The owner collects while the frees happen (yielding so they interleave with
            // its loads and CASes), and once more after.
            let mut got = 0;
            for _ in 0..3 {
                // SAFETY: the owner thread.
                got += unsafe { (*s.page.get()).collect_remote() } as usize;
                loom::thread::yield_now();
            }
            t1.join().unwrap();
            t2.join().unwrap();
            // SAFETY: the owner thread; the freers are done.
            unsafe {
                let p = &mut *s.page.get();
                got += p.collect_remote() as usize;
                assert_eq!(got, 3);
                assert_eq!(count(p.free), 3);
                assert_eq!(p.used.load(Ordering::Relaxed), 0);
                assert_eq!(p.thread_free.load(Ordering::Relaxed), null_mut());
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
                p.used.store(2, Ordering::Relaxed);
                assert!(p.set_delayed_state(USE_DELAYED, true));
            }
            let b = blocks(2);
            let (b0, b1) = (b[0] as usize, b[1] as usize);
            let s1 = s.clone();
            let t1 = loom::thread::spawn(move || {
                // SAFETY: remote freer.
                unsafe { (*s1.page.get()).free_remote(b0 as *mut Block) };
            });
            let s2 = s.clone();
            let t2 = loom::thread::spawn(move || {
                // SAFETY: remote freer.
                unsafe { (*s2.page.get()).free_remote(b1 as *mut Block) };
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
            let on_page = unsafe { (*s.page.get()).collect_remote() } as usize;
            // Exactly the first free is announced through the delayed list (the state goes
            // back to NO_DELAYED after it); the other lands on the page's own list.
            assert_eq!(early + late, 1);
            assert_eq!(on_page, 1);
            // SAFETY: the owner.
            let word = unsafe { (*s.page.get()).thread_free.load(Ordering::Relaxed) };
            let state = state_of(word);
            assert_eq!(state, NO_DELAYED);
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
        let mut page = page_over(&mut area, &mut list, 64);
        // SAFETY: owner; `free` is empty.
        unsafe { page.extend(4096) };
        let blocks: Vec<*mut Block> = core::iter::from_fn(|| pop(&mut page)).collect();
        assert_eq!(blocks.len(), 64);
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
        let again: Vec<*mut Block> = core::iter::from_fn(|| pop(&mut page)).collect();
        assert_eq!(again.len(), 64);
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
        // SAFETY: owner.
        let on_page = unsafe { page.collect_remote() };
        assert_eq!(on_page, 1, "the second stays on the page");
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

//! The thread-caching heap: one [`Heap`] per thread, the allocation and free fast paths, and
//! the slow paths they fall back to.
//!
//! ```text
//! heap ──► pages[class] ──► page ──► free list ──► block          (fast path: alloc_class)
//!   ├── queues[class]: pages of the class with (maybe) free blocks
//!   ├── full: pages with no free block; remote freers tell us about them via `delayed`
//!   ├── segments: every segment the heap owns; free_segments[kind]: those with free pages
//!   ├── large_cache: recently freed large spans, reused before asking the OS
//!   └── remote[slot]: this thread's frees into other heaps' pages, held back per page
//! ```
//!
//! Glossary: a *page* is the allocator's page (64 KiB small, 512 KiB medium, a whole segment
//! big), an *OS page* the
//! kernel's 4 KiB one. A *local* free is by the thread owning the page, a *remote* free by any
//! other thread.
//!
//! Invariants:
//! * the owning thread's fast paths (`alloc_class`, the first branch of `free`) execute no
//!   atomic read-modify-write and no lock;
//! * `pages[class]` is never null: an empty slot points at [`EMPTY_PAGE`], whose `free` is
//!   null, so the fast path needs no extra check;
//! * a thread without a heap sees [`EMPTY_HEAP`], which owns nothing: its first allocation or
//!   remote free attaches a heap (`thread::attach`); a thread whose heap was detached at exit
//!   sees [`EXITED_HEAP`], which owns nothing either: an allocation attaches a heap again, a
//!   free is pushed at once (a heap attached in thread teardown might never be detached, and
//!   remote frees held back in it would be lost);
//! * remote frees are held back per destination page in the freeing heap's `remote` batches
//!   and pushed a whole chain per CAS (see [`RemoteBatch`]); a held block still counts in its
//!   page's `used`, so its page cannot be given back meanwhile;
//! * heaps are never freed, only recycled (`thread`), so a pointer to one stays valid forever.
//!
//! May touch: [`crate::page`], [`crate::segment`], [`crate::large`], [`crate::thread`],
//! [`crate::size_class`], [`crate::os`], [`crate::error`].

use core::ptr::{addr_of, null_mut, NonNull};

use crate::error::{record, AllocErrorKind};
use crate::os::{align_up, monotonic_ms, Os, SystemOs};
use crate::page::{
    zero, Block, DelayedList, Page, PageQueue, FLAG_HAS_ALIGNED, FLAG_IN_FULL, NO_DELAYED,
    USE_DELAYED,
};
use crate::segment::{self, Segment, HEADER_SIZE, KIND_LARGE, KIND_SMALL, PAGE_KINDS};
use crate::size_class::{class_of, page_kind, CLASS_COUNT, CLASS_MAX, CLASS_SIZE, MEDIUM_MAX};
use crate::sync::{AtomicUsize, Ordering};
use crate::{large, thread};

/// Alignment every class block has without special handling (C's `max_align_t`).
const NATURAL_ALIGN: usize = 16;
/// Page starts are aligned to at least this, so a class whose size is a multiple of an
/// alignment up to it yields aligned blocks.
const PAGE_START_ALIGN: usize = 4096;
/// How much of a fresh page one extension links into the free list.
const EXTEND_BYTES: usize = 4096;
/// Slow paths and page-emptied events per look at the purge clock (see `Heap::maybe_purge`).
const EVENTS_PER_PURGE_CHECK: u32 = 32;
/// Destination pages a heap holds remote frees for at once (direct-mapped by page address).
const REMOTE_SLOTS: usize = 16;
/// A batch of remote frees is pushed when it holds this many bytes ...
const REMOTE_BATCH_BYTES: usize = 16 * 1024;
/// ... or this many blocks. Blocks of 8 KiB and more are never held (one per batch).
const REMOTE_BATCH_BLOCKS: u32 = 64;
/// Requests up to this size use the direct page table.
const DIRECT_MAX: usize = 1024;
const DIRECT_SLOTS: usize = DIRECT_MAX / 8 + 1;

/// A heap: everything one thread allocates from. Owner-only fields are plain; the fields
/// other threads touch are atomics (`delayed`, the statistics counters).
#[repr(C)]
pub struct Heap {
    /// The current page for requests of up to 1 KiB, indexed by `(size + 7) / 8`: the
    /// malloc fast path reads one entry and skips the class lookup. Mirrors `pages`.
    direct: [*mut Page; DIRECT_SLOTS],
    /// Current page per class (or [`EMPTY_PAGE`]).
    pages: [*mut Page; CLASS_COUNT],
    /// Allocations and frees served (statistics, with the `stats` feature; owner writes with
    /// load + store).
    allocs: AtomicUsize,
    frees: AtomicUsize,
    /// Pages of each class that may have free blocks; the current page is the first.
    queues: [PageQueue; CLASS_COUNT],
    /// Pages with no free block, parked until a free makes room.
    full: PageQueue,
    /// Blocks remote threads freed into parked-full pages.
    pub(crate) delayed: DelayedList,
    /// All segments the heap owns (doubly linked through `Segment::next/prev`).
    pub(crate) segments: *mut Segment,
    /// Segments with free pages per page kind, small, medium and big (through
    /// `Segment::free_next/free_prev`).
    free_segments: [*mut Segment; 3],
    /// Freed large spans kept for reuse.
    pub(crate) large_cache: large::SpanCache,
    /// When the next purge pass may run (milliseconds).
    next_purge: u64,
    /// The purge clock as last read (milliseconds): what an emptied page is stamped with, so
    /// a page needs no clock read of its own to say since when it has been empty.
    clock_ms: u64,
    /// Events before `maybe_purge` next looks at the clock (counts down).
    purge_countdown: u32,
    /// Next heap in the registry of all heaps (append-only; for statistics).
    pub(crate) registry_next: *mut Heap,
    /// Next heap in the idle pool (heaps of exited threads).
    pub(crate) idle_next: *mut Heap,
    /// Remote frees held back, per destination page.
    remote: [RemoteBatch; REMOTE_SLOTS],
}

/// Remote frees of one destination page, held back by the freeing thread and pushed with one
/// CAS (and one count update) when the batch is full, when a free for another page needs the
/// slot, at a purge pass, at `collect()`, and when the thread exits.
///
/// A free from another thread costs its page's remote line twice over (a CAS on the list, an
/// add on the count), and each moves the line between the two cores when the owner is taking
/// from it; batching makes that once per batch. The link words are written as the blocks are
/// freed (plain stores, which the store buffer absorbs even when the block's line is on the
/// other core; a locked instruction right behind each would wait for it). The bound on what a
/// thread holds back is `REMOTE_SLOTS × REMOTE_BATCH_BYTES` (256 KiB) of blocks, whose pages
/// stay in use until the batch is pushed.
///
/// Pages move under a batch safely: a held block is still counted in its page's `used`, so
/// the page is not given back or reused; if its heap exits or is adopted, the push reaches
/// whoever owns the page then (a parked page's delayed list is looked up at push time, as for
/// any remote free), the freeing heap itself included.
#[derive(Clone, Copy)]
struct RemoteBatch {
    /// The destination page (null: the slot is empty).
    page: *mut Page,
    /// The last block held, linked to the one before, ... down to `tail`.
    head: *mut Block,
    /// The first block held (its link word is written by the push).
    tail: *mut Block,
    /// Blocks held.
    count: u32,
    /// Blocks at which the batch is pushed (from the page's block size).
    limit: u32,
}

impl RemoteBatch {
    const EMPTY: RemoteBatch = RemoteBatch {
        page: null_mut(),
        head: null_mut(),
        tail: null_mut(),
        count: 0,
        limit: 0,
    };

    /// Pushes the blocks held and empties the slot.
    ///
    /// # Safety
    /// The slot is the calling thread's (in its own heap).
    #[inline]
    unsafe fn push(&mut self) {
        if !self.page.is_null() {
            // SAFETY: the batch holds `count` live blocks of `page`, linked head to tail, that
            // this thread freed; the page stays valid while they are held (see above).
            unsafe { (*self.page).free_remote_chain(self.head, self.tail, self.count) };
            self.page = null_mut();
        }
    }
}

/// The batch slot of `page` (descriptors are `size_of::<Page>()` apart in a segment header;
/// the segment's address bits are folded in so that pages of different segments spread too).
#[inline(always)]
fn remote_slot(page: *mut Page) -> usize {
    let a = page as usize;
    ((a / size_of::<Page>()) ^ (a >> segment::SEGMENT_SHIFT)) % REMOTE_SLOTS
}

/// `Sync` wrappers for the two sentinels: they are only ever read (their atomics are never
/// written: `EMPTY_PAGE.free` is null so nothing is popped from it, and `EMPTY_HEAP` is
/// replaced by a real heap before any slow path writes).
#[repr(transparent)]
pub(crate) struct Sentinel<T>(pub T);
// SAFETY: see above: nothing writes through a sentinel.
unsafe impl<T> Sync for Sentinel<T> {}

/// The page every empty heap slot points at.
pub(crate) static EMPTY_PAGE: Sentinel<Page> = Sentinel(Page::EMPTY);

/// The heap of threads that have none yet.
pub(crate) static EMPTY_HEAP: Sentinel<Heap> = Sentinel(Heap::new_const());

/// The heap of threads whose heap was detached at exit (owns nothing, like [`EMPTY_HEAP`]).
pub(crate) static EXITED_HEAP: Sentinel<Heap> = Sentinel(Heap::new_const());

/// A pointer to [`EMPTY_HEAP`].
#[inline(always)]
pub(crate) const fn empty_heap() -> *mut Heap {
    addr_of!(EMPTY_HEAP.0).cast_mut()
}

/// A pointer to [`EXITED_HEAP`].
#[inline(always)]
pub(crate) const fn exited_heap() -> *mut Heap {
    addr_of!(EXITED_HEAP.0).cast_mut()
}

/// Whether `heap` is one of the sentinels (owns nothing, must never be written).
#[inline(always)]
pub(crate) fn owns_nothing(heap: *mut Heap) -> bool {
    heap == empty_heap() || heap == exited_heap()
}

#[inline(always)]
fn empty_page() -> *mut Page {
    addr_of!(EMPTY_PAGE.0).cast_mut()
}

impl Heap {
    /// A heap owning nothing, every slot on the empty page.
    pub(crate) const fn new_const() -> Heap {
        Heap {
            direct: [addr_of!(EMPTY_PAGE.0).cast_mut(); DIRECT_SLOTS],
            pages: [addr_of!(EMPTY_PAGE.0).cast_mut(); CLASS_COUNT],
            allocs: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
            queues: [PageQueue::EMPTY; CLASS_COUNT],
            full: PageQueue::EMPTY,
            delayed: DelayedList::new(),
            segments: null_mut(),
            free_segments: [null_mut(); 3],
            large_cache: large::SpanCache::new(),
            next_purge: 0,
            clock_ms: 0,
            purge_countdown: 1,
            registry_next: null_mut(),
            idle_next: null_mut(),
            remote: [RemoteBatch::EMPTY; REMOTE_SLOTS],
        }
    }

    /// A remote free (`block` is a block start of `page`, which another heap owns): held in
    /// the page's batch, which is pushed when full; a free for another page that maps to the
    /// same slot pushes the slot's batch first. Large blocks (a batch of one) go at once.
    ///
    /// # Safety
    /// `heap` is the calling thread's own heap; `block` is a live block of `page`, freed once.
    #[inline]
    unsafe fn free_remote_batched(&mut self, page: *mut Page, block: *mut Block) {
        let batch = &mut self.remote[remote_slot(page)];
        // SAFETY: the block is ours to write (being freed); the batch is this thread's.
        unsafe {
            if batch.page == page {
                (*block).next = batch.head;
                batch.head = block;
                batch.count += 1;
                if batch.count >= batch.limit {
                    batch.push();
                }
                return;
            }
            // Relaxed: fixed while the page has live blocks (this one). Never 0 for a page in
            // use; `max(1)` only spares the division its panic branch.
            let size = (*page).block_size.load(Ordering::Relaxed).max(1);
            let limit = (REMOTE_BATCH_BYTES / size).min(REMOTE_BATCH_BLOCKS as usize) as u32;
            if limit <= 1 {
                (*page).free_remote(block);
                return;
            }
            batch.push();
            *batch = RemoteBatch {
                page,
                head: block,
                tail: block,
                count: 1,
                limit,
            };
        }
    }

    /// Pushes every batch of remote frees held.
    ///
    /// # Safety
    /// `self` is the calling thread's heap (or an idle heap held exclusively).
    pub(crate) unsafe fn push_remote_batches(&mut self) {
        for batch in &mut self.remote {
            // SAFETY: forwarded.
            unsafe { batch.push() };
        }
    }

    /// Statistics: allocations and frees this heap served.
    pub(crate) fn op_counts(&self) -> (usize, usize) {
        // Relaxed: statistics.
        (
            self.allocs.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
        )
    }

    /// Counts an allocation (with the `stats` feature: it costs an instruction on the fast
    /// path, which release builds do without).
    #[inline(always)]
    fn count_alloc(&self) {
        #[cfg(feature = "stats")]
        // Relaxed load + store, not an RMW: only the owner writes; readers want a statistic.
        self.allocs.store(
            self.allocs.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Counts a free (with the `stats` feature).
    #[inline(always)]
    fn count_free(&self) {
        #[cfg(feature = "stats")]
        // Relaxed: as in `count_alloc`.
        self.frees.store(
            self.frees.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Makes `page` the current page of `class`, in both tables.
    #[inline]
    fn set_current(&mut self, class: usize, page: *mut Page) {
        self.pages[class] = page;
        let (first, end) = DIRECT_RANGE[class];
        for slot in &mut self.direct[first as usize..end as usize] {
            *slot = page;
        }
    }

    /// Finds a page of `class` with a free block, making it current. `None` when out of memory.
    ///
    /// Walks the class queue: each page gets its owner and remote frees collected, then a lazy
    /// extension; a page with nothing left is parked in the full list (so later walks skip
    /// it) unless a remote free arrives meanwhile. The walk is amortised: every page it passes
    /// either serves the allocation or leaves the queue.
    unsafe fn find_page(&mut self, class: usize) -> Option<*mut Page> {
        let mut adopted = false;
        // SAFETY: queue members are pages this heap owns.
        unsafe {
            'scan: loop {
                let mut page = self.queues[class].first;
                while !page.is_null() {
                    let p = &mut *page;
                    if p.free.is_null() {
                        p.collect();
                    }
                    if p.free.is_null() {
                        p.extend(EXTEND_BYTES);
                    }
                    if !p.free.is_null() {
                        if self.queues[class].first != page {
                            self.queues[class].remove(page);
                            self.queues[class].push_front(page);
                        }
                        self.set_current(class, page);
                        return Some(page);
                    }
                    // Full. Park it unless remote frees raced in (then look at it again).
                    if !p.set_delayed_state(USE_DELAYED, true) {
                        continue;
                    }
                    let next = p.next;
                    self.queues[class].remove(page);
                    self.full.push_back(page);
                    // Relaxed: owner-only flag; remote readers only look at HAS_ALIGNED, which
                    // this store keeps.
                    p.flags.store(
                        p.flags.load(Ordering::Relaxed) | FLAG_IN_FULL,
                        Ordering::Relaxed,
                    );
                    page = next;
                }
                // Before claiming a segment, adopt the pages of an exited thread's heap; they may
                // hold free blocks of this class.
                if !adopted && self.free_segments[page_kind(class)].is_null() {
                    adopted = true;
                    if thread::adopt_idle(self) {
                        continue 'scan;
                    }
                }
                break;
            }
            self.set_current(class, empty_page());
            let page = self.fresh_page(class)?;
            (*page).extend(EXTEND_BYTES);
            self.queues[class].push_front(page);
            self.set_current(class, page);
            Some(page)
        }
    }

    /// Takes a free page from an owned segment, adopting an idle heap's segments or claiming a
    /// new segment when none has one.
    unsafe fn fresh_page(&mut self, class: usize) -> Option<*mut Page> {
        let k = page_kind(class);
        let mut seg = self.free_segments[k];
        if seg.is_null() {
            let segment = segment::claim(PAGE_KINDS[k])?;
            // SAFETY: we just claimed the segment.
            unsafe { self.add_segment(segment) };
            seg = segment;
        }
        // SAFETY: `seg` is owned by this heap and has a free page (it is in free_segments).
        unsafe {
            let s = &mut *seg;
            let index = s.free_mask.trailing_zeros() as usize;
            s.free_mask &= !(1u64 << index);
            s.used_pages += 1;
            if s.free_mask == 0 {
                self.unlink_free_segment(seg);
            }
            // Relaxed: fixed for the segment's life.
            let shift = s.page_shift.load(Ordering::Relaxed);
            let (start, size) = Segment::page_area(seg, index, shift);
            let page = &mut s.pages[index];
            // Relaxed: owner-only transitions; walkers read a snapshot.
            let committed = page.committed.load(Ordering::Relaxed) != 0;
            if !committed {
                if !SystemOs.commit(NonNull::new_unchecked(start), size) {
                    self.free_page(page, 0);
                    return None;
                }
                page.committed.store(1, Ordering::Relaxed);
            }
            let block = CLASS_SIZE[class];
            page.init(
                addr_of!(self.delayed).cast_mut(),
                class,
                block,
                start,
                size,
                !committed,
            );
            Some(page)
        }
    }

    /// Links a segment the heap now owns into its lists.
    ///
    /// # Safety
    /// The segment is claimed by (or handed to) this heap and in none of its lists.
    pub(crate) unsafe fn add_segment(&mut self, seg: *mut Segment) {
        // SAFETY: the caller guarantees `seg` is ours; list members are ours.
        unsafe {
            // Release: a later Acquire of the owner (adoption) sees the header writes.
            (*seg).owner.store(self as *mut Heap, Ordering::Release);
            (*seg).prev = null_mut();
            (*seg).next = self.segments;
            if !self.segments.is_null() {
                (*self.segments).prev = seg;
            }
            self.segments = seg;
            if (*seg).free_mask != 0 {
                self.link_free_segment(seg);
            }
        }
    }

    unsafe fn link_free_segment(&mut self, seg: *mut Segment) {
        // SAFETY: `seg` is ours and not in the free list; list members are ours.
        unsafe {
            let k = ((*seg).kind.load(Ordering::Relaxed) - KIND_SMALL) as usize;
            (*seg).free_prev = null_mut();
            (*seg).free_next = self.free_segments[k];
            if !self.free_segments[k].is_null() {
                (*self.free_segments[k]).free_prev = seg;
            }
            self.free_segments[k] = seg;
            (*seg).in_free_list = true;
        }
    }

    unsafe fn unlink_free_segment(&mut self, seg: *mut Segment) {
        // SAFETY: `seg` is ours and in the free list.
        unsafe {
            let k = ((*seg).kind.load(Ordering::Relaxed) - KIND_SMALL) as usize;
            let (prev, next) = ((*seg).free_prev, (*seg).free_next);
            if prev.is_null() {
                self.free_segments[k] = next;
            } else {
                (*prev).free_next = next;
            }
            if !next.is_null() {
                (*next).free_prev = prev;
            }
            (*seg).in_free_list = false;
        }
    }

    /// Gives an empty page (in no queue) back to its segment; an empty segment goes back to
    /// its arena.
    unsafe fn free_page(&mut self, page: *mut Page, now: u64) {
        let seg = Segment::of(page.cast());
        // SAFETY: the page descriptor lives in its segment's header, which we own.
        unsafe {
            let s = &mut *seg;
            let index = (page as usize - addr_of!(s.pages) as usize) / size_of::<Page>();
            // Relaxed: owner-only; walkers read a snapshot.
            (*page).in_use.store(0, Ordering::Relaxed);
            (*page).freed_at = now;
            s.free_mask |= 1u64 << index;
            s.used_pages -= 1;
            if !s.in_free_list {
                self.link_free_segment(seg);
            }
            if s.used_pages == 0 {
                self.unlink_free_segment(seg);
                self.remove_segment(seg);
                segment::release(seg);
            }
        }
    }

    /// Unlinks a segment from the list of owned segments.
    pub(crate) unsafe fn remove_segment(&mut self, seg: *mut Segment) {
        // SAFETY: `seg` is in our segment list.
        unsafe {
            let (prev, next) = ((*seg).prev, (*seg).next);
            if prev.is_null() {
                self.segments = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*seg).next = null_mut();
            (*seg).prev = null_mut();
        }
    }

    /// A local free into a page that has flags set (parked full, or aligned blocks), or a
    /// free handed over from the delayed list.
    unsafe fn free_local_slow(&mut self, page: *mut Page, block: *mut Block) {
        // SAFETY: the page is ours; the block is a live block of it.
        unsafe {
            let p = &mut *page;
            (*block).next = p.local_free;
            p.local_free = block;
            self.count_free();
            // Relaxed: owner-only flag.
            let flags = p.flags.load(Ordering::Relaxed);
            if flags & FLAG_IN_FULL != 0 {
                self.unfull(page);
            }
            if p.used_sub(1) == 0 {
                self.page_emptied(page);
            }
        }
    }

    /// Moves a parked page back to its class queue (it has a free block again).
    unsafe fn unfull(&mut self, page: *mut Page) {
        // SAFETY: the page is ours and in the full list.
        unsafe {
            let p = &mut *page;
            p.set_delayed_state(NO_DELAYED, false);
            // Relaxed: owner-only flag.
            p.flags.store(
                p.flags.load(Ordering::Relaxed) & !FLAG_IN_FULL,
                Ordering::Relaxed,
            );
            self.full.remove(page);
            let class = p.class.load(Ordering::Relaxed) as usize;
            self.queues[class].push_back(page);
        }
    }

    /// A page's last block was freed: stamp it with the purge clock as last read (a store, no
    /// clock read), so a purge pass at least the delay later gives it back if it stayed empty.
    /// A page emptied and refilled in a loop is re-stamped each time it empties and reset
    /// whenever a pass finds it in use, so it is not thrashed.
    #[cold]
    fn page_emptied(&mut self, page: *mut Page) {
        // SAFETY: `page` is one of ours (the caller just freed its last block locally).
        unsafe { (*page).freed_at = self.clock_ms.max(1) };
        self.maybe_purge();
    }

    /// Frees the blocks remote threads parked in our delayed list.
    unsafe fn process_delayed(&mut self) {
        let mut block = self.delayed.take_all();
        while !block.is_null() {
            // SAFETY: blocks on the list are live blocks freed by remote threads; we own
            // them now.
            unsafe {
                let next = (*block).next;
                self.free_block(block);
                block = next;
            }
        }
    }

    /// Frees `block` (a block start, not an interior pointer) from this heap's point of view:
    /// locally if we own its page, remotely otherwise (adopted heaps leave such blocks).
    unsafe fn free_block(&mut self, block: *mut Block) {
        let seg = Segment::of_block(block.cast());
        // SAFETY: the block is live, so its segment and page are.
        unsafe {
            let page = Segment::page_of(seg, block.cast());
            // Relaxed: only this thread makes itself the owner.
            if core::ptr::eq((*seg).owner.load(Ordering::Relaxed), self) {
                self.free_local_slow(page, block);
            } else {
                (*page).free_remote(block);
            }
        }
    }

    /// Runs a purge pass when the purge delay has passed since the last one.
    ///
    /// Only every [`EVENTS_PER_PURGE_CHECK`]th call (slow paths, page-emptied events) reads the
    /// clock: a page holding one block that a loop allocates and frees empties on every free,
    /// and random sizes take a slow path every twenty pairs or so, while even the coarse clock
    /// costs 8 ns here (`CLOCK_MONOTONIC_COARSE`, vDSO): as much as an alloc/free pair.
    fn maybe_purge(&mut self) {
        self.purge_countdown = self.purge_countdown.wrapping_sub(1);
        if self.purge_countdown != 0 {
            return;
        }
        self.purge_countdown = EVENTS_PER_PURGE_CHECK;
        let now = monotonic_ms();
        self.clock_ms = now;
        if now >= self.next_purge {
            // Set before purging: a purge frees blocks, which may call us again.
            self.next_purge = now + crate::options::purge_delay_ms();
            // SAFETY: called on the owning thread.
            unsafe { self.purge(now, false) };
        }
    }

    /// Returns memory to the OS: pages seen empty by two passes at least the purge delay apart
    /// go back to their segment (`force`: at once), free pages idle for the delay are
    /// decommitted (in the same pass, for pages that were already idle that long),
    /// empty segments go back to their arena, old cached large spans to the OS.
    ///
    /// # Safety
    /// Called on the owning thread (or on an idle heap held exclusively).
    pub(crate) unsafe fn purge(&mut self, now: u64, force: bool) {
        let delay = crate::options::purge_delay_ms();
        self.clock_ms = now;
        // Set first: the purge frees blocks, which may ask for a purge again.
        self.next_purge = now + delay;
        // SAFETY: every page and segment reached is owned by this heap.
        unsafe {
            // Remote frees held since the last pass go to their pages now: an active thread
            // holds blocks back no longer than the purge delay.
            self.push_remote_batches();
            self.process_delayed();
            for class in 0..CLASS_COUNT {
                let mut page = self.queues[class].first;
                while !page.is_null() {
                    let p = &mut *page;
                    let next = p.next;
                    // The count says whether the page is empty; its blocks may stay listed
                    // (the page's reuse starts its lists afresh).
                    p.take_remote_count();
                    if p.used.load(Ordering::Relaxed) != 0 {
                        p.freed_at = 0;
                    } else if force || (p.freed_at != 0 && now >= p.freed_at + delay) {
                        self.queues[class].remove(page);
                        if self.pages[class] == page {
                            let first = self.queues[class].first;
                            let current = if first.is_null() { empty_page() } else { first };
                            self.set_current(class, current);
                        }
                        // Stamped with when it emptied: a page idle for the delay is
                        // decommitted by the loop below in this same pass, so one pass after
                        // a quiet spell gives the memory back.
                        let idle_since = if force { now } else { p.freed_at };
                        self.free_page(page, idle_since);
                    } else if p.freed_at == 0 {
                        // Emptied by remote frees (never stamped): count from now.
                        p.freed_at = now.max(1);
                    }
                    page = next;
                }
            }
            // Decommit free pages that stayed unused for the delay.
            let os = SystemOs;
            let os_page = os.page_size();
            let mut seg = self.segments;
            while !seg.is_null() {
                let s = &mut *seg;
                let next = s.next;
                let shift = s.page_shift.load(Ordering::Relaxed);
                let mut mask = s.free_mask;
                while mask != 0 {
                    let index = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    let page = &mut s.pages[index];
                    if page.committed.load(Ordering::Relaxed) != 0
                        && (force || now >= page.freed_at + delay)
                    {
                        let (start, size) = Segment::page_area(seg, index, shift);
                        let aligned = align_up(start as usize, os_page) - start as usize;
                        if size > aligned {
                            os.decommit(NonNull::new_unchecked(start.add(aligned)), size - aligned);
                        }
                        // Only a fully decommitted area reads as zero afterwards (with OS
                        // pages above 4 KiB the first page's head may stay).
                        if aligned == 0 {
                            page.committed.store(0, Ordering::Relaxed);
                        }
                    }
                }
                seg = next;
            }
            self.large_cache.purge(now, delay, force);
        }
    }

    /// Gives back everything a heap can: used by `collect` and at thread exit.
    ///
    /// # Safety
    /// As for [`Heap::purge`].
    pub(crate) unsafe fn collect_all(&mut self) {
        // SAFETY: forwarded.
        unsafe {
            // Our held remote frees first: some may be for our own pages (adopted meanwhile),
            // reaching us through the lists processed next.
            self.push_remote_batches();
            self.process_delayed();
            // Pages parked full may have received remote frees: bring them back first.
            let mut page = self.full.first;
            while !page.is_null() {
                let next = (*page).next;
                // A parked page's `free` and `local_free` are empty (an owner free unparks it).
                if (*page).collect() {
                    self.unfull(page);
                }
                page = next;
            }
            self.purge(monotonic_ms(), true);
        }
    }

    /// Forgets the current pages (the next allocation of each class walks its queue).
    pub(crate) fn reset_current_pages(&mut self) {
        self.pages = [empty_page(); CLASS_COUNT];
        self.direct = [empty_page(); DIRECT_SLOTS];
    }

    /// Moves everything `other` owns into `self` (adoption of an idle heap's pages).
    ///
    /// # Safety
    /// `self` is the calling thread's heap; `other` is an idle heap held exclusively.
    pub(crate) unsafe fn adopt(&mut self, other: &mut Heap) {
        let me = self as *mut Heap;
        let my_list = addr_of!(self.delayed).cast_mut();
        // SAFETY: `other` is held exclusively; its segments and pages become ours.
        unsafe {
            let mut seg = other.segments;
            while !seg.is_null() {
                let next = (*seg).next;
                let s = &mut *seg;
                for page in s.pages.iter_mut() {
                    if page.in_use.load(Ordering::Relaxed) != 0 {
                        // Release: a remote freer that Acquires the state we set next also
                        // sees the new list (see `Page::free_remote`).
                        page.delayed.store(my_list, Ordering::Release);
                        // Wait out freers mid-way on the old list, and re-publish the state
                        // so later freers synchronise with the store above.
                        let state = crate::page::state_of(page.thread_free.load(Ordering::Relaxed));
                        let state = if state == USE_DELAYED {
                            USE_DELAYED
                        } else {
                            NO_DELAYED
                        };
                        page.set_delayed_state(state, false);
                    }
                }
                // Release: as for `add_segment`.
                s.owner.store(me, Ordering::Release);
                s.in_free_list = false;
                s.prev = null_mut();
                s.next = self.segments;
                if !self.segments.is_null() {
                    (*self.segments).prev = seg;
                }
                self.segments = seg;
                if s.free_mask != 0 {
                    self.link_free_segment(seg);
                }
                seg = next;
            }
            other.segments = null_mut();
            other.free_segments = [null_mut(); 3];
            for class in 0..CLASS_COUNT {
                let mut page = other.queues[class].first;
                while !page.is_null() {
                    let next = (*page).next;
                    self.queues[class].push_back(page);
                    page = next;
                }
                other.queues[class] = PageQueue::EMPTY;
            }
            let mut page = other.full.first;
            while !page.is_null() {
                let next = (*page).next;
                self.full.push_back(page);
                page = next;
            }
            other.full = PageQueue::EMPTY;
            other.reset_current_pages();
            // Blocks freed into the old heap's delayed list: ours now (or remote).
            let mut block = other.delayed.take_all();
            while !block.is_null() {
                let next = (*block).next;
                self.free_block(block);
                block = next;
            }
            other.large_cache.release_all();
        }
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory or when
/// the request cannot be served; [`crate::error::last_error`] says which.
#[inline(always)]
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    // Up to 1 KiB, any class serves alignments up to 8, and up to 16 from 16 B on.
    if size <= DIRECT_MAX && (align <= 8 || (align <= NATURAL_ALIGN && size > 8)) {
        let heap = thread::current();
        // SAFETY: `direct` entries are pages this thread owns or the empty page.
        unsafe {
            let page = *(*heap).direct.get_unchecked((size + 7) >> 3);
            let block = take_free::<true>(heap, page);
            if !block.is_null() {
                return block;
            }
            return alloc_slow(heap, class_of(size));
        }
    }
    if align <= NATURAL_ALIGN && size <= CLASS_MAX {
        // SAFETY: class_of(size) < CLASS_COUNT for size <= CLASS_MAX.
        unsafe { alloc_class(thread::current(), class_of(class_size(size, align))) }
    } else {
        alloc_general(size, align)
    }
}

/// [`alloc`]'s fast path alone: the block the calling thread's page of the class has at hand,
/// or null (then [`alloc`] serves the request, by its slow path). Never calls anything, so a
/// caller that keeps a record of each block (allocscope-tracker's shadow) keeps its own fast
/// path free of calls, and of the register saves a call would bring to all of it.
#[inline(always)]
pub fn alloc_fast(size: usize, align: usize) -> *mut u8 {
    let heap = thread::current();
    // SAFETY: `direct` and `pages` entries are pages this thread owns or the empty page;
    // class_of(size) < CLASS_COUNT for size <= CLASS_MAX.
    unsafe {
        if size <= DIRECT_MAX && (align <= 8 || (align <= NATURAL_ALIGN && size > 8)) {
            take_free::<true>(heap, *(*heap).direct.get_unchecked((size + 7) >> 3))
        } else if align <= NATURAL_ALIGN && size <= CLASS_MAX {
            let class = class_of(class_size(size, align));
            take_free::<false>(heap, *(*heap).pages.get_unchecked(class))
        } else {
            null_mut()
        }
    }
}

/// The size whose class serves `size` bytes aligned to `align` (at most 16): every class from
/// 16 B is a multiple of 16, and 8 B blocks are 8-aligned, so only a 16-aligned request of at
/// most 8 bytes needs the next class.
#[inline(always)]
fn class_size(size: usize, align: usize) -> usize {
    if align > 8 && size < align {
        align
    } else {
        size
    }
}

/// Pops `page`'s free list: its first block, or null when it has none (`PREFETCH`: starts
/// loading the next one, see [`prefetch`]).
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap) and `page` one of its pages (or the
/// empty page): a non-null `free` is a block of it.
#[inline(always)]
unsafe fn take_free<const PREFETCH: bool>(heap: *mut Heap, page: *mut Page) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        let block = (*page).free;
        if block.is_null() {
            return null_mut();
        }
        let next = (*block).next;
        if PREFETCH {
            prefetch(next);
        }
        (*page).free = next;
        (*page).used_add(1);
        (*heap).count_alloc();
        block.cast()
    }
}

/// The block the calling thread's next `alloc(size, align)` would take from its fast path
/// now (null when that allocation would take another path): a hint for a caller that keeps
/// records about blocks (allocscope-tracker's block table) to start loading the record of the
/// block it will be handed next, as `alloc` starts loading the block itself. Reads two words
/// and changes nothing; the block may be taken by then (by the allocation of another size of
/// the class), which costs the caller one useless prefetch.
#[inline(always)]
pub fn next_block(size: usize, align: usize) -> *mut u8 {
    if size <= DIRECT_MAX && (align <= 8 || (align <= NATURAL_ALIGN && size > 8)) {
        let heap = thread::current();
        // SAFETY: as in `alloc`: `direct` entries are pages this thread owns or the empty page.
        unsafe {
            (**(*heap).direct.get_unchecked((size + 7) >> 3))
                .free
                .cast()
        }
    } else {
        null_mut()
    }
}

/// Asks for the next free block's cache line, which the next allocation of the class reads
/// (the free list is a chain through block memory, so each allocation would otherwise wait
/// for that line before the next could start). On by default on x86-64; building with
/// `RUSTFLAGS="--cfg allocscope_no_prefetch"` leaves it out, to measure it again. Measured in
/// the C harness (docs/design_document.md): lifo64 11.6 -> 9.0 ns/pair, random 14.6 -> 13.5,
/// larson 19.7 -> 18.3, geometric mean over 14 runs 0.87-0.93 -> 0.82-0.89 of mimalloc's.
#[inline(always)]
fn prefetch(block: *mut Block) {
    #[cfg(all(target_arch = "x86_64", not(allocscope_no_prefetch), not(miri)))]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(block.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(allocscope_no_prefetch), not(miri))))]
    let _ = block;
}

/// Fast path: pop the current page's free list. Falls back to [`alloc_slow`].
///
/// # Safety
/// `heap` is the calling thread's heap (or the empty heap); `class < CLASS_COUNT`.
#[inline(always)]
unsafe fn alloc_class(heap: *mut Heap, class: usize) -> *mut u8 {
    // SAFETY: `pages[class]` is a page this thread owns or the empty page.
    unsafe {
        let block = take_free::<false>(heap, *(*heap).pages.get_unchecked(class));
        if !block.is_null() {
            return block;
        }
        alloc_slow(heap, class)
    }
}

/// Slow path: attach a heap to the thread if needed, take delayed frees, find or make a page.
#[cold]
#[inline(never)]
unsafe fn alloc_slow(heap: *mut Heap, class: usize) -> *mut u8 {
    let heap = if owns_nothing(heap) {
        match thread::attach() {
            Some(h) => h,
            None => {
                record(AllocErrorKind::OutOfMemory);
                return null_mut();
            }
        }
    } else {
        heap
    };
    // SAFETY: `heap` is the calling thread's heap.
    unsafe {
        let h = &mut *heap;
        h.process_delayed();
        h.maybe_purge();
        let Some(page) = h.find_page(class) else {
            record(AllocErrorKind::OutOfMemory);
            return null_mut();
        };
        let block = (*page).free;
        (*page).free = (*block).next;
        (*page).used_add(1);
        h.count_alloc();
        block.cast()
    }
}

/// For each class, the range of `direct` slots whose requests it serves (empty above 1 KiB).
const DIRECT_RANGE: [(u16, u16); CLASS_COUNT] = direct_ranges();

const fn direct_ranges() -> [(u16, u16); CLASS_COUNT] {
    let mut ranges = [(0u16, 0u16); CLASS_COUNT];
    let mut slot = 0;
    while slot < DIRECT_SLOTS {
        let class = crate::size_class::class_of_const(slot * 8);
        if ranges[class].1 == 0 {
            ranges[class].0 = slot as u16;
        }
        ranges[class].1 = slot as u16 + 1;
        slot += 1;
    }
    ranges
}

/// Alignment above 16, or a size above the largest class.
#[inline(never)]
fn alloc_general(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        record(AllocErrorKind::InvalidRequest);
        return null_mut();
    }
    if align <= NATURAL_ALIGN {
        return large::alloc(size, align);
    }
    if align <= PAGE_START_ALIGN && size <= CLASS_MAX {
        // A class whose size is a multiple of the alignment gives aligned blocks (page starts
        // are 4 KiB-aligned).
        let class = class_of(size.max(align));
        if CLASS_SIZE[class] % align == 0 {
            // SAFETY: class < CLASS_COUNT.
            return unsafe { alloc_class(thread::current(), class) };
        }
    }
    // Over-allocate and align inside the block; the page is marked so frees find the start.
    match size.checked_add(align - 1) {
        Some(padded) if padded <= CLASS_MAX && align <= PAGE_START_ALIGN => {
            // SAFETY: class_of(padded) < CLASS_COUNT.
            let p = unsafe { alloc_class(thread::current(), class_of(padded)) };
            if p.is_null() {
                return p;
            }
            let aligned = p.wrapping_add(align_up(p as usize, align) - p as usize);
            if aligned != p {
                // SAFETY: `p` is a live block of ours, so its page is.
                unsafe {
                    let page = Segment::page_of(Segment::of(p), p);
                    // Relaxed: owner-only write; remote freers get the flag through the
                    // program's hand-off of the block.
                    let flags = (*page).flags.load(Ordering::Relaxed);
                    if flags & FLAG_HAS_ALIGNED == 0 {
                        (*page)
                            .flags
                            .store(flags | FLAG_HAS_ALIGNED, Ordering::Relaxed);
                        // The remote freers' copy, on their line (written once per page use,
                        // so the line they read stays shared).
                        (*page).remote_aligned.store(1, Ordering::Relaxed);
                    }
                }
            }
            aligned
        }
        _ => large::alloc(size, align),
    }
}

/// Allocates zeroed memory; skips the memset for blocks known to be fresh OS memory.
#[inline]
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let p = alloc(size, align);
    if p.is_null() {
        return p;
    }
    let seg = Segment::of_block(p);
    // SAFETY: `p` is a live block of `size` bytes of ours.
    unsafe {
        // Relaxed: fixed for the segment's life.
        if (*seg).kind.load(Ordering::Relaxed) == KIND_LARGE {
            if !large::is_fresh(seg) {
                zero(p, size);
            }
            return p;
        }
        let page = Segment::page_of(seg, p);
        if (*page).free_is_zero {
            // The block came from a fresh page: only its link word was written.
            zero(p, size.min(size_of::<Block>()));
        } else {
            zero(p, size);
        }
    }
    p
}

/// Frees a block. Null is ignored.
///
/// # Safety
/// `ptr` is null or a live block returned by this heap (any thread's), not used afterwards.
#[inline(always)]
pub unsafe fn free(ptr: *mut u8) {
    if ptr.is_null() {
        return;
    }
    let seg = Segment::of_block(ptr);
    let heap = thread::current();
    // SAFETY: `ptr` is a live block, so its segment header and page descriptor are.
    unsafe {
        let page = Segment::page_of(seg, ptr);
        // Relaxed: a segment's owner is only ever set to a thread's own heap by that thread
        // (or while that heap is idle), so comparing with our heap cannot give a false match.
        if (*seg).owner.load(Ordering::Relaxed) == heap
            && (*page).flags.load(Ordering::Relaxed) == 0
        {
            let block = ptr.cast::<Block>();
            (*block).next = (*page).local_free;
            (*page).local_free = block;
            (*heap).count_free();
            if (*page).used_sub(1) == 0 {
                (*heap).page_emptied(page);
            }
            return;
        }
        free_slow(seg, page, ptr, heap);
    }
}

/// Large blocks, aligned (interior) pointers, parked pages, and remote frees.
#[inline(never)]
unsafe fn free_slow(seg: *mut Segment, page: *mut Page, ptr: *mut u8, heap: *mut Heap) {
    // SAFETY: the caller's `free` contract: `ptr` is a live block of `page` in `seg`.
    unsafe {
        // Relaxed: fixed for the segment's life.
        if (*seg).kind.load(Ordering::Relaxed) == KIND_LARGE {
            large::free(seg, heap);
            return;
        }
        // Relaxed (both flags): HAS_ALIGNED was set before the block was handed out, and the
        // program's hand-off of the block to this thread carries it. A remote freer reads the
        // copy on the page's remote line, not `flags` on the owner's line (see `Page`).
        if (*seg).owner.load(Ordering::Relaxed) == heap {
            let flags = (*page).flags.load(Ordering::Relaxed);
            let block = if flags & FLAG_HAS_ALIGNED != 0 {
                (*page).block_start(ptr)
            } else {
                ptr
            };
            (*heap).free_local_slow(page, block.cast());
        } else {
            let block = if (*page).remote_aligned.load(Ordering::Relaxed) != 0 {
                (*page).block_start(ptr)
            } else {
                ptr
            };
            free_remote_block(page, block.cast(), heap);
        }
    }
}

/// A free of a block of `page`, which another heap owns: held back in the thread's batch for
/// the page. A thread with no heap yet gets one (a consumer thread may free and never
/// allocate) unless the heap pool is busy; one whose heap was detached at exit pushes the
/// block at once.
///
/// # Safety
/// `block` is a live block start of `page`, freed once; `heap` is the calling thread's heap
/// or a sentinel.
#[inline]
unsafe fn free_remote_block(page: *mut Page, block: *mut Block, mut heap: *mut Heap) {
    if heap == empty_heap() {
        heap = thread::try_attach().unwrap_or(heap);
    }
    // SAFETY: forwarded; a heap that is not a sentinel is the calling thread's.
    unsafe {
        if owns_nothing(heap) {
            (*page).free_remote(block);
        } else {
            (*heap).free_remote_batched(page, block);
            (*heap).count_free();
        }
    }
}

/// Bytes usable in the block at `ptr` (at least the size asked for).
///
/// # Safety
/// `ptr` is a live block returned by this heap.
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    let seg = Segment::of_block(ptr);
    // SAFETY: `ptr` is live: its segment and page are.
    unsafe {
        let page = Segment::page_of(seg, ptr);
        let p = &*page;
        // Relaxed: fixed while the block is live.
        let size = p.block_size.load(Ordering::Relaxed);
        if (*seg).kind.load(Ordering::Relaxed) == KIND_LARGE {
            return size - (ptr as usize - p.start as usize);
        }
        let start = if p.flags.load(Ordering::Relaxed) & FLAG_HAS_ALIGNED != 0 {
            p.block_start(ptr.cast_mut())
        } else {
            ptr.cast_mut()
        };
        size - (ptr as usize - start as usize)
    }
}

/// Resizes a block, in place when the new size still fits its block without wasting more
/// than half of it. Null `ptr` allocates; on failure the old block is untouched and null is
/// returned.
///
/// # Safety
/// `ptr` is null or a live block of this heap; `align` is the alignment it was allocated with.
pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    if ptr.is_null() {
        return alloc(new_size, align);
    }
    // SAFETY: forwarded from the caller.
    let usable = unsafe { usable_size(ptr) };
    if new_size <= usable && new_size >= usable / 2 {
        return ptr;
    }
    // A large block grows by moving its pages, not its bytes.
    #[cfg(target_os = "linux")]
    if new_size > usable {
        let seg = Segment::of_block(ptr);
        // SAFETY: `ptr` is live, so its header is; a large block's pointer is its start.
        unsafe {
            // Relaxed: fixed for the segment's life.
            if (*seg).kind.load(Ordering::Relaxed) == KIND_LARGE
                && (*seg).pages[0].start == ptr
                && (ptr as usize) % align == 0
                && align <= segment::SEGMENT_SIZE
            {
                // The block keeps its offset from a 4 MiB-aligned base: still aligned (up to
                // 4 MiB; a larger alignment is kept by the copy below).
                let grown = large::grow(seg, new_size);
                if !grown.is_null() {
                    return grown;
                }
            }
        }
    }
    // A block growing past the medium classes becomes a large block at once: growing it
    // again then moves pages (above) instead of copying it from big-page class to class.
    let new = if cfg!(target_os = "linux") && new_size > usable && new_size > MEDIUM_MAX {
        large::alloc(new_size, align)
    } else {
        alloc(new_size, align)
    };
    if !new.is_null() {
        // SAFETY: both blocks are live and distinct; we copy what both hold.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, new, usable.min(new_size));
            free(ptr);
        }
    }
    new
}

/// Returns the calling thread's free memory to the OS now (empty pages, unused segments,
/// cached large spans) instead of after the purge delay.
pub fn collect() {
    let heap = thread::current();
    if !owns_nothing(heap) {
        // SAFETY: the calling thread's heap.
        unsafe { (*heap).collect_all() };
    }
    thread::collect_idle();
}

/// The size in bytes of the header before the first page of a segment (for tests and docs).
pub const fn segment_header_size() -> usize {
    HEADER_SIZE
}

pub use crate::segment::in_arena;

/// The alignment of every arena (its size): an address's offset in its arena is its low bits.
pub const ARENA_ALIGN: usize = crate::segment::ARENA_SIZE;

/// Whether the segment holding `ptr` belongs to the calling thread's heap: whether a free of a
/// block there would take the owner's path. One load of the segment header (the line that free
/// reads first) and of the thread's heap pointer.
///
/// # Safety
/// `ptr` is in an arena ([`in_arena`]): its segment header is then mapped and committed.
#[inline(always)]
pub unsafe fn owned_here(ptr: *const u8) -> bool {
    let seg = crate::segment::Segment::of(ptr);
    // SAFETY: the caller's contract: `seg` is a segment header of an arena. Relaxed: a
    // segment's owner is only ever set to a thread's own heap by that thread (or while that
    // heap is idle), so comparing with our heap cannot give a false match (as in `free`).
    unsafe { (*seg).owner.load(Ordering::Relaxed) == thread::current() }
}

/// Whether the arena page holding `addr` belongs to a size class now (holds blocks); `false`
/// for a page or segment given back (its memory may be decommitted: it reads as zero), `None`
/// outside the arenas. A snapshot for describing bad frees: slow, and racy with the owner.
pub fn arena_page_in_use(addr: usize) -> Option<bool> {
    use crate::segment::{Segment, KIND_BIG, KIND_MEDIUM, KIND_SMALL};
    if !in_arena(addr) {
        return None;
    }
    let seg = Segment::of(addr as *const u8);
    // SAFETY: `seg` is a segment header of an arena: always committed (zero for a segment never
    // claimed, which reads as KIND_FREE). Relaxed loads: a snapshot.
    unsafe {
        let kind = (*seg).kind.load(Ordering::Relaxed);
        if ![KIND_SMALL, KIND_MEDIUM, KIND_BIG].contains(&kind) {
            return Some(false);
        }
        let shift = (*seg).page_shift.load(Ordering::Relaxed);
        let index = (addr - seg as usize) >> shift;
        let count = (*seg).page_count.load(Ordering::Relaxed) as usize;
        let page = (*seg).pages.get(index).filter(|_| index < count);
        Some(page.is_some_and(|page| page.in_use.load(Ordering::Relaxed) != 0))
    }
}

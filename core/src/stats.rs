//! What the heap can tell about itself: totals through [`stats`], and a walk over every page of
//! every arena through [`walk_pages`] (the tracker's fragmentation map is drawn from it).
//!
//! Both read other threads' counters with relaxed loads: the figures are a consistent-enough
//! snapshot for statistics, never used for decisions.

/// One size class's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: usize,
    /// Blocks handed out and not yet freed (as seen by the owning heaps).
    pub live_blocks: usize,
    /// Pages currently assigned to the class.
    pub pages: usize,
}

/// Heap-wide totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in live blocks, counted by block size (small and medium) or mapping size (large).
    pub live_bytes: usize,
    /// Bytes of address space that may be backed by physical memory (committed pages).
    pub committed_bytes: usize,
    /// Bytes of address space reserved from the OS.
    pub reserved_bytes: usize,
    /// Allocations served since start.
    pub allocs: u64,
    /// Frees served since start (local and remote).
    pub frees: u64,
    /// Large (directly mapped) blocks alive.
    pub large_blocks: usize,
    /// Per size class figures, indexed by class.
    pub classes: [ClassStats; crate::size_class::CLASS_COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            live_bytes: 0,
            committed_bytes: 0,
            reserved_bytes: 0,
            allocs: 0,
            frees: 0,
            large_blocks: 0,
            classes: [ClassStats::default(); crate::size_class::CLASS_COUNT],
        }
    }
}

/// One page of one arena, as the fragmentation map shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// Address of the page's first byte.
    pub address: usize,
    /// Bytes the page spans.
    pub size: usize,
    /// Size class index, or `None` for an unused page or a large block.
    pub class: Option<u8>,
    /// Block size in bytes (0 for an unused page).
    pub block_size: usize,
    /// Blocks the page can hold.
    pub capacity: u32,
    /// Blocks in use (remote frees not yet collected count as used).
    pub used: u32,
    /// Whether the page's memory is committed.
    pub committed: bool,
}

/// The heap's figures now: walks every arena's segments and every heap's counters.
/// Allocates nothing.
pub fn stats() -> Stats {
    use crate::size_class::{CLASS_COUNT, CLASS_SIZE};
    let mut s = Stats::default();
    for (class, c) in s.classes.iter_mut().enumerate().take(CLASS_COUNT) {
        c.block_size = CLASS_SIZE[class];
    }
    walk_pages(&mut |page: &PageInfo| {
        if page.committed {
            s.committed_bytes += page.size;
        }
        if let Some(class) = page.class {
            let c = &mut s.classes[class as usize];
            c.pages += 1;
            c.live_blocks += page.used as usize;
            s.live_bytes += page.used as usize * page.block_size;
        }
    });
    let mut segments = 0;
    crate::segment::for_each_claimed(|_| segments += 1);
    s.committed_bytes += segments * crate::segment::HEADER_SIZE;
    let (mapped, live, blocks) = crate::large::totals();
    s.live_bytes += live;
    s.large_blocks = blocks;
    s.committed_bytes += mapped;
    s.reserved_bytes = crate::segment::reserved_bytes() + mapped;
    crate::thread::for_each_heap(|h| {
        let (a, f) = h.op_counts();
        s.allocs += a as u64;
        s.frees += f as u64;
    });
    s
}

/// Calls `f` for every page of every segment in use, in address order within each arena.
/// Free pages are reported with `class: None`. Allocates nothing; the figures are a snapshot
/// taken without stopping other threads.
pub fn walk_pages(f: &mut dyn FnMut(&PageInfo)) {
    use crate::segment::{Segment, KIND_BIG, KIND_LARGE, KIND_MEDIUM, KIND_SMALL};
    use crate::sync::Ordering;
    crate::segment::for_each_claimed(|seg| {
        // SAFETY: claimed segments' headers are committed memory for the arena's life; every
        // field read here is an atomic (a relaxed snapshot).
        let s = unsafe { &*seg };
        let kind = s.kind.load(Ordering::Relaxed);
        if ![KIND_SMALL, KIND_MEDIUM, KIND_BIG, KIND_LARGE].contains(&kind) {
            return;
        }
        let shift = s.page_shift.load(Ordering::Relaxed);
        let count = (s.page_count.load(Ordering::Relaxed) as usize).min(s.pages.len());
        for (index, page) in s.pages.iter().enumerate().take(count) {
            let (start, size) = Segment::page_area(seg, index, shift);
            let in_use = page.in_use.load(Ordering::Relaxed) != 0;
            let capacity = if in_use {
                page.reserved.load(Ordering::Relaxed)
            } else {
                0
            };
            let info = PageInfo {
                address: start as usize,
                size,
                class: in_use.then(|| page.class.load(Ordering::Relaxed)),
                block_size: if in_use {
                    page.block_size.load(Ordering::Relaxed)
                } else {
                    0
                },
                capacity,
                // Blocks the owner took off its remote list before their freer's count
                // arrived count twice for a moment (see `Page::collect_remote`): never more
                // than the page holds.
                used: if in_use {
                    page.used.load(Ordering::Relaxed).min(capacity)
                } else {
                    0
                },
                committed: page.committed.load(Ordering::Relaxed) != 0,
            };
            f(&info);
        }
    });
}

/// Calls `f(address, length)` for every region of the heap's own metadata: the heaps
/// themselves (current pages, queues, caches) and the header of every segment in use (page
/// descriptors, whose free lists point into the pages). A leak checker that scans memory for
/// pointers skips these, or every block would look referenced. The header of a large block
/// (at the 4 MiB-aligned start of its own mapping, before the block) is not listed: it points
/// only at its own block. Allocates nothing.
pub fn for_each_metadata_region(f: &mut dyn FnMut(usize, usize)) {
    crate::thread::for_each_heap(|h| f(h as *const _ as usize, size_of::<crate::heap::Heap>()));
    crate::segment::for_each_claimed(|seg| f(seg as usize, crate::segment::HEADER_SIZE));
}

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    pub classes: Vec<ClassStats>,
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

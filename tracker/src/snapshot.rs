//! Heap snapshots for the trace: the core allocator's totals and page walk (for the viewer's
//! fragmentation map) plus the tracker's own view of live blocks and overhead.
//!
//! May touch: `allocscope_core::stats` (read-only), [`crate::trace_format`].

use crate::trace_format::{ClassTotals, HeapSnapshot, HeapTotals, PageRecord};

/// The tracker's own figures folded into a snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrackerFigures {
    pub(crate) live_blocks: u64,
    pub(crate) live_bytes: u64,
    pub(crate) overhead_bytes: u64,
}

/// Reads the core heap now. When the tracker wraps another allocator (`System`), the core's
/// figures describe only what the program allocated through the core directly.
pub(crate) fn take(time_ns: u64, figures: TrackerFigures) -> HeapSnapshot {
    let stats = allocscope_core::stats::stats();
    let mut pages = Vec::new();
    allocscope_core::stats::walk_pages(&mut |p| {
        pages.push(PageRecord {
            address: p.address as u64,
            size: p.size as u64,
            class: p.class,
            block_size: p.block_size as u64,
            capacity: p.capacity,
            used: p.used,
            committed: p.committed,
        })
    });
    HeapSnapshot {
        time_ns,
        heap: HeapTotals {
            live_bytes: stats.live_bytes as u64,
            committed_bytes: stats.committed_bytes as u64,
            reserved_bytes: stats.reserved_bytes as u64,
            allocs: stats.allocs,
            frees: stats.frees,
            large_blocks: stats.large_blocks as u64,
            classes: stats
                .classes
                .iter()
                .map(|c| ClassTotals {
                    block_size: c.block_size as u64,
                    live_blocks: c.live_blocks as u64,
                    pages: c.pages as u64,
                })
                .collect(),
        },
        pages,
        tracked_live_blocks: figures.live_blocks,
        tracked_live_bytes: figures.live_bytes,
        overhead_bytes: figures.overhead_bytes,
    }
}

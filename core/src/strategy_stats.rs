//! The figures every strategy allocator reports ([`StrategyStats`]) and the plain (single-owner)
//! counters the pool, stack and buddy keep them in.
//!
//! May touch: [`crate::error`] (misuse is recorded there as well as counted).

use core::cell::Cell;

use crate::error::{record, AllocErrorKind};

/// Whether the pool, the stack and the buddy count their allocations and frees (the `stats`
/// feature); without it their `allocations` / `deallocations` read 0.
pub const OPERATIONS_COUNTED: bool = cfg!(feature = "stats");

/// A strategy allocator's figures at one moment.
///
/// `fragmentation` is the share of free memory the allocator cannot use for its next request;
/// each strategy's `stats()` says what that means for it (external fragmentation for the buddy,
/// holes for the stack, wasted block tails for the pool, blocks stranded in caches or in partly
/// used slabs for the lock-free pool and the slab cache).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StrategyStats {
    /// Bytes handed out and not yet freed (whole blocks, so it includes rounding).
    pub used_bytes: usize,
    /// Bytes the allocator holds and could hand out now (or after a reset, for holes).
    pub free_bytes: usize,
    /// The highest `used_bytes` seen.
    pub peak_used_bytes: usize,
    /// Successful allocations since creation. The pool, the stack and the buddy count them
    /// only with the `stats` feature (0 without it); the lock-free pool and the slab cache
    /// derive them from what their caches count anyway.
    pub allocations: u64,
    /// Frees accepted since creation (counted as `allocations` are).
    pub deallocations: u64,
    /// Allocations that returned `None` / `AllocError` (exhaustion or an invalid request).
    pub failures: u64,
    /// Frees refused or reported: double frees, foreign pointers, out-of-order stack frees.
    pub misuse: u64,
    /// Between 0 and 1: the share of free memory that cannot serve the next request.
    pub fragmentation: f64,
}

impl StrategyStats {
    /// Allocations plus frees.
    pub fn operations(&self) -> u64 {
        self.allocations + self.deallocations
    }
}

/// `part / whole` as a ratio in `0..=1`, 0 when `whole` is 0.
pub(crate) fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part.min(whole) as f64) / (whole as f64)
    }
}

/// Counters of an allocator used by one thread at a time (pool, stack, buddy): plain cells,
/// no atomics on the fast path. There is no byte total: each allocator derives its used bytes
/// and its peak from state it keeps anyway (carved blocks and the free list, the top, blocks
/// out of the bitmaps). The operation counts are written on the fast paths only with the
/// `stats` feature: a count in memory is a dependency chain from one call to the next, which
/// costs a pool more than its allocation and free together.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allocations: Cell<u64>,
    pub(crate) deallocations: Cell<u64>,
    pub(crate) failures: Cell<u64>,
    pub(crate) misuse: Cell<u64>,
    /// The high-water mark, in the unit the allocator says (bytes or blocks).
    pub(crate) peak: Cell<usize>,
}

impl Counters {
    /// Zeroed counters, usable in a `static` initialiser.
    pub(crate) const fn new() -> Self {
        Self {
            allocations: Cell::new(0),
            deallocations: Cell::new(0),
            failures: Cell::new(0),
            misuse: Cell::new(0),
            peak: Cell::new(0),
        }
    }

    /// Counts an allocation (the `stats` feature's fast-path count).
    #[cfg(feature = "stats")]
    #[inline(always)]
    pub(crate) fn count_allocation(&self) {
        self.allocations.set(self.allocations.get() + 1);
    }

    /// Counts a free (the `stats` feature's fast-path count).
    #[cfg(feature = "stats")]
    #[inline(always)]
    pub(crate) fn count_deallocation(&self) {
        self.deallocations.set(self.deallocations.get() + 1);
    }

    /// An allocation failed: counted here and recorded for [`crate::error::last_error`].
    #[cold]
    pub(crate) fn on_failure(&self, kind: AllocErrorKind) {
        self.failures.set(self.failures.get() + 1);
        record(kind);
    }

    /// A free was refused: counted here and recorded for [`crate::error::last_error`].
    #[cold]
    pub(crate) fn on_misuse(&self, kind: AllocErrorKind) {
        self.misuse.set(self.misuse.get() + 1);
        record(kind);
    }

    /// The figures, with what only the allocator knows filled in by the caller (the peak is
    /// the field's value: callers keeping it in another unit overwrite it).
    pub(crate) fn snapshot(
        &self,
        used_bytes: usize,
        free_bytes: usize,
        fragmentation: f64,
    ) -> StrategyStats {
        StrategyStats {
            used_bytes,
            free_bytes,
            peak_used_bytes: self.peak.get(),
            allocations: self.allocations.get(),
            deallocations: self.deallocations.get(),
            failures: self.failures.get(),
            misuse: self.misuse.get(),
            fragmentation,
        }
    }
}

//! Which allocation a free ends, when the trace's events are not in time order: each thread's
//! batch is in order, but batches of different threads are written as they fill, so a batch of
//! frees (a consumer thread's) may be read before the batch of the allocations it frees (the
//! producer's), or after the producer's next batch. By then the allocator has usually handed
//! the same address out several times. Keeping one block and one early free per address, as
//! this model first did, paired the first allocation with the last free and left the rest
//! "live" for good: a producer/consumer program of 200,000 blocks showed 176,049 of them still
//! allocated at exit (5 really were).
//!
//! At one address allocations and frees alternate in true time, so the pairing is greedy and
//! exact whatever order the batches come in: a free ends the latest block allocated at or
//! before it, an allocation is ended by the earliest free at or after it already read.
//!
//! May touch: nothing but its parent's `Block` and hasher.

use std::collections::HashMap;

use super::{Block, IdHash};

/// Live blocks and early frees by address.
#[derive(Debug, Default)]
pub(super) struct Pairing {
    /// The live block at each address (the only one, but for `more_live`).
    live: HashMap<u64, Block, IdHash>,
    /// Further live blocks at addresses that have one in `live`: allocated again before the
    /// free of the earlier one was read. Rare, and a few per address.
    more_live: HashMap<u64, Vec<Block>, IdHash>,
    /// Frees read before their allocation: address -> (time, size) of each.
    early_frees: HashMap<u64, Vec<(u64, u64)>, IdHash>,
}

impl Pairing {
    /// An allocation at `t`: takes the free already read that ends it (the earliest at or
    /// after `t`) and returns its time.
    pub(super) fn take_early_free(&mut self, addr: u64, t: u64) -> Option<u64> {
        let frees = self.early_frees.get_mut(&addr)?;
        let (i, &(free_t, _)) = frees
            .iter()
            .enumerate()
            .filter(|(_, f)| f.0 >= t)
            .min_by_key(|(_, f)| f.0)?;
        frees.swap_remove(i);
        if frees.is_empty() {
            self.early_frees.remove(&addr);
        }
        Some(free_t)
    }

    /// A block allocated and not (yet) freed.
    pub(super) fn insert_live(&mut self, addr: u64, block: Block) {
        if let Some(block) = self.live.insert(addr, block) {
            // Put the one that was there back beside the new one.
            self.more_live.entry(addr).or_default().push(block);
        }
    }

    /// A free at `t`: takes the live block it ends (the latest allocated at or before `t`).
    pub(super) fn take_live(&mut self, addr: u64, t: u64) -> Option<Block> {
        let Some(more) = self.more_live.get_mut(&addr) else {
            // The common case: one block at the address (an allocation read after this free
            // cannot be the one it ends).
            return match self.live.get(&addr) {
                Some(b) if b.time_ns <= t => self.live.remove(&addr),
                _ => None,
            };
        };
        let latest_more = more
            .iter()
            .enumerate()
            .filter(|(_, b)| b.time_ns <= t)
            .max_by_key(|(_, b)| b.time_ns)
            .map(|(i, b)| (i, b.time_ns));
        let primary = self.live.get(&addr).map(|b| b.time_ns).filter(|&p| p <= t);
        let taken = match (primary, latest_more) {
            (Some(p), Some((_, m))) if p >= m => self.take_primary(addr),
            (Some(_), None) => self.take_primary(addr),
            (_, Some((i, _))) => {
                let more = self.more_live.get_mut(&addr)?;
                let b = more.swap_remove(i);
                if more.is_empty() {
                    self.more_live.remove(&addr);
                }
                Some(b)
            }
            (None, None) => None,
        };
        taken
    }

    /// Removes the block in `live` at `addr`, moving one of `more_live` there if any.
    fn take_primary(&mut self, addr: u64) -> Option<Block> {
        let block = self.live.remove(&addr)?;
        if let Some(more) = self.more_live.get_mut(&addr) {
            if let Some(next) = more.pop() {
                self.live.insert(addr, next);
            }
            if more.is_empty() {
                self.more_live.remove(&addr);
            }
        }
        Some(block)
    }

    /// A free whose allocation has not been read (another thread's batch comes later, or it
    /// was made before the trace began).
    pub(super) fn add_early_free(&mut self, addr: u64, t: u64, size: u64) {
        self.early_frees.entry(addr).or_default().push((t, size));
    }

    /// Every live block.
    pub(super) fn live_blocks(&self) -> impl Iterator<Item = &Block> {
        self.live.values().chain(self.more_live.values().flatten())
    }

    /// Frees not paired (so far).
    pub(super) fn early_free_count(&self) -> usize {
        self.early_frees.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(t: u64) -> Block {
        Block {
            size: 16,
            stack: 1,
            index_hint: 0,
            time_ns: t,
            counted: true,
        }
    }

    /// At one address, true order A1 F1 A2 F2 A3 F3 (times 10, 15, 20, 25, 30, 35), read in
    /// every batch order a producer (the A's) and a consumer (the F's) can give: each free
    /// ends the right allocation.
    #[test]
    fn frees_and_allocations_pair_in_true_time_whatever_order_they_are_read() {
        let allocs = [10u64, 20, 30];
        let frees = [15u64, 25, 35];
        // Read orders: all frees first, all allocations first, and interleavings by batch.
        let orders: [&[(bool, usize)]; 4] = [
            &[
                (false, 0),
                (false, 1),
                (false, 2),
                (true, 0),
                (true, 1),
                (true, 2),
            ],
            &[
                (true, 0),
                (true, 1),
                (true, 2),
                (false, 0),
                (false, 1),
                (false, 2),
            ],
            &[
                (true, 0),
                (false, 0),
                (false, 1),
                (false, 2),
                (true, 1),
                (true, 2),
            ],
            &[
                (true, 1),
                (true, 2),
                (false, 0),
                (false, 1),
                (true, 0),
                (false, 2),
            ],
        ];
        for order in orders {
            let mut p = Pairing::default();
            let mut pairs = Vec::new();
            for &(is_alloc, i) in order {
                if is_alloc {
                    match p.take_early_free(0x40, allocs[i]) {
                        Some(f) => pairs.push((allocs[i], f)),
                        None => p.insert_live(0x40, block(allocs[i])),
                    }
                } else {
                    match p.take_live(0x40, frees[i]) {
                        Some(b) => pairs.push((b.time_ns, frees[i])),
                        None => p.add_early_free(0x40, frees[i], 16),
                    }
                }
            }
            pairs.sort_unstable();
            assert_eq!(
                pairs,
                vec![(10, 15), (20, 25), (30, 35)],
                "read order {order:?}"
            );
            assert_eq!(p.live_blocks().count(), 0);
            assert_eq!(p.early_free_count(), 0);
        }
    }

    #[test]
    fn a_free_of_a_block_allocated_before_the_trace_stays_unpaired() {
        let mut p = Pairing::default();
        assert!(p.take_live(0x80, 5).is_none());
        p.add_early_free(0x80, 5, 32);
        // A later allocation at the address is not ended by that earlier free.
        assert_eq!(p.take_early_free(0x80, 9), None);
        p.insert_live(0x80, block(9));
        assert_eq!(p.early_free_count(), 1);
        assert_eq!(p.live_blocks().count(), 1);
    }
}

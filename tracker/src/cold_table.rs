//! The record of every block the tracker handed out: address -> size, alignment, state and
//! stacks. It is what makes double and invalid frees certain to be caught, what the layout check
//! at dealloc compares against, and what the leak check and canary scan walk.
//!
//! Design: 64 shards chosen by a hash of the address, each an open-addressing table (linear
//! probing, backward-shift deletion) behind its own spin lock. A holder does a few loads and
//! stores, never allocates and never calls out, so a lock is held for tens of nanoseconds.
//! Shard memory comes from [`crate::os_memory`] (counted as overhead, skipped by the leak scan).
//!
//! A freed block's entry stays (state `Freed`, with its free stack) until the address is handed
//! out again or the shard needs the room: that is how a second free of the same pointer is told
//! apart from a free of a pointer that was never allocated. Internal blocks (allocated by the
//! tracker's own code while its re-entrancy flag was set) are recorded too, so they can be freed
//! from any context, and are removed outright when freed.
//!
//! May touch: [`crate::spin`], [`crate::os_memory`].

use crate::os_memory::MappedArray;
use crate::spin::SpinLock;

/// Shards (a power of two).
const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Slots per shard at first use.
const INITIAL_SLOTS: usize = 512;
/// Above this many slots a shard drops freed entries instead of growing for them.
const MAX_SLOTS_KEEPING_FREED: usize = 1 << 20;

/// Block states (`u8` so that an all-zero slot is valid).
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
    /// Thread that allocated.
    pub(crate) alloc_thread: u32,
    /// Thread that freed.
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

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The block's address (0 = empty slot).
    key: usize,
    info: BlockInfo,
}

/// Figures summed over the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableTotals {
    pub(crate) live_blocks: usize,
    pub(crate) live_bytes: usize,
    pub(crate) internal_blocks: usize,
    pub(crate) internal_bytes: usize,
    pub(crate) table_bytes: usize,
}

struct ShardData {
    slots: Option<MappedArray<Slot>>,
    /// Occupied slots (any state).
    used: usize,
    /// Slots in state FREED.
    freed: usize,
    live_blocks: usize,
    live_bytes: usize,
    internal_blocks: usize,
    internal_bytes: usize,
}

#[repr(align(128))]
struct Shard {
    data: SpinLock<ShardData>,
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

/// The sharded address -> block table.
pub(crate) struct BlockTable {
    shards: [Shard; SHARDS],
}

#[inline]
fn hash(key: usize) -> u64 {
    // Blocks are at least 8-aligned: drop the low bits, then spread with Fibonacci hashing.
    ((key >> 3) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl BlockTable {
    pub(crate) fn new() -> Self {
        BlockTable {
            shards: core::array::from_fn(|_| Shard {
                data: SpinLock::new(ShardData {
                    slots: None,
                    used: 0,
                    freed: 0,
                    live_blocks: 0,
                    live_bytes: 0,
                    internal_blocks: 0,
                    internal_bytes: 0,
                }),
            }),
        }
    }

    #[inline]
    fn shard(&self, key: usize) -> &SpinLock<ShardData> {
        &self.shards[(hash(key) >> (64 - SHARD_BITS)) as usize].data
    }

    /// Records a newly handed-out block (replacing a stale entry for the same address). Returns
    /// `false` when the table cannot grow (the OS refused memory): the block is then untracked.
    pub(crate) fn insert(&self, key: usize, info: BlockInfo) -> bool {
        let mut shard = self.shard(key).lock();
        if !shard.reserve_one() {
            return false;
        }
        let (index, found) = shard.find(key);
        let slots = shard.slots_mut();
        let old = slots[index];
        slots[index] = Slot { key, info };
        if found {
            shard.uncount(&old.info);
        } else {
            shard.used += 1;
        }
        shard.count(&info);
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
        let released = self.release_with(key, free_thread, |_| new_state);
        if free_stack != 0 {
            self.set_free_stack(key, free_stack);
        }
        released
    }

    /// As [`BlockTable::release`], with the new state chosen from the entry (quarantine or
    /// not) under the same lock, and no free stack yet ([`BlockTable::set_free_stack`]).
    pub(crate) fn release_with(
        &self,
        key: usize,
        free_thread: u32,
        new_state: impl FnOnce(&BlockInfo) -> u8,
    ) -> Release {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        if !found {
            return Release::Unknown;
        }
        let old = shard.slots_mut()[index].info;
        if old.state != state::LIVE {
            return Release::AlreadyFreed(old);
        }
        shard.uncount(&old);
        if old.is_internal() {
            shard.remove_at(index);
        } else {
            let next = new_state(&old);
            let info = &mut shard.slots_mut()[index].info;
            info.state = next;
            info.free_stack = 0;
            info.free_thread = free_thread;
            let info = *info;
            shard.count(&info);
        }
        Release::Was(old)
    }

    /// Records the free stack of a freed block.
    pub(crate) fn set_free_stack(&self, key: usize, free_stack: u32) {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        if found {
            shard.slots_mut()[index].info.free_stack = free_stack;
        }
    }

    /// Moves the block at `key` from `from` to `to` state; `false` if it was not in `from`.
    pub(crate) fn transition(&self, key: usize, from: u8, to: u8) -> bool {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        if !found || shard.slots_mut()[index].info.state != from {
            return false;
        }
        let old = shard.slots_mut()[index].info;
        shard.uncount(&old);
        shard.slots_mut()[index].info.state = to;
        let new = shard.slots_mut()[index].info;
        shard.count(&new);
        true
    }

    /// The entry for `key`, if any.
    pub(crate) fn get(&self, key: usize) -> Option<BlockInfo> {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        found.then(|| shard.slots_mut()[index].info)
    }

    /// Calls `f(address, info)` for every entry, one shard at a time under that shard's lock
    /// (so a block seen here cannot be freed until `f` returns). `f` must not allocate through
    /// the tracker.
    pub(crate) fn for_each(&self, f: &mut dyn FnMut(usize, &BlockInfo)) {
        for shard in &self.shards {
            let mut shard = shard.data.lock();
            if shard.slots.is_none() {
                continue;
            }
            for slot in shard.slots_mut().iter() {
                if slot.key != 0 {
                    f(slot.key, &slot.info);
                }
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

    /// Totals over every shard.
    pub(crate) fn totals(&self) -> TableTotals {
        let mut t = TableTotals::default();
        for shard in &self.shards {
            let shard = shard.data.lock();
            t.live_blocks += shard.live_blocks;
            t.live_bytes += shard.live_bytes;
            t.internal_blocks += shard.internal_blocks;
            t.internal_bytes += shard.internal_bytes;
            t.table_bytes += shard
                .slots
                .as_ref()
                .map_or(0, |s| s.capacity() * core::mem::size_of::<Slot>());
        }
        t
    }
}

impl ShardData {
    fn slots_mut(&mut self) -> &mut [Slot] {
        match &self.slots {
            // SAFETY: the array holds `capacity` initialised slots (zeroed memory is a valid
            // empty slot), and `&mut self` means the shard's lock is held.
            Some(a) => unsafe { core::slice::from_raw_parts_mut(a.as_ptr(), a.capacity()) },
            None => &mut [],
        }
    }

    fn mask(&self) -> usize {
        self.slots.as_ref().map_or(0, |a| a.capacity() - 1)
    }

    #[inline]
    fn ideal(&self, key: usize) -> usize {
        let cap_bits = (self.mask() + 1).trailing_zeros();
        ((hash(key) << SHARD_BITS) >> (64 - cap_bits)) as usize
    }

    /// The slot holding `key` (true), or the empty slot where it would go (false). Needs at
    /// least one empty slot (guaranteed by `reserve_one`).
    #[inline]
    fn find(&mut self, key: usize) -> (usize, bool) {
        if self.slots.is_none() {
            return (0, false);
        }
        let mask = self.mask();
        let mut i = self.ideal(key);
        let slots = self.slots_mut();
        loop {
            let k = slots[i].key;
            if k == key {
                return (i, true);
            }
            if k == 0 {
                return (i, false);
            }
            i = (i + 1) & mask;
        }
    }

    fn count(&mut self, info: &BlockInfo) {
        match (info.state, info.is_internal()) {
            (state::LIVE, false) => {
                self.live_blocks += 1;
                self.live_bytes += info.size;
            }
            (state::LIVE, true) => {
                self.internal_blocks += 1;
                self.internal_bytes += info.size;
            }
            (state::FREED, _) => self.freed += 1,
            _ => {}
        }
    }

    fn uncount(&mut self, info: &BlockInfo) {
        match (info.state, info.is_internal()) {
            (state::LIVE, false) => {
                self.live_blocks -= 1;
                self.live_bytes -= info.size;
            }
            (state::LIVE, true) => {
                self.internal_blocks -= 1;
                self.internal_bytes -= info.size;
            }
            (state::FREED, _) => self.freed -= 1,
            _ => {}
        }
    }

    /// Backward-shift deletion: later entries of the probe run move up so that no lookup stops
    /// early at the hole.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let key = self.slots_mut()[j].key;
            if key == 0 {
                break;
            }
            let k = self.ideal(key);
            // The entry at j may stay only if its ideal slot lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < k && k <= j
            } else {
                hole < k || k <= j
            };
            if !stays {
                let moved = self.slots_mut()[j];
                self.slots_mut()[hole] = moved;
                hole = j;
            }
        }
        self.slots_mut()[hole] = Slot::default();
        self.used -= 1;
    }

    /// Makes room for one more entry: grows the shard at 3/4 load, or drops freed entries when
    /// they are most of it. `false` when the OS refuses memory.
    fn reserve_one(&mut self) -> bool {
        let cap = self.mask() + 1;
        if self.slots.is_some() && (self.used + 1) * 4 <= cap * 3 {
            return true;
        }
        let keep_freed = cap < MAX_SLOTS_KEEPING_FREED && self.freed * 2 < self.used;
        let kept = if keep_freed {
            self.used
        } else {
            self.used - self.freed
        };
        let mut new_cap = INITIAL_SLOTS.max(cap);
        while (kept + 1) * 2 > new_cap {
            new_cap *= 2;
        }
        // SAFETY: an all-zero `Slot` is an empty slot.
        let Some(new) = (unsafe { MappedArray::<Slot>::zeroed(new_cap) }) else {
            return false;
        };
        let old = self.slots.replace(new);
        self.used = 0;
        self.freed = 0;
        if let Some(old) = old {
            // SAFETY: `old` holds `capacity` initialised slots and is owned here.
            let old_slots = unsafe { core::slice::from_raw_parts(old.as_ptr(), old.capacity()) };
            for slot in old_slots.iter().filter(|s| s.key != 0) {
                if !keep_freed && slot.info.state == state::FREED {
                    continue;
                }
                let (i, _) = self.find(slot.key);
                self.slots_mut()[i] = *slot;
                self.used += 1;
                if slot.info.state == state::FREED {
                    self.freed += 1;
                }
            }
        }
        true
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
            ..Default::default()
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
            Release::AlreadyFreed(info) => assert_eq!(info.free_stack, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.release(0x2000, state::FREED, 0, 1), Release::Unknown);
        assert_eq!(t.find_containing(0x1008), None);
        assert!(t.insert(0x1000, live(32)));
        assert_eq!(t.find_containing(0x1008).map(|(k, _)| k), Some(0x1000));
        assert_eq!(t.totals().live_bytes, 32);
    }

    #[test]
    fn many_blocks_survive_growth_and_deletion() {
        let t = BlockTable::new();
        let n = 200_000usize;
        for i in 0..n {
            let mut info = live(i % 100 + 1);
            if i % 3 == 0 {
                info.flags = flag::INTERNAL;
            }
            assert!(t.insert(0x10_0000 + i * 16, info));
        }
        for i in (0..n).step_by(2) {
            assert!(matches!(
                t.release(0x10_0000 + i * 16, state::FREED, 0, 0),
                Release::Was(_)
            ));
        }
        for i in 0..n {
            let got = t.get(0x10_0000 + i * 16);
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

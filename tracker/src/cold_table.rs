//! The hashed side of the block table: full entries for blocks the direct map
//! ([`crate::block_table`]) cannot hold (addresses that are not 8-aligned, such as guard-slot
//! blocks, or outside the mapped address range), and the cold part (stacks, threads, sizes too
//! large to pack) of the entries it does hold, marked [`flag::SHADOW`]. Only sampled, guarded
//! and unusual blocks come here, so its locks and probes stay off the default path.
//!
//! Design: 64 shards chosen by a hash of the address, each an open-addressing table (linear
//! probing, backward-shift deletion) behind its own spin lock. A holder does a few loads and
//! stores, never allocates and never calls out. Shard memory comes from [`crate::os_memory`]
//! (counted as overhead, skipped by the leak scan). A freed entry stays (state `Freed`, with its
//! free stack) until the address is recorded again or the shard needs the room.
//!
//! May touch: [`crate::spin`], [`crate::os_memory`].

use crate::block_table::{flag, state, BlockInfo, Release, TableTotals};
use crate::os_memory::MappedArray;
use crate::spin::SpinLock;

/// Shards (a power of two).
const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Slots per shard at first use.
const INITIAL_SLOTS: usize = 512;
/// Above this many slots a shard drops freed entries instead of growing for them.
const MAX_SLOTS_KEEPING_FREED: usize = 1 << 20;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The block's address (0 = empty slot).
    key: usize,
    info: BlockInfo,
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

/// The sharded address -> block table.
pub(crate) struct ColdTable {
    shards: [Shard; SHARDS],
}

#[inline]
fn hash(key: usize) -> u64 {
    // Blocks are at least 8-aligned: drop the low bits, then spread with Fibonacci hashing.
    ((key >> 3) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl ColdTable {
    pub(crate) fn new() -> Self {
        ColdTable {
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
    /// Takes every shard's lock, in shard order, and keeps them (fork's prepare handler,
    /// [`crate::fork`]).
    #[cfg(unix)]
    pub(crate) fn hold_for_fork(&self) {
        for shard in &self.shards {
            shard.data.hold();
        }
    }

    /// Releases the locks [`ColdTable::hold_for_fork`] took.
    ///
    /// # Safety
    /// After `hold_for_fork` on this thread (or, in a forked child, the thread that forked),
    /// once.
    #[cfg(unix)]
    pub(crate) unsafe fn release_after_fork(&self) {
        for shard in self.shards.iter().rev() {
            // SAFETY: the caller's contract: held through `hold_for_fork`.
            unsafe { shard.data.release_held() };
        }
    }

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

    /// Marks the block at `key` freed (the state chosen from the entry, under the same lock)
    /// if it is live, removing internal blocks outright.
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

    /// Removes the entry for `key` (any state); `false` if there was none.
    pub(crate) fn remove(&self, key: usize) -> bool {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        if found {
            let old = shard.slots_mut()[index].info;
            shard.uncount(&old);
            shard.remove_at(index);
        }
        found
    }

    /// Changes the entry for `key` (if any) with `f`, under its shard's lock.
    pub(crate) fn update(&self, key: usize, f: impl FnOnce(&mut BlockInfo)) -> bool {
        let mut shard = self.shard(key).lock();
        let (index, found) = shard.find(key);
        if found {
            let old = shard.slots_mut()[index].info;
            shard.uncount(&old);
            f(&mut shard.slots_mut()[index].info);
            let new = shard.slots_mut()[index].info;
            shard.count(&new);
        }
        found
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

    /// Counts an entry in the shard's figures (shadow entries are counted by the direct map).
    fn count(&mut self, info: &BlockInfo) {
        if info.flags & flag::SHADOW != 0 {
            if info.state == state::FREED {
                self.freed += 1;
            }
            return;
        }
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
        if info.flags & flag::SHADOW != 0 {
            if info.state == state::FREED {
                self.freed -= 1;
            }
            return;
        }
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

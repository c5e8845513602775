//! The guard-page pool (GWP-ASan's idea): a sample of allocations is placed in slots that sit
//! between inaccessible pages, so that the faulting access itself is caught, not just its
//! traces.
//!
//! ```text
//! | guard | slot 0 data | guard | slot 1 data | guard | ... | slot n-1 data | guard |
//!                 [  block]       <- right-aligned: one byte past the end faults
//!                                 [block   ]       <- left-aligned (a share): one byte before faults
//! ```
//!
//! The unused part of a slot is filled with the red-zone pattern, so an overflow that stays in
//! the slack (a block whose size is not a multiple of its alignment) is still caught at free; a
//! slot freed with its slack whole is refilled at its next use only where the freed block was
//! (the pattern depends on the address alone). A freed slot's pages are made inaccessible (they
//! stay committed: see `free`), and slots are reused first-in first-out, so a dangling pointer
//! into a freed block faults for as long as possible. Slot metadata are atomics so the fault
//! handler can read them without a lock.
//!
//! A guarded allocation's price is mostly its two `mprotect`s (one to open the slot, one to
//! close it at free, which must be synchronous: a use-after-free right after the free faults).
//! Each costs a syscall; what made them dear was the kernel splitting the pool's mapping at
//! every opening and merging it back at every closing. The guard pages are therefore set apart
//! ([`os_memory::set_apart`]): each slot's data pages stay one mapping of their own, and both
//! calls change the protection of one whole mapping.
//!
//! May touch: [`allocscope_core::os`] (protect), [`crate::os_memory`],
//! [`crate::spin`], [`crate::canary`].

use core::ptr::NonNull;

use allocscope_core::os::{Access, Os, SystemOs};
use allocscope_core::sync::{AtomicU32, AtomicUsize, Ordering};

use crate::canary;
use crate::os_memory;
use crate::spin::SpinLock;
use crate::trace_format::ReportKind;

/// Slot states.
const NEVER_USED: u32 = 0;
const LIVE: u32 = 1;
const FREED: u32 = 2;

/// Largest pool whose guard pages are set apart (see `GuardPool::new`): each slot then costs
/// two mappings for the pool's whole life, out of the process's limit (`vm.max_map_count`,
/// 65530 by default), which the program needs too; 4096 slots hold 8193.
const SET_APART_MAX_SLOTS: usize = 4096;

/// What the fault handler and the reports need about a slot. All fields are written under the
/// pool's lock before `state` is stored (Release) and read after `state` (Acquire).
#[derive(Default)]
struct SlotMeta {
    state: AtomicU32,
    ptr: AtomicUsize,
    size: AtomicUsize,
    alloc_stack: AtomicU32,
    free_stack: AtomicU32,
    alloc_thread: AtomicU32,
    free_thread: AtomicU32,
    /// Set by `free` when the slack was found whole: every byte of the slot's data pages
    /// outside the freed block (`ptr`, `size`) still holds the red-zone pattern, so the next
    /// use of the slot refills only that block's bytes. 0 for a never-used slot.
    slack_whole: AtomicU32,
}

/// The slots not in use, oldest-freed first.
struct FreeSlots {
    ring: NonNull<u32>,
    head: usize,
    len: usize,
}

// SAFETY: the ring is memory owned by the pool, touched only under the lock.
unsafe impl Send for FreeSlots {}

/// A damaged byte found when a guarded block was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlackDamage {
    pub(crate) kind: ReportKind,
    pub(crate) address: usize,
}

/// What a fault address means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultInfo {
    pub(crate) kind: ReportKind,
    pub(crate) block_start: usize,
    pub(crate) block_size: usize,
    pub(crate) alloc_stack: u32,
    pub(crate) free_stack: u32,
    pub(crate) alloc_thread: u32,
    pub(crate) free_thread: u32,
}

pub(crate) struct GuardPool {
    base: usize,
    len: usize,
    page: usize,
    /// Bytes of data pages per slot.
    data: usize,
    stride: usize,
    slots: usize,
    meta: NonNull<SlotMeta>,
    free: SpinLock<FreeSlots>,
    underflow_share: f64,
}

// SAFETY: the pool's memory is shared through atomics (metadata) and the lock (free ring);
// slot data belong to whoever holds the slot.
unsafe impl Sync for GuardPool {}
// SAFETY: as above.
unsafe impl Send for GuardPool {}

impl GuardPool {
    /// Reserves the pool: every page starts inaccessible. `None` when the OS refuses.
    pub(crate) fn new(slots: usize, max_size: usize, underflow_share: f64) -> Option<Self> {
        let page = os_memory::page_size();
        let data = max_size.div_ceil(page) * page;
        let stride = data + page;
        let len = stride.checked_mul(slots)?.checked_add(page)?;
        let base = os_memory::map(len)?;
        // SAFETY: the whole mapping is ours and unused.
        if !unsafe { SystemOs.protect(base, len, Access::None) } {
            // SAFETY: the mapping was made just above with this length.
            unsafe { os_memory::unmap(base, len) };
            return None;
        }
        // Each guard page gets an attribute of its own, so that a slot's data pages, whatever
        // their protection, are never merged with their guard pages into one VMA: `allocate`
        // and `free` then change the protection of one whole VMA, without splitting or
        // merging any (4.8 instead of 11.6 µs for the two calls, measured with 64 of 256 slots
        // live). Where the OS refuses, the pool works as before, at the higher price; so does
        // a pool of more than `SET_APART_MAX_SLOTS` slots.
        let set_apart = if slots <= SET_APART_MAX_SLOTS {
            slots + 1
        } else {
            0
        };
        for i in 0..set_apart {
            // SAFETY: guard page `i` is one page of the mapping made above.
            unsafe {
                os_memory::set_apart(NonNull::new_unchecked(base.as_ptr().add(i * stride)), page)
            };
        }
        let meta = os_memory::map(slots * core::mem::size_of::<SlotMeta>())?.cast::<SlotMeta>();
        let ring = os_memory::map(slots * 4)?.cast::<u32>();
        for i in 0..slots {
            // SAFETY: the ring has `slots` entries.
            unsafe { *ring.as_ptr().add(i) = i as u32 };
        }
        Some(GuardPool {
            base: base.as_ptr() as usize,
            len,
            page,
            data,
            stride,
            slots,
            meta,
            free: SpinLock::new(FreeSlots {
                ring,
                head: 0,
                len: slots,
            }),
            underflow_share,
        })
    }

    /// Largest block a slot takes.
    pub(crate) fn max_size(&self) -> usize {
        self.data
    }

    /// Whether `addr` lies anywhere in the pool (guard pages included).
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr < self.base + self.len
    }

    fn meta(&self, slot: usize) -> &SlotMeta {
        // SAFETY: callers pass slot < self.slots; the array is zero-initialised (valid atomics)
        // and lives as long as the pool.
        unsafe { &*self.meta.as_ptr().add(slot) }
    }

    fn data_start(&self, slot: usize) -> usize {
        self.base + self.page + slot * self.stride
    }

    /// Places a block in a free slot. `random` in (0, 1] picks underflow placement. `None`
    /// when every slot is in use (the caller falls back to the ordinary heap).
    pub(crate) fn allocate(
        &self,
        size: usize,
        align: usize,
        random: f64,
        alloc_stack: u32,
        thread: u32,
    ) -> Option<usize> {
        if size > self.data || align > self.page {
            return None;
        }
        let slot = {
            let mut free = self.free.lock();
            if free.len == 0 {
                return None;
            }
            // SAFETY: head < slots; the lock is held.
            let slot = unsafe { *free.ring.as_ptr().add(free.head) } as usize;
            free.head = (free.head + 1) % self.slots;
            free.len -= 1;
            slot
        };
        let start = self.data_start(slot);
        // SAFETY: the slot's data pages are part of our mapping and the slot is ours now.
        let ok = unsafe {
            SystemOs.protect(
                NonNull::new_unchecked(start as *mut u8),
                self.data,
                Access::ReadWrite,
            )
        };
        if !ok {
            self.release_slot(slot);
            return None;
        }
        let end = start + self.data;
        let ptr = if random <= self.underflow_share {
            start
        } else {
            (end - size) & !(align - 1)
        };
        let m = self.meta(slot);
        // Relaxed: the slot came off the free ring under the lock, which the freeing thread
        // released after writing these (`free`, then `release_slot`).
        if m.slack_whole.load(Ordering::Relaxed) != 0 {
            let (old_ptr, old_size) = (
                m.ptr.load(Ordering::Relaxed),
                m.size.load(Ordering::Relaxed),
            );
            // The pattern depends on the address only, so refilling the previous block's bytes
            // makes the whole slot hold it again (the new block's own bytes among them are the
            // caller's to overwrite): a few bytes instead of the slot's pages.
            // SAFETY: the previous block lay inside this slot's data pages, accessible and ours.
            unsafe { canary::fill(old_ptr, old_size) };
        } else {
            // SAFETY: the slot's data pages are accessible and ours; the block is left alone.
            unsafe {
                canary::fill(start, ptr - start);
                canary::fill(ptr + size, end - (ptr + size));
            }
        }
        // Relaxed stores, published by the Release store of `state`.
        m.ptr.store(ptr, Ordering::Relaxed);
        m.size.store(size, Ordering::Relaxed);
        m.alloc_stack.store(alloc_stack, Ordering::Relaxed);
        m.free_stack.store(0, Ordering::Relaxed);
        m.alloc_thread.store(thread, Ordering::Relaxed);
        m.state.store(LIVE, Ordering::Release);
        Some(ptr)
    }

    fn slot_of(&self, ptr: usize) -> Option<usize> {
        if !self.contains(ptr) || ptr < self.base + self.page {
            return None;
        }
        let slot = (ptr - self.base - self.page) / self.stride;
        (slot < self.slots).then_some(slot)
    }

    /// Frees a guarded block: checks the slack, makes the slot inaccessible and queues it last
    /// for reuse. Returns the first damage found in the slack.
    pub(crate) fn free(&self, ptr: usize, free_stack: u32, thread: u32) -> Option<SlackDamage> {
        let slot = self.slot_of(ptr)?;
        let m = self.meta(slot);
        // Acquire pairs with the Release in `allocate`.
        if m.state.load(Ordering::Acquire) != LIVE || m.ptr.load(Ordering::Relaxed) != ptr {
            return None;
        }
        let size = m.size.load(Ordering::Relaxed);
        let start = self.data_start(slot);
        let end = start + self.data;
        // SAFETY: the slot is live and accessible until we protect it below.
        let damage = unsafe {
            if let Some(a) = canary::first_damaged(ptr + size, end - (ptr + size)) {
                Some(SlackDamage {
                    kind: ReportKind::HeapBufferOverflow,
                    address: a,
                })
            } else {
                canary::last_damaged(start, ptr - start).map(|a| SlackDamage {
                    kind: ReportKind::HeapBufferUnderflow,
                    address: a,
                })
            }
        };
        m.free_stack.store(free_stack, Ordering::Relaxed);
        m.free_thread.store(thread, Ordering::Relaxed);
        // Relaxed: read by the slot's next user, which takes it off the ring under the lock
        // that `release_slot` below takes after this store.
        m.slack_whole
            .store(u32::from(damage.is_none()), Ordering::Relaxed);
        // Release: the free stack is visible to whoever reads the state.
        m.state.store(FREED, Ordering::Release);
        // The pages stay committed (at most `slots` × the slot size of memory, 1 MiB at the
        // default options): decommitting them cost a syscall here and a page fault with
        // zeroing at the slot's next use, most of a guarded allocation's price.
        // SAFETY: the slot's data pages are ours; nothing may touch them from now on.
        unsafe {
            let p = NonNull::new_unchecked(start as *mut u8);
            SystemOs.protect(p, self.data, Access::None);
        }
        self.release_slot(slot);
        damage
    }

    fn release_slot(&self, slot: usize) {
        let mut free = self.free.lock();
        let at = (free.head + free.len) % self.slots;
        // SAFETY: at < slots; the lock is held.
        unsafe { *free.ring.as_ptr().add(at) = slot as u32 };
        free.len += 1;
    }

    /// Explains a fault at `addr` inside the pool. Lock-free (called from a signal handler).
    pub(crate) fn classify(&self, addr: usize) -> Option<FaultInfo> {
        if !self.contains(addr) {
            return None;
        }
        let offset = addr - self.base;
        let slot_index = offset / self.stride;
        let within = offset % self.stride;
        let info = |slot: usize, kind: ReportKind| {
            let m = self.meta(slot);
            // Relaxed loads after the Acquire load of the state done by the caller.
            FaultInfo {
                kind,
                block_start: m.ptr.load(Ordering::Relaxed),
                block_size: m.size.load(Ordering::Relaxed),
                alloc_stack: m.alloc_stack.load(Ordering::Relaxed),
                free_stack: m.free_stack.load(Ordering::Relaxed),
                alloc_thread: m.alloc_thread.load(Ordering::Relaxed),
                free_thread: m.free_thread.load(Ordering::Relaxed),
            }
        };
        // Acquire: pairs with the Release stores of the state.
        let state = |slot: usize| {
            if slot < self.slots {
                self.meta(slot).state.load(Ordering::Acquire)
            } else {
                NEVER_USED
            }
        };
        if within >= self.page {
            // Inside slot data: only a freed slot is inaccessible there.
            return match state(slot_index) {
                FREED => Some(info(slot_index, ReportKind::UseAfterFree)),
                _ => None,
            };
        }
        // A guard page: after slot_index - 1, before slot_index. Prefer a live neighbour,
        // then the nearer block.
        let before = slot_index.checked_sub(1);
        let after = (slot_index < self.slots).then_some(slot_index);
        let candidates = [
            before.map(|s| (s, ReportKind::HeapBufferOverflow)),
            after.map(|s| (s, ReportKind::HeapBufferUnderflow)),
        ];
        let mut best: Option<(usize, ReportKind, usize, bool)> = None;
        for (slot, kind) in candidates.into_iter().flatten() {
            let st = state(slot);
            if st == NEVER_USED {
                continue;
            }
            let m = self.meta(slot);
            let start = m.ptr.load(Ordering::Relaxed);
            let end = start + m.size.load(Ordering::Relaxed);
            let distance = if addr >= end {
                addr - end
            } else {
                start.saturating_sub(addr)
            };
            let live = st == LIVE;
            let better = match best {
                None => true,
                Some((_, _, d, l)) => (live && !l) || (live == l && distance < d),
            };
            if better {
                best = Some((slot, kind, distance, live));
            }
        }
        best.map(|(slot, kind, _, live)| {
            info(slot, if live { kind } else { ReportKind::UseAfterFree })
        })
    }

    /// The size of the live guarded block starting at `ptr`.
    #[cfg(test)]
    pub(crate) fn block_size(&self, ptr: usize) -> Option<usize> {
        let slot = self.slot_of(ptr)?;
        let m = self.meta(slot);
        // Acquire: pairs with the Release in `allocate`.
        (m.state.load(Ordering::Acquire) == LIVE && m.ptr.load(Ordering::Relaxed) == ptr)
            .then(|| m.size.load(Ordering::Relaxed))
    }

    /// The pool's address range (start, length), to keep it out of the leak scan's roots.
    pub(crate) fn range(&self) -> (usize, usize) {
        (self.base, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_aligned_blocks_touch_the_guard_page_and_slots_rotate() {
        let pool = GuardPool::new(4, 100, 0.0).unwrap();
        let p = pool.allocate(24, 8, 0.5, 1, 1).unwrap();
        let page = os_memory::page_size();
        assert_eq!((p + 24) % page, 0, "block ends at the guard page");
        // SAFETY: the block is live and 24 bytes long.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0xAB, 24) };
        assert_eq!(pool.block_size(p), Some(24));
        let info = pool.classify(p + 24).unwrap();
        assert_eq!(
            (info.kind, info.block_start, info.block_size),
            (ReportKind::HeapBufferOverflow, p, 24)
        );
        assert_eq!(pool.free(p, 2, 1), None);
        let info = pool.classify(p + 3).unwrap();
        assert_eq!((info.kind, info.free_stack), (ReportKind::UseAfterFree, 2));
        // The freed slot is the last to be reused.
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(pool.allocate(8, 8, 0.5, 0, 1).unwrap());
        }
        assert!(others.iter().all(|&o| o / page != p / page));
        assert_eq!(
            pool.allocate(8, 8, 0.5, 0, 1).map(|q| q / page),
            Some(p / page)
        );
    }

    #[test]
    fn slack_damage_and_underflow_placement() {
        let pool = GuardPool::new(2, 4096, 1.0).unwrap();
        let p = pool.allocate(13, 8, 0.5, 0, 1).unwrap();
        assert_eq!(p % os_memory::page_size(), 0, "left-aligned for underflow");
        let info = pool.classify(p - 1).unwrap();
        assert_eq!(info.kind, ReportKind::HeapBufferUnderflow);
        // SAFETY: the slot's slack after the block is accessible (the pool's own memory).
        unsafe { *((p + 13) as *mut u8) ^= 0xFF };
        let damage = pool.free(p, 0, 1).unwrap();
        assert_eq!(
            damage,
            SlackDamage {
                kind: ReportKind::HeapBufferOverflow,
                address: p + 13
            }
        );
    }

    #[test]
    fn a_reused_slot_holds_the_pattern_where_the_previous_block_was() {
        // One slot, blocks left-aligned: the second block lies inside the first one's bytes.
        let pool = GuardPool::new(1, 4096, 1.0).unwrap();
        let data = pool.max_size();
        let p = pool.allocate(200, 8, 0.5, 0, 1).unwrap();
        // SAFETY: the block is live and 200 bytes long.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0x5A, 200) };
        assert_eq!(pool.free(p, 0, 1), None, "a clean free");
        let q = pool.allocate(16, 8, 0.5, 0, 1).unwrap();
        assert_eq!(q, p, "the same slot, the same place");
        // SAFETY: the slot's data pages are accessible while it is live (the pool's memory).
        unsafe {
            assert_eq!(canary::first_damaged(q + 16, data - 16), None);
            // A write where the first block's bytes were, now slack, is caught at free.
            *((q + 100) as *mut u8) = 0x5A;
        }
        assert_eq!(
            pool.free(q, 0, 1),
            Some(SlackDamage {
                kind: ReportKind::HeapBufferOverflow,
                address: q + 100
            })
        );
        // After a damaged free, the next use fills the whole slack again.
        let r = pool.allocate(16, 8, 0.5, 0, 1).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { canary::first_damaged(r + 16, data - 16) }, None);
        assert_eq!(pool.free(r, 0, 1), None);
    }
}

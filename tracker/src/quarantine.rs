//! The quarantine: freed blocks held back, poisoned, in first-in first-out order, up to a byte
//! budget, before they go back to the inner allocator. While a block waits here its memory
//! cannot be handed to anyone else, so a write through a dangling pointer lands in poison and is
//! reported as use-after-free when the block leaves (or at a scan), and a second free of it is
//! a certain double free.
//!
//! The ring lives in [`crate::os_memory`]; one spin lock guards it (quarantine is a debugging
//! mode: one short critical section per free is its price). A free takes it once:
//! [`Quarantine::exchange`] adds the block, takes out the blocks that must leave and names the
//! ones that leave a few frees later, so that the caller can start loading them from memory (it
//! was freed a whole quarantine ago and is out of cache) well before it is checked. Every held
//! block is named once, when it comes within [`LOOKAHEAD`] of leaving: an exchange that takes
//! out three blocks names three (a single name per exchange, as before, left the blocks of
//! exchanges that took out two or more unprefetched: about a third of them in a random mix of
//! sizes, where 31% of exchanges take out none and 25% two or more). Poisoning and checking
//! happen outside the lock, by the thread that frees or evicts.
//!
//! May touch: [`crate::spin`], [`crate::os_memory`], [`crate::block_table::prefetch`].

use crate::block_table::prefetch;
use crate::os_memory::MappedArray;
use crate::spin::SpinLock;

/// Blocks one [`Quarantine::exchange`] hands back at most; beyond, [`Exchange::more`] says so.
const EVICT_BATCH: usize = 4;

/// How far behind the oldest block [`Quarantine::exchange`] names blocks as upcoming: far
/// enough that a block's memory arrives before it is checked (a few frees later), near enough
/// that it is still in cache then. The oldest `LOOKAHEAD + 1` blocks have all been named.
const LOOKAHEAD: usize = 4;

/// Blocks one exchange names at most: as many as it takes out, so the window keeps up.
const UPCOMING_MAX: usize = EVICT_BATCH;

/// Cache lines of an upcoming block that [`Held::prefetch`] starts loading from its start
/// (its last line too): a longer block's middle is loaded when it is checked.
const PREFETCH_LINES: usize = 8;
/// Log2 of the largest alignment of a block the ring holds (see [`Quarantine::admits`]): 4 KiB,
/// the smallest page, so that every platform decides alike on every path.
pub(crate) const HELD_ALIGN_LOG2_MAX: u8 = 12;

/// A block waiting in quarantine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// The program's pointer.
    pub(crate) ptr: usize,
    /// Requested size.
    pub(crate) size: usize,
    /// log2 of the alignment.
    pub(crate) align_log2: u8,
    /// Block flags (red zones or not), to free it right.
    pub(crate) flags: u8,
}

impl Held {
    /// Starts loading the block's first cache lines and its last one (hints: never fault,
    /// even if the block has left and its memory was given back meanwhile).
    pub(crate) fn prefetch(&self) {
        if self.size == 0 {
            return;
        }
        let first = self.ptr & !63;
        let last = self.ptr + self.size - 1;
        let lines = ((last - first) / 64 + 1).min(PREFETCH_LINES);
        for i in 0..lines {
            prefetch(first + i * 64);
        }
        prefetch(last);
    }
}

/// What [`Quarantine::exchange`] leaves its caller to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Exchange {
    /// The block went in. `false` when the ring cannot be created (the OS refused memory): the
    /// caller frees the block at once.
    pub(crate) held: bool,
    evicted: [Held; EVICT_BATCH],
    evicted_len: usize,
    /// More blocks must leave than [`Exchange::evicted`] holds: call
    /// [`Quarantine::pop_excess`] until `None`.
    pub(crate) more: bool,
}

impl Exchange {
    /// The blocks that left, oldest first: the caller checks their poison and frees them.
    pub(crate) fn evicted(&self) -> &[Held] {
        &self.evicted[..self.evicted_len]
    }
}

struct Ring {
    buf: Option<MappedArray<Held>>,
    head: usize,
    len: usize,
    bytes: usize,
    /// The oldest this many blocks have been named as upcoming (at most `LOOKAHEAD + 1`).
    named: usize,
}

pub(crate) struct Quarantine {
    ring: SpinLock<Ring>,
    max_bytes: usize,
    /// Blocks larger than this bypass the quarantine (one huge block would flush all others).
    max_block: usize,
    /// Ring entries (a power of two).
    capacity: usize,
}

impl Quarantine {
    /// Takes the lock and keeps it (fork's prepare handler, [`crate::fork`]).
    #[cfg(unix)]
    pub(crate) fn hold_for_fork(&self) {
        self.ring.hold();
    }

    /// Releases the lock [`Quarantine::hold_for_fork`] took.
    ///
    /// # Safety
    /// After `hold_for_fork` on this thread (or, in a forked child, the thread that forked),
    /// once.
    #[cfg(unix)]
    pub(crate) unsafe fn release_after_fork(&self) {
        // SAFETY: the caller's contract: held through `hold_for_fork`.
        unsafe { self.ring.release_held() };
    }

    pub(crate) fn new(max_bytes: usize) -> Self {
        Quarantine {
            ring: SpinLock::new(Ring {
                buf: None,
                head: 0,
                len: 0,
                bytes: 0,
                named: 0,
            }),
            max_bytes,
            max_block: (max_bytes / 4).max(1),
            // A power of two: ring positions wrap with a mask, not a division.
            capacity: (max_bytes / 16).clamp(1024, 1 << 20).next_power_of_two(),
        }
    }

    /// Whether a block of `size` bytes aligned to `align` is held at all. Blocks aligned beyond
    /// 4 KiB ([`HELD_ALIGN_LOG2_MAX`]) are not: the inner allocator serves them from mappings of their own
    /// whose footprint the ring cannot count (a 100-byte block aligned to 64 KiB kept 2 MiB
    /// resident: 2,000 of them held 4.1 GB with `quarantine=16m`), so they are freed at once.
    pub(crate) fn admits(&self, size: usize, align: usize) -> bool {
        size <= self.max_block && align <= 1 << HELD_ALIGN_LOG2_MAX
    }

    /// The sizes held are those below this ([`Quarantine::admits`] as one bound, for blocks
    /// aligned to at most [`HELD_ALIGN_LOG2_MAX`]).
    pub(crate) fn hold_below(&self) -> usize {
        self.max_block + 1
    }

    /// Adds a poisoned block and takes out the oldest blocks while the quarantine is over
    /// budget, under one lock (see [`Exchange`]). Inline, so that the [`Exchange`] is built in
    /// the caller's frame rather than copied out (callgrind: ~135 -> ~92 instructions per free).
    ///
    /// `upcoming` is called, under the lock, on each block that has just come within
    /// [`LOOKAHEAD`] of leaving and was not named before (to prefetch it: [`Held::prefetch`],
    /// and its table word); each held block is named once. A callback, not a list in the
    /// [`Exchange`]: a list cost each free ~40 instructions of copies and zeroing.
    #[inline(always)]
    pub(crate) fn exchange(&self, held: Held, mut upcoming: impl FnMut(&Held)) -> Exchange {
        let mut out = Exchange::default();
        let mut ring = self.ring.lock();
        out.held = self.push_locked(&mut ring, held);
        while self.over_budget(&ring) {
            if out.evicted_len == EVICT_BATCH {
                out.more = true;
                break;
            }
            match Self::pop(&mut ring) {
                Some(old) => {
                    out.evicted[out.evicted_len] = old;
                    out.evicted_len += 1;
                }
                None => break,
            }
        }
        if let Some(buf) = &ring.buf {
            // Name the blocks that came within LOOKAHEAD of leaving: as many as left, or (while
            // the ring fills) the newest.
            let window = ring.len.min(LOOKAHEAD + 1);
            let (mut named, limit) = (ring.named, ring.named + UPCOMING_MAX);
            while named < window && named < limit {
                let at = (ring.head + named) & (buf.capacity() - 1);
                // SAFETY: `at < capacity`; the lock is held.
                upcoming(unsafe { &*buf.as_ptr().add(at) });
                named += 1;
            }
            ring.named = named;
        }
        out
    }

    /// Adds a poisoned block; `false` when the ring cannot be created (the OS refused memory)
    /// or is full.
    fn push_locked(&self, ring: &mut Ring, held: Held) -> bool {
        if ring.buf.is_none() {
            // SAFETY: an all-zero `Held` is a valid (empty) entry.
            ring.buf = unsafe { MappedArray::zeroed(self.capacity) };
        }
        let Some(buf) = &ring.buf else { return false };
        let cap = buf.capacity();
        if ring.len == cap {
            return false;
        }
        let at = (ring.head + ring.len) & (cap - 1);
        // SAFETY: `at < cap`; the lock is held.
        unsafe { *buf.as_ptr().add(at) = held };
        ring.len += 1;
        ring.bytes += held.size;
        true
    }

    /// Takes the oldest block if the quarantine is over budget (call until `None`).
    pub(crate) fn pop_excess(&self) -> Option<Held> {
        let mut ring = self.ring.lock();
        if !self.over_budget(&ring) {
            return None;
        }
        Self::pop(&mut ring)
    }

    /// Whether the oldest block must leave: over the byte budget, or the ring full.
    fn over_budget(&self, ring: &Ring) -> bool {
        let Some(buf) = &ring.buf else { return false };
        ring.len > 0 && (ring.bytes > self.max_bytes || ring.len == buf.capacity())
    }

    /// Takes the oldest block whatever the budget (to empty the quarantine).
    #[cfg(test)]
    pub(crate) fn pop_oldest(&self) -> Option<Held> {
        Self::pop(&mut self.ring.lock())
    }

    fn pop(ring: &mut Ring) -> Option<Held> {
        let buf = ring.buf.as_ref()?;
        if ring.len == 0 {
            return None;
        }
        // SAFETY: `head < capacity`; the caller holds the lock.
        let held = unsafe { *buf.as_ptr().add(ring.head) };
        ring.head = (ring.head + 1) & (buf.capacity() - 1);
        ring.len -= 1;
        ring.bytes -= held.size;
        ring.named = ring.named.saturating_sub(1);
        Some(held)
    }

    /// Calls `f` on every held block, oldest first, under the lock (the blocks cannot leave
    /// meanwhile). `f` must not allocate through the tracker.
    pub(crate) fn for_each(&self, f: &mut dyn FnMut(&Held)) {
        let ring = self.ring.lock();
        let Some(buf) = &ring.buf else { return };
        for i in 0..ring.len {
            // SAFETY: index below capacity; the lock is held.
            f(unsafe { &*buf.as_ptr().add((ring.head + i) & (buf.capacity() - 1)) });
        }
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.ring.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(ptr: usize, size: usize) -> Held {
        Held {
            ptr,
            size,
            ..Default::default()
        }
    }

    #[test]
    fn fifo_within_the_byte_budget() {
        let q = Quarantine::new(100);
        assert!(q.admits(25, 16) && !q.admits(26, 16));
        assert!(q.admits(25, 4096) && !q.admits(25, 8192));
        for i in 0..4 {
            let mut named = Vec::new();
            let out = q.exchange(held(i + 1, 25), |h| named.push(*h));
            assert!(out.held);
            assert_eq!(out.evicted(), [], "at budget, nothing leaves");
            assert_eq!(
                named,
                [held(i + 1, 25)],
                "fewer than LOOKAHEAD + 1 held: each block is named as it comes in"
            );
        }
        let out = q.exchange(held(5, 25), |_| {});
        assert_eq!(out.evicted(), [held(1, 25)], "the oldest leaves first");
        assert!(!out.more);
        assert_eq!(q.pop_excess(), None);
        let mut seen = Vec::new();
        q.for_each(&mut |h| seen.push(h.ptr));
        assert_eq!(seen, [2, 3, 4, 5]);
        assert_eq!(q.bytes(), 100);
        while q.pop_oldest().is_some() {}
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_large_block_pushes_out_a_batch_and_says_when_more_must_leave() {
        let q = Quarantine::new(4000);
        for i in 0..100 {
            assert_eq!(q.exchange(held(i + 1, 40), |_| {}).evicted(), []);
        }
        // 4000 bytes held; 1000 more push 25 blocks out, EVICT_BATCH of them in the exchange.
        let mut named = Vec::new();
        let out = q.exchange(held(1000, 1000), |h| named.push(h.ptr));
        let first: Vec<usize> = out.evicted().iter().map(|h| h.ptr).collect();
        assert_eq!(first, (1..=EVICT_BATCH).collect::<Vec<_>>());
        assert!(out.more);
        assert_eq!(
            named,
            (LOOKAHEAD + 2..=EVICT_BATCH + 1 + LOOKAHEAD).collect::<Vec<_>>(),
            "the blocks that came within LOOKAHEAD of the oldest still held, one per block out"
        );
        let mut rest = Vec::new();
        while let Some(h) = q.pop_excess() {
            rest.push(h.ptr);
        }
        assert_eq!(rest, (EVICT_BATCH + 1..=25).collect::<Vec<_>>());
        assert_eq!(q.bytes(), 4000);
    }

    #[test]
    fn every_block_is_named_once_before_it_leaves() {
        // Random sizes of 64 to 256 bytes: exchanges take out none, one or several, but never
        // more than EVICT_BATCH (a push is at most four of the smallest blocks over budget).
        let q = Quarantine::new(64 << 10);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut named = std::collections::HashMap::new();
        let (mut left, mut several) = (0, 0);
        for i in 1..=20_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut upcoming = Vec::new();
            let out = q.exchange(held(i, 64 + (x % 193) as usize), |h| upcoming.push(h.ptr));
            let evicted = out.evicted().len();
            several += usize::from(evicted > 1);
            for h in out.evicted() {
                let when = named.remove(&h.ptr);
                assert!(
                    when.is_some_and(|at| at < i),
                    "block {} left unnamed (or named by the exchange that took it out)",
                    h.ptr
                );
                left += 1;
            }
            assert!(
                !out.more,
                "no push here is more than EVICT_BATCH blocks over budget"
            );
            for ptr in upcoming {
                assert!(named.insert(ptr, i).is_none(), "block {ptr} named twice");
            }
        }
        assert!(
            left > 10_000 && several > 1000,
            "{left} left, {several} exchanges took out several"
        );
        assert!(
            named.len() <= LOOKAHEAD + 1,
            "named and still held: {}",
            named.len()
        );
    }

    #[test]
    fn ring_positions_wrap_around() {
        // The smallest ring (1024 entries) with blocks small enough that the entry count, not
        // the byte budget, makes them leave.
        let q = Quarantine::new(16 << 10);
        assert_eq!(q.capacity, 1024);
        let mut left = Vec::new();
        for i in 0..3000 {
            let out = q.exchange(held(i + 1, 1), |_| {});
            assert!(out.held);
            left.extend(out.evicted().iter().map(|h| h.ptr));
        }
        // A push that fills the ring sends the oldest out at once: 1023 stay between frees.
        assert_eq!(left.len(), 3000 - 1023);
        assert_eq!(
            left,
            (1..=left.len()).collect::<Vec<_>>(),
            "FIFO across the wrap"
        );
        let mut seen = Vec::new();
        q.for_each(&mut |h| seen.push(h.ptr));
        assert_eq!(seen, (left.len() + 1..=3000).collect::<Vec<_>>());
    }
}

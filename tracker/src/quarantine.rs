//! The quarantine: freed blocks held back, poisoned, in first-in first-out order, up to a byte
//! budget, before they go back to the inner allocator. While a block waits here its memory
//! cannot be handed to anyone else, so a write through a dangling pointer lands in poison and is
//! reported as use-after-free when the block leaves (or at a scan), and a second free of it is
//! a certain double free.
//!
//! The ring lives in [`crate::os_memory`]; one spin lock guards it (quarantine is a debugging
//! mode: one short critical section per free is its price). Poisoning and checking happen
//! outside the lock, by the thread that frees or evicts.
//!
//! May touch: [`crate::spin`], [`crate::os_memory`].

use crate::os_memory::MappedArray;
use crate::spin::SpinLock;

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

struct Ring {
    buf: Option<MappedArray<Held>>,
    head: usize,
    len: usize,
    bytes: usize,
}

pub(crate) struct Quarantine {
    ring: SpinLock<Ring>,
    max_bytes: usize,
    /// Blocks larger than this bypass the quarantine (one huge block would flush all others).
    max_block: usize,
    capacity: usize,
}

impl Quarantine {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Quarantine {
            ring: SpinLock::new(Ring {
                buf: None,
                head: 0,
                len: 0,
                bytes: 0,
            }),
            max_bytes,
            max_block: (max_bytes / 4).max(1),
            capacity: (max_bytes / 16).clamp(1024, 1 << 20),
        }
    }

    /// Whether a block of `size` bytes is held at all.
    pub(crate) fn admits(&self, size: usize) -> bool {
        size <= self.max_block
    }

    /// Adds a poisoned block. `false` when the ring cannot be created (the OS refused memory):
    /// the caller frees the block at once.
    pub(crate) fn push(&self, held: Held) -> bool {
        let mut ring = self.ring.lock();
        if ring.buf.is_none() {
            // SAFETY: an all-zero `Held` is a valid (empty) entry.
            ring.buf = unsafe { MappedArray::zeroed(self.capacity) };
        }
        let Some(buf) = &ring.buf else { return false };
        let cap = buf.capacity();
        if ring.len == cap {
            return false;
        }
        let at = (ring.head + ring.len) % cap;
        // SAFETY: `at < cap`; the lock is held.
        unsafe { *buf.as_ptr().add(at) = held };
        ring.len += 1;
        ring.bytes += held.size;
        true
    }

    /// Takes the oldest block if the quarantine is over budget (call until `None`).
    pub(crate) fn pop_excess(&self) -> Option<Held> {
        let mut ring = self.ring.lock();
        let cap = ring.buf.as_ref()?.capacity();
        if ring.len == 0 || (ring.bytes <= self.max_bytes && ring.len < cap) {
            return None;
        }
        Self::pop(&mut ring)
    }

    /// The block that leaves next, if any (left in place).
    pub(crate) fn oldest(&self) -> Option<Held> {
        let ring = self.ring.lock();
        let buf = ring.buf.as_ref()?;
        // SAFETY: `head < capacity`; the lock is held.
        (ring.len > 0).then(|| unsafe { *buf.as_ptr().add(ring.head) })
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
        ring.head = (ring.head + 1) % buf.capacity();
        ring.len -= 1;
        ring.bytes -= held.size;
        Some(held)
    }

    /// Calls `f` on every held block, oldest first, under the lock (the blocks cannot leave
    /// meanwhile). `f` must not allocate through the tracker.
    pub(crate) fn for_each(&self, f: &mut dyn FnMut(&Held)) {
        let ring = self.ring.lock();
        let Some(buf) = &ring.buf else { return };
        for i in 0..ring.len {
            // SAFETY: index below capacity; the lock is held.
            f(unsafe { &*buf.as_ptr().add((ring.head + i) % buf.capacity()) });
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
        assert!(q.admits(25) && !q.admits(26));
        for i in 0..4 {
            assert!(q.push(held(i + 1, 25)));
            assert_eq!(q.pop_excess(), None, "at budget, nothing leaves");
        }
        assert!(q.push(held(5, 25)));
        assert_eq!(q.pop_excess(), Some(held(1, 25)), "the oldest leaves first");
        assert_eq!(q.pop_excess(), None);
        let mut seen = Vec::new();
        q.for_each(&mut |h| seen.push(h.ptr));
        assert_eq!(seen, [2, 3, 4, 5]);
        assert_eq!(q.bytes(), 100);
        while q.pop_oldest().is_some() {}
        assert_eq!(q.bytes(), 0);
    }
}

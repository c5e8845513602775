//! Time ranges without raw events: while a whole trace (or a live stream) is aggregated, each
//! stack's activity is also summed per time slot ([`RangeIndex`]), so that the figures of any
//! range of slots can be computed from the sums alone ([`Profile::range_view`]). This is what
//! live mode shows for a selected range, its stream being kept nowhere; a trace file is read
//! again for a range's exact figures instead (the index is asked for with
//! [`super::LoadOptions::slot_index`]).
//!
//! Slots have one width for the whole index (a power-of-two multiple of 1 µs); a range is
//! widened outwards to whole slots. The index is bounded twice: at most [`MAX_SLOTS`] slots
//! (a longer trace doubles the width, merging neighbours, like the timeline), and at most
//! [`ENTRY_BUDGET`] (stack, slot) entries (many stacks active in many slots also double the
//! width), so its memory does not grow with the number of events.
//!
//! May touch: nothing outside the model.

use std::collections::HashMap;
use std::sync::Arc;

use super::{IdHash, Profile, StackStats, TimeRange, SIZE_BINS};

/// Slots at most; past that the width doubles.
pub const MAX_SLOTS: u64 = 512;

/// (stack, slot) entries at most (48 bytes each, so about 92 MiB); past that the width
/// doubles, down to [`MIN_SLOTS`] slots over the trace.
pub const ENTRY_BUDGET: usize = 2_000_000;

/// The budget no longer coarsens the index once the trace spans this few slots: one entry per
/// stack and slot is then within a small factor of the per-stack figures themselves.
pub const MIN_SLOTS: u64 = 16;

/// One stack's activity in one slot. Allocation-time figures (allocated, temporary) are filed
/// under the slot of the allocation; freed figures under the slot of the free. What is still
/// leaked is not kept here (it would cost an update of an old, cold entry at every free): a
/// range's leaks come from the blocks live now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    slot: u32,
    allocated_count: u32,
    freed_count: u32,
    temporary_count: u32,
    allocated_bytes: u64,
    freed_bytes: u64,
    temporary_bytes: u64,
}

impl Entry {
    fn add(&mut self, o: &Entry) {
        self.allocated_count = self.allocated_count.saturating_add(o.allocated_count);
        self.freed_count = self.freed_count.saturating_add(o.freed_count);
        self.temporary_count = self.temporary_count.saturating_add(o.temporary_count);
        self.allocated_bytes = self.allocated_bytes.saturating_add(o.allocated_bytes);
        self.freed_bytes = self.freed_bytes.saturating_add(o.freed_bytes);
        self.temporary_bytes = self.temporary_bytes.saturating_add(o.temporary_bytes);
    }
}

/// The whole heap in one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeapSlot {
    /// Most bytes live at an allocation in the slot, and when.
    peak_bytes: u64,
    peak_time_ns: u64,
    /// Allocation sizes: (count, bytes) per log2 bin.
    sizes: [(u64, u64); SIZE_BINS],
}

impl Default for HeapSlot {
    fn default() -> Self {
        HeapSlot {
            peak_bytes: 0,
            peak_time_ns: 0,
            sizes: [(0, 0); SIZE_BINS],
        }
    }
}

/// Per-stack and per-heap sums by time slot (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeIndex {
    /// Width of one slot in nanoseconds.
    slot_ns: u64,
    /// Each stack's entries, in increasing slot order.
    stacks: HashMap<u32, Vec<Entry>, IdHash>,
    heap: Vec<HeapSlot>,
    entries: usize,
    /// In a finished copy (which has no live-block table): (stack, allocation time, size)
    /// of every block live when it was made, for the leaks of a range.
    live_blocks: Option<Arc<Vec<(u32, u64, u64)>>>,
}

impl Default for RangeIndex {
    fn default() -> Self {
        RangeIndex {
            slot_ns: 1_000,
            stacks: HashMap::default(),
            heap: Vec::new(),
            entries: 0,
            live_blocks: None,
        }
    }
}

impl RangeIndex {
    /// Width of one slot in nanoseconds (ranges are widened to whole slots).
    pub fn slot_ns(&self) -> u64 {
        self.slot_ns
    }

    /// (stack, slot) entries held.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The slot of `t`, widening the slots first if `t` lies past the last one.
    fn slot_of(&mut self, t: u64) -> u32 {
        while t / self.slot_ns >= MAX_SLOTS {
            self.coarsen();
        }
        (t / self.slot_ns) as u32
    }

    /// Doubles the slot width, merging each pair of neighbouring slots.
    #[cold]
    fn coarsen(&mut self) {
        self.slot_ns = self.slot_ns.saturating_mul(2);
        let mut entries = 0;
        for series in self.stacks.values_mut() {
            let mut merged: Vec<Entry> = Vec::with_capacity(series.len());
            for e in series.iter() {
                let slot = e.slot / 2;
                match merged.last_mut() {
                    Some(last) if last.slot == slot => last.add(e),
                    _ => merged.push(Entry { slot, ..*e }),
                }
            }
            merged.shrink_to_fit();
            entries += merged.len();
            *series = merged;
        }
        self.entries = entries;
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .chunks(2)
            .map(|pair| {
                let mut slot = pair[0].clone();
                if let Some(second) = pair.get(1) {
                    if second.peak_bytes > slot.peak_bytes {
                        slot.peak_bytes = second.peak_bytes;
                        slot.peak_time_ns = second.peak_time_ns;
                    }
                    for (a, b) in slot.sizes.iter_mut().zip(second.sizes.iter()) {
                        *a = (a.0 + b.0, a.1.saturating_add(b.1));
                    }
                }
                slot
            })
            .collect();
    }

    /// Keeps the entries within [`ENTRY_BUDGET`] (called after each record).
    pub(super) fn keep_to_budget(&mut self, last_time_ns: u64) {
        while self.entries > ENTRY_BUDGET && last_time_ns / self.slot_ns >= MIN_SLOTS {
            self.coarsen();
        }
    }

    /// The position of `slot`'s entry in `series`, inserting it if missing. `hint` is where
    /// it was last seen (a block remembers its allocation's entry); events come nearly in
    /// time order, so otherwise the last few entries are looked at before a binary search:
    /// the search touches cold memory, and that is what loading spends its time on.
    fn position(series: &mut Vec<Entry>, slot: u32, hint: u32, entries: &mut usize) -> usize {
        let hint = hint as usize;
        if series.get(hint).is_some_and(|e| e.slot == slot) {
            return hint;
        }
        let len = series.len();
        for i in (len.saturating_sub(16)..len).rev() {
            if series[i].slot == slot {
                return i;
            }
            if series[i].slot < slot {
                // Every later entry is for a later slot: this one goes just after.
                series.insert(
                    i + 1,
                    Entry {
                        slot,
                        ..Entry::default()
                    },
                );
                *entries += 1;
                return i + 1;
            }
        }
        match series.binary_search_by_key(&slot, |e| e.slot) {
            Ok(i) => i,
            Err(i) => {
                series.insert(
                    i,
                    Entry {
                        slot,
                        ..Entry::default()
                    },
                );
                *entries += 1;
                i
            }
        }
    }

    fn heap_slot(&mut self, slot: u32) -> &mut HeapSlot {
        let i = slot as usize;
        if self.heap.len() <= i {
            self.heap.resize(i + 1, HeapSlot::default());
        }
        &mut self.heap[i]
    }

    /// An allocation at `t`; `heap_bytes` is the heap's level just after it. Returns the
    /// position of its entry, the hint to pass to [`RangeIndex::free`].
    pub(super) fn alloc(&mut self, t: u64, stack: u32, size: u64, heap_bytes: u64) -> u32 {
        let slot = self.slot_of(t);
        let series = self.stacks.entry(stack).or_default();
        let i = Self::position(series, slot, u32::MAX, &mut self.entries);
        let e = &mut series[i];
        e.allocated_count = e.allocated_count.saturating_add(1);
        e.allocated_bytes = e.allocated_bytes.saturating_add(size);
        let h = self.heap_slot(slot);
        if heap_bytes > h.peak_bytes {
            h.peak_bytes = heap_bytes;
            h.peak_time_ns = t;
        }
        let bin = (64 - size.leading_zeros()) as usize;
        let bin = &mut h.sizes[bin];
        *bin = (bin.0 + 1, bin.1.saturating_add(size));
        i as u32
    }

    /// The free at `t` of a block allocated at `alloc_ns` (`hint`: what
    /// [`RangeIndex::alloc`] returned for it).
    pub(super) fn free(
        &mut self,
        t: u64,
        alloc_ns: u64,
        stack: u32,
        size: u64,
        temporary: bool,
        hint: u32,
    ) {
        let free_slot = self.slot_of(t);
        let alloc_slot = self.slot_of(alloc_ns);
        let series = self.stacks.entry(stack).or_default();
        let i = Self::position(series, free_slot, u32::MAX, &mut self.entries);
        let e = &mut series[i];
        e.freed_count = e.freed_count.saturating_add(1);
        e.freed_bytes = e.freed_bytes.saturating_add(size);
        if temporary {
            // Freed soon after: its allocation's entry is among the last few.
            let i = Self::position(series, alloc_slot, hint, &mut self.entries);
            let e = &mut series[i];
            e.temporary_count = e.temporary_count.saturating_add(1);
            e.temporary_bytes = e.temporary_bytes.saturating_add(size);
        }
    }
}

impl RangeIndex {
    /// Keeps what a copy without the live-block table needs for the leaks of ranges.
    pub(super) fn keep_live_blocks<'a>(&mut self, blocks: impl Iterator<Item = &'a super::Block>) {
        self.live_blocks = Some(Arc::new(
            blocks.map(|b| (b.stack, b.time_ns, b.size)).collect(),
        ));
    }
}

impl Profile {
    /// The figures of `range` computed from the time-slot sums, without reading the trace again:
    /// `range` is widened to whole slots (the returned profile's `options.range` says to what).
    /// Per-stack "live" means live at the range's end, "peak" the stack's bytes at the end of
    /// the slot where the heap peaked within the range; lifetimes are not kept per slot
    /// (`freed_lifetime_ns` is zero). Reports are filtered exactly. A profile aggregated for a
    /// range already has no index: it is returned as it is.
    pub fn range_view(&self, range: TimeRange) -> Profile {
        let Some(index) = &self.index else {
            return self.clone();
        };
        let w = index.slot_ns;
        let (a, b) = (range.start_ns / w, range.end_ns.max(range.start_ns) / w);
        let snapped = TimeRange {
            start_ns: a * w,
            end_ns: (b + 1).saturating_mul(w) - 1,
        };
        let in_range = |slot: u32| (a..=b).contains(&u64::from(slot));
        let mut view = Profile {
            start: self.start.clone(),
            end: self.end,
            ending: self.ending,
            options: super::LoadOptions {
                range: Some(snapped),
                ..self.options
            },
            modules: self.modules.clone(),
            threads: self.threads.clone(),
            stacks: Arc::clone(&self.stacks),
            timeline: self.timeline.clone(),
            reports: self
                .reports
                .iter()
                .filter(|r| range.contains(r.time_ns))
                .cloned()
                .collect(),
            snapshots: self.snapshots.clone(),
            latest_snapshot: self.latest_snapshot.clone(),
            dropped: self.dropped,
            events: self.events,
            records: self.records,
            last_time_ns: self.last_time_ns,
            unmatched_frees: self.unmatched_frees,
            index: None,
            ..Profile::new(self.options)
        };
        // The heap's peak within the range, and the slot it fell in.
        let mut peak_slot = a;
        for (i, h) in index.heap.iter().enumerate() {
            let i = i as u64;
            if (a..=b).contains(&i) && h.peak_bytes > view.peak_bytes {
                view.peak_bytes = h.peak_bytes;
                view.peak_time_ns = h.peak_time_ns;
                peak_slot = i;
            }
            if (a..=b).contains(&i) {
                for (sum, bin) in view.size_histogram.iter_mut().zip(h.sizes.iter()) {
                    *sum = (sum.0 + bin.0, sum.1.saturating_add(bin.1));
                }
            }
        }
        // Leaked: allocated in the range and still live (now, or when this copy was made).
        let mut leaks: HashMap<u32, (u64, u64), IdHash> = HashMap::default();
        let mut leak = |stack: u32, t: u64, size: u64| {
            if snapped.contains(t) {
                let l = leaks.entry(stack).or_default();
                *l = (l.0.saturating_add(size), l.1 + 1);
            }
        };
        match &index.live_blocks {
            Some(blocks) => blocks.iter().for_each(|&(st, t, size)| leak(st, t, size)),
            None => self
                .work
                .blocks
                .live_blocks()
                .for_each(|b| leak(b.stack, b.time_ns, b.size)),
        }
        for (&stack, series) in &index.stacks {
            let mut s = StackStats::default();
            (s.leaked_bytes, s.leaked_count) = leaks.get(&stack).copied().unwrap_or_default();
            // Bytes and blocks live (all blocks, whenever allocated) after each entry.
            let (mut bytes, mut count) = (0i128, 0i128);
            let mut at_peak = None;
            let mut max = None;
            for e in series {
                let slot = u64::from(e.slot);
                if slot > peak_slot && at_peak.is_none() {
                    at_peak = Some(bytes);
                }
                if slot > b {
                    break;
                }
                if slot >= a && max.is_none() {
                    // The level the range starts from counts towards the stack's maximum.
                    max = Some((bytes, count));
                }
                bytes += i128::from(e.allocated_bytes) - i128::from(e.freed_bytes);
                count += i128::from(e.allocated_count) - i128::from(e.freed_count);
                if in_range(e.slot) {
                    s.allocated_bytes += e.allocated_bytes;
                    s.allocated_count += u64::from(e.allocated_count);
                    s.temporary_bytes += e.temporary_bytes;
                    s.temporary_count += u64::from(e.temporary_count);
                    if max.is_some_and(|m| bytes > m.0) {
                        max = Some((bytes, count));
                    }
                }
            }
            // No entry from the range's start on: the level stayed as it was.
            let max = max.unwrap_or((bytes, count));
            let clamp = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
            s.live_bytes = clamp(bytes);
            s.live_count = clamp(count);
            s.peak_bytes = clamp(at_peak.unwrap_or(bytes));
            s.max_live_bytes = clamp(max.0);
            s.max_live_count = clamp(max.1);
            s.current_bytes = s.live_bytes;
            s.current_count = s.live_count;
            if s == StackStats::default() {
                continue;
            }
            view.allocations += s.allocated_count;
            view.allocated_bytes = view.allocated_bytes.saturating_add(s.allocated_bytes);
            view.temporary_count += s.temporary_count;
            view.temporary_bytes = view.temporary_bytes.saturating_add(s.temporary_bytes);
            view.stack_stats.insert(stack, s);
        }
        view
    }
}

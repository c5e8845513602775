//! The aggregated view of a trace ([`Profile`]): what every command and panel shows, built while
//! the trace is read, record by record, so that raw events are never kept — only the blocks
//! still live, per-stack figures, a fixed number of timeline buckets, a size histogram, the
//! reports and the latest heap snapshot.
//!
//! May touch: the tracker's [`trace_format`](allocscope_tracker::trace_format) (reading only).
//! Knows nothing of symbols or UI.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use allocscope_tracker::trace_format::{
    DroppedCounts, Ending, Event, HeapSnapshot, Module, Record, ReportKind, ReportRecord,
    ThreadInfo, TraceEnd, TraceError, TraceExec, TraceReader, TraceStart, NO_STACK,
};

/// The hasher of the model's maps, keyed by addresses and ids: the standard SipHash resists
/// flooding by chosen keys, which a trace cannot mount against its own reader, and costs a
/// good part of loading. This is MurmurHash3's 64-bit finaliser, which spreads the low bits
/// that aligned addresses lack over the whole word.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHash;

/// The hasher [`IdHash`] builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(32) ^ v;
    }
}

/// Timeline buckets kept; when a trace runs longer, neighbouring buckets merge (width doubles).
pub const TIMELINE_BUCKETS: usize = 512;

/// Size-histogram bins: bin `i` holds sizes in `[2^(i-1), 2^i)`, bin 0 holds size 0.
pub const SIZE_BINS: usize = 65;

/// Default lifetime under which an allocation counts as temporary (1 ms).
pub const DEFAULT_TEMPORARY_NS: u64 = 1_000_000;

mod pairing;
mod ranges;
pub use ranges::{RangeIndex, ENTRY_BUDGET, MAX_SLOTS, MIN_SLOTS};

/// A closed interval of trace time, in nanoseconds since the trace's time zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    /// First nanosecond included.
    pub start_ns: u64,
    /// Last nanosecond included.
    pub end_ns: u64,
}

impl TimeRange {
    /// Whether `t` falls inside.
    pub fn contains(&self, t: u64) -> bool {
        self.start_ns <= t && t <= self.end_ns
    }
}

/// How to aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Only allocations made in this range count in the allocated, leaked and temporary
    /// figures and the histogram; "live" then means live at the range's end (every block
    /// allocated by then and not yet freed, whenever it was allocated). `None`: the whole
    /// trace.
    pub range: Option<TimeRange>,
    /// An allocation freed within this many nanoseconds is temporary.
    pub temporary_ns: u64,
    /// Also sum each stack's activity per time slot ([`Profile::index`]), so that any range
    /// can be shown without reading again (live mode, whose stream is not kept). Costs
    /// loading time (a trace file is rather read again for a range's exact figures).
    pub slot_index: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            range: None,
            temporary_ns: DEFAULT_TEMPORARY_NS,
            slot_index: false,
        }
    }
}

/// What one call stack (or, for [`NO_STACK`], every unsampled allocation) accounts for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Bytes allocated (a realloc counts its new size).
    pub allocated_bytes: u64,
    /// Allocations.
    pub allocated_count: u64,
    /// Bytes live at the end of the range (of the trace without a range).
    pub live_bytes: u64,
    /// Blocks live at the end of the range.
    pub live_count: u64,
    /// Bytes never freed before the trace ended.
    pub leaked_bytes: u64,
    /// Blocks never freed.
    pub leaked_count: u64,
    /// Bytes live at the moment of the heap's peak.
    pub peak_bytes: u64,
    /// The most bytes this stack ever had live at once.
    pub max_live_bytes: u64,
    /// Blocks live at [`StackStats::max_live_bytes`].
    pub max_live_count: u64,
    /// Bytes of temporary allocations (freed within the temporary threshold).
    pub temporary_bytes: u64,
    /// Temporary allocations.
    pub temporary_count: u64,
    /// Sum of freed blocks' lifetimes, in nanoseconds.
    pub freed_lifetime_ns: u64,
    /// Current live bytes while reading (equals `live_bytes` except past the range's end).
    current_bytes: u64,
    current_count: u64,
    /// Peak bookkeeping: the peak epoch this stack last saw, and its bytes at that peak.
    epoch: u64,
    bytes_at_epoch: u64,
}

/// One bucket of the timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Bytes allocated in the bucket.
    pub allocated_bytes: u64,
    /// Allocations in the bucket.
    pub allocations: u64,
    /// Bytes freed in the bucket.
    pub freed_bytes: u64,
    /// Frees in the bucket.
    pub frees: u64,
}

/// Heap activity over time, in [`TIMELINE_BUCKETS`] buckets at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// Width of one bucket in nanoseconds.
    pub bucket_ns: u64,
    /// Buckets from time zero.
    pub buckets: Vec<Bucket>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    fn new() -> Self {
        Timeline {
            bucket_ns: 1_000,
            buckets: Vec::new(),
        }
    }

    fn bucket(&mut self, t: u64) -> &mut Bucket {
        while t / self.bucket_ns >= TIMELINE_BUCKETS as u64 {
            self.bucket_ns = self.bucket_ns.saturating_mul(2);
            let merged = self
                .buckets
                .chunks(2)
                .map(|pair| {
                    pair.iter().fold(Bucket::default(), |a, b| Bucket {
                        allocated_bytes: a.allocated_bytes.saturating_add(b.allocated_bytes),
                        allocations: a.allocations + b.allocations,
                        freed_bytes: a.freed_bytes.saturating_add(b.freed_bytes),
                        frees: a.frees + b.frees,
                    })
                })
                .collect();
            self.buckets = merged;
        }
        let i = (t / self.bucket_ns) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, Bucket::default());
        }
        &mut self.buckets[i]
    }

    /// Bytes in use at the end of each bucket (allocations minus frees so far; frees of blocks
    /// allocated before tracing began are not subtracted).
    pub fn heap_in_use(&self) -> Vec<u64> {
        let mut level: i128 = 0;
        self.buckets
            .iter()
            .map(|b| {
                level += i128::from(b.allocated_bytes) - i128::from(b.freed_bytes);
                level.clamp(0, i128::from(u64::MAX)) as u64
            })
            .collect()
    }

    /// Start time of bucket `i`.
    pub fn bucket_start(&self, i: usize) -> u64 {
        (i as u64).saturating_mul(self.bucket_ns)
    }
}

/// Heap figures from one snapshot record (the pages only of the latest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// When.
    pub time_ns: u64,
    /// Bytes the program holds, as the tracker counts them.
    pub live_bytes: u64,
    /// Bytes the core heap has committed.
    pub committed_bytes: u64,
    /// Bytes the tracker itself uses.
    pub overhead_bytes: u64,
}

/// A live block while reading.
#[derive(Clone, Copy, Debug)]
struct Block {
    size: u64,
    stack: u32,
    /// Where the allocation's entry was in its stack's slot sums (a hint: entries move).
    index_hint: u32,
    time_ns: u64,
    counted: bool,
}

/// Everything the viewer and the commands show of one trace.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The trace's start record, if it had one.
    pub start: Option<TraceStart>,
    /// The end record; `None` when the traced process died.
    pub end: Option<TraceEnd>,
    /// Set when the trace ended because the process replaced its program (`exec`).
    pub exec: Option<TraceExec>,
    /// How the file ended.
    pub ending: Option<Ending>,
    /// The options used to aggregate.
    pub options: LoadOptions,
    /// Every module seen (later maps add to earlier ones).
    pub modules: Vec<Module>,
    /// Threads by trace id.
    pub threads: Vec<ThreadInfo>,
    /// Stack definitions: return addresses, innermost first (shared by a profile's copies
    /// and range views; a definition read later copies it if another holds it).
    pub stacks: Arc<HashMap<u32, Vec<u64>>>,
    /// Per-stack figures ([`NO_STACK`] gathers unsampled allocations).
    pub stack_stats: HashMap<u32, StackStats, IdHash>,
    /// Heap activity over time (the whole trace, whatever the range).
    pub timeline: Timeline,
    /// Allocation sizes in range: (count, bytes) per log2 bin.
    pub size_histogram: Vec<(u64, u64)>,
    /// Reports in range (corruption and leak), in file order.
    pub reports: Vec<ReportRecord>,
    /// Heap figures from every snapshot.
    pub snapshots: Vec<SnapshotPoint>,
    /// The latest snapshot with its page map.
    pub latest_snapshot: Option<HeapSnapshot>,
    /// Dropped-event counts (cumulative, latest).
    pub dropped: DroppedCounts,
    /// Events read.
    pub events: u64,
    /// Records read.
    pub records: u64,
    /// Allocations counted (in range).
    pub allocations: u64,
    /// Bytes allocated in range.
    pub allocated_bytes: u64,
    /// Temporary allocations in range.
    pub temporary_count: u64,
    /// Bytes of temporary allocations.
    pub temporary_bytes: u64,
    /// Bytes live when the heap peaked (as events were read; within the range when one is set).
    pub peak_bytes: u64,
    /// When the peak happened.
    pub peak_time_ns: u64,
    /// Latest event time seen.
    pub last_time_ns: u64,
    /// Frees whose allocation the trace never showed (made before tracing began, or dropped).
    pub unmatched_frees: u64,
    /// Per-stack sums by time slot, for ranges without reading again
    /// ([`Profile::range_view`]); `None` unless [`LoadOptions::slot_index`] asked for it (never
    /// in a profile aggregated for a range).
    pub index: Option<RangeIndex>,
    /// Working state dropped after loading.
    work: Work,
}

#[derive(Debug, Default)]
struct Work {
    /// Live blocks and frees read before their allocation, by address (see [`pairing`]).
    blocks: pairing::Pairing,
    current_bytes: u64,
    peak_epoch: u64,
}

/// The working state is not part of a profile's value: a clone starts without it (so that
/// [`Profile::finished`] does not copy every live block).
impl Clone for Work {
    fn clone(&self) -> Self {
        Work::default()
    }
}

impl Profile {
    /// Reads a whole trace from `input`, aggregating as it goes. `progress` is called with the
    /// bytes read so far now and then. A truncated tail is not an error ([`Profile::ending`]
    /// says so); a damaged frame, a foreign file or another version is.
    pub fn load<R: Read>(
        input: R,
        options: LoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Profile, TraceError> {
        let mut reader = TraceReader::new(input)?;
        let mut profile = Profile::new(options);
        while let Some(record) = reader.next_record()? {
            profile.push(record);
            if profile.records % 256 == 0 {
                progress(reader.offset());
            }
        }
        progress(reader.offset());
        profile.ending = reader.ending();
        profile.finish();
        Ok(profile)
    }

    /// An empty profile to [`Profile::push`] records into (live mode); [`Profile::load`] is
    /// this plus reading and [`Profile::finished`].
    pub fn new(options: LoadOptions) -> Profile {
        Profile {
            options,
            timeline: Timeline::new(),
            size_histogram: vec![(0, 0); SIZE_BINS],
            index: (options.slot_index && options.range.is_none()).then(RangeIndex::default),
            ..Profile::default()
        }
    }

    /// A finished copy of a profile still being pushed to (per-stack live and peak figures
    /// as of now), without the working state of live blocks.
    pub fn finished(&self) -> Profile {
        let mut copy = self.clone();
        copy.settle_figures(self.work.peak_epoch, self.work.blocks.early_free_count());
        if let Some(index) = &mut copy.index {
            index.keep_live_blocks(self.work.blocks.live_blocks());
        }
        copy
    }

    /// [`Profile::finished`] without the time-slot index (the costly part to copy), which
    /// stays with this profile.
    pub fn finished_without_index(&mut self) -> Profile {
        let index = self.index.take();
        let copy = self.finished();
        self.index = index;
        copy
    }

    /// Reads a trace file (see [`Profile::load`]).
    pub fn load_file(
        path: &std::path::Path,
        options: LoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Profile, TraceError> {
        let file = std::fs::File::open(path)?;
        Profile::load(
            std::io::BufReader::with_capacity(1 << 20, file),
            options,
            progress,
        )
    }

    fn in_range(&self, t: u64) -> bool {
        self.options.range.is_none_or(|r| r.contains(t))
    }

    fn before_range_end(&self, t: u64) -> bool {
        self.options.range.is_none_or(|r| t <= r.end_ns)
    }

    /// Adds one record, in stream order.
    pub fn push(&mut self, record: Record) {
        self.records += 1;
        match record {
            Record::Start(s) => self.start = Some(s),
            Record::Modules(mods) => {
                for m in mods {
                    if !self
                        .modules
                        .iter()
                        .any(|k| k.path == m.path && k.bias == m.bias)
                    {
                        self.modules.push(m);
                    }
                }
            }
            Record::Thread(t) => self.threads.push(t),
            Record::Stack(def) => {
                Arc::make_mut(&mut self.stacks).insert(def.id, def.frames);
            }
            Record::Batch(batch) => {
                for event in batch.events {
                    self.event(event);
                }
                if let Some(index) = &mut self.index {
                    index.keep_to_budget(self.last_time_ns);
                }
            }
            Record::Snapshot(s) => {
                self.snapshots.push(SnapshotPoint {
                    time_ns: s.time_ns,
                    live_bytes: s.tracked_live_bytes,
                    committed_bytes: s.heap.committed_bytes,
                    overhead_bytes: s.overhead_bytes,
                });
                if self
                    .latest_snapshot
                    .as_ref()
                    .is_none_or(|l| l.time_ns <= s.time_ns)
                {
                    self.latest_snapshot = Some(s);
                }
            }
            Record::Report(r) => {
                if self.in_range(r.time_ns) {
                    self.reports.push(r);
                }
            }
            Record::Dropped(d) => self.dropped = d,
            Record::End(e) => {
                self.dropped = e.dropped;
                self.end = Some(e);
            }
            Record::Exec(e) => self.exec = Some(e),
        }
    }

    fn event(&mut self, event: Event) {
        self.events += 1;
        self.last_time_ns = self.last_time_ns.max(event.time_ns());
        match event {
            Event::Alloc {
                time_ns,
                addr,
                size,
                stack,
                ..
            } => self.alloc(time_ns, addr, size, stack),
            Event::Free {
                time_ns,
                addr,
                size,
                ..
            } => self.free(time_ns, addr, size),
            Event::Realloc {
                time_ns,
                old_addr,
                new_addr,
                old_size,
                new_size,
                stack,
                ..
            } => {
                self.free(time_ns, old_addr, old_size);
                self.alloc(time_ns, new_addr, new_size, stack);
            }
        }
    }

    fn alloc(&mut self, t: u64, addr: u64, size: u64, stack: u32) {
        let b = self.timeline.bucket(t);
        b.allocated_bytes = b.allocated_bytes.saturating_add(size);
        b.allocations += 1;
        // A free read before its allocation (another thread's batch came first) settles now.
        let early_free = self.work.blocks.take_early_free(addr, t);
        let counted = self.in_range(t);
        let by_range_end = self.before_range_end(t);
        if counted {
            self.allocations += 1;
            self.allocated_bytes = self.allocated_bytes.saturating_add(size);
            let bin = (64 - size.leading_zeros()) as usize;
            let h = &mut self.size_histogram[bin];
            *h = (h.0 + 1, h.1.saturating_add(size));
        }
        if by_range_end {
            let epoch = self.work.peak_epoch;
            let s = self.stack_stats.entry(stack).or_insert(StackStats {
                epoch,
                ..StackStats::default()
            });
            s.note_epoch(epoch);
            // Live at the range's end: every block allocated by then, in range or before it.
            s.current_bytes = s.current_bytes.saturating_add(size);
            s.current_count += 1;
            if counted {
                s.allocated_bytes = s.allocated_bytes.saturating_add(size);
                s.allocated_count += 1;
                if s.current_bytes > s.max_live_bytes {
                    s.max_live_bytes = s.current_bytes;
                    s.max_live_count = s.current_count;
                }
                s.leaked_bytes = s.leaked_bytes.saturating_add(size);
                s.leaked_count += 1;
            }
        }
        // A block freed before now never adds to the heap's level.
        if early_free.is_none() {
            self.work.current_bytes = self.work.current_bytes.saturating_add(size);
        }
        let index_hint = match &mut self.index {
            Some(index) => index.alloc(t, stack, size, self.work.current_bytes),
            None => u32::MAX,
        };
        let block = Block {
            size,
            stack,
            index_hint,
            time_ns: t,
            counted,
        };
        if let Some(free_t) = early_free {
            self.settle(block, free_t);
            return;
        }
        if counted && self.work.current_bytes > self.peak_bytes {
            self.peak_bytes = self.work.current_bytes;
            self.peak_time_ns = t;
            self.work.peak_epoch += 1;
        }
        self.work.blocks.insert_live(addr, block);
    }

    fn free(&mut self, t: u64, addr: u64, size: u64) {
        let b = self.timeline.bucket(t);
        b.freed_bytes = b.freed_bytes.saturating_add(size);
        b.frees += 1;
        match self.work.blocks.take_live(addr, t) {
            Some(block) => {
                self.work.current_bytes = self.work.current_bytes.saturating_sub(block.size);
                self.settle(block, t);
            }
            None => self.work.blocks.add_early_free(addr, t, size),
        }
    }

    /// Per-stack bookkeeping of a block freed at `t`.
    fn settle(&mut self, block: Block, t: u64) {
        let lifetime = t.saturating_sub(block.time_ns);
        let temporary = lifetime <= self.options.temporary_ns;
        if let Some(index) = &mut self.index {
            index.free(
                t,
                block.time_ns,
                block.stack,
                block.size,
                temporary,
                block.index_hint,
            );
        }
        if !self.before_range_end(block.time_ns) {
            return;
        }
        let epoch = self.work.peak_epoch;
        let freed_by_range_end = self.before_range_end(t);
        let s = self.stack_stats.entry(block.stack).or_default();
        s.note_epoch(epoch);
        if freed_by_range_end {
            s.current_bytes = s.current_bytes.saturating_sub(block.size);
            s.current_count = s.current_count.saturating_sub(1);
        }
        if !block.counted {
            return;
        }
        s.leaked_bytes = s.leaked_bytes.saturating_sub(block.size);
        s.leaked_count = s.leaked_count.saturating_sub(1);
        s.freed_lifetime_ns = s.freed_lifetime_ns.saturating_add(lifetime);
        if temporary {
            s.temporary_bytes = s.temporary_bytes.saturating_add(block.size);
            s.temporary_count += 1;
            self.temporary_bytes = self.temporary_bytes.saturating_add(block.size);
            self.temporary_count += 1;
        }
    }

    fn finish(&mut self) {
        self.settle_figures(self.work.peak_epoch, self.work.blocks.early_free_count());
        if let Some(index) = &mut self.index {
            index.keep_live_blocks(self.work.blocks.live_blocks());
        }
        self.work = Work::default();
    }

    /// Turns the running per-stack counters into the published figures.
    fn settle_figures(&mut self, epoch: u64, early_frees: usize) {
        for s in self.stack_stats.values_mut() {
            s.live_bytes = s.current_bytes;
            s.live_count = s.current_count;
            s.peak_bytes = if s.epoch == epoch {
                s.bytes_at_epoch
            } else {
                s.current_bytes
            };
        }
        self.unmatched_frees += early_frees as u64;
    }

    /// Total bytes still allocated when the trace ended (allocated in range).
    pub fn leaked_bytes(&self) -> u64 {
        self.stack_stats.values().map(|s| s.leaked_bytes).sum()
    }

    /// Blocks still allocated when the trace ended.
    pub fn leaked_count(&self) -> u64 {
        self.stack_stats.values().map(|s| s.leaked_count).sum()
    }

    /// Reports other than leaks.
    pub fn corruption_reports(&self) -> impl Iterator<Item = &ReportRecord> {
        self.reports
            .iter()
            .filter(|r| r.kind != ReportKind::MemoryLeak)
    }

    /// The tracker's leak reports (blocks unreachable at its leak check).
    pub fn leak_reports(&self) -> impl Iterator<Item = &ReportRecord> {
        self.reports
            .iter()
            .filter(|r| r.kind == ReportKind::MemoryLeak)
    }

    /// Stacks ordered by `metric`, largest first, zero values left out.
    pub fn top_stacks(&self, metric: Metric) -> Vec<(u32, StackStats)> {
        self.top_stacks_by(usize::MAX, |s| metric.value(s)).0
    }

    /// The (at most) `k` stacks with the largest `key`, largest first (ties by id), zero
    /// values left out; then how many other stacks had a non-zero `key`, and its sum over
    /// them. What a panel draws is bounded by `k`, whatever the number of stacks.
    pub fn top_stacks_by(
        &self,
        k: usize,
        key: impl Fn(&StackStats) -> u64,
    ) -> (Vec<(u32, StackStats)>, u64, u64) {
        // Keys and ids only while choosing: the figures are copied for the chosen ones.
        let mut v: Vec<(u64, u32)> = self
            .stack_stats
            .iter()
            .filter_map(|(&id, s)| Some((key(s), id)).filter(|&(k, _)| k > 0))
            .collect();
        let order = |a: &(u64, u32), b: &(u64, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        let (mut others, mut others_sum) = (0, 0u64);
        if v.len() > k {
            v.select_nth_unstable_by(k.saturating_sub(1), order);
            for (value, _) in v.drain(k..) {
                others += 1;
                others_sum = others_sum.saturating_add(value);
            }
        }
        v.sort_unstable_by(order);
        let v = v
            .into_iter()
            .map(|(_, id)| (id, self.stack_stats[&id]))
            .collect();
        (v, others, others_sum)
    }

    /// The frames of a stack id (empty for [`NO_STACK`] or an undefined id).
    pub fn frames(&self, stack: u32) -> &[u64] {
        if stack == NO_STACK {
            return &[];
        }
        self.stacks.get(&stack).map_or(&[], |f| f.as_slice())
    }

    /// The trace's time span: zero to the last event, report, snapshot or end record.
    pub fn duration_ns(&self) -> u64 {
        let mut d = self.last_time_ns;
        if let Some(e) = &self.end {
            d = d.max(e.time_ns);
        }
        if let Some(s) = self.snapshots.last() {
            d = d.max(s.time_ns);
        }
        d
    }
}

impl StackStats {
    /// Before a change: remember this stack's bytes as they stood at the latest peak.
    fn note_epoch(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.bytes_at_epoch = self.current_bytes;
        }
    }
}

/// What a per-stack figure measures (flamegraphs, exports, sorting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Metric {
    /// Bytes allocated.
    Allocated,
    /// Bytes live at the end of the range.
    Live,
    /// Bytes never freed.
    Leaked,
    /// Bytes live at the heap's peak.
    Peak,
    /// Bytes of temporary allocations.
    Temporary,
    /// Number of allocations.
    Count,
}

impl Metric {
    /// Every metric, in menu order.
    pub const ALL: [Metric; 6] = [
        Metric::Allocated,
        Metric::Live,
        Metric::Leaked,
        Metric::Peak,
        Metric::Temporary,
        Metric::Count,
    ];

    /// This metric of `s`.
    pub fn value(self, s: &StackStats) -> u64 {
        match self {
            Metric::Allocated => s.allocated_bytes,
            Metric::Live => s.live_bytes,
            Metric::Leaked => s.leaked_bytes,
            Metric::Peak => s.peak_bytes,
            Metric::Temporary => s.temporary_bytes,
            Metric::Count => s.allocated_count,
        }
    }

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Allocated => "allocated",
            Metric::Live => "live",
            Metric::Leaked => "leaked",
            Metric::Peak => "peak",
            Metric::Temporary => "temporary",
            Metric::Count => "count",
        }
    }

    /// Whether the values are bytes (else counts).
    pub fn is_bytes(self) -> bool {
        self != Metric::Count
    }
}

/// Bytes in human units (`1.5 MiB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Nanoseconds in human units (`12.3 ms`).
pub fn format_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocscope_tracker::trace_format::{
        EventBatch, ReportRecord, StackDef, TraceEnd, TraceWriter,
    };

    fn start() -> Record {
        Record::Start(TraceStart {
            pid: 7,
            program: "/bin/fixture".into(),
            unix_time_ns: 0,
            page_size: 4096,
            options: "sample=1".into(),
            tracker_version: "test".into(),
        })
    }

    fn alloc(time_ns: u64, addr: u64, size: u64, stack: u32) -> Event {
        Event::Alloc {
            time_ns,
            addr,
            size,
            align: 8,
            stack,
        }
    }

    fn free(time_ns: u64, addr: u64, size: u64) -> Event {
        Event::Free {
            time_ns,
            addr,
            size,
            stack: NO_STACK,
        }
    }

    fn batch(thread: u32, events: Vec<Event>) -> Record {
        Record::Batch(EventBatch { thread, events })
    }

    fn encode(records: &[Record]) -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        w.into_inner()
    }

    fn load(records: &[Record], options: LoadOptions) -> Profile {
        Profile::load(&encode(records)[..], options, &mut |_| {}).unwrap()
    }

    /// Two stacks: stack 1 allocates 100 B (freed 5 ns later) and 200 B (never freed), stack
    /// 2 allocates 50 B freed 5 ms later.
    fn two_stacks() -> Vec<Record> {
        vec![
            start(),
            Record::Stack(StackDef {
                id: 1,
                frames: vec![0x1000],
            }),
            Record::Stack(StackDef {
                id: 2,
                frames: vec![0x2000],
            }),
            batch(
                1,
                vec![
                    alloc(10, 0xa0, 100, 1),
                    free(15, 0xa0, 100),
                    alloc(20, 0xb0, 200, 1),
                    alloc(30, 0xc0, 50, 2),
                    free(5_000_000, 0xc0, 50),
                ],
            ),
            Record::End(TraceEnd {
                time_ns: 6_000_000,
                ..TraceEnd::default()
            }),
        ]
    }

    #[test]
    fn stacks_add_up_allocated_live_leaked_peak_and_temporary() {
        let p = load(&two_stacks(), LoadOptions::default());
        let s1 = p.stack_stats[&1];
        let s2 = p.stack_stats[&2];
        assert_eq!((s1.allocated_bytes, s1.allocated_count), (300, 2));
        assert_eq!((s1.live_bytes, s1.live_count), (200, 1));
        assert_eq!((s1.leaked_bytes, s1.leaked_count), (200, 1));
        assert_eq!((s1.temporary_bytes, s1.temporary_count), (100, 1));
        assert_eq!(
            (s2.allocated_bytes, s2.live_bytes, s2.temporary_count),
            (50, 0, 0)
        );
        // Running total: 100, 0, 200, 250, 200: the peak is 250 at t=30, 200 of it stack 1's.
        assert_eq!((p.peak_bytes, p.peak_time_ns), (250, 30));
        assert_eq!((s1.peak_bytes, s2.peak_bytes), (200, 50));
        assert_eq!(s1.max_live_bytes, 200);
        assert_eq!(p.leaked_bytes(), 200);
        assert_eq!(p.events, 5);
        assert_eq!(p.duration_ns(), 6_000_000);
        assert_eq!(p.ending, Some(Ending::Clean));
        let order: Vec<u32> = p
            .top_stacks(Metric::Allocated)
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(order, [1, 2]);
        assert!(p.top_stacks(Metric::Leaked).iter().all(|s| s.0 == 1));
    }

    #[test]
    fn pushing_records_one_by_one_and_finishing_matches_loading() {
        let mut live = Profile::new(LoadOptions::default());
        let records = two_stacks();
        for r in records.iter().take(4).cloned() {
            live.push(r);
        }
        let now = live.finished();
        assert_eq!(now.stack_stats[&1].live_bytes, 200);
        assert_eq!(now.end, None);
        live.push(records[4].clone());
        let loaded = load(&records, LoadOptions::default());
        let done = live.finished();
        assert_eq!(done.stack_stats, loaded.stack_stats);
        assert_eq!(
            (done.peak_bytes, done.events),
            (loaded.peak_bytes, loaded.events)
        );
    }

    #[test]
    fn a_time_range_counts_only_its_allocations_and_live_means_live_at_its_end() {
        let options = LoadOptions {
            range: Some(TimeRange {
                start_ns: 18,
                end_ns: 40,
            }),
            ..LoadOptions::default()
        };
        let p = load(&two_stacks(), options);
        let s1 = p.stack_stats[&1];
        let s2 = p.stack_stats[&2];
        assert_eq!((s1.allocated_bytes, s1.temporary_count), (200, 0));
        // Stack 2's block is freed after the range: live at its end, not leaked.
        assert_eq!((s2.live_bytes, s2.leaked_bytes), (50, 0));
        assert_eq!(p.allocations, 2);
        // The timeline still covers the whole trace.
        let total: u64 = p.timeline.buckets.iter().map(|b| b.allocations).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn a_free_read_before_its_allocation_still_pairs_with_it() {
        let records = vec![
            start(),
            batch(2, vec![free(50, 0xd0, 64)]),
            batch(
                1,
                vec![alloc(40, 0xd0, 64, NO_STACK), alloc(60, 0xd0, 32, NO_STACK)],
            ),
        ];
        let p = load(&records, LoadOptions::default());
        let s = p.stack_stats[&NO_STACK];
        assert_eq!((s.allocated_count, s.live_bytes, s.live_count), (2, 32, 1));
        assert_eq!(p.unmatched_frees, 0);
        assert_eq!(p.end, None, "no end record: the process died");
    }

    /// A producer thread allocates, a consumer frees, and the allocator reuses addresses: the
    /// consumer's batch may be read before or after the producer's. Every block is freed; the
    /// model used to keep one early free per address and showed most blocks still allocated.
    #[test]
    fn frees_of_another_threads_reused_addresses_pair_in_any_batch_order() {
        // Four addresses, each allocated and freed 50 times: allocations at 100 i + a, frees
        // at 100 i + a + 50.
        let mut allocs = Vec::new();
        let mut frees = Vec::new();
        for i in 0..50u64 {
            for a in 0..4u64 {
                allocs.push(alloc(100 * i + a, 0x1000 + a * 64, 48, NO_STACK));
                frees.push(free(100 * i + a + 50, 0x1000 + a * 64, 48));
            }
        }
        for consumer_first in [true, false] {
            let (first, second) = if consumer_first {
                (batch(2, frees.clone()), batch(1, allocs.clone()))
            } else {
                (batch(1, allocs.clone()), batch(2, frees.clone()))
            };
            let p = load(&[start(), first, second], LoadOptions::default());
            assert_eq!(p.allocations, 200);
            assert_eq!(p.unmatched_frees, 0, "consumer first: {consumer_first}");
            assert_eq!(
                (p.leaked_bytes(), p.leaked_count()),
                (0, 0),
                "consumer first: {consumer_first}"
            );
        }
    }

    #[test]
    fn a_free_of_a_block_never_seen_is_counted_as_unmatched() {
        let records = vec![start(), batch(1, vec![free(5, 0xe0, 8)])];
        let p = load(&records, LoadOptions::default());
        assert_eq!(p.unmatched_frees, 1);
        assert!(p.stack_stats.is_empty());
    }

    #[test]
    fn the_timeline_merges_buckets_and_keeps_the_heap_level() {
        let mut events = Vec::new();
        for i in 0..2_000u64 {
            events.push(alloc(i * 5_000_000, 0x1000 + i * 16, 16, NO_STACK));
        }
        events.push(free(10_000_000_000, 0x1000, 16));
        let p = load(&[start(), batch(1, events)], LoadOptions::default());
        assert!(p.timeline.buckets.len() <= TIMELINE_BUCKETS);
        assert!(p.timeline.bucket_ns >= 10_000_000_000 / TIMELINE_BUCKETS as u64);
        let level = p.timeline.heap_in_use();
        assert_eq!(*level.last().unwrap(), 1_999 * 16);
        assert!(level.windows(2).take(level.len() - 2).all(|w| w[0] <= w[1]));
        let i = (5_000_000_000 / p.timeline.bucket_ns) as usize;
        assert!(p.timeline.bucket_start(i) <= 5_000_000_000);
    }

    #[test]
    fn sizes_fall_in_power_of_two_bins() {
        let events = vec![
            alloc(1, 0x10, 0, NO_STACK),
            alloc(2, 0x20, 1, NO_STACK),
            alloc(3, 0x30, 1000, NO_STACK),
            alloc(4, 0x40, 1023, NO_STACK),
            alloc(5, 0x50, 1024, NO_STACK),
        ];
        let p = load(&[start(), batch(1, events)], LoadOptions::default());
        assert_eq!(p.size_histogram[0], (1, 0));
        assert_eq!(p.size_histogram[1], (1, 1));
        assert_eq!(p.size_histogram[10], (2, 2023));
        assert_eq!(p.size_histogram[11], (1, 1024));
    }

    #[test]
    fn reports_split_into_corruption_and_leaks_and_snapshots_keep_the_latest_pages() {
        let report = |kind, time_ns| {
            Record::Report(ReportRecord {
                time_ns,
                kind,
                address: 0x10,
                block_start: Some(0x10),
                block_size: Some(8),
                offset: Some(8),
                thread: 1,
                access_stack: 0,
                alloc_stack: 0,
                free_stack: 0,
                text: format!("{} report", kind.as_str()),
            })
        };
        let snapshot = |time_ns, committed_bytes| {
            Record::Snapshot(HeapSnapshot {
                time_ns,
                heap: allocscope_tracker::trace_format::HeapTotals {
                    committed_bytes,
                    ..Default::default()
                },
                ..HeapSnapshot::default()
            })
        };
        let records = vec![
            start(),
            report(ReportKind::HeapBufferOverflow, 5),
            report(ReportKind::MemoryLeak, 9),
            snapshot(3, 4096),
            snapshot(8, 8192),
        ];
        let p = load(&records, LoadOptions::default());
        assert_eq!(p.corruption_reports().count(), 1);
        assert_eq!(p.leak_reports().count(), 1);
        assert_eq!(p.snapshots.len(), 2);
        assert_eq!(p.latest_snapshot.as_ref().unwrap().time_ns, 8);
        assert_eq!(p.snapshots[1].committed_bytes, 8192);
    }

    #[test]
    fn a_cut_trace_loads_its_complete_records_and_says_so() {
        let bytes = encode(&two_stacks());
        let p = Profile::load(
            &bytes[..bytes.len() - 3],
            LoadOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(p.ending, Some(Ending::Truncated { .. })));
        assert_eq!(p.end, None);
        assert_eq!(p.events, 5);
    }

    #[test]
    fn every_cut_and_random_damage_is_an_error_or_a_profile_never_a_panic() {
        let bytes = encode(&two_stacks());
        for cut in 0..bytes.len() {
            let _ = Profile::load(&bytes[..cut], LoadOptions::default(), &mut |_| {});
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let mut damaged = bytes.clone();
            let at = (next() % damaged.len() as u64) as usize;
            damaged[at] ^= (next() % 255 + 1) as u8;
            let result = Profile::load(&damaged[..], LoadOptions::default(), &mut |_| {});
            if at < HEADER_BYTES {
                assert!(result.is_err(), "damaged header at {at} accepted");
            }
        }
        for len in [0usize, 1, 7, 12, 100, 4096] {
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(Profile::load(&noise[..], LoadOptions::default(), &mut |_| {}).is_err());
        }
    }

    /// A random trace over 40 stacks: allocations, frees of live blocks (some read before their
    /// allocation, in another thread's later batch) and reallocs, spread over 3 ms.
    fn random_trace(seed: u64) -> Vec<Record> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut records = vec![start()];
        let (mut live, mut events, mut late) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..3_000u64 {
            let t = i * 1_000 + next() % 700;
            let r = next();
            if !live.is_empty() && r % 3 == 0 {
                let (addr, size) = live.swap_remove((r >> 8) as usize % live.len());
                if r % 7 == 0 {
                    late.push(free(t, addr, size));
                } else {
                    events.push(free(t, addr, size));
                }
            } else if !live.is_empty() && r % 11 == 1 {
                let k = (r >> 8) as usize % live.len();
                let (old_addr, old_size) = live[k];
                let new_size = 1 + (r >> 24) % 4096;
                live[k] = (0x10_0000 + i * 64, new_size);
                events.push(Event::Realloc {
                    time_ns: t,
                    old_addr,
                    new_addr: live[k].0,
                    old_size,
                    new_size,
                    align: 8,
                    stack: 1 + (r >> 40) as u32 % 40,
                });
            } else {
                let size = 1 + (r >> 24) % 4096;
                live.push((0x10_0000 + i * 64, size));
                events.push(alloc(
                    t,
                    0x10_0000 + i * 64,
                    size,
                    1 + (r >> 40) as u32 % 40,
                ));
            }
        }
        // The frees read early come first, in a batch of their own.
        records.push(batch(2, late));
        records.push(batch(1, events));
        records
    }

    #[test]
    fn a_range_view_from_the_slot_sums_matches_reading_the_range_again() {
        for seed in [0x9e37_79b9_7f4a_7c15u64, 0x2545_f491_4f6c_dd1d, 77] {
            let records = random_trace(seed);
            let indexed = LoadOptions {
                slot_index: true,
                ..LoadOptions::default()
            };
            let full = load(&records, indexed);
            let index = full.index.as_ref().expect("asked for");
            let w = index.slot_ns();
            assert!(full.duration_ns() / w < MAX_SLOTS);
            let slots = full.duration_ns() / w + 1;
            for (from, to) in [
                (0, slots),
                (1, slots / 2),
                (slots / 3, slots / 3 + 1),
                (2, slots),
            ] {
                let range = TimeRange {
                    start_ns: from * w,
                    end_ns: to * w - 1,
                };
                let view = full.range_view(range);
                assert_eq!(view.options.range, Some(range));
                let exact = load(
                    &records,
                    LoadOptions {
                        range: Some(range),
                        ..LoadOptions::default()
                    },
                );
                let figures = |p: &Profile| {
                    let mut v: Vec<_> = p
                        .stack_stats
                        .iter()
                        .map(|(&id, s)| {
                            (
                                id,
                                [
                                    s.allocated_bytes,
                                    s.allocated_count,
                                    s.live_bytes,
                                    s.live_count,
                                    s.leaked_bytes,
                                    s.leaked_count,
                                    s.temporary_bytes,
                                    s.temporary_count,
                                ],
                            )
                        })
                        .filter(|(_, f)| f.iter().any(|&x| x > 0))
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(figures(&view), figures(&exact), "{range:?}");
                assert_eq!(
                    (view.allocations, view.allocated_bytes, view.temporary_count),
                    (
                        exact.allocations,
                        exact.allocated_bytes,
                        exact.temporary_count
                    )
                );
                assert_eq!(view.size_histogram, exact.size_histogram);
                assert_eq!(view.peak_bytes, exact.peak_bytes, "{range:?}");
            }
        }
    }

    #[test]
    fn a_range_view_widens_to_whole_slots_and_keeps_its_reports() {
        let mut records = two_stacks();
        records.push(Record::Report(ReportRecord {
            time_ns: 5_500_000,
            kind: ReportKind::DoubleFree,
            address: 0x10,
            block_start: None,
            block_size: None,
            offset: None,
            thread: 1,
            access_stack: 0,
            alloc_stack: 0,
            free_stack: 0,
            text: "double-free".into(),
        }));
        let full = load(
            &records,
            LoadOptions {
                slot_index: true,
                ..LoadOptions::default()
            },
        );
        assert!(load(&records, LoadOptions::default()).index.is_none());
        let w = full.index.as_ref().unwrap().slot_ns();
        let view = full.range_view(TimeRange {
            start_ns: 18,
            end_ns: 40,
        });
        let r = view.options.range.unwrap();
        assert_eq!((r.start_ns, (r.end_ns + 1) % w), (0, 0));
        assert_eq!(view.corruption_reports().count(), 0);
        let late = full.range_view(TimeRange {
            start_ns: 5_000_000,
            end_ns: 6_000_000,
        });
        assert_eq!(late.corruption_reports().count(), 1);
        // Stack 1's 200 B block is live at the end of the late range though allocated before.
        assert_eq!(late.stack_stats[&1].live_bytes, 200);
        assert_eq!(late.stack_stats[&1].allocated_bytes, 0);
        assert!(view.index.is_none());
        assert_eq!(view.range_view(r).stack_stats, view.stack_stats);
    }

    const HEADER_BYTES: usize = allocscope_tracker::trace_format::HEADER_LEN;
}

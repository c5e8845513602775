//! The synthetic trace of the scale examples (`load_figures`, `live_throughput`): threads'
//! batches of allocations and frees over a set of call stacks, deterministic for a seed.
//!
//! Two shapes. [`Shape::light`]: 16 threads, 4 096 stacks, each thread keeps at most 50 000
//! blocks live (a quarter of the events allocate). [`Shape::heavy`]: 16 threads, 100 000
//! stacks of 16 frames sharing their outer frames (a call tree), picked log-uniformly (a few
//! hot, most rare); the first half of the events grows the heap (60% allocate) to about a
//! million live blocks, the second half shrinks it (40% allocate); frees pick a random live
//! block, so lifetimes range from nanoseconds to the whole run.

use allocscope_tracker::trace_format::{Event, EventBatch, Record, StackDef, TraceEnd, TraceStart};

/// Events per batch record (what the tracker's per-thread buffers hand over).
pub const BATCH: usize = 4096;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Threads whose batches interleave.
    pub threads: usize,
    /// Distinct call stacks.
    pub stacks: u32,
    /// Frames per stack.
    pub depth: u64,
    /// The heavy shape (see the module documentation).
    pub heavy: bool,
    /// Trace time between consecutive events.
    pub ns_per_event: u64,
}

impl Shape {
    /// Few live blocks, 4 096 stacks.
    pub fn light() -> Shape {
        Shape {
            threads: 16,
            stacks: 4096,
            depth: 12,
            heavy: false,
            ns_per_event: 50,
        }
    }

    /// About a million live blocks at the peak, 100 000 stacks.
    pub fn heavy() -> Shape {
        Shape {
            threads: 16,
            stacks: 100_000,
            depth: 16,
            heavy: true,
            ns_per_event: 50,
        }
    }
}

/// Makes the records of one trace, batch by batch.
pub struct Generator {
    shape: Shape,
    total: u64,
    n: u64,
    state: u64,
    live: Vec<Vec<(u64, u64)>>,
    batches: Vec<Vec<Event>>,
    next_addr: Vec<u64>,
}

impl Generator {
    /// A generator of `total` events.
    pub fn new(shape: Shape, total: u64) -> Generator {
        Generator {
            shape,
            total,
            n: 0,
            state: 0x2545_f491_4f6c_dd1d,
            live: vec![Vec::new(); shape.threads],
            batches: vec![Vec::with_capacity(BATCH); shape.threads],
            next_addr: vec![0; shape.threads],
        }
    }

    /// The start record and every stack definition.
    pub fn header(&self) -> Vec<Record> {
        let mut records = vec![Record::Start(TraceStart {
            pid: 1,
            program: if self.shape.heavy {
                "synthetic (heavy)"
            } else {
                "synthetic"
            }
            .into(),
            unix_time_ns: 0,
            page_size: 4096,
            options: "sample=1".into(),
            tracker_version: env!("CARGO_PKG_VERSION").into(),
        })];
        for id in 1..=self.shape.stacks {
            let frames = (0..self.shape.depth)
                .map(|d| {
                    if self.shape.heavy {
                        // Frame d (0 innermost) is shared by the stacks whose ids agree but
                        // for their d lowest bits: outer frames are common, inner ones not.
                        0x40_0000 + d * 0x100_0000 + u64::from(id >> d) * 0x40
                    } else {
                        0x40_0000 + u64::from(id % (64 >> (d % 6))) * 0x40 + d * 0x1000
                    }
                })
                .collect();
            records.push(Record::Stack(StackDef { id, frames }));
        }
        records
    }

    /// Events generated so far.
    pub fn generated(&self) -> u64 {
        self.n
    }

    fn rand(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// The next full batch; at the end the partial ones, then `None`.
    pub fn next_batch(&mut self) -> Option<Record> {
        while self.n < self.total {
            let t = (self.n % self.shape.threads as u64) as usize;
            let event = self.event(t);
            self.n += 1;
            self.batches[t].push(event);
            if self.batches[t].len() == BATCH {
                return Some(self.take(t));
            }
        }
        let t = self.batches.iter().position(|b| !b.is_empty())?;
        Some(self.take(t))
    }

    fn take(&mut self, t: usize) -> Record {
        let events = std::mem::replace(&mut self.batches[t], Vec::with_capacity(BATCH));
        Record::Batch(EventBatch {
            thread: t as u32,
            events,
        })
    }

    fn event(&mut self, t: usize) -> Event {
        let time_ns = self.n * self.shape.ns_per_event;
        let r = self.rand();
        let live = self.live[t].len();
        let free = if self.shape.heavy {
            let alloc_percent = if self.n < self.total / 2 { 60 } else { 40 };
            live > 0 && r % 100 >= alloc_percent
        } else {
            live > 64 && (r % 4 != 0 || live > 50_000)
        };
        if free {
            let (addr, size) = self.live[t].swap_remove((r >> 8) as usize % live);
            return Event::Free {
                time_ns,
                addr,
                size,
                stack: 0,
            };
        }
        let addr = ((t as u64 + 1) << 40) + self.next_addr[t] * 16;
        self.next_addr[t] += 1;
        let size = 8 + (r >> 20) % 1024;
        self.live[t].push((addr, size));
        let u = ((r >> 32) & 0xff_ffff) as f64 / f64::from(1 << 24);
        let stack = if self.shape.heavy {
            // Log-uniform: stack k is picked with a probability about 1 / k.
            (f64::from(self.shape.stacks).powf(u) as u32).clamp(1, self.shape.stacks)
        } else {
            1 + ((r >> 32) % u64::from(self.shape.stacks)) as u32
        };
        Event::Alloc {
            time_ns,
            addr,
            size,
            align: 8,
            stack,
        }
    }

    /// The end record.
    pub fn end(&self) -> Record {
        Record::End(TraceEnd {
            time_ns: self.total * self.shape.ns_per_event,
            events_written: self.total,
            ..TraceEnd::default()
        })
    }
}

//! The workloads, written once over any `GlobalAlloc` and called with `a.alloc` / `a.dealloc`
//! directly, so one binary compares several allocators without installing any of them as the
//! global allocator. `benches/c/workloads.c` runs the same workloads through malloc/free; the
//! two files must keep the same parameters (window sizes, size ranges, batch sizes, seeds).
//!
//! Every block is touched (first and last byte written) as a program initialising its object
//! would, so an allocator cannot win by handing out memory nobody looks at.
//!
//! May touch: the allocator it is given, [`crate::rng`], threads and channels of std (which
//! allocate from the binary's global allocator, `System`, outside the figures that matter).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::Instant;

use crate::patterns;
use crate::rng::Rng;

/// One of the benchmark's allocation patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Workload {
    /// Sizes 8–256 B, a window of 4096 live objects, one replaced at random per op.
    Random,
    /// Fixed 64 B, bursts of 1000 allocated then freed LIFO.
    Lifo64,
    /// larson's server pattern: sizes 10–1010 B, 2000 slots per thread replaced at random.
    Larson,
    /// Producer/consumer pairs: one thread allocates batches of 256 objects (16–256 B), the other
    /// frees them, so every free is remote.
    Prodcons,
    /// Fixed 64 B, bursts of 1000 allocated then freed oldest first (glibc's bench-malloc-simple).
    Fifo64,
    /// mstress: threads started and ended between 10 phases, each freeing what a thread of the
    /// last phase left it; sizes 8–1024 B.
    Mstress,
    /// cache-scratch: passive false sharing of 8-byte blocks handed out by one thread.
    Scratch,
    /// alloc-test: random replacement with Pareto-distributed sizes of 8 B–1 KiB.
    Pareto,
    /// Buffers grown by realloc from 1 KiB to 32 MiB, a quarter at a time.
    Realloc,
}

/// Objects live at once in [`Workload::Random`].
const RANDOM_WINDOW: usize = 4096;
/// Slots per thread in [`Workload::Larson`].
const LARSON_SLOTS: usize = 2000;
/// Objects per burst in [`Workload::Lifo64`].
const LIFO_BURST: u64 = 1000;
/// Objects per batch handed from producer to consumer in [`Workload::Prodcons`].
const BATCH: usize = 256;
/// Batches in flight per producer/consumer pair: enough that neither side waits on the other
/// often, few enough that the live set stays small.
const BATCHES_IN_FLIGHT: usize = 16;
/// Every block asks for this alignment, the one `malloc` gives at the least.
const ALIGN: usize = 8;

impl Workload {
    /// Every workload, in the order tables list them.
    pub const ALL: [Workload; 9] = [
        Workload::Random,
        Workload::Lifo64,
        Workload::Larson,
        Workload::Prodcons,
        Workload::Fifo64,
        Workload::Mstress,
        Workload::Scratch,
        Workload::Pareto,
        Workload::Realloc,
    ];

    /// The name used on the command line, in the C harness and in result files.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Random => "random",
            Workload::Lifo64 => "lifo64",
            Workload::Larson => "larson",
            Workload::Prodcons => "prodcons",
            Workload::Fifo64 => "fifo64",
            Workload::Mstress => "mstress",
            Workload::Scratch => "scratch",
            Workload::Pareto => "pareto",
            Workload::Realloc => "realloc",
        }
    }

    /// The workload named `name`, if any.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Malloc+free pairs per thread (per producer for [`Workload::Prodcons`]) in a default run:
    /// 0.1–0.2 s on glibc and 50 ms or more on mimalloc on the reference machine (2-core EPYC),
    /// long enough to dwarf process and thread start-up, short enough for five interleaved
    /// repetitions of everything in well under three minutes.
    pub fn default_ops(self) -> u64 {
        match self {
            Workload::Random => 10_000_000,
            Workload::Lifo64 => 10_000_000,
            Workload::Larson => 8_000_000,
            Workload::Prodcons => 1_000_000,
            Workload::Fifo64 => 10_000_000,
            Workload::Mstress => 2_000_000,
            Workload::Scratch => 2_000_000,
            Workload::Pareto => 8_000_000,
            Workload::Realloc => 2_000,
        }
    }

    /// The thread counts a default run measures.
    pub fn default_threads(self) -> &'static [usize] {
        match self {
            Workload::Prodcons => &[2],
            Workload::Fifo64 | Workload::Realloc => &[1],
            _ => &[1, 2],
        }
    }

    /// Whether the workload runs several threads at all (the contention sweep skips the others).
    pub fn multi_threaded(self) -> bool {
        !matches!(self, Workload::Fifo64 | Workload::Realloc)
    }

    /// Whether every block is small (at most 256 bytes): the workloads where issue 2 asks for
    /// 2.5× the system allocator's speed.
    pub fn small_sizes(self) -> bool {
        matches!(
            self,
            Workload::Random | Workload::Lifo64 | Workload::Fifo64 | Workload::Scratch
        )
    }

    /// Whether the workload can run on `threads` threads; producer/consumer needs pairs.
    pub fn check_threads(self, threads: usize) -> Result<(), String> {
        match self {
            _ if threads == 0 => Err(format!("{}: needs at least one thread", self.name())),
            Workload::Prodcons if threads % 2 != 0 => Err(format!(
                "prodcons: runs producer/consumer pairs, so needs an even thread count, not {threads}"
            )),
            _ => Ok(()),
        }
    }
}

/// What one run of a workload did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Malloc+free pairs done over all threads.
    pub pairs: u64,
    /// Wall-clock seconds from starting the first thread to joining the last.
    pub seconds: f64,
}

/// Runs `workload` on `threads` threads, each doing `ops` replacements (bursts, batches) worth of
/// malloc+free pairs, with per-thread generators seeded from `seed`. An allocation that fails
/// ends the run with an error (the blocks still live are left to the exiting process).
pub fn run<A: GlobalAlloc + Sync>(
    a: &A,
    workload: Workload,
    threads: usize,
    ops: u64,
    seed: u64,
) -> Result<Outcome, String> {
    workload.check_threads(threads)?;
    let start = Instant::now();
    let pairs = match workload {
        Workload::Mstress => patterns::mstress(a, threads, ops, seed)?,
        Workload::Scratch => patterns::scratch(a, threads, ops)?,
        _ => per_thread(a, workload, threads, ops, seed)?,
    };
    Ok(Outcome {
        pairs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The workloads whose threads run the same loop side by side, each on its own generator.
fn per_thread<A: GlobalAlloc + Sync>(
    a: &A,
    workload: Workload,
    threads: usize,
    ops: u64,
    seed: u64,
) -> Result<u64, String> {
    thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads as u64 {
            let mut rng = Rng::new(seed.wrapping_add(t));
            match workload {
                Workload::Random => handles.push(
                    s.spawn(move || replace_randomly(a, &mut rng, RANDOM_WINDOW, 8, 256, ops)),
                ),
                Workload::Larson => handles.push(
                    s.spawn(move || replace_randomly(a, &mut rng, LARSON_SLOTS, 10, 1010, ops)),
                ),
                Workload::Lifo64 => handles.push(s.spawn(move || lifo_bursts(a, ops))),
                Workload::Prodcons if t % 2 == 0 => {
                    let (full_tx, full_rx) = sync_channel(BATCHES_IN_FLIGHT);
                    let (empty_tx, empty_rx) = sync_channel(BATCHES_IN_FLIGHT);
                    for _ in 0..BATCHES_IN_FLIGHT {
                        // The receiver is alive and the channel has room for all of them.
                        let _ = empty_tx.send(Batch(Vec::with_capacity(BATCH)));
                    }
                    handles.push(s.spawn(move || produce(a, &mut rng, ops, full_tx, empty_rx)));
                    handles.push(s.spawn(move || consume(a, full_rx, empty_tx)));
                }
                Workload::Prodcons => {}
                Workload::Fifo64 => handles.push(s.spawn(move || patterns::fifo_bursts(a, ops))),
                Workload::Pareto => {
                    handles.push(s.spawn(move || patterns::pareto(a, &mut rng, ops)))
                }
                Workload::Realloc => handles.push(s.spawn(move || patterns::grow_buffers(a, ops))),
                Workload::Mstress | Workload::Scratch => {}
            }
        }
        join_sum(handles)
    })
}

/// The pairs every workload thread counted, or the first error (a panic is one).
pub(crate) fn join_sum(
    handles: Vec<thread::ScopedJoinHandle<'_, Result<u64, String>>>,
) -> Result<u64, String> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a workload thread panicked".to_string()))
        })
        .sum()
}

/// The layout of every block of `size` bytes.
#[inline(always)]
pub(crate) fn layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a non-zero power of two and every size here is at most 32 MiB, far
    // from overflowing isize when rounded up to ALIGN.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

/// Allocates `size` (> 0) bytes and writes their first and last byte.
#[inline(always)]
pub(crate) fn alloc_touched<A: GlobalAlloc>(
    a: &A,
    size: usize,
    tag: u8,
) -> Result<*mut u8, String> {
    // SAFETY: every workload asks for at least 8 bytes, so the layout is not zero-sized.
    let p = unsafe { a.alloc(layout(size)) };
    if p.is_null() {
        return Err(out_of_memory(size));
    }
    // Volatile so the compiler cannot drop stores to memory it sees freed later.
    // SAFETY: `p` is a fresh block of `size >= 1` writable bytes.
    unsafe {
        p.write_volatile(tag);
        p.add(size - 1).write_volatile(tag);
    }
    Ok(p)
}

/// Resizes the live block `p` of `old` bytes to `new` (> 0) bytes and writes its last byte;
/// on failure the old block is freed and the error returned.
#[inline(always)]
pub(crate) fn realloc_touched<A: GlobalAlloc>(
    a: &A,
    p: *mut u8,
    old: usize,
    new: usize,
) -> Result<*mut u8, String> {
    // SAFETY: `p` is a live block of `a` with layout(old); `new` is non-zero and at most 32 MiB.
    let q = unsafe { a.realloc(p, layout(old), new) };
    if q.is_null() {
        // SAFETY: a failed realloc leaves the old block live and ours to free.
        unsafe { free(a, p, old) };
        return Err(out_of_memory(new));
    }
    // SAFETY: `q` is a block of `new >= 1` writable bytes.
    unsafe { q.add(new - 1).write_volatile(1) };
    Ok(q)
}

#[cold]
#[inline(never)]
fn out_of_memory(size: usize) -> String {
    format!("the allocator returned null for {size} bytes")
}

/// Frees a block of `size` bytes.
///
/// # Safety
/// `p` came from `a.alloc(layout(size))` and is not used afterwards.
#[inline(always)]
pub(crate) unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize) {
    // SAFETY: the caller passes a live block of `a` with this size.
    unsafe { a.dealloc(p, layout(size)) }
}

/// Fills `window` slots with blocks of `lo..=hi` bytes, then `ops` times frees a random slot's
/// block and puts a new one of a random size in its place; frees the rest at the end.
fn replace_randomly<A: GlobalAlloc>(
    a: &A,
    rng: &mut Rng,
    window: usize,
    lo: usize,
    hi: usize,
    ops: u64,
) -> Result<u64, String> {
    let mut slots = Vec::with_capacity(window);
    for _ in 0..window {
        let size = rng.between(lo, hi);
        slots.push((alloc_touched(a, size, 1)?, size));
    }
    for i in 0..ops {
        let k = rng.below(window);
        let (p, size) = slots[k];
        // SAFETY: slot k holds a live block of `size` bytes, replaced right below.
        unsafe { free(a, p, size) };
        let size = rng.between(lo, hi);
        slots[k] = (alloc_touched(a, size, i as u8)?, size);
    }
    for (p, size) in slots {
        // SAFETY: every slot holds a live block of its size, dropped with the vector.
        unsafe { free(a, p, size) };
    }
    Ok(ops + window as u64)
}

/// `ops` pairs as bursts of [`LIFO_BURST`] 64-byte blocks, each burst freed newest first.
fn lifo_bursts<A: GlobalAlloc>(a: &A, ops: u64) -> Result<u64, String> {
    let bursts = ops.div_ceil(LIFO_BURST);
    let mut live = Vec::with_capacity(LIFO_BURST as usize);
    for b in 0..bursts {
        for _ in 0..LIFO_BURST {
            live.push(alloc_touched(a, 64, b as u8)?);
        }
        while let Some(p) = live.pop() {
            // SAFETY: `live` holds live 64-byte blocks, each popped once.
            unsafe { free(a, p, 64) };
        }
    }
    Ok(bursts * LIFO_BURST)
}

/// Blocks (with their sizes) on their way from a producer to its consumer. The vector itself
/// comes from the global allocator and is recycled, so no allocation of the harness is counted.
struct Batch(Vec<(*mut u8, usize)>);

// SAFETY: a batch owns its blocks exclusively: only the thread holding the batch touches them,
// and the allocators compared are `Sync`, so any thread may free what another allocated.
unsafe impl Send for Batch {}

/// Allocates `ops` blocks of 16–256 bytes (rounded up to whole batches) and sends them to the
/// consumer a batch at a time, refilling the batches the consumer sends back.
fn produce<A: GlobalAlloc>(
    a: &A,
    rng: &mut Rng,
    ops: u64,
    full: SyncSender<Batch>,
    empty: Receiver<Batch>,
) -> Result<u64, String> {
    let batches = ops.div_ceil(BATCH as u64);
    for b in 0..batches {
        let mut batch = empty
            .recv()
            .map_err(|_| "the consumer stopped early".to_string())?;
        for _ in 0..BATCH {
            let size = rng.between(16, 256);
            batch.0.push((alloc_touched(a, size, b as u8)?, size));
        }
        full.send(batch)
            .map_err(|_| "the consumer stopped early".to_string())?;
    }
    Ok(batches * BATCH as u64)
}

/// Reads and frees every block the producer sends (all remote frees) until it hangs up.
/// Counts no pairs: the producer counts them.
fn consume<A: GlobalAlloc>(
    a: &A,
    full: Receiver<Batch>,
    empty: SyncSender<Batch>,
) -> Result<u64, String> {
    let mut checksum = 0u64;
    while let Ok(mut batch) = full.recv() {
        for (p, size) in batch.0.drain(..) {
            // SAFETY: the producer wrote this byte and handed the block over with the batch.
            checksum = checksum.wrapping_add(u64::from(unsafe { p.read_volatile() }));
            // SAFETY: the block is live, of `size` bytes, and owned by this thread from now.
            unsafe { free(a, p, size) };
        }
        // Err only once the producer is done: no batch needs refilling then.
        let _ = empty.send(batch);
    }
    std::hint::black_box(checksum);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    /// Counts live blocks and allocations over `System`, to check the workloads free all they
    /// allocate and do the number of pairs they report.
    struct Counting {
        live: AtomicI64,
        allocs: AtomicU64,
    }

    // SAFETY: forwards to System; the counters are statistics (Relaxed: read after the
    // workload's threads are joined, which orders them).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.fetch_add(1, Relaxed);
            self.allocs.fetch_add(1, Relaxed);
            // SAFETY: the caller's layout is non-zero-sized, as GlobalAlloc requires.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.live.fetch_sub(1, Relaxed);
            // SAFETY: `ptr` came from `alloc` above with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[test]
    fn every_workload_frees_all_it_allocates_and_counts_its_pairs() {
        for w in Workload::ALL {
            for &threads in w.default_threads() {
                let a = Counting {
                    live: AtomicI64::new(0),
                    allocs: AtomicU64::new(0),
                };
                let out = run(&a, w, threads, 3000, 1).unwrap();
                assert_eq!(a.live.load(Relaxed), 0, "{} leaked", w.name());
                assert_eq!(a.allocs.load(Relaxed), out.pairs, "{} miscounted", w.name());
                assert!(
                    out.pairs >= 3000 * threads as u64 / 2,
                    "{} did too little",
                    w.name()
                );
            }
        }
    }

    #[test]
    fn prodcons_refuses_odd_thread_counts() {
        assert!(run(&System, Workload::Prodcons, 3, 10, 1).is_err());
        assert!(Workload::Random.check_threads(0).is_err());
    }

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
    }

    /// Fails every allocation after the first `budget`.
    struct Failing(AtomicU64);

    // SAFETY: forwards to System or returns null, both allowed by GlobalAlloc.
    unsafe impl GlobalAlloc for Failing {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // Relaxed: a statistic-like budget; any interleaving of threads is fine here.
            if self.0.fetch_sub(1, Relaxed) == 0 {
                self.0.store(0, Relaxed);
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's layout is non-zero-sized.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `alloc` above with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[test]
    fn a_null_from_the_allocator_ends_the_run_with_an_error() {
        for w in Workload::ALL {
            let a = Failing(AtomicU64::new(100));
            let err = run(&a, w, 2, 10_000, 1).unwrap_err();
            assert!(err.contains("null"), "{}: {err}", w.name());
        }
    }
}

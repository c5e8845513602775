//! What the instrumented mode costs, side by side with the core allocator in one run.
//!
//! `cargo bench -p allocscope-tracker --bench overhead` (add
//! `RUSTFLAGS="-C force-frame-pointers=yes"` to make the `unwinder=fp` rows meaningful, and a
//! separate `CARGO_TARGET_DIR` for that build). `OVERHEAD_ONLY=1,2` keeps the core and those
//! rows; `OVERHEAD_EXTRA="canary=16;quarantine=1m"` adds rows of other options.
//!
//! Workload: random sizes 8–256 B, 4096 live objects replaced at random, one thread (the first
//! pattern of shared/PERFORMANCE.md). Each configuration is its own `Tracker` over the core
//! allocator; rounds are interleaved (A B C ... A B C ...) and the median of the rounds is
//! reported with its ratio to the core allocator. Times are the thread's CPU time (user and
//! system, so the guard pool's `mprotect`s count), not wall time: on a shared machine a round
//! that loses the CPU to another process would otherwise count the other process's work.
//! Benchmarks measure; nothing here asserts.

use std::alloc::{GlobalAlloc, Layout};
use std::time::{Duration, Instant};

use allocscope_core::Allocscope;
use allocscope_tracker::{LeakCheck, Options, Tracker};

const LIVE: usize = 4096;
const ROUNDS: usize = 5;

/// Pairs per round (`OVERHEAD_PAIRS` overrides, for quick looks).
fn pairs() -> usize {
    std::env::var("OVERHEAD_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000)
}

fn run(alloc: &dyn GlobalAlloc, seed: u64) -> Duration {
    let mut slots: Vec<(*mut u8, Layout)> = Vec::with_capacity(LIVE);
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // SAFETY: every block is freed once with the layout it was allocated with.
    unsafe {
        for _ in 0..LIVE {
            let l = Layout::from_size_align(8 + (next() % 249) as usize, 8).unwrap();
            slots.push((alloc.alloc(l), l));
        }
        let start = thread_cpu_time();
        for _ in 0..pairs() {
            let i = (next() % LIVE as u64) as usize;
            let (p, l) = slots[i];
            alloc.dealloc(p, l);
            let l = Layout::from_size_align(8 + (next() % 249) as usize, 8).unwrap();
            let p = alloc.alloc(l);
            p.write(1);
            slots[i] = (p, l);
        }
        let elapsed = thread_cpu_time().saturating_sub(start);
        for (p, l) in slots {
            alloc.dealloc(p, l);
        }
        elapsed
    }
}

/// Wall time since the first call (where the thread's CPU clock is missing).
fn wall_time() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// CPU time of the calling thread (wall time where the clock is missing).
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
        return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    }
    wall_time()
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    wall_time()
}

fn tracker(text: &str) -> Tracker<Allocscope> {
    let options = Options::builder()
        .parse(text)
        .unwrap()
        .print_reports(false)
        .leak_check(LeakCheck::Off)
        .check_at_exit(false)
        .build()
        .unwrap();
    Tracker::with_options(Allocscope::new(), options)
}

fn main() {
    let trace =
        std::env::temp_dir().join(format!("allocscope-overhead-{}.trace", std::process::id()));
    let trace_opt = format!("sample=1,trace={}", trace.display());
    let configs: Vec<(String, Box<dyn GlobalAlloc>)> = vec![
        (
            "core allocator (Allocscope)".into(),
            Box::new(Allocscope::new()),
        ),
        ("tracker, default options".into(), Box::new(tracker(""))),
        // The default options' cost taken apart: the blocks' records alone (shadow words over the
        // core heap), then with each sampler.
        (
            "tracker, sample=0,guard=0 (block records only)".into(),
            Box::new(tracker("sample=0,guard=0")),
        ),
        (
            "tracker, guard=0 (stacks sampled every 512 KiB)".into(),
            Box::new(tracker("guard=0")),
        ),
        (
            "tracker, sample=0 (guard pages for 1 in 1000)".into(),
            Box::new(tracker("sample=0")),
        ),
        (
            "tracker, sample=0,unwinder=fp (guard pages, fp stacks)".into(),
            Box::new(tracker("sample=0,unwinder=fp")),
        ),
        (
            "tracker, canary=16,quarantine=16m".into(),
            Box::new(tracker("canary=16,quarantine=16m")),
        ),
        (
            "tracker, sample=1 (every stack, default unwinder)".into(),
            Box::new(tracker("sample=1")),
        ),
        (
            "tracker, sample=1,unwinder=fp".into(),
            Box::new(tracker("sample=1,unwinder=fp")),
        ),
        (
            format!("tracker, {trace_opt},unwinder=fp"),
            Box::new(tracker(&format!("{trace_opt},unwinder=fp"))),
        ),
        (
            "tracker, sample=1,unwinder=backtrace (every stack, DWARF)".into(),
            Box::new(tracker("sample=1,unwinder=backtrace")),
        ),
        // Ten times the default rate: the guard pool's own price per guarded allocation and
        // free stands out of the noise (this row minus row 2, divided by 100).
        (
            "tracker, sample=0,guard=1/100 (guard pages for 1 in 100)".into(),
            Box::new(tracker("sample=0,guard=1/100")),
        ),
        // Row 2 with every block in the block table instead of the shadow.
        (
            "tracker, sample=0,guard=0,shadow=0 (block table only)".into(),
            Box::new(tracker("sample=0,guard=0,shadow=0")),
        ),
        // Every allocation's stack and none of the frees' (what heaptrack records): row 7 less
        // the free stacks that sampled blocks get by default (`free_stacks=1`).
        (
            "tracker, sample=1,free_stacks=0 (allocation stacks only)".into(),
            Box::new(tracker("sample=1,free_stacks=0")),
        ),
    ];
    // `OVERHEAD_ONLY=i` or `OVERHEAD_ONLY=i,j,...` keeps the core allocator and those
    // configurations (for profiling, or to leave out the slow rows).
    let only: Option<Vec<usize>> = std::env::var("OVERHEAD_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let mut configs: Vec<(String, Box<dyn GlobalAlloc>)> = configs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| only.as_ref().is_none_or(|o| *i == 0 || o.contains(i)))
        .map(|(_, c)| c)
        .collect();
    // `OVERHEAD_EXTRA="opts;opts"`: more rows, each an options string (to take a row apart).
    for text in std::env::var("OVERHEAD_EXTRA")
        .unwrap_or_default()
        .split(';')
    {
        let text = text.trim();
        if !text.is_empty() {
            configs.push((
                format!("tracker, {text} (OVERHEAD_EXTRA)"),
                Box::new(tracker(text)),
            ));
        }
    }
    // Warm up every configuration (first-use initialisation, page faults).
    for (_, a) in &configs {
        run(a.as_ref(), 7);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        for (i, (_, a)) in configs.iter().enumerate() {
            let t = run(a.as_ref(), 1000 + round as u64);
            times[i].push(t.as_nanos() as f64 / pairs() as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!(
        "ns (thread CPU time) per free+malloc pair, median of {ROUNDS} interleaved rounds of {} pairs",
        pairs()
    );
    println!("{:<60} {:>10} {:>8}", "configuration", "ns/pair", "ratio");
    for ((name, _), m) in configs.iter().zip(&medians) {
        println!("{name:<60} {m:>10.1} {:>7.2}x", m / medians[0]);
    }
    let _ = std::fs::remove_file(trace);
}

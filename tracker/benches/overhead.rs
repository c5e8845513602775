//! What the instrumented mode costs, side by side with the core allocator in one run.
//!
//! `cargo bench -p allocscope-tracker --bench overhead` (add
//! `RUSTFLAGS="-C force-frame-pointers=yes"` to make the `unwinder=fp` row meaningful).
//!
//! Workload: random sizes 8–256 B, 4096 live objects replaced at random, one thread (the first
//! pattern of shared/PERFORMANCE.md). Each configuration is its own `Tracker` over the core
//! allocator; rounds are interleaved (A B C ... A B C ...) and the median of the rounds is
//! reported with its ratio to the core allocator. Benchmarks measure; nothing here asserts.

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
        let start = Instant::now();
        for _ in 0..pairs() {
            let i = (next() % LIVE as u64) as usize;
            let (p, l) = slots[i];
            alloc.dealloc(p, l);
            let l = Layout::from_size_align(8 + (next() % 249) as usize, 8).unwrap();
            let p = alloc.alloc(l);
            p.write(1);
            slots[i] = (p, l);
        }
        let elapsed = start.elapsed();
        for (p, l) in slots {
            alloc.dealloc(p, l);
        }
        elapsed
    }
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
        (
            "tracker, canary=16,quarantine=16m".into(),
            Box::new(tracker("canary=16,quarantine=16m")),
        ),
        (
            "tracker, sample=1 (every stack, backtrace)".into(),
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
    ];
    // `OVERHEAD_ONLY=i` keeps the core allocator and configuration i (for profiling).
    let only: Option<usize> = std::env::var("OVERHEAD_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let configs: Vec<(String, Box<dyn GlobalAlloc>)> = configs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| *i == 0 || *i == o))
        .map(|(_, c)| c)
        .collect();
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
        "ns per free+malloc pair, median of {ROUNDS} interleaved rounds of {} pairs",
        pairs()
    );
    println!("{:<60} {:>10} {:>8}", "configuration", "ns/pair", "ratio");
    for ((name, _), m) in configs.iter().zip(&medians) {
        println!("{name:<60} {m:>10.1} {:>7.2}x", m / medians[0]);
    }
    let _ = std::fs::remove_file(trace);
}

//! What one guarded allocation costs, in µs per guarded alloc+free pair, split into user and
//! system time (the system part is the slot's `mprotect`s).
//!
//! `cargo run --release -p allocscope-tracker --example guard_cost` (Linux: the split comes
//! from `getrusage(RUSAGE_THREAD)`).
//!
//! Two measures, each the median of interleaved rounds:
//! - direct: `guard=all` with 64 live blocks (every pair is guarded; the pool never runs dry),
//!   against the same workload at `guard=0`;
//! - amortised: 4096 live blocks of 8–256 B at `guard=1/100` (`GUARD_COST_ONE_IN=n` for
//!   another rate) against `guard=0`, the difference divided by the guarded pairs: this also
//!   counts what a guarded pair costs the ordinary pairs around it (caches and TLB entries it
//!   evicts).
//!
//! `GUARD_COST_PAIRS` overrides the pairs per round. A measurement; nothing here asserts.

use std::alloc::{GlobalAlloc, Layout};

use allocscope_core::Allocscope;
use allocscope_tracker::{Options, Tracker};

const ROUNDS: usize = 5;

/// Options every configuration shares: quiet, no exit-time work.
const QUIET: &str = "print_reports=0,leak_check=0,check_at_exit=0";

/// User and system CPU time of the calling thread, in ns.
#[cfg(target_os = "linux")]
fn thread_times() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let ns = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    (ns(usage.ru_utime), ns(usage.ru_stime))
}

/// Elsewhere the split has no source here: the example says so and stops (it still builds, for
/// `cargo clippy --all-targets` on Windows).
#[cfg(not(target_os = "linux"))]
fn thread_times() -> (f64, f64) {
    eprintln!("guard_cost: the user/system split needs getrusage(RUSAGE_THREAD), on Linux");
    std::process::exit(2)
}

/// Frees and reallocates blocks of a live set of `live`, `pairs` times, in a fixed stride;
/// (user, system) ns per pair.
fn replace_blocks(alloc: &dyn GlobalAlloc, live: usize, pairs: usize, seed: u64) -> (f64, f64) {
    let mut x = seed | 1;
    let mut size = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        8 + (x % 249) as usize
    };
    let mut blocks: Vec<(*mut u8, Layout)> = (0..live)
        .map(|_| Layout::from_size_align(size(), 8).unwrap())
        // SAFETY: a non-zero size.
        .map(|l| (unsafe { alloc.alloc(l) }, l))
        .collect();
    let (user0, sys0) = thread_times();
    let mut i = 0;
    for _ in 0..pairs {
        i = (i + 7919) % live;
        let (old, old_layout) = blocks[i];
        let layout = Layout::from_size_align(size(), 8).unwrap();
        // SAFETY: `old` is live with `old_layout`; the new block is written within its size.
        unsafe {
            alloc.dealloc(old, old_layout);
            let p = alloc.alloc(layout);
            p.write(1);
            blocks[i] = (p, layout);
        }
    }
    let (user1, sys1) = thread_times();
    for (p, l) in blocks {
        // SAFETY: each block is live with its layout and freed once.
        unsafe { alloc.dealloc(p, l) };
    }
    ((user1 - user0) / pairs as f64, (sys1 - sys0) / pairs as f64)
}

fn tracker(options: &str) -> Tracker<Allocscope> {
    let options = Options::parse(&format!("{options},{QUIET}")).unwrap();
    Tracker::with_options(Allocscope::new(), options)
}

/// Median (user, system) ns per pair of each configuration, rounds interleaved.
fn measure(configs: &[&dyn GlobalAlloc], live: usize, pairs: usize) -> Vec<(f64, f64)> {
    for a in configs {
        replace_blocks(*a, live, pairs / 4, 7);
    }
    let mut rounds = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        for (i, a) in configs.iter().enumerate() {
            rounds[i].push(replace_blocks(*a, live, pairs, 1000 + round as u64));
        }
    }
    rounds
        .into_iter()
        .map(|mut r| {
            // The round with the median total, so user and system come from one round.
            r.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            r[r.len() / 2]
        })
        .collect()
}

/// Prints a configuration's line; `guarded_share` is the share of its pairs that are guarded.
fn print_row(name: &str, (user, sys): (f64, f64), baseline: (f64, f64), guarded_share: f64) {
    let per_guarded = |now: f64, before: f64| (now - before) / guarded_share / 1000.0;
    println!(
        "  {name:<24} {user:>9.1} {sys:>9.1}   {:>6.2} µs per guarded pair ({:.2} user, {:.2} system)",
        per_guarded(user + sys, baseline.0 + baseline.1),
        per_guarded(user, baseline.0),
        per_guarded(sys, baseline.1),
    );
}

fn main() {
    let pairs: usize = std::env::var("GUARD_COST_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let unguarded = tracker("sample=0,guard=0");
    let all = tracker("sample=0,guard=all");
    // The countdown to the next guarded allocation is the thread's, shared by every tracker in
    // the process, so one rate per run (`GUARD_COST_ONE_IN`; a huge one shows what guard pages
    // cost the other pairs just by being on).
    let one_in: u32 = std::env::var("GUARD_COST_ONE_IN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let sampled = tracker(&format!("sample=0,guard=1/{one_in}"));

    let m = measure(&[&unguarded, &all], 64, pairs);
    println!("direct, 64 live blocks, {pairs} pairs a round, median of {ROUNDS}");
    println!("  {:<24} {:>9} {:>9}", "ns per pair", "user", "system");
    println!("  {:<24} {:>9.1} {:>9.1}", "guard=0", m[0].0, m[0].1);
    print_row("guard=all", m[1], m[0], 1.0);

    let pairs = pairs * 10;
    let m = measure(&[&unguarded, &sampled], 4096, pairs);
    println!("amortised, 4096 live blocks, {pairs} pairs a round, median of {ROUNDS}");
    println!("  {:<24} {:>9.1} {:>9.1}", "guard=0", m[0].0, m[0].1);
    print_row(
        &format!("guard=1/{one_in}"),
        m[1],
        m[0],
        1.0 / f64::from(one_in),
    );
}

//! The main job for now: the same allocation workloads on the system allocator and on
//! allocscope, side by side, interleaved, medians of five runs; then what allocscope's
//! statistics and page walk say about its heap.
//!
//! `cargo run --release --example demo`

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

use allocscope::typed::TypedAlloc;
use allocscope::Allocscope;

mod support;
use support::Rng;

/// A window of live objects of 8–512 bytes, one replaced at random per step.
fn random_window<A: GlobalAlloc>(a: &A, steps: usize) -> f64 {
    let mut rng = Rng(42);
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(4096);
    let layout =
        |rng: &mut Rng| Layout::from_size_align(8 + (rng.next() % 505) as usize, 8).unwrap();
    for _ in 0..4096 {
        let l = layout(&mut rng);
        // SAFETY: a valid, non-zero layout.
        live.push((unsafe { a.alloc(l) }, l));
    }
    let start = Instant::now();
    for _ in 0..steps {
        let i = (rng.next() % 4096) as usize;
        let (p, l) = live[i];
        // SAFETY: p was allocated by `a` with `l` and is freed once.
        unsafe { a.dealloc(p, l) };
        let l = layout(&mut rng);
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { a.alloc(l) };
        // SAFETY: p is a live block of l.size() bytes (touched as a program would).
        unsafe { p.write(1) };
        live[i] = (p, l);
    }
    let ns = start.elapsed().as_nanos() as f64 / steps as f64;
    for (p, l) in live {
        // SAFETY: as above.
        unsafe { a.dealloc(p, l) };
    }
    ns
}

/// Bursts of 1000 blocks of 64 bytes allocated, then freed in reverse order.
fn lifo_bursts<A: GlobalAlloc>(a: &A, steps: usize) -> f64 {
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut burst = Vec::with_capacity(1000);
    let start = Instant::now();
    for _ in 0..steps / 1000 {
        for _ in 0..1000 {
            // SAFETY: a valid layout.
            let p = unsafe { a.alloc(l) };
            // SAFETY: live block.
            unsafe { p.write(1) };
            burst.push(p);
        }
        while let Some(p) = burst.pop() {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { a.dealloc(p, l) };
        }
    }
    start.elapsed().as_nanos() as f64 / steps as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    const STEPS: usize = 2_000_000;
    println!("allocscope demo: ns per free+malloc pair, median of 5 interleaved runs\n");
    println!(
        "{:<34} {:>10} {:>12} {:>8}",
        "workload", "system", "allocscope", "ratio"
    );
    for (name, run) in [
        (
            "random 8-512 B, 4096 live",
            random_window::<System> as fn(&System, usize) -> f64,
        ),
        ("64 B bursts of 1000, LIFO", lifo_bursts::<System>),
    ]
    .into_iter()
    .zip([
        random_window::<Allocscope> as fn(&Allocscope, usize) -> f64,
        lifo_bursts::<Allocscope>,
    ])
    .map(|((name, sys), ours)| (name, (sys, ours)))
    {
        let (mut sys, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            sys.push(run.0(&System, STEPS));
            ours.push(run.1(&Allocscope::new(), STEPS));
        }
        let (s, o) = (median(sys), median(ours));
        println!("{name:<34} {s:>8.1} ns {o:>9.1} ns {:>7.2}x", s / o);
    }

    // What the heap says about itself while a program holds memory.
    let a = Allocscope::new();
    let blocks: Vec<*mut u8> = (0..100_000)
        .map(|i| a.allocate_bytes(16 + i % 1000, 8).unwrap().as_ptr())
        .collect();
    let s = allocscope::stats();
    let mut pages = 0;
    let mut used_pages = 0;
    allocscope::walk_pages(&mut |p| {
        pages += 1;
        used_pages += usize::from(p.used > 0);
    });
    println!("\nwith 100 000 blocks of 16-1015 B live:");
    println!(
        "  live {:.1} MiB, committed {:.1} MiB, reserved {:.1} MiB",
        mib(s.live_bytes),
        mib(s.committed_bytes),
        mib(s.reserved_bytes)
    );
    println!("  {pages} pages walked, {used_pages} holding live blocks");
    for (i, p) in blocks.into_iter().enumerate() {
        // SAFETY: allocated above with this size and alignment, freed once.
        unsafe { a.deallocate_bytes(std::ptr::NonNull::new_unchecked(p), 16 + i % 1000, 8) };
    }
    allocscope::collect();
    let s = allocscope::stats();
    println!(
        "after freeing them and collect(): live {:.1} MiB, committed {:.1} MiB",
        mib(s.live_bytes),
        mib(s.committed_bytes)
    );
}

fn mib(b: usize) -> f64 {
    b as f64 / f64::from(1 << 20)
}

//! The three things most programs use: allocscope as the global allocator, a strategy allocator
//! behind ordinary collections, and the statistics both report.
//!
//! `cargo run --release --example basic_usage`

use std::alloc::Layout;
use std::collections::HashMap;

use allocscope::buddy::Buddy;
use allocscope::pool::Pool;
use allocscope::typed::TypedAlloc;

// One line: every `Box`, `Vec`, `String` and `HashMap` of the program now comes from
// allocscope's thread-caching heap (with `--features allocscope/instrumented`, from the tracker).
#[global_allocator]
static GLOBAL: allocscope::GlobalHeap = allocscope::GlobalHeap::new();

/// A node of the kind a pool is for: many objects of one size, created and dropped often.
#[derive(Debug)]
struct Particle {
    position: [f32; 3],
    velocity: [f32; 3],
    age: u32,
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

fn main() {
    println!("1. the global allocator");
    let before = allocscope::stats();
    let words: Vec<String> = (0..20_000).map(|i| format!("word-{i}")).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &words {
        *counts.entry(&w[..w.len().min(7)]).or_default() += 1;
    }
    let during = allocscope::stats();
    println!(
        "   {} strings and a map of {} keys: live {:.0} KiB -> {:.0} KiB, committed {:.0} KiB",
        words.len(),
        counts.len(),
        kib(before.live_bytes),
        kib(during.live_bytes),
        kib(during.committed_bytes),
    );
    let busiest = during
        .classes
        .iter()
        .max_by_key(|c| c.live_blocks)
        .expect("the heap has size classes");
    println!(
        "   busiest size class: {} B blocks, {} live in {} page(s)",
        busiest.block_size, busiest.live_blocks, busiest.pages
    );
    drop(counts);
    drop(words);
    allocscope::collect();
    let after = allocscope::stats();
    println!(
        "   after dropping them and collect(): live {:.0} KiB, committed {:.0} KiB",
        kib(after.live_bytes),
        kib(after.committed_bytes)
    );

    println!("\n2. a strategy allocator behind collections");
    // A buddy allocator over 1 MiB taken from the OS: a hashbrown map and an allocator_api2
    // Vec draw from it, and give everything back when they are dropped.
    let buddy = Buddy::new(1 << 20).expect("1 MiB from the OS");
    {
        let mut index = hashbrown::HashMap::new_in(&buddy);
        let mut log = allocator_api2::vec::Vec::new_in(&buddy);
        for i in 0..4_000u64 {
            index.insert(i, i * i);
            log.push(i as u32);
        }
        let s = buddy.stats();
        println!(
            "   buddy: map of {} entries + Vec of {}: used {:.0} KiB of {:.0} KiB, {}, fragmentation {:.2}",
            index.len(),
            log.len(),
            kib(s.used_bytes),
            kib(buddy.heap_size()),
            operations(s.allocations, None),
            s.fragmentation
        );
    }
    let s = buddy.stats();
    println!(
        "   buddy after the collections are dropped: used {} B, peak {:.0} KiB",
        s.used_bytes,
        kib(s.peak_used_bytes)
    );

    // A pool of fixed-size blocks: typed RAII handles (`boxed`) and allocator_api2 boxes.
    let layout = Layout::new::<Particle>();
    let pool = Pool::new(layout.size(), layout.align()).expect("a pool from the OS");
    let mut particles = Vec::new();
    for i in 0..1_000u32 {
        let p = Particle {
            position: [i as f32, 0.0, 0.0],
            velocity: [0.0, 1.0, 0.0],
            age: 0,
        };
        particles.push(pool.boxed(p).expect("the pool grows from the OS"));
    }
    for p in particles.iter_mut() {
        let velocity = p.velocity;
        for (x, v) in p.position.iter_mut().zip(velocity) {
            *x += v;
        }
        p.age += 1;
    }
    let one = allocator_api2::boxed::Box::new_in(
        Particle {
            position: [0.0; 3],
            velocity: [0.0; 3],
            age: 7,
        },
        &pool,
    );
    let s = pool.stats();
    println!(
        "   pool of {} B blocks: {} live particles, used {:.1} KiB, capacity {} blocks (last: {:?})",
        pool.block_size(),
        particles.len() + 1,
        kib(s.used_bytes),
        pool.capacity(),
        *one
    );
    particles.truncate(10);
    drop(one);
    let s = pool.stats();
    println!(
        "   pool after dropping 991: {} live blocks, {}",
        s.used_bytes / pool.block_size(),
        operations(s.allocations, Some(s.deallocations))
    );

    println!("\n3. statistics: what the global heap holds at the end");
    let s = allocscope::stats();
    println!(
        "   live {:.0} KiB, committed {:.0} KiB, reserved {:.0} MiB, {} large block(s)",
        kib(s.live_bytes),
        kib(s.committed_bytes),
        kib(s.reserved_bytes) / 1024.0,
        s.large_blocks
    );
}

/// "N allocations [and M frees]", or what to do to see them: the pool and the buddy count
/// their operations only with allocscope-core's `stats` feature (a counter on every call
/// costs a pool more than its allocation and free together).
fn operations(allocations: u64, frees: Option<u64>) -> String {
    if !allocscope_core::strategy_stats::OPERATIONS_COUNTED {
        return "operation counts off (allocscope-core's `stats` feature counts them)".into();
    }
    match frees {
        Some(f) => format!("{allocations} allocations and {f} frees in all"),
        None => format!("{allocations} allocations"),
    }
}

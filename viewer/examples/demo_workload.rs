//! A small program to record and look at: run with the tracker as its global allocator and
//! `ALLOCSCOPE_OPTIONS=trace=demo.trace,sample=1,canary=16`, it leaves something for every
//! viewer panel — a growing cache (the heap over time), short-lived strings (temporaries), a
//! leaked buffer, blocks of many sizes, and one heap-buffer-overflow caught by a canary.
//! `viewer/screenshots.sh` records it and photographs each panel.

use std::collections::HashMap;

#[global_allocator]
static ALLOC: allocscope_tracker::Tracker = allocscope_tracker::Tracker::new();

/// Grows a cache of rows, then drops half of it.
#[inline(never)]
fn build_cache(rounds: usize) -> HashMap<usize, Vec<u8>> {
    let mut cache = HashMap::new();
    for i in 0..rounds {
        cache.insert(i, vec![i as u8; 64 + (i * 37) % 4000]);
        if i % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    cache.retain(|k, _| k % 2 == 0);
    cache
}

/// Formats lines that die at once: temporary allocations.
#[inline(never)]
fn format_lines(count: usize) -> usize {
    (0..count)
        .map(|i| format!("line {i}: {}", "x".repeat(i % 50)).len())
        .sum()
}

/// Loses a buffer: nothing points to it any more.
#[inline(never)]
fn leak_buffer() {
    let buffer = vec![0xabu8; 3000];
    std::mem::forget(buffer);
}

/// Writes one byte past a 24-byte block, into the tracker's red zone.
#[inline(never)]
fn overflow_by_one() {
    let block = vec![0u8; 24].into_boxed_slice();
    let p = Box::into_raw(block).cast::<u8>();
    // SAFETY: deliberately one past the block: with `canary=` set the tracker owns those bytes
    // (its red zone) and reports the write when the block is freed. That report is the point.
    // The byte is inverted, not set: a fixed value is the random pattern's once in 256 runs.
    unsafe {
        let past = p.add(24);
        past.write_volatile(!past.read_volatile());
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, 24)));
    }
}

fn main() {
    let workers: Vec<_> = (0..3)
        .map(|t| std::thread::spawn(move || format_lines(2_000 + t * 500)))
        .collect();
    let cache = build_cache(3_000);
    let total: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    leak_buffer();
    overflow_by_one();
    println!("cache rows: {}, formatted bytes: {total}", cache.len());
}

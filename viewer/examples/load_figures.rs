//! The load-time and memory figures of issue 5's scale target: writes a synthetic trace of
//! N events (default 10 million: 16 threads' batches of allocations and frees over 4 096
//! stacks, a quarter of the blocks live at any time), then loads it with the viewer's
//! aggregation and prints the time taken and the process's peak resident memory.
//!
//! `cargo run --release -p allocscope-viewer --example load_figures [-- EVENTS [TRACE]]`

use std::io::{BufWriter, Write};
use std::time::Instant;

use allocscope_tracker::trace_format::{
    Event, EventBatch, Record, StackDef, TraceEnd, TraceStart, TraceWriter,
};
use allocscope_viewer::model::{format_bytes, LoadOptions, Profile};

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|a| a.parse().expect("EVENTS is a number"))
        .unwrap_or(10_000_000);
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("allocscope-load-figures.trace"));
    write_trace(&path, events);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let rss_before = peak_rss();
    let start = Instant::now();
    let profile = Profile::load_file(&path, LoadOptions::default(), &mut |_| {})
        .expect("the trace just written loads");
    let took = start.elapsed();
    println!(
        "{} events ({} trace) loaded in {:.2} s; peak RSS {} (before loading {}); {} stacks, \
         {} still allocated, peak heap {}",
        profile.events,
        format_bytes(size),
        took.as_secs_f64(),
        format_bytes(peak_rss()),
        format_bytes(rss_before),
        profile.stack_stats.len(),
        format_bytes(profile.leaked_bytes()),
        format_bytes(profile.peak_bytes),
    );
}

/// A deterministic mix: each thread allocates and, a few events later, frees.
fn write_trace(path: &std::path::Path, events: u64) {
    let file = std::fs::File::create(path).expect("create the trace");
    let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, file)).expect("header");
    w.write(&Record::Start(TraceStart {
        pid: 1,
        program: "synthetic".into(),
        unix_time_ns: 0,
        page_size: 4096,
        options: "sample=1".into(),
        tracker_version: env!("CARGO_PKG_VERSION").into(),
    }))
    .expect("write");
    const STACKS: u32 = 4096;
    for id in 1..=STACKS {
        let frames = (0..12)
            .map(|d| 0x40_0000 + u64::from(id % (64 >> (d % 6))) * 0x40 + d * 0x1000)
            .collect();
        w.write(&Record::Stack(StackDef { id, frames }))
            .expect("write");
    }
    const THREADS: u64 = 16;
    const BATCH: usize = 4096;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live: Vec<Vec<(u64, u64)>> = vec![Vec::new(); THREADS as usize];
    let mut batches: Vec<Vec<Event>> = vec![Vec::with_capacity(BATCH); THREADS as usize];
    let mut next_addr = [0u64; THREADS as usize];
    for n in 0..events {
        let t = (n % THREADS) as usize;
        let time_ns = n * 50;
        let r = rand();
        let thread_live = &mut live[t];
        let event = if thread_live.len() > 64 && (r % 4 != 0 || thread_live.len() > 50_000) {
            let (addr, size) = thread_live.swap_remove((r >> 8) as usize % thread_live.len());
            Event::Free {
                time_ns,
                addr,
                size,
                stack: 0,
            }
        } else {
            let addr = ((t as u64 + 1) << 40) + next_addr[t] * 16;
            next_addr[t] += 1;
            let size = 8 + (r >> 20) % 1024;
            thread_live.push((addr, size));
            Event::Alloc {
                time_ns,
                addr,
                size,
                align: 8,
                stack: 1 + ((r >> 32) % u64::from(STACKS)) as u32,
            }
        };
        batches[t].push(event);
        if batches[t].len() == BATCH {
            let events = std::mem::replace(&mut batches[t], Vec::with_capacity(BATCH));
            w.write(&Record::Batch(EventBatch {
                thread: t as u32,
                events,
            }))
            .expect("write");
        }
    }
    for (t, events) in batches.into_iter().enumerate() {
        if !events.is_empty() {
            w.write(&Record::Batch(EventBatch {
                thread: t as u32,
                events,
            }))
            .expect("write");
        }
    }
    w.write(&Record::End(TraceEnd {
        time_ns: events * 50,
        events_written: events,
        ..TraceEnd::default()
    }))
    .expect("write");
    w.into_inner().flush().expect("flush");
}

/// Peak resident set size of this process.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

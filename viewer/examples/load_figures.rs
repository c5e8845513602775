//! The load-time and memory figures of issue 5's scale target: writes a synthetic trace of
//! N events (default 10 million; see `synthetic` for the light and `--heavy` shapes), then
//! loads it with the viewer's aggregation and prints the time taken and the process's peak
//! resident memory; then loads it again keeping the time-slot index (live mode's) and times
//! a range view from it.
//!
//! `cargo run --release -p allocscope-viewer --example load_figures -- [--heavy] [EVENTS [TRACE]]`

mod synthetic;

use std::io::{BufWriter, Write};
use std::time::Instant;

use allocscope_tracker::trace_format::TraceWriter;
use allocscope_viewer::model::{format_bytes, LoadOptions, Profile, TimeRange};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let heavy = args.iter().any(|a| a == "--heavy");
    args.retain(|a| a != "--heavy");
    let mut args = args.into_iter();
    let events: u64 = args
        .next()
        .map(|a| a.parse().expect("EVENTS is a number"))
        .unwrap_or(10_000_000);
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("allocscope-load-figures.trace"));
    let shape = if heavy {
        synthetic::Shape::heavy()
    } else {
        synthetic::Shape::light()
    };
    write_trace(&path, shape, events);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // Writing "5" resets the peak resident size (Linux), so the writing above does not count.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_rss();
    let (start, cpu) = (Instant::now(), cpu_ns());
    let profile = Profile::load_file(&path, LoadOptions::default(), &mut |_| {})
        .expect("the trace just written loads");
    let (took, took_cpu) = (start.elapsed(), cpu_ns() - cpu);
    let rss_loaded = peak_rss();
    let max_live = profile
        .timeline
        .heap_in_use()
        .into_iter()
        .max()
        .unwrap_or(0);
    println!(
        "{} events ({} trace) loaded in {:.2} s ({:.2} s on the CPU); peak RSS {} (before \
         loading {}); {} stacks, {} still allocated, peak heap {} (timeline's highest level {})",
        profile.events,
        format_bytes(size),
        took.as_secs_f64(),
        took_cpu as f64 / 1e9,
        format_bytes(rss_loaded),
        format_bytes(rss_before),
        profile.stack_stats.len(),
        format_bytes(profile.leaked_bytes()),
        format_bytes(profile.peak_bytes),
        format_bytes(max_live),
    );
    // The same load keeping the slot index too (what live mode keeps for its ranges).
    let (start, cpu) = (Instant::now(), cpu_ns());
    let options = LoadOptions {
        slot_index: true,
        ..LoadOptions::default()
    };
    let indexed = Profile::load_file(&path, options, &mut |_| {}).expect("loads again");
    println!(
        "the same load keeping the time-slot index (as live mode does): {:.2} s ({:.2} s on \
         the CPU); peak RSS now {}",
        start.elapsed().as_secs_f64(),
        (cpu_ns() - cpu) as f64 / 1e9,
        format_bytes(peak_rss()),
    );
    let d = indexed.duration_ns();
    let range = TimeRange {
        start_ns: d / 4,
        end_ns: d / 2,
    };
    let start = Instant::now();
    let view = indexed.range_view(range);
    let index = indexed.index.as_ref().expect("asked for");
    println!(
        "range view of the second quarter from the slot sums: {:.1} ms ({} stacks, {} \
         allocations); index {} entries in {} slots of {}",
        start.elapsed().as_secs_f64() * 1e3,
        view.stack_stats.len(),
        view.allocations,
        index.entries(),
        d / index.slot_ns() + 1,
        allocscope_viewer::model::format_ns(index.slot_ns()),
    );
}

fn write_trace(path: &std::path::Path, shape: synthetic::Shape, events: u64) {
    let file = std::fs::File::create(path).expect("create the trace");
    let mut w = TraceWriter::new(BufWriter::with_capacity(1 << 20, file)).expect("header");
    let mut generator = synthetic::Generator::new(shape, events);
    for record in generator.header() {
        w.write(&record).expect("write");
    }
    while let Some(batch) = generator.next_batch() {
        w.write(&batch).expect("write");
    }
    assert_eq!(generator.generated(), events);
    w.write(&generator.end()).expect("write");
    w.into_inner().flush().expect("flush");
}

/// Time this thread has spent on a CPU (Linux's schedstat), in nanoseconds: on a busy
/// machine the wall time says more about the other processes.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
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

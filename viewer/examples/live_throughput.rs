//! Live mode at a million events per second: a writer thread streams a synthetic trace (see
//! `synthetic`) in the trace format over a real Unix socket at a fixed rate, paced by the wall
//! clock, to the viewer's live reader ([`Live`]) while this thread drives the real viewer
//! ([`ViewerApp`]) headless at 60 frames a second through a plain `egui::Context` (layout and
//! tessellation; no GPU), switching tabs every half second and selecting a time range for a
//! while. Prints the sustained ingest rate, the backlog (events written but not yet
//! aggregated), how far the writer fell behind its schedule (a tracker would drop batches past
//! its `stream_wait`), and the frame times.
//!
//! `cargo run --release -p allocscope-viewer --example live_throughput -- [--heavy] [RATE [SECONDS]]`
//! (defaults: the light shape, 1 000 000 events/s, 10 s)

mod synthetic;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use allocscope_tracker::trace_format::{Record, TraceWriter};
use allocscope_viewer::app::{Live, Source, Tab, TraceData, ViewerApp};
use allocscope_viewer::model::TimeRange;
use eframe::egui;

/// Time a thread has spent on a CPU (Linux's schedstat file `path`), in nanoseconds.
fn cpu_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The schedstat file of this process's thread named `name`.
fn thread_schedstat(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        (comm.trim_end() == name).then(|| dir.join("schedstat").display().to_string())
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let heavy = args.iter().any(|a| a == "--heavy");
    args.retain(|a| a != "--heavy");
    let rate: u64 = args
        .first()
        .map(|a| a.parse().expect("RATE is events per second"))
        .unwrap_or(1_000_000);
    let seconds: u64 = args
        .get(1)
        .map(|a| a.parse().expect("SECONDS is a number"))
        .unwrap_or(10);
    let mut shape = if heavy {
        synthetic::Shape::heavy()
    } else {
        synthetic::Shape::light()
    };
    shape.ns_per_event = (1_000_000_000 / rate).max(1);
    let total = rate * seconds;

    let dir = std::env::temp_dir().join(format!("allocscope-live-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let socket = dir.join("live.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).expect("listen on the socket");

    let written = Arc::new(AtomicU64::new(0));
    let worst_lag_ns = Arc::new(AtomicU64::new(0));
    let started: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let writer = {
        let (written, worst_lag_ns, started) = (
            Arc::clone(&written),
            Arc::clone(&worst_lag_ns),
            Arc::clone(&started),
        );
        // The stream is encoded before it starts, so that the writer only paces and writes:
        // what is measured is the viewer's side.
        let mut generator = synthetic::Generator::new(shape, total);
        let mut w = TraceWriter::new(Vec::new()).expect("header");
        for record in generator.header() {
            w.write(&record).expect("encode");
        }
        let header_len = w.get_ref().len();
        // (end offset of the batch's frame, events generated up to it)
        let mut frames = Vec::new();
        while let Some(batch) = generator.next_batch() {
            let n = match &batch {
                Record::Batch(b) => b.events.len() as u64,
                _ => 0,
            };
            w.write(&batch).expect("encode");
            frames.push((w.get_ref().len(), generator.generated(), n));
        }
        w.write(&generator.end()).expect("encode");
        let bytes = w.into_inner();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("the viewer connects");
            stream.write_all(&bytes[..header_len]).expect("write");
            let start = *started.get_or_init(Instant::now);
            let mut from = header_len;
            for &(to, generated, n) in &frames {
                let due = start
                    + Duration::from_nanos(
                        (u128::from(generated) * 1_000_000_000 / u128::from(rate)) as u64,
                    );
                let now = Instant::now();
                if now < due {
                    std::thread::sleep(due - now);
                } else {
                    // Relaxed, both counters here: statistics read by the main thread.
                    worst_lag_ns.fetch_max((now - due).as_nanos() as u64, Ordering::Relaxed);
                }
                stream.write_all(&bytes[from..to]).expect("write");
                written.fetch_add(n, Ordering::Relaxed);
                from = to;
            }
            stream.write_all(&bytes[from..]).expect("write");
            start.elapsed()
        })
    };

    let live = Live::attach(&socket).expect("attach");
    let data = TraceData::load(Source::Live(Arc::clone(&live))).expect("live data");
    let mut app = ViewerApp::new(data);
    let ctx = egui::Context::default();
    let t0 = Instant::now();
    let frame_every = Duration::from_micros(16_667);
    let mut frame_ns: Vec<u64> = Vec::new();
    let mut per_tab: Vec<Vec<u64>> = vec![Vec::new(); Tab::ALL.len()];
    let mut rebuild_frames = 0u64;
    let (mut worst_backlog, mut ingested_at) = (0u64, None);
    let mut range_frames = 0u64;
    let mut range_shown = false;
    let mut frame = 0u64;
    let mut last_generation = 0;
    let mut reader_stat = None;
    let mut reader_cpu = 0;
    while live.state().connected || frame == 0 {
        let tick = Instant::now();
        if frame % 30 == 0 {
            app.tab = Tab::ALL[(frame / 30) as usize % Tab::ALL.len()];
        }
        let elapsed = t0.elapsed().as_secs_f64() / seconds as f64;
        if (0.4..0.8).contains(&elapsed) && app.data.range.is_none() {
            let d = app.data.full.duration_ns();
            app.set_range(Some(TimeRange {
                start_ns: d / 10,
                end_ns: d * 3 / 10,
            }));
        } else if elapsed >= 0.8 && app.data.range.is_some() {
            app.set_range(None);
        }
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(1280.0, 800.0),
            )),
            time: Some(t0.elapsed().as_secs_f64()),
            ..Default::default()
        };
        let begin = Instant::now();
        let out = ctx.run_ui(input, |ui| app.ui(ui));
        let primitives = ctx.tessellate(out.shapes, out.pixels_per_point);
        frame_ns.push(begin.elapsed().as_nanos() as u64);
        per_tab[Tab::ALL.iter().position(|&t| t == app.tab).unwrap_or(0)]
            .push(begin.elapsed().as_nanos() as u64);
        std::hint::black_box(primitives);
        if app.data.generation != last_generation {
            last_generation = app.data.generation;
            rebuild_frames += 1;
        }
        if app.data.range.is_some() {
            range_frames += 1;
            range_shown |= app.data.filtered.options.range.is_some();
        }
        if reader_stat.is_none() {
            reader_stat = thread_schedstat("allocscope-live");
        }
        if let Some(path) = &reader_stat {
            // Read while the thread lives (its file goes with it).
            reader_cpu = reader_cpu.max(cpu_ns(path));
        }
        // Relaxed: statistics.
        let ingested = live.ingested_events();
        worst_backlog = worst_backlog.max(written.load(Ordering::Relaxed).saturating_sub(ingested));
        if ingested >= total && ingested_at.is_none() {
            ingested_at = Some(Instant::now());
        }
        frame += 1;
        if let Some(rest) = frame_every.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let ingested_at = ingested_at.unwrap_or_else(Instant::now);
    let writing = writer.join().expect("the writer thread");
    let start = *started.get().expect("the writer started");
    let ingest_s = (ingested_at - start).as_secs_f64();
    let state = live.state();
    frame_ns.sort_unstable();
    let pct = |p: f64| frame_ns[((frame_ns.len() - 1) as f64 * p) as usize] as f64 / 1e6;
    let over = frame_ns.iter().filter(|&&n| n > 16_667_000).count();
    println!(
        "{} shape: {} events written in {:.2} s at a target of {} events/s ({:.0} events/s \
         achieved); the writer fell behind its schedule by {:.1} ms at most",
        if heavy { "heavy" } else { "light" },
        total,
        writing.as_secs_f64(),
        rate,
        total as f64 / writing.as_secs_f64(),
        worst_lag_ns.load(Ordering::Relaxed) as f64 / 1e6,
    );
    println!(
        "ingest: all {} events aggregated {:.2} s after the first was written ({:.0} events/s \
         sustained); largest backlog {} events ({:.1} ms at the target rate); {} events in the \
         final profile; {} publications, the longest {:.1} ms",
        live.ingested_events(),
        ingest_s,
        live.ingested_events() as f64 / ingest_s,
        worst_backlog,
        worst_backlog as f64 * 1e3 / rate as f64,
        state.profile.events,
        state.publications,
        state.longest_publication_ns as f64 / 1e6,
    );
    println!(
        "frames: {} at 60/s (all six tabs in turn, {} with a time range, shown: {}), {} took in \
         fresh data; frame time p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} frames over 16.7 ms",
        frame_ns.len(),
        range_frames,
        range_shown,
        rebuild_frames,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        over,
    );
    let tabs: Vec<String> = Tab::ALL
        .iter()
        .zip(per_tab.iter_mut())
        .map(|(tab, times)| {
            times.sort_unstable();
            let at = |p: f64| times[((times.len().max(1) - 1) as f64 * p) as usize] as f64 / 1e6;
            format!("{} {:.2}/{:.2}", tab.title(), at(0.5), at(0.99))
        })
        .collect();
    println!("per tab, p50/p99 ms: {}", tabs.join(", "));
    let ui_cpu = cpu_ns("/proc/thread-self/schedstat");
    println!(
        "CPU time: the live reading thread {:.2} s ({:.2} million events per CPU second), the \
         UI thread {:.2} s ({:.2} ms per frame)",
        reader_cpu as f64 / 1e9,
        total as f64 / (reader_cpu as f64 / 1e9) / 1e6,
        ui_cpu as f64 / 1e9,
        ui_cpu as f64 / 1e6 / frame_ns.len() as f64,
    );
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}

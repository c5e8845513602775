//! The viewer's UI logic driven through egui_kittest on a fixed trace (written with the
//! tracker's trace writer): switching panels, sorting leaks, zooming and searching the
//! flamegraph, selecting a time range by dragging across the overview chart, and what the
//! fragmentation, corruption and sizes panels show.

use std::sync::Arc;

use allocscope_tracker::trace_format::{
    Event, EventBatch, HeapSnapshot, PageRecord, Record, ReportKind, ReportRecord, StackDef,
    TraceEnd, TraceStart, TraceWriter, NO_STACK,
};
use allocscope_viewer::app::{LeakSort, Source, Tab, TraceData, ViewerApp};
use eframe::egui::{self, Pos2, Vec2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

const MS: u64 = 1_000_000;

fn alloc(time_ns: u64, addr: u64, size: u64, stack: u32) -> Event {
    Event::Alloc {
        time_ns,
        addr,
        size,
        align: 8,
        stack,
    }
}

fn start(pid: u32, program: &str) -> Record {
    Record::Start(TraceStart {
        pid,
        program: program.into(),
        unix_time_ns: 0,
        page_size: 4096,
        options: "sample=1".into(),
        tracker_version: "test".into(),
    })
}

/// Three stacks under one caller (0xaaa0): 0x1000 leaks 200 B in one block, 0x2000 leaks
/// 3 × 50 B, 0x3000 allocates 1000 B and frees it 1 ms later (temporary). One overflow report,
/// one snapshot with a full page, a quarter-full page and an uncommitted page.
fn fixture() -> Vec<u8> {
    let page = |used, committed| PageRecord {
        address: 0x10_0000,
        size: 4096,
        class: Some(3),
        block_size: 64,
        capacity: 64,
        used,
        committed,
    };
    let records = vec![
        start(42, "/usr/bin/fixture"),
        Record::Stack(StackDef {
            id: 1,
            frames: vec![0x1000, 0xaaa0],
        }),
        Record::Stack(StackDef {
            id: 2,
            frames: vec![0x2000, 0xaaa0],
        }),
        Record::Stack(StackDef {
            id: 3,
            frames: vec![0x3000, 0xaaa0],
        }),
        Record::Batch(EventBatch {
            thread: 1,
            events: vec![
                alloc(MS, 0x100, 200, 1),
                alloc(2 * MS, 0x200, 50, 2),
                alloc(2 * MS, 0x240, 50, 2),
                alloc(2 * MS, 0x280, 50, 2),
                alloc(5 * MS, 0x300, 1000, 3),
                Event::Free {
                    time_ns: 6 * MS,
                    addr: 0x300,
                    size: 1000,
                    stack: NO_STACK,
                },
            ],
        }),
        Record::Snapshot(HeapSnapshot {
            time_ns: 6 * MS,
            pages: vec![page(64, true), page(16, true), page(0, false)],
            ..HeapSnapshot::default()
        }),
        Record::Report(ReportRecord {
            time_ns: 4 * MS,
            kind: ReportKind::HeapBufferOverflow,
            address: 0x2b2,
            block_start: Some(0x280),
            block_size: Some(50),
            offset: Some(50),
            thread: 1,
            access_stack: 2,
            alloc_stack: 2,
            free_stack: 0,
            text: "==42==ERROR: allocscope: heap-buffer-overflow on address 0x2b2".into(),
        }),
        Record::End(TraceEnd {
            time_ns: 6 * MS,
            ..TraceEnd::default()
        }),
    ];
    let mut w = TraceWriter::new(Vec::new()).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    w.into_inner()
}

fn harness() -> Harness<'static, ViewerApp> {
    let data = TraceData::load(Source::Bytes(Arc::from(fixture()))).unwrap();
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.ui(ui), ViewerApp::new(data));
    harness.run();
    harness
}

fn open(harness: &mut Harness<'static, ViewerApp>, tab: &str) {
    harness.get_by_label(tab).click();
    harness.run();
}

fn press(harness: &mut Harness<'static, ViewerApp>, pos: Pos2, pressed: bool) {
    harness.input_mut().events.push(egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::NONE,
    });
    harness.step();
}

fn move_to(harness: &mut Harness<'static, ViewerApp>, pos: Pos2) {
    harness
        .input_mut()
        .events
        .push(egui::Event::PointerMoved(pos));
    harness.step();
}

#[test]
fn the_overview_shows_the_run_and_panels_switch() {
    let mut h = harness();
    h.get_by_label("/usr/bin/fixture (pid 42)");
    h.get_by_label("5 (1.3 KiB)");
    h.get_by_label("1 corruption, 0 leak");
    open(&mut h, "Leaks");
    assert_eq!(h.state().tab, Tab::Leaks);
    h.get_by_label("Leaks: 2 stacks with blocks never freed before the trace ended");
    open(&mut h, "Corruption");
    h.get_by_label("Corruption reports: 1");
    h.get_by_label_contains("heap-buffer-overflow at 0x2b2");
    open(&mut h, "Sizes");
    h.get_by_label("1 of 5 allocations (1000 B) were freed within 1.0 ms of being made.");
    h.get_by_label("32–63");
    open(&mut h, "Fragmentation");
    h.get_by_label_contains("Fragmentation is memory the heap has committed");
    h.get_by_label_contains("8.0 KiB committed, 5.0 KiB used, fragmentation 37.5 %");
}

#[test]
fn leaks_sort_by_bytes_then_by_blocks() {
    let mut h = harness();
    open(&mut h, "Leaks");
    let order = |h: &Harness<'static, ViewerApp>| -> Vec<u32> {
        h.state().leaks.rows().iter().map(|r| r.stack).collect()
    };
    assert_eq!(order(&h), [1, 2]);
    let y = |h: &Harness<'static, ViewerApp>, label: &str| h.get_by_label(label).rect().top();
    assert!(y(&h, "200 B") < y(&h, "150 B"), "200 B first on screen");
    h.get_by_label_contains("Blocks").click();
    h.run();
    assert_eq!(h.state().leaks.sort, LeakSort::Blocks);
    assert_eq!(order(&h), [2, 1]);
    assert!(y(&h, "150 B") < y(&h, "200 B"), "3 blocks first on screen");
}

#[test]
fn clicking_a_frame_zooms_the_flamegraph_and_search_measures_matches() {
    let mut h = harness();
    open(&mut h, "Flamegraph");
    h.get_by_label("All: 1.3 KiB (click a frame to zoom)");
    let canvas = h.get_by_label("flamegraph").rect();
    // Rows: all, 0xaaa0, then its callees largest first: 0x3000 (1000 B) at the left.
    let at = Pos2::new(
        canvas.left() + 20.0,
        canvas.top() + 2.5 * allocscope_viewer::app::ROW_HEIGHT,
    );
    move_to(&mut h, at);
    press(&mut h, at, true);
    press(&mut h, at, false);
    h.run();
    assert_eq!(h.state().flamegraph.zoom, ["0xaaa0", "0x3000"]);
    h.get_by_label("Zoomed into: 0x3000");
    h.get_by_label("Reset zoom").click();
    h.run();
    assert!(h.state().flamegraph.zoom.is_empty());
    h.state_mut().flamegraph.search = "0x1000".into();
    h.run();
    h.get_by_label("Matched: 200 B (14.8% of 1.3 KiB)");
}

#[test]
fn dragging_across_the_chart_filters_every_panel_to_the_range() {
    let mut h = harness();
    let chart = h.get_by_label("heap in use over time").rect();
    let from = Pos2::new(chart.left() + 2.0, chart.center().y);
    let to = Pos2::new(chart.center().x, chart.center().y);
    move_to(&mut h, from);
    press(&mut h, from, true);
    for i in 1..=10 {
        move_to(&mut h, from + (to - from) * (i as f32 / 10.0));
    }
    press(&mut h, to, false);
    h.run();
    // The trace is read again for the range on a thread of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.state().data.rereading.is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        h.step();
    }
    assert!(h.state().data.rereading.is_none(), "the re-read finished");
    h.run();
    let range = h.state().data.range.expect("a range was selected");
    assert!(
        range.start_ns < MS && range.end_ns > 2 * MS && range.end_ns < 5 * MS,
        "{range:?}"
    );
    // Only the allocations at 1 and 2 ms are in range; the 1000 B one is not.
    h.get_by_label("4 (350 B)");
    open(&mut h, "Leaks");
    h.get_by_label("Leaks: 2 stacks with blocks live at the end of the selected range");
    open(&mut h, "Overview");
    h.get_by_label("Clear selection").click();
    h.run();
    assert_eq!(h.state().data.range, None);
    h.get_by_label("5 (1.3 KiB)");
}

/// Live mode on a real tracker's socket in this process: events arrive while it runs, and
/// when it ends the viewer says it is disconnected and keeps what it received.
#[test]
fn a_live_stream_fills_the_panels_and_is_kept_after_the_process_ends() {
    use allocscope_core::Allocscope;
    use allocscope_tracker::{LeakCheck, Options, Tracker};
    use allocscope_viewer::app::Live;
    use std::alloc::{GlobalAlloc, Layout};
    use std::time::{Duration, Instant};

    let dir = std::env::temp_dir().join(format!("allocscope-viewer-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("live.sock");
    let options = Options::builder()
        .socket_path(&socket)
        .print_reports(false)
        .leak_check(LeakCheck::Off)
        .sample_bytes(1)
        .build()
        .unwrap();
    let tracker = Tracker::with_options(Allocscope::new(), options);
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: the first allocation starts the tracker and its socket; freed at once.
    unsafe { tracker.dealloc(tracker.alloc(layout), layout) };
    let live = Live::attach(&socket).unwrap();
    let data = TraceData::load(Source::Live(live.clone())).unwrap();
    let mut h = Harness::builder()
        .with_size(Vec2::new(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut ViewerApp| app.ui(ui), ViewerApp::new(data));
    h.step();
    std::thread::sleep(Duration::from_millis(100)); // the writer accepts the client
    let mut kept = Vec::new();
    for _ in 0..25 {
        // SAFETY: plain allocations, never freed: they stay live until the tracker ends.
        kept.push(unsafe { tracker.alloc(layout) });
    }
    drop(tracker); // ends the stream with its End record
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.state().connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !live.state().connected,
        "the stream closed when the tracker ended"
    );
    h.step();
    h.step();
    let p = &h.state().data.full;
    assert!(p.end.is_some(), "the End record arrived");
    assert!(p.leaked_count() >= 25, "{} blocks live", p.leaked_count());
    h.get_by_label_contains("disconnected (the stream ended); the data received are kept");
    h.get_by_label("Leaks").click();
    h.step();
    h.step();
    assert!(h.state().leaks.rows().iter().map(|r| r.blocks).sum::<u64>() >= 25);
}

/// A time range on a live stream still open: the reading thread computes its view from the
/// time-slot sums and publishes it; after the stream ends the viewer computes ranges itself.
#[test]
fn a_time_range_on_a_live_stream_comes_from_the_slot_sums() {
    use allocscope_viewer::app::Live;
    use allocscope_viewer::model::TimeRange;
    use std::io::Write;
    use std::time::{Duration, Instant};

    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let live = Live::start(std::path::Path::new("(test pair)"), theirs).unwrap();
    let records = [
        start(9, "/bin/live-fixture"),
        Record::Stack(StackDef {
            id: 1,
            frames: vec![0x1000],
        }),
        Record::Stack(StackDef {
            id: 2,
            frames: vec![0x2000],
        }),
        // Stack 1 allocates early (1 ms, 2 ms), stack 2 late (80 ms); nothing is freed.
        Record::Batch(EventBatch {
            thread: 1,
            events: vec![
                alloc(MS, 0x100, 100, 1),
                alloc(2 * MS, 0x200, 100, 1),
                alloc(80 * MS, 0x300, 7, 2),
            ],
        }),
    ];
    let mut w = TraceWriter::new(Vec::new()).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    ours.write_all(&w.into_inner()).unwrap();
    let mut data = TraceData::load(Source::Live(live.clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while data.full.events < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        data.poll();
    }
    assert_eq!(data.full.events, 3, "the records were published");
    assert!(
        data.full.index.is_none(),
        "the index stays on the reading thread"
    );
    data.set_range(Some(TimeRange {
        start_ns: 0,
        end_ns: 10 * MS,
    }));
    while data.filtered.options.range.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        data.poll();
    }
    let view = data.filtered.clone();
    let r = view
        .options
        .range
        .expect("the reading thread published the range");
    assert!(
        r.start_ns == 0 && r.end_ns >= 10 * MS && r.end_ns < 80 * MS,
        "{r:?}"
    );
    assert_eq!(view.allocations, 2);
    assert_eq!(view.stack_stats[&1].live_bytes, 200);
    assert_eq!(view.stack_stats[&1].leaked_bytes, 200, "never freed");
    assert!(!view.stack_stats.contains_key(&2));
    assert!(live.state().connected);
    drop(ours);
    while live.state().connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    data.poll();
    assert!(
        data.full.index.is_some(),
        "the last publication keeps the index"
    );
    data.set_range(Some(TimeRange {
        start_ns: 50 * MS,
        end_ns: 90 * MS,
    }));
    let late = &data.filtered;
    assert_eq!(late.allocations, 1);
    assert_eq!(late.stack_stats[&2].allocated_bytes, 7);
    assert_eq!(late.stack_stats[&2].leaked_bytes, 7);
    assert_eq!(
        late.stack_stats[&1].leaked_bytes, 0,
        "allocated before the range"
    );
    assert_eq!(
        late.stack_stats[&1].live_bytes, 200,
        "still live, allocated before"
    );
}

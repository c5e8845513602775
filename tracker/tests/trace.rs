//! The event stream end to end: what threads do arrives in the trace, complete and in order;
//! a trace cut anywhere (a killed process) reads up to its last complete frame; garbage is an
//! error, never a panic; a live viewer can attach to the socket.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use allocscope_core::Allocscope;
use allocscope_tracker::trace_format::{
    read_trace, read_trace_file, Ending, Event, Record, TraceReader,
};
use allocscope_tracker::{LeakCheck, Options, Tracker};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("allocscope-tracker-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tracing_options(path: &std::path::Path) -> Options {
    Options::builder()
        .trace_path(path)
        .print_reports(false)
        .leak_check(LeakCheck::Off)
        .snapshot_interval(Some(Duration::from_millis(50)))
        .build()
        .unwrap()
}

const THREADS: usize = 4;
const ROUNDS: usize = 20_000;

/// Four threads at default options; returns the trace's path.
fn record_four_threads(name: &str) -> PathBuf {
    record(name, THREADS, ROUNDS)
}

/// `threads` threads doing `rounds` allocations each (and freeing them all).
fn record(name: &str, threads: usize, rounds: usize) -> PathBuf {
    let path = temp_path(name);
    let tracker: &'static Tracker<Allocscope> = Box::leak(Box::new(Tracker::with_options(
        Allocscope::new(),
        tracing_options(&path),
    )));
    let threads: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut live = Vec::new();
                for i in 0..rounds {
                    let layout = Layout::from_size_align(8 + (i * 7 + t) % 500, 8).unwrap();
                    // SAFETY: plain allocations, each freed once with its layout.
                    unsafe {
                        live.push((tracker.alloc(layout), layout));
                        if live.len() > 64 {
                            let (p, l) = live.swap_remove(i % live.len());
                            tracker.dealloc(p, l);
                        }
                    }
                }
                for (p, l) in live {
                    // SAFETY: as above.
                    unsafe { tracker.dealloc(p, l) };
                }
                assert!(tracker.flush_trace(Duration::from_secs(30)));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    tracker.finish_trace();
    path
}

#[test]
fn four_threads_stream_every_event_at_default_options() {
    let path = record_four_threads("four.trace");
    let trace = read_trace_file(&path).unwrap();
    assert_eq!(trace.ending, Ending::Clean);
    assert!(matches!(trace.records.first(), Some(Record::Start(_))));
    let mut defined: HashSet<u32> = HashSet::new();
    let mut per_thread: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut live: HashMap<u32, HashSet<u64>> = HashMap::new();
    let mut snapshots = 0;
    let mut end = None;
    for record in &trace.records {
        match record {
            Record::Stack(def) => {
                defined.insert(def.id);
            }
            Record::Batch(batch) => {
                let counts = per_thread.entry(batch.thread).or_default();
                let live = live.entry(batch.thread).or_default();
                for event in &batch.events {
                    match *event {
                        Event::Alloc { addr, stack, .. } => {
                            counts.0 += 1;
                            assert!(live.insert(addr), "address {addr:#x} allocated twice");
                            assert!(
                                stack == 0 || defined.contains(&stack),
                                "stack {stack} used before its definition"
                            );
                        }
                        Event::Free { addr, stack, .. } => {
                            counts.1 += 1;
                            assert!(stack == 0 || defined.contains(&stack));
                            // Each thread frees only its own blocks, so a thread's events
                            // alone pair every free with an earlier alloc.
                            assert!(live.remove(&addr), "free of {addr:#x} before its alloc");
                        }
                        Event::Realloc { .. } => panic!("no realloc was made"),
                    }
                }
            }
            Record::Snapshot(_) => snapshots += 1,
            Record::Dropped(d) => assert_eq!(d.events, 0, "events were dropped"),
            Record::End(e) => end = Some(*e),
            _ => {}
        }
    }
    assert_eq!(per_thread.len(), THREADS);
    for (thread, (allocs, frees)) in &per_thread {
        assert_eq!((*allocs, *frees), (ROUNDS, ROUNDS), "thread {thread}");
    }
    let end = end.expect("the trace ends with an End record");
    assert_eq!(end.dropped.events, 0);
    assert_eq!(end.events_written, (2 * THREADS * ROUNDS) as u64);
    assert!(snapshots >= 1, "a snapshot is written at least at the end");
    assert!(
        !defined.is_empty(),
        "sampling at 512 KiB records some stacks in 20 MB of allocations"
    );
}

#[test]
fn a_cut_trace_reads_up_to_its_last_complete_frame() {
    let path = record("cut.trace", 2, 5_000);
    let bytes = std::fs::read(&path).unwrap();
    let full = read_trace(&bytes[..]).unwrap().records;
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cut = 12 + (x as usize) % (bytes.len() - 12);
        let trace = read_trace(&bytes[..cut]).unwrap();
        let n = trace.records.len();
        assert_eq!(trace.records[..], full[..n], "cut at {cut}");
        assert!(n < full.len());
    }
}

#[test]
fn random_bytes_are_an_error_never_a_panic() {
    let valid = {
        let mut w = allocscope_tracker::trace_format::TraceWriter::new(Vec::new()).unwrap();
        w.write(&Record::Dropped(Default::default())).unwrap();
        w.into_inner()
    };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0;
    for round in 0..3000 {
        let len = (next() % 400) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // A valid header, then garbage: exercises the frame decoder, not just the magic.
            bytes.splice(0..0, valid[..12].iter().copied());
        }
        if read_trace(&bytes[..]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 1500, "garbage is rejected ({errors} of 3000)");
    // Single-byte damage anywhere in a real trace: never a panic; the prefix before it reads.
    let bytes = std::fs::read(record("damaged.trace", 1, 2_000)).unwrap();
    for i in (12..bytes.len()).step_by(bytes.len() / 200 + 1) {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x5a;
        let mut reader = TraceReader::new(&damaged[..]).unwrap();
        while let Ok(Some(_)) = reader.next_record() {}
    }
}

#[test]
fn a_killed_process_leaves_a_readable_trace() {
    if let Ok(path) = std::env::var("ALLOCSCOPE_TRACE_CHILD") {
        // The child: allocate forever, flushing now and then, until killed.
        let tracker = Tracker::with_options(
            Allocscope::new(),
            tracing_options(std::path::Path::new(&path)),
        );
        let layout = Layout::from_size_align(64, 8).unwrap();
        for i in 0u64.. {
            // SAFETY: plain alloc/free pairs.
            unsafe { tracker.dealloc(tracker.alloc(layout), layout) };
            if i % 10_000 == 0 {
                tracker.flush_trace(Duration::from_secs(5));
            }
        }
        unreachable!();
    }
    let path = temp_path("killed.trace");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_killed_process_leaves_a_readable_trace",
            "--exact",
            "--nocapture",
        ])
        .env("ALLOCSCOPE_TRACE_CHILD", &path)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < 256 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child wrote too little"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let trace = read_trace_file(&path).unwrap();
    assert!(matches!(trace.records.first(), Some(Record::Start(_))));
    assert!(
        !trace.records.iter().any(|r| matches!(r, Record::End(_))),
        "no clean end"
    );
    let events: usize = trace
        .records
        .iter()
        .map(|r| {
            if let Record::Batch(b) = r {
                b.events.len()
            } else {
                0
            }
        })
        .sum();
    assert!(events >= 10_000, "{events} events recovered");
}

#[cfg(unix)]
#[test]
fn a_viewer_attaches_to_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let socket = temp_path("live.sock");
    let options = Options::builder()
        .socket_path(&socket)
        .print_reports(false)
        .leak_check(LeakCheck::Off)
        .sample_bytes(1)
        .build()
        .unwrap();
    let tracker = Tracker::with_options(Allocscope::new(), options);
    let layout = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: plain alloc/free; the first call starts the tracker (and its socket).
    unsafe { tracker.dealloc(tracker.alloc(layout), layout) };
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Give the writer a moment to accept, then make events it must forward.
    std::thread::sleep(Duration::from_millis(100));
    let mut addresses = Vec::new();
    for _ in 0..10 {
        // SAFETY: plain allocations, freed below.
        addresses.push(unsafe { tracker.alloc(layout) } as u64);
    }
    for &a in &addresses {
        // SAFETY: each block freed once.
        unsafe { tracker.dealloc(a as *mut u8, layout) };
    }
    drop(tracker); // ends the trace: the client gets everything and the End record
    let mut reader = TraceReader::new(stream).unwrap();
    let mut seen = Vec::new();
    let mut stacks = HashSet::new();
    let mut ended = false;
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            Record::Stack(def) => {
                stacks.insert(def.id);
            }
            Record::Batch(b) => {
                for e in b.events {
                    if let Event::Alloc { addr, stack, .. } = e {
                        assert!(
                            stacks.contains(&stack),
                            "sample=1: every alloc has a defined stack"
                        );
                        seen.push(addr);
                    }
                }
            }
            Record::End(_) => ended = true,
            _ => {}
        }
    }
    assert!(ended);
    for a in addresses {
        assert!(seen.contains(&a), "alloc of {a:#x} reached the viewer");
    }
}

/// A thread that allocates slowly is seen in the trace within the batch age (100 ms), not only
/// once it has filled a batch of 4096 events: what a live viewer and a trace cut short show.
#[test]
fn a_slow_threads_events_reach_the_trace_without_a_full_batch() {
    let path = temp_path("slow.trace");
    let t = Tracker::with_options(Allocscope::new(), tracing_options(&path));
    let (a, b) = (
        Layout::from_size_align(4321, 8).unwrap(),
        Layout::from_size_align(4322, 8).unwrap(),
    );
    // SAFETY: (test) valid layouts; both blocks freed below.
    let (p, q) = unsafe {
        let p = t.alloc(a);
        std::thread::sleep(Duration::from_millis(150));
        (p, t.alloc(b))
    };
    // The writer writes and flushes what it was sent within its 20 ms tick.
    let mut seen = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let trace = read_trace_file(&path).unwrap();
        seen = trace
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Batch(batch) => Some(&batch.events),
                _ => None,
            })
            .flatten()
            .filter(|e| {
                matches!(
                    e,
                    Event::Alloc {
                        size: 4321 | 4322,
                        ..
                    }
                )
            })
            .count();
        if seen == 2 {
            break;
        }
    }
    assert_eq!(
        seen, 2,
        "both allocations in the trace while the program runs"
    );
    // SAFETY: (test) allocated above with these layouts.
    unsafe {
        t.dealloc(p, a);
        t.dealloc(q, b);
    }
}

//! The `allocscope` binary on traces recorded in this test by the real tracker (stacks of this
//! very test binary, so symbolised names can be asserted) and on bad input.

use std::alloc::{GlobalAlloc, Layout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use allocscope_core::Allocscope;
use allocscope_tracker::trace_format::{Record, TraceStart, TraceWriter};
use allocscope_tracker::{GuardRate, LeakCheck, Options, Tracker};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("allocscope-viewer-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Allocates 3 × 48 bytes and never frees them.
#[inline(never)]
fn leaky_allocation_site(tracker: &Tracker<Allocscope>) {
    for _ in 0..3 {
        // SAFETY: a plain allocation, deliberately never freed.
        let p = unsafe { tracker.alloc(Layout::from_size_align(48, 8).unwrap()) };
        std::hint::black_box(p);
    }
}

/// Allocates and frees 100 × 1000 bytes.
#[inline(never)]
fn busy_allocation_site(tracker: &Tracker<Allocscope>) {
    for _ in 0..100 {
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: allocated and freed with the same layout.
        unsafe {
            let p = tracker.alloc(layout);
            std::hint::black_box(p);
            tracker.dealloc(p, layout);
        }
    }
}

/// Overflows a 16-byte block by one byte (the canary catches it at free). The byte is flipped,
/// not set to a constant: the red-zone pattern is random per process, and a constant write
/// leaves it intact in one run of 256 (which once failed CI).
#[inline(never)]
fn overflowing_site(tracker: &Tracker<Allocscope>) {
    let layout = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: the write lands in the tracker's red zone, which the tracker owns and checks;
    // that is the bug this test wants reported.
    unsafe {
        let p = tracker.alloc(layout);
        let red = p.add(16);
        red.write_volatile(!red.read_volatile());
        tracker.dealloc(p, layout);
    }
}

/// One trace for every test: every allocation sampled, canaries on, leak check of all blocks.
fn recorded_trace() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = temp_dir().join("recorded.trace");
        let options = Options::builder()
            .trace_path(&path)
            .sample_bytes(1)
            .canary_bytes(16)
            .guard(GuardRate::Off)
            .print_reports(false)
            .leak_check(LeakCheck::All)
            .build()
            .unwrap();
        let tracker: &'static Tracker<Allocscope> =
            Box::leak(Box::new(Tracker::with_options(Allocscope::new(), options)));
        leaky_allocation_site(tracker);
        busy_allocation_site(tracker);
        overflowing_site(tracker);
        tracker.check_leaks();
        assert!(tracker.flush_trace(Duration::from_secs(30)));
        tracker.finish_trace();
        path
    })
}

fn allocscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allocscope"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn report_names_the_leaking_function_the_overflow_and_the_top_site() {
    let trace = recorded_trace().to_str().unwrap();
    let out = allocscope(&["report", trace]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("heap-buffer-overflow"), "{stdout}");
    let leaks = stdout
        .split("== Still allocated at the end")
        .nth(1)
        .expect("a leak section");
    assert!(leaks.contains("144 B in 3 blocks"), "{leaks}");
    assert!(leaks.contains("leaky_allocation_site"), "{leaks}");
    assert!(leaks.contains("cli.rs:"), "file:line of the site: {leaks}");
    let top = stdout
        .split("== Top allocation sites")
        .nth(1)
        .expect("a top-sites section");
    let first = top.lines().nth(1).unwrap();
    assert_eq!(first, "97.7 KiB in 100 blocks", "{top}");
    assert!(
        top.lines()
            .take(4)
            .any(|l| l.contains("busy_allocation_site")),
        "{top}"
    );

    let failing = allocscope(&["report", trace, "--fail-on-leak-or-corruption"]);
    assert_eq!(failing.status.code(), Some(1));
}

#[test]
fn flamegraph_writes_an_svg_with_the_function_names() {
    let trace = recorded_trace().to_str().unwrap();
    let svg = temp_dir().join("leaked.svg");
    let out = allocscope(&[
        "flamegraph",
        trace,
        "-o",
        svg.to_str().unwrap(),
        "--kind",
        "leaked",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<?xml"));
    assert!(svg.contains("leaky_allocation_site"));
    assert!(
        !svg.contains("busy_allocation_site"),
        "freed blocks are not leaked"
    );
}

/// A range with no allocation in it: the error names the empty profile and writes nothing
/// (inferno's own words were "cannot write FILE: No stack counts found").
#[test]
fn flamegraph_of_nothing_says_what_is_empty() {
    let trace = recorded_trace().to_str().unwrap();
    let svg = temp_dir().join("empty.svg");
    let out = allocscope(&[
        "flamegraph",
        trace,
        "-o",
        svg.to_str().unwrap(),
        "--from-ms",
        "1e12",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no stacks to draw for --kind allocated") && err.contains("sample=1"),
        "{err}"
    );
    assert!(!err.contains("No stack counts found"), "{err}");
    assert!(!svg.exists(), "nothing is written");
}

#[test]
fn export_folded_and_dhat() {
    let trace = recorded_trace().to_str().unwrap();
    let out = allocscope(&["export", trace, "--format", "folded", "--kind", "allocated"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let folded = text(&out.stdout);
    let busy = folded
        .lines()
        .find(|l| l.contains("busy_allocation_site"))
        .expect("the busy site's line");
    assert!(busy.ends_with(" 100000"), "{busy}");
    assert!(busy.split(';').count() > 1, "a whole stack: {busy}");

    let dhat = temp_dir().join("dhat.json");
    let out = allocscope(&[
        "export",
        trace,
        "--format",
        "dhat",
        "-o",
        dhat.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dhat).unwrap()).unwrap();
    assert_eq!(json["dhatFileVersion"], 2);
    let ftbl = json["ftbl"].as_array().unwrap();
    let pps = json["pps"].as_array().unwrap();
    let leaky = pps
        .iter()
        .find(|pp| {
            let first = pp["fs"][0].as_u64().unwrap() as usize;
            ftbl[first]
                .as_str()
                .unwrap()
                .contains("leaky_allocation_site")
        })
        .expect("the leaky site as a program point");
    assert_eq!(
        (leaky["tb"].as_u64(), leaky["eb"].as_u64()),
        (Some(144), Some(144))
    );
}

#[test]
fn bad_input_is_one_line_and_status_two() {
    let dir = temp_dir();
    let not_trace = dir.join("not.trace");
    std::fs::write(&not_trace, b"certainly not a trace").unwrap();

    let mut newer = TraceWriter::new(Vec::new()).unwrap();
    newer
        .write(&Record::Start(TraceStart {
            pid: 1,
            program: "p".into(),
            unix_time_ns: 0,
            page_size: 4096,
            options: String::new(),
            tracker_version: "9".into(),
        }))
        .unwrap();
    let mut bytes = newer.into_inner();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    let newer = dir.join("newer.trace");
    std::fs::write(&newer, &bytes).unwrap();

    let mut damaged = std::fs::read(recorded_trace()).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let damaged_path = dir.join("damaged.trace");
    std::fs::write(&damaged_path, &damaged).unwrap();

    let cases = [
        (not_trace, "not an allocscope trace"),
        (newer, "version 99 is not supported"),
        (damaged_path, "corrupt"),
        (dir.join("missing.trace"), "cannot read"),
    ];
    for (path, words) in cases {
        for command in ["report", "export"] {
            let mut args = vec![command, path.to_str().unwrap()];
            if command == "export" {
                args.extend(["--format", "folded"]);
            }
            let out = allocscope(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {path:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(words), "{stderr}");
            assert!(!stderr.contains("panicked"));
        }
    }
    // A time range given backwards, or a time before the trace's start, is refused by name.
    let trace = recorded_trace().to_str().unwrap();
    for (range, words) in [
        (&["--from-ms", "5", "--to-ms", "1"][..], "is after --to-ms"),
        (&["--from-ms=-3", "--to-ms=1"][..], "--from-ms must be"),
    ] {
        let out = allocscope(&[&["report", trace][..], range].concat());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{range:?}: {stderr}");
        assert!(stderr.contains(words), "{range:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_truncated_trace_still_reports_what_it_holds() {
    let bytes = std::fs::read(recorded_trace()).unwrap();
    let cut = temp_dir().join("cut.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let out = allocscope(&["report", cut.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("cut short"), "{stdout}");
    assert!(stdout.contains("busy_allocation_site"), "{stdout}");
}

/// A trace ended by an exec says so, instead of "shut down cleanly".
#[test]
fn a_trace_ended_by_an_exec_is_reported_as_such() {
    use allocscope_tracker::trace_format::{TraceEnd, TraceExec};
    let mut w = TraceWriter::new(Vec::new()).unwrap();
    for record in [
        Record::Start(TraceStart {
            pid: 7,
            program: "sh".into(),
            unix_time_ns: 0,
            page_size: 4096,
            options: String::new(),
            tracker_version: "0".into(),
        }),
        Record::Exec(TraceExec { time_ns: 5 }),
        Record::End(TraceEnd {
            time_ns: 5,
            ..TraceEnd::default()
        }),
    ] {
        w.write(&record).unwrap();
    }
    let path = temp_dir().join("execd.trace");
    std::fs::write(&path, w.into_inner()).unwrap();
    let out = allocscope(&["report", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("went on as another program (exec)"),
        "{stdout}"
    );
    assert!(!stdout.contains("shut down cleanly"), "{stdout}");
}

/// `record` and `run` on real programs when the preload libraries are built (tests/run.sh
/// builds them first); otherwise the one-line error naming the missing library.
#[test]
fn record_traces_a_program_and_exits_with_its_status() {
    use allocscope_viewer::cli::{PRELOAD_LIB, TRACKER_PRELOAD_LIB};
    let dir = temp_dir();
    let pattern = dir.join("sort.%p.trace");
    let input = dir.join("lines.txt");
    std::fs::write(&input, "pear\napple\nfig\n").unwrap();
    let out = allocscope(&[
        "record",
        "-o",
        pattern.to_str().unwrap(),
        "--options",
        "sample=1,leak_check=off",
        "--",
        "sort",
        input.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_allocscope"))
        .parent()
        .unwrap();
    let built = |name: &str| {
        binary_dir.join(name).is_file() || binary_dir.join("../release").join(name).is_file()
    };
    if built(TRACKER_PRELOAD_LIB) {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(text(&out.stdout), "apple\nfig\npear\n");
        assert!(stderr.contains("allocscope: trace"), "{stderr}");
        let failing = allocscope(&["record", "-o", pattern.to_str().unwrap(), "--", "false"]);
        assert_eq!(failing.status.code(), Some(1), "the command's own status");
        let trace = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("sort.")
            })
            .expect("the trace, named after the pid");
        let report = allocscope(&["report", trace.to_str().unwrap()]);
        assert!(report.status.success(), "{}", text(&report.stderr));
        let stdout = text(&report.stdout);
        assert!(stdout.contains("/sort (pid"), "{stdout}");
        let top = stdout.split("== Top allocation sites").nth(1).unwrap();
        let first_frame = top.lines().nth(2).unwrap_or_default();
        for entry_point in [" in malloc", " in free", " in realloc", " in calloc"] {
            assert!(!first_frame.contains(entry_point), "not trimmed: {top}");
        }
        // A relative trace path is the recorder's, wherever the program goes before its first
        // allocation (a shell's `cd`): the summary reads the trace the program wrote.
        let sub = dir.join("elsewhere");
        std::fs::create_dir_all(&sub).unwrap();
        let relative = Command::new(env!("CARGO_BIN_EXE_allocscope"))
            .current_dir(&dir)
            .args(["record", "-o", "cd.trace", "--", "sh", "-c"])
            .arg(format!("cd elsewhere && exec sort {}", input.display()))
            .output()
            .unwrap();
        let stderr = text(&relative.stderr);
        assert_eq!(relative.status.code(), Some(0), "{stderr}");
        assert!(dir.join("cd.trace").is_file() && !sub.join("cd.trace").exists());
        assert!(!stderr.contains("peak 0 B"), "{stderr}");
        // Options the library would refuse, a trace path in --options, and a directory that
        // is not there are refused before the program runs, in one line.
        for (args, says) in [
            (
                &["--options", "canary=abc", "-o", "t.trace"][..],
                "canary=abc",
            ),
            (&["--options", "trace=x", "-o", "t.trace"][..], "-o"),
            (&["-o", "/nonexistent-dir/t.trace"][..], "does not exist"),
        ] {
            let out = allocscope(&[&["record"], args, &["--", "true"]].concat());
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
    } else {
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr.contains(TRACKER_PRELOAD_LIB), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let run = allocscope(&["run", "--", "sh", "-c", "exit 4"]);
    if built(PRELOAD_LIB) {
        assert_eq!(run.status.code(), Some(4), "{}", text(&run.stderr));
    } else {
        assert_eq!(run.status.code(), Some(2));
        assert!(text(&run.stderr).contains(PRELOAD_LIB));
    }
    let missing = allocscope(&["run", "--", "/nonexistent/program"]);
    assert_eq!(missing.status.code(), Some(2));
}

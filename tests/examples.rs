//! The examples run and print what they are meant to show: each is built (by cargo, in this
//! test's profile and features), run with a short workload, and its output checked — the
//! figures' presence and the behaviour they describe, never their speed.
//!
//! The tracker examples need the facade's `instrumented` feature:
//! `cargo test -p allocscope --features instrumented --test examples` runs all six.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

/// One build at a time: concurrent `cargo build`s of this package would wait on each other's
/// lock anyway.
static BUILD: Mutex<()> = Mutex::new(());

/// Builds example `name` with this test binary's profile and features; returns its path.
fn build(name: &str) -> PathBuf {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "-p", "allocscope", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    if cfg!(feature = "instrumented") {
        cargo.args(["--features", "instrumented"]);
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    // This test binary is target/<profile>/deps/examples-<hash>; examples are beside deps/.
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    dir.join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

struct Run {
    stdout: String,
    stderr: String,
}

fn run(name: &str, args: &[&str]) -> Run {
    let exe = build(name);
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(&exe)
        .args(args)
        .env_remove("ALLOCSCOPE_OPTIONS")
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", exe.display()));
    let run = Run {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(
        status.success(),
        "{name} failed ({status}):\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

/// The line of `text` that starts with `label` (after leading spaces), split into words.
fn row<'t>(text: &'t str, label: &str) -> Vec<&'t str> {
    text.lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
        .split_whitespace()
        .collect()
}

#[test]
fn basic_usage_shows_the_heap_a_buddy_and_a_pool() {
    let out = run("basic_usage", &[]).stdout;
    assert!(out.contains("20000 strings and a map of 100 keys"), "{out}");
    assert!(out.contains("busiest size class:"), "{out}");
    assert!(
        out.contains("buddy: map of 4000 entries + Vec of 4000"),
        "{out}"
    );
    assert!(
        out.contains("buddy after the collections are dropped: used 0 B"),
        "{out}"
    );
    assert!(out.contains("1001 live particles"), "{out}");
    // The example is built on its own (see `build`), with or without allocscope-core's `stats`
    // feature: exact counts when it counts them, and a line saying so when it does not.
    let pool = row(&out, "pool after dropping 991:").join(" ");
    assert!(
        pool == "pool after dropping 991: 10 live blocks, 1001 allocations and 991 frees in all"
            || pool.starts_with("pool after dropping 991: 10 live blocks, operation counts off"),
        "{out}"
    );
    assert!(out.contains("3. statistics"), "{out}");
}

#[test]
fn gaming_example_prints_frame_time_percentiles_for_both_loops() {
    let out = run("gaming_example", &["--frames", "20"]).stdout;
    assert!(out.contains("20 frames"), "{out}");
    for label in ["p50", "p90", "p99", "p99.9", "max"] {
        let words = row(&out, label);
        // label, system figure, "µs", allocscope figure, "µs", ratio
        assert_eq!(words.len(), 6, "{out}");
        for figure in [words[1], words[3]] {
            let us: f64 = figure.parse().unwrap_or_else(|_| panic!("{figure}: {out}"));
            assert!(us > 0.0, "{out}");
        }
    }
    assert!(
        out.contains("0 B in use between frames"),
        "the frame scopes reset the stack: {out}"
    );
    assert!(out.contains("entity pool:"), "{out}");
}

#[test]
fn finance_example_prints_latency_percentiles_for_box_and_slab() {
    let out = run("finance_example", &["--events", "3000"]).stdout;
    assert!(out.contains("3000 events"), "{out}");
    for op in ["alloc", "free"] {
        let mut last = [0u64; 3];
        for q in ["p50", "p90", "p99", "p99.9", "max"] {
            let words = row(&out, &format!("{op} {q}"));
            assert_eq!(words.len(), 5, "{out}");
            for (i, w) in words[2..].iter().enumerate() {
                let ns: u64 = w.parse().unwrap_or_else(|_| panic!("{w}: {out}"));
                assert!(ns >= last[i], "quantiles grow: {out}");
                last[i] = ns;
            }
        }
    }
    assert!(out.contains("slab cache:"), "{out}");
}

#[test]
fn embedded_example_reports_exhaustion_as_none_and_null() {
    let out = run("embedded_example", &[]).stdout;
    assert!(
        out.contains("the next allocation returned None (Some(Exhausted))"),
        "{out}"
    );
    assert!(out.contains("every sample read back intact: true"), "{out}");
    assert!(
        out.contains("the next allocation got back its block"),
        "{out}"
    );
    assert!(out.contains("then None (Some(Exhausted))"), "{out}");
    assert!(
        out.contains("all freed, buddies coalesced: an 8 KiB block fits"),
        "{out}"
    );
    assert!(
        out.contains("GlobalAlloc::alloc of 2 MiB returned 0x0"),
        "{out}"
    );
    assert!(out.contains("returned Err("), "{out}");
    assert!(
        out.contains("after the Vecs are dropped: 0 B used; failures counted by the heap: 2"),
        "{out}"
    );
}

#[cfg(feature = "instrumented")]
#[test]
fn tracker_leak_ends_in_a_leak_report_naming_the_leaking_function() {
    let r = run("tracker_leak", &[]);
    assert!(r.stdout.contains("served 200 requests"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("ERROR: allocscope: memory-leak: Direct leak of"),
        "{}",
        r.stderr
    );
    let stack = r
        .stderr
        .split("Direct leak of")
        .nth(1)
        .and_then(|report| report.split("SUMMARY").next())
        .unwrap_or_else(|| panic!("no leak report in:\n{}", r.stderr));
    assert!(
        stack.contains("tracker_leak::intern_user_name"),
        "the leak is allocated in intern_user_name: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("SUMMARY: allocscope:") && r.stderr.contains("byte(s) leaked"),
        "{}",
        r.stderr
    );
}

#[cfg(feature = "instrumented")]
#[test]
fn tracker_overflow_ends_in_a_heap_buffer_overflow_report() {
    let r = run("tracker_overflow", &[]);
    assert!(
        r.stderr
            .contains("ERROR: allocscope: heap-buffer-overflow on address"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("is located 0 bytes after 24-byte region"),
        "{}",
        r.stderr
    );
    let allocated = r
        .stderr
        .split("allocated by ")
        .nth(1)
        .unwrap_or_else(|| panic!("no allocation stack in:\n{}", r.stderr));
    assert!(allocated.contains("encode_packet"), "{}", r.stderr);
    assert!(
        r.stdout.contains("heap-buffer-overflow reports raised: 1"),
        "one report, and the program went on: {}",
        r.stdout
    );
}

//! The two harnesses end to end, on tiny runs: the Rust harness and the C program (built here
//! with gcc, as benches/run_compare.sh builds it) must run every workload, agree on how many
//! malloc+free pairs each does, and write the result files the docs describe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_allocscope-bench");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("allocscope-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs allocscope-bench with `args` plus tiny-run options; returns the medians CSV rows as
/// (allocator, workload@threads) → ops.
fn run_bench(dir: &Path, harness: &str, args: &[&str]) -> BTreeMap<(String, String), u64> {
    let out = dir.join(format!("{harness}.jsonl"));
    let run = Command::new(BENCH)
        .arg(harness)
        .args(args)
        .args(["--reps", "1", "--ops", "3000", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "allocscope-bench {harness} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(out.with_extension("csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("harness,allocator,workload,threads,ops,seconds,ns_per_op,peak_rss_kib,base_rss_kib,runs")
    );
    let mut rows = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], harness);
        assert!(f[6].parse::<f64>().unwrap() > 0.0, "ns_per_op in {line}");
        assert!(f[7].parse::<u64>().unwrap() > 0, "peak RSS in {line}");
        rows.insert(
            (f[1].to_string(), format!("{}@{}", f[2], f[3])),
            f[4].parse().unwrap(),
        );
    }
    let jsonl = std::fs::read_to_string(&out).unwrap();
    assert!(jsonl
        .lines()
        .next()
        .unwrap()
        .contains("\"kind\":\"machine\""));
    rows
}

/// benches/c/workloads.c built into `dir` as benches/run_compare.sh builds it (warnings fail).
fn build_c_program(dir: &Path) -> PathBuf {
    let program = dir.join("workloads");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../c/workloads.c");
    let gcc = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .expect("gcc is needed to build the C harness");
    assert!(gcc.success(), "benches/c/workloads.c does not build");
    program
}

#[test]
fn rust_and_c_harnesses_run_the_same_workloads() {
    let dir = scratch("harnesses");
    let program = build_c_program(&dir);

    let rust = run_bench(&dir, "rust", &["--allocators", "system,allocscope"]);
    let c = run_bench(
        &dir,
        "c",
        &[
            "--program",
            program.to_str().unwrap(),
            "--allocators",
            "glibc",
        ],
    );
    let cases = |rows: &BTreeMap<(String, String), u64>, who: &str| -> BTreeMap<String, u64> {
        rows.iter()
            .filter(|((a, _), _)| a == who)
            .map(|((_, case), &ops)| (case.clone(), ops))
            .collect()
    };
    let on_system = cases(&rust, "system");
    // random, lifo64, larson, mstress, scratch and pareto at 1 and 2 threads, prodcons at 2,
    // fifo64 and realloc at 1.
    assert_eq!(on_system.len(), 15, "{on_system:?}");
    assert_eq!(on_system, cases(&rust, "allocscope"));
    assert_eq!(
        on_system,
        cases(&c, "glibc"),
        "the C program does other pair counts"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_arguments_fail_with_one_clear_line() {
    let out = Command::new(BENCH)
        .args(["c", "--program", "/no/such/program"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/program not found"), "{err}");

    let out = Command::new(BENCH)
        .args(["rust", "--workloads", "prodcons", "--threads", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to run"));
}

/// A suite file with allocscope's and mimalloc's ns/op on one case.
fn suite_file(dir: &Path, name: &str, allocscope: f64, mimalloc: f64) -> PathBuf {
    let rows = format!(
        r#"{{"throughput": {{"c": {{"medians": [
            {{"allocator": "allocscope", "workload": "random", "threads": 1, "ns_per_op": {allocscope}}},
            {{"allocator": "mimalloc", "workload": "random", "threads": 1, "ns_per_op": {mimalloc}}}]}}}}}}"#
    );
    let path = dir.join(name);
    std::fs::write(&path, rows).unwrap();
    path
}

#[test]
fn the_regression_check_passes_fails_and_refuses_by_its_exit_status() {
    let dir = scratch("check");
    let base = suite_file(&dir, "base.json", 10.0, 10.0);
    let check = |current: &Path, margin: &str| {
        Command::new(BENCH)
            .args(["check", "--baseline"])
            .arg(&base)
            .arg("--current")
            .arg(current)
            .args(["--margin", margin])
            .output()
            .unwrap()
    };
    // Everyone twice as slow: the same ratio, a pass.
    let slower_machine = suite_file(&dir, "machine.json", 20.0, 20.0);
    let out = check(&slower_machine, "0.10");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("check passed"));
    // allocscope 15% slower relative to mimalloc: fails at 10%, passes at 20%.
    let lost = suite_file(&dir, "lost.json", 11.5, 10.0);
    let out = check(&lost, "0.10");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("[c] vs mimalloc"));
    assert_eq!(check(&lost, "0.20").status.code(), Some(0));
    // Unreadable input is neither a pass nor a regression.
    let out = check(&dir.join("missing.json"), "0.10");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Writes a stand-in for `perf` into `dir`/bin: it runs the command after `--` and writes, in perf's
/// CSV format, `per_pair` × the pairs the program reported + 5000 (start-up) for instructions
/// and L1-dcache-load-misses, and `<not supported>` for every other event. With `supported`
/// false, every event reads `<not supported>` (a machine without counters).
fn fake_perf(dir: &Path, per_pair: u64, supported: bool) {
    let script = format!(
        r#"#!/bin/sh
out=/dev/stderr; events=""
shift
while [ "$1" != "--" ]; do
  case "$1" in -o) out=$2; shift 2 ;; -e) events=$2; shift 2 ;; *) shift ;; esac
done
shift
res=$("$@") || exit 1
echo "$res"
pairs=$(echo "$res" | sed -n 's/.*pairs=\([0-9]*\).*/\1/p')
: >"$out"
for e in $(echo "$events" | tr , ' '); do
  case "$e" in
    instructions|L1-dcache-load-misses)
      if {supported}; then echo "$((pairs * {per_pair} + 5000)),,$e:u,100,100.00,," >>"$out"
      else echo "<not supported>,,$e,0,100.00,," >>"$out"; fi ;;
    *) echo "<not supported>,,$e,0,100.00,," >>"$out" ;;
  esac
done
"#
    );
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let path = dir.join("bin/perf");
    std::fs::write(&path, script).unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
}

/// The suite's hardware-counter part with `dir`'s fake perf first in PATH; its result file.
fn suite_counters(dir: &Path, program: &Path) -> serde_json::Value {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let results = dir.join("suite.json");
    let out = Command::new(BENCH)
        .env("PATH", path)
        .args([
            "suite",
            "--parts",
            "counters",
            "--reps",
            "1",
            "--allocators",
        ])
        .args(["glibc", "--program"])
        .arg(program)
        .arg("--results")
        .arg(&results)
        .arg("--doc")
        .arg(dir.join("analysis.md"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(results).unwrap()).unwrap()
}

#[test]
fn hardware_counters_are_read_per_pair_or_said_to_be_missing() {
    let dir = scratch("counters");
    let program = build_c_program(&dir);

    fake_perf(&dir, 7, true);
    let v = suite_counters(&dir, &program);
    let c = &v["counters"];
    assert_eq!(c["available"], true, "{c}");
    let glibc = &c["workloads"]["random"]["glibc"];
    // Start-up (5000) cancels out between the two lengths: exactly 7 per pair.
    assert_eq!(glibc["instructions"].as_f64(), Some(7.0), "{glibc}");
    assert_eq!(glibc["l1d_load_misses"].as_f64(), Some(7.0));
    assert!(glibc.get("dtlb_load_misses").is_none(), "{glibc}");
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("dTLB-load-misses <not supported>"),
        "{notes}"
    );
    let doc = std::fs::read_to_string(dir.join("analysis.md")).unwrap();
    assert!(
        doc.contains("### From hardware counters (perf stat)"),
        "{doc}"
    );

    fake_perf(&dir, 7, false);
    let v = suite_counters(&dir, &program);
    assert_eq!(v["counters"]["available"], false);
    assert!(v["counters"]["why"]
        .as_str()
        .unwrap()
        .contains("<not supported>"));
    let doc = std::fs::read_to_string(dir.join("analysis.md")).unwrap();
    assert!(
        doc.contains("Hardware counters: unavailable on this machine"),
        "{doc}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

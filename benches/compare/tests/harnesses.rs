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

#[test]
fn rust_and_c_harnesses_run_the_same_workloads() {
    let dir = scratch("harnesses");
    let program = dir.join("workloads");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../c/workloads.c");
    let gcc = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .expect("gcc is needed to build the C harness");
    assert!(gcc.success(), "benches/c/workloads.c does not build");

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

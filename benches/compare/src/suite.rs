//! The whole suite in one command: the Rust and C harnesses (with the contention sweep under
//! --quick), the memory and latency probes on the Rust allocators, real programs, hardware
//! counters (where perf can read them) and cachegrind under the C preloads; everything goes into one JSON file, from which
//! [`crate::analysis`] writes docs/performance_analysis.md and [`crate::check`] compares runs.
//!
//! May touch: child processes, the result files and the document it is given.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Map, Value};

use crate::allocator::RustAllocator;
use crate::report::Summary;
use crate::runner::Contender;
use crate::{analysis, cachegrind, counters, machine, probe, programs, CArgs};

/// Parts of the suite.
const PARTS: [&str; 7] = [
    "rust",
    "c",
    "memory",
    "latency",
    "programs",
    "counters",
    "cachegrind",
];

/// The workloads the cache measurements run (single-threaded: valgrind runs threads one at a
/// time, and per-pair counts of one thread are what both sources can give).
const CACHE_WORKLOADS: [&str; 3] = ["random", "larson", "pareto"];

/// Single allocations and frees the latency probe times per run.
const LATENCY_OPS: u64 = 1_000_000;

/// What `suite` takes.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    #[command(flatten)]
    c: CArgs,
    /// Parts to run (default: all): rust, c, memory, latency, programs, counters (hardware
    /// counters through perf, where the kernel allows), cachegrind.
    #[arg(long, value_delimiter = ',')]
    parts: Vec<String>,
    /// The suite's result file (the input of `analyse` and `check`).
    #[arg(long, default_value = "bench-results/suite.json")]
    results: PathBuf,
    /// The analysis document written from the run (plots beside it in perf/); "-" for none.
    #[arg(long, default_value = "docs/performance_analysis.md")]
    doc: PathBuf,
}

/// Runs the suite; the exit status says whether the result file was written.
pub fn run(args: &SuiteArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allocscope-bench suite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: &SuiteArgs) -> Result<(), String> {
    if let Some(bad) = args.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!(
            "--parts: unknown part {bad} (parts: {})",
            PARTS.join(", ")
        ));
    }
    let wants = |p: &str| args.parts.is_empty() || args.parts.iter().any(|q| q == p);
    let common = &args.c.common;
    let reps = crate::reps(common);
    let machine = machine::Machine::read();
    let mut out = Map::new();
    let mut notes: Vec<String> = Vec::new();
    out.insert(
        "command".into(),
        json!(std::env::args().skip(1).collect::<Vec<_>>().join(" ")),
    );
    out.insert("quick".into(), json!(common.quick));
    out.insert("reps".into(), json!(reps));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.insert("unix_time".into(), json!(started));
    let rust_allocators = RustAllocator::ALL.to_vec();
    let mut throughput = Map::new();
    if wants("rust") {
        let contenders = rust_allocators
            .iter()
            .map(|&a| Contender::Rust(a))
            .collect();
        let m = crate::measure("rust", contenders, common, &[])?;
        throughput.insert("rust".into(), summary_json(&m.summary));
        failures_to_notes(&m.failures, &mut notes);
    }
    let c_contenders =
        if wants("c") || wants("programs") || wants("counters") || wants("cachegrind") {
            let (contenders, c_notes) = crate::c_contenders(&args.c)?;
            notes.extend(c_notes);
            contenders
        } else {
            Vec::new()
        };
    if wants("c") {
        let m = crate::measure("c", c_contenders.clone(), common, &notes)?;
        throughput.insert("c".into(), summary_json(&m.summary));
        failures_to_notes(&m.failures, &mut notes);
    }
    out.insert("throughput".into(), Value::Object(throughput));
    if wants("memory") {
        let v = probe::run(probe::Kind::Memory, &rust_allocators, reps, 0, common.seed);
        out.insert("memory".into(), Value::Object(v));
    }
    if wants("latency") {
        let ops = (LATENCY_OPS as f64 * common.scale).ceil() as u64;
        let v = probe::run(
            probe::Kind::Latency,
            &rust_allocators,
            reps,
            ops,
            common.seed,
        );
        out.insert("latency".into(), Value::Object(v));
    }
    let preloads: Vec<_> = c_contenders
        .iter()
        .filter_map(|c| match c {
            Contender::C { preload, .. } => Some(preload.clone()),
            Contender::Rust(_) => None,
        })
        .collect();
    if !preloads.is_empty() {
        let names: Vec<&str> = preloads.iter().map(|p| p.name.as_str()).collect();
        out.insert("c_allocators".into(), json!(names));
    }
    if wants("programs") {
        let dir = std::env::temp_dir().join(format!("allocscope-suite-{}", std::process::id()));
        let (v, n) = programs::run(&preloads, reps, &dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        notes.extend(n);
        out.insert("programs".into(), v);
    }
    if wants("counters") {
        let v = match counters::available() {
            Ok(()) => {
                let (v, n) = counters::run(&args.c.program, &preloads, &CACHE_WORKLOADS, reps);
                notes.extend(n);
                v
            }
            Err(why) => {
                eprintln!("hardware counters: not available ({why})");
                counters::unavailable(&why)
            }
        };
        out.insert("counters".into(), v);
    }
    if wants("cachegrind") {
        if cachegrind::available() {
            let (v, n) = cachegrind::run(&args.c.program, &preloads, &CACHE_WORKLOADS);
            notes.extend(n);
            out.insert("cachegrind".into(), v);
        } else {
            notes.push("cachegrind: skipped, valgrind is not installed".into());
        }
    }
    let mut m = machine.to_json();
    m["load_at_end"] = json!(machine::load_average());
    out.insert("machine".into(), m);
    out.insert("notes".into(), json!(notes));
    let value = Value::Object(out);
    if let Some(dir) = args.results.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(&args.results, text)
        .map_err(|e| format!("cannot write {}: {e}", args.results.display()))?;
    println!("\nsuite results: {}", args.results.display());
    if args.doc.as_os_str() != "-" {
        analysis::write(&value, &args.doc)?;
        println!("analysis: {}", args.doc.display());
    }
    Ok(())
}

fn failures_to_notes(failures: &[crate::runner::Failure], notes: &mut Vec<String>) {
    for f in failures {
        notes.push(format!(
            "failed: {} on {}@{}: {}",
            f.allocator,
            f.case.workload.name(),
            f.case.threads,
            f.error
        ));
    }
}

/// A harness's medians as JSON rows.
pub fn summary_json(s: &Summary) -> Value {
    let mut rows = Vec::new();
    for row in &s.rows {
        for (name, cell) in s.allocators.iter().zip(&row.cells) {
            let Some(c) = cell else { continue };
            rows.push(json!({
                "allocator": name, "workload": row.case.workload.name(),
                "threads": row.case.threads, "ops": c.pairs, "ns_per_op": c.ns_per_op,
                "peak_rss_kib": c.peak_rss_kib, "runs": c.runs,
            }));
        }
    }
    json!({ "allocators": s.allocators, "medians": rows })
}

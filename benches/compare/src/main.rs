//! `allocscope-bench`: the comparison benchmark. Runs the same allocation workloads on several
//! allocators — linked into this binary (`rust`) or preloaded into the C program
//! benches/c/workloads.c (`c`) — each run in its own child process, interleaved, and prints
//! medians of ns per malloc+free pair and peak RSS side by side with ratios to mimalloc and to
//! the system allocator. See docs/benchmarks.md.
//!
//! May touch: everything below it; this file only parses the command line and wires the parts.

mod allocator;
mod analysis;
mod cachegrind;
mod check;
mod child;
mod counters;
mod latency;
mod machine;
mod memory;
mod patterns;
mod preload;
mod probe;
mod programs;
mod report;
mod rng;
mod runner;
mod suite;
mod svg;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::allocator::RustAllocator;
use crate::machine::Machine;
use crate::preload::Preload;
use crate::report::Summary;
use crate::runner::{Case, Contender};
use crate::workload::Workload;

/// Compares allocators on the same workloads: ns per malloc+free pair and peak RSS.
#[derive(Parser, Debug)]
#[command(name = "allocscope-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Allocators linked into this binary, called through GlobalAlloc: system, mimalloc,
    /// jemalloc, allocscope.
    Rust(RustArgs),
    /// The C program (benches/c/workloads.c) on glibc and under LD_PRELOAD of mimalloc,
    /// jemalloc, tcmalloc, snmalloc, rpmalloc and liballocscope.so.
    C(CArgs),
    /// The whole suite: both harnesses with the contention sweep, memory and latency probes,
    /// real programs under LD_PRELOAD, hardware counters (where perf can read them),
    /// cachegrind; writes a suite JSON file and
    /// docs/performance_analysis.md with its SVG plots.
    Suite(suite::SuiteArgs),
    /// Regenerates the analysis document from a saved suite JSON file.
    Analyse {
        /// The suite's result file.
        #[arg(default_value = "bench-results/suite.json")]
        results: PathBuf,
        /// Where the document goes (plots beside it in perf/).
        #[arg(long, default_value = "docs/performance_analysis.md")]
        doc: PathBuf,
    },
    /// Fails (exit status 1) when allocscope got slower relative to its peers than in a baseline
    /// suite run, by more than the margin.
    Check(check::CheckArgs),
    /// One probe in this process (what `suite` starts as its child processes).
    #[command(hide = true)]
    ProbeChild {
        kind: String,
        allocator: String,
        ops: u64,
        seed: u64,
    },
    /// One measurement in this process (what `rust` starts as its child processes).
    #[command(hide = true)]
    Child {
        allocator: String,
        workload: String,
        threads: usize,
        ops: u64,
        seed: u64,
    },
}

/// What both harnesses take.
#[derive(Args, Debug)]
struct Common {
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Thread counts for the multi-threaded workloads (default: 1,2; 2 for prodcons, which
    /// runs producer/consumer pairs; --quick: 1,2,4,8,16). fifo64 and realloc run on 1 only.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// A few minutes in all: half the default length, 5 repetitions, and the
    /// contention sweep 1,2,4,8,16 threads unless --threads says otherwise.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every run; medians are reported (default 5, --quick 5 of shorter runs).
    #[arg(long)]
    reps: Option<u32>,
    /// Malloc+free pairs per thread (per producer), for every workload (default: per workload,
    /// 0.1–0.2 s on glibc, times --scale, shared out over the threads so every thread count
    /// does the same total work).
    #[arg(long)]
    ops: Option<u64>,
    /// Multiplies the default number of pairs: 10 for a longer, steadier run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of the workloads' random numbers (the same for every allocator).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// JSON lines of every run and the medians (the medians also go to the same path with .csv).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RustArgs {
    #[command(flatten)]
    common: Common,
    /// Allocators to compare (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    allocators: Vec<RustAllocator>,
}

#[derive(Args, Debug)]
struct CArgs {
    #[command(flatten)]
    common: Common,
    /// The built C program (benches/run_compare.sh builds it).
    #[arg(long)]
    program: PathBuf,
    /// allocscope's preload library; left out with a note until it exports malloc.
    #[arg(long, default_value = "target/release/liballocscope.so")]
    allocscope_lib: PathBuf,
    /// Where snmalloc and rpmalloc built as preload libraries are (benches/run_compare.sh builds
    /// them there; default: peers/ beside --program).
    #[arg(long)]
    peer_dir: Option<PathBuf>,
    /// Only these allocators (names: glibc, mimalloc, jemalloc, tcmalloc, snmalloc, rpmalloc,
    /// allocscope, or those given with --preload).
    #[arg(long, value_delimiter = ',')]
    allocators: Vec<String>,
    /// Adds or replaces an allocator: NAME=PATH preloads PATH; NAME= runs on the C library.
    #[arg(long = "preload", value_name = "NAME=PATH")]
    preloads: Vec<String>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Child {
            allocator,
            workload,
            threads,
            ops,
            seed,
        } => {
            let result = match (
                RustAllocator::from_name(&allocator),
                Workload::from_name(&workload),
            ) {
                (Some(a), Some(w)) => child::run(a, w, threads, ops, seed),
                _ => Err(format!(
                    "unknown allocator {allocator} or workload {workload}"
                )),
            };
            match result {
                Ok(report) => {
                    println!("{}", report.to_line());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("allocscope-bench child: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ProbeChild {
            kind,
            allocator,
            ops,
            seed,
        } => {
            let result = match (
                probe::Kind::from_name(&kind),
                RustAllocator::from_name(&allocator),
            ) {
                (Some(k), Some(a)) => probe::child(k, a, ops, seed),
                _ => Err(format!("unknown probe {kind} or allocator {allocator}")),
            };
            match result {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("allocscope-bench probe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Suite(args) => suite::run(&args),
        Command::Analyse { results, doc } => match analysis::write_from(&results, &doc) {
            Ok(()) => {
                println!("wrote {}", doc.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("allocscope-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => check::run(&args),
        Command::Rust(args) => {
            let chosen = if args.allocators.is_empty() {
                RustAllocator::ALL.to_vec()
            } else {
                args.allocators
            };
            let contenders = chosen.into_iter().map(Contender::Rust).collect();
            compare("rust", contenders, &args.common, Vec::new())
        }
        Command::C(args) => match c_contenders(&args) {
            Ok((contenders, notes)) => compare("c", contenders, &args.common, notes),
            Err(e) => {
                eprintln!("allocscope-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The C harness's contenders: the defaults, then --preload additions, then the --allocators
/// filter.
fn c_contenders(args: &CArgs) -> Result<(Vec<Contender>, Vec<String>), String> {
    if !args.program.exists() {
        return Err(format!(
            "{} not found: build it with benches/run_compare.sh or gcc -O2 -pthread",
            args.program.display()
        ));
    }
    let mut notes = Vec::new();
    let peer_dir = args.peer_dir.clone().unwrap_or_else(|| {
        args.program
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("peers")
    });
    let mut preloads = preload::defaults(&args.allocscope_lib, &peer_dir, &mut notes);
    for spec in &args.preloads {
        let p = preload::parse_spec(spec)?;
        match preloads.iter_mut().find(|q| q.name == p.name) {
            Some(q) => *q = p,
            None => preloads.push(p),
        }
    }
    if !args.allocators.is_empty() {
        if let Some(unknown) = args
            .allocators
            .iter()
            .find(|n| !preloads.iter().any(|p| &p.name == *n))
        {
            return Err(format!("--allocators: {unknown} is not available here"));
        }
        preloads.retain(|p| args.allocators.contains(&p.name));
    }
    let contenders = preloads
        .into_iter()
        .map(|preload: Preload| Contender::C {
            program: args.program.clone(),
            preload,
        })
        .collect();
    Ok((contenders, notes))
}

/// The thread counts of the contention sweep (--quick).
const CONTENTION: [usize; 5] = [1, 2, 4, 8, 16];
/// How much of the default length a --quick run does.
const QUICK_SCALE: f64 = 0.5;

/// The repetitions asked for (3 with --quick unless --reps was given).
fn reps(common: &Common) -> u32 {
    common
        .reps
        .unwrap_or(if common.quick { 5 } else { DEFAULT_REPS })
}

/// Repetitions of a default run.
const DEFAULT_REPS: u32 = 5;

/// The cases the common arguments ask for, or why one cannot run.
fn cases(common: &Common) -> Result<Vec<Case>, String> {
    if !common.scale.is_finite() || common.scale <= 0.0 {
        return Err(format!("--scale {}: must be above 0", common.scale));
    }
    let workloads = if common.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        common.workloads.clone()
    };
    let mut cases = Vec::new();
    for w in workloads {
        let threads = if !w.multi_threaded() {
            vec![1]
        } else if !common.threads.is_empty() {
            common.threads.clone()
        } else if common.quick {
            CONTENTION.to_vec()
        } else {
            w.default_threads().to_vec()
        };
        for t in threads {
            if let Err(e) = w.check_threads(t) {
                eprintln!("note: skipping {e}");
                continue;
            }
            let scale = common.scale * if common.quick { QUICK_SCALE } else { 1.0 };
            // Producer/consumer pairs share the work by pairs, the others by threads.
            let sharers = if w == Workload::Prodcons { t / 2 } else { t };
            let ops = common
                .ops
                .unwrap_or_else(|| {
                    (w.default_ops() as f64 * scale / sharers.max(1) as f64).ceil() as u64
                })
                .max(1);
            cases.push(Case {
                workload: w,
                threads: t,
                ops_per_thread: ops,
            });
        }
    }
    if cases.is_empty() {
        return Err("nothing to run: no workload fits the thread counts asked for".into());
    }
    Ok(cases)
}

/// What one harness measured.
struct Measured {
    /// The machine, read at the start.
    pub machine: Machine,
    /// Medians.
    pub summary: Summary,
    /// Every run.
    pub runs: Vec<runner::Run>,
    /// Runs without a report.
    pub failures: Vec<runner::Failure>,
}

/// Runs the cases on the contenders and prints the tables (see [`compare`]).
fn measure(
    harness: &'static str,
    contenders: Vec<Contender>,
    common: &Common,
    notes: &[String],
) -> Result<Measured, String> {
    let cases = cases(common)?;
    let reps = reps(common);
    if reps == 0 || contenders.is_empty() {
        return Err("nothing to run (no repetitions or no allocators)".into());
    }
    let machine = Machine::read();
    println!("{}", machine.describe());
    let names: Vec<String> = contenders.iter().map(|c| c.name().to_string()).collect();
    println!(
        "[{harness}] allocators: {}; {} repetitions, interleaved, each run a child process",
        names.join(", "),
        reps
    );
    for note in notes {
        println!("note: {note}");
    }
    let (runs, failures) = runner::run_all(&contenders, &cases, reps, common.seed);
    // The benchmark itself keeps one or two CPUs busy; more than that means company.
    let load_at_end = machine::load_average();
    if machine.load_at_start > 0.5 || load_at_end > 2.5 {
        println!(
            "note: the machine was busy (load average {:.2} at the start, {load_at_end:.2} at the end): \
             multi-threaded figures are unreliable",
            machine.load_at_start
        );
    }
    let summary = Summary::new(harness, &names, &cases, &runs);
    print!("{}", summary.render());
    for f in &failures {
        println!(
            "failed: {} on {}@{}: {}",
            f.allocator,
            f.case.workload.name(),
            f.case.threads,
            f.error
        );
    }
    Ok(Measured {
        machine,
        summary,
        runs,
        failures,
    })
}

fn compare(
    harness: &'static str,
    contenders: Vec<Contender>,
    common: &Common,
    notes: Vec<String>,
) -> ExitCode {
    let Measured {
        machine,
        summary,
        runs,
        failures,
    } = match measure(harness, contenders, common, &notes) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("allocscope-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let jsonl = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/compare-{harness}.jsonl")));
    let csv = jsonl.with_extension("csv");
    match report::write_files(
        &jsonl,
        &csv,
        &machine,
        &summary,
        &runs,
        &failures,
        common.seed,
    ) {
        Ok(()) => println!("\nresults: {} and {}", jsonl.display(), csv.display()),
        Err(e) => {
            eprintln!("allocscope-bench: cannot write {}: {e}", jsonl.display());
            return ExitCode::FAILURE;
        }
    }
    if runs.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! Runs the plan: every (workload, threads) case on every contender, each run in a child process,
//! interleaved — for each repetition, each case, every contender in turn (A B C D, then
//! B C D A, ...), so slow drift of a shared machine spreads over all contenders alike and no
//! contender always runs right after the same one.
//!
//! May touch: child processes, stderr (progress), [`crate::child`] (the report they print).

use std::path::PathBuf;
use std::process::Command;

use crate::allocator::RustAllocator;
use crate::child::Report;
use crate::preload::Preload;
use crate::workload::Workload;

/// An allocator under test and how to start a child that measures it.
#[derive(Clone, Debug)]
pub enum Contender {
    /// An allocator linked into this binary, measured by re-running it as a child.
    Rust(RustAllocator),
    /// The C program, run with a library in `LD_PRELOAD` (or none).
    C {
        /// The C workloads program (benches/c/workloads.c, built).
        program: PathBuf,
        /// The allocator to preload.
        preload: Preload,
    },
}

impl Contender {
    /// The allocator's name.
    pub fn name(&self) -> &str {
        match self {
            Contender::Rust(a) => a.name(),
            Contender::C { preload, .. } => &preload.name,
        }
    }

    /// The harness the contender runs in: `rust` or `c`.
    pub fn harness(&self) -> &'static str {
        match self {
            Contender::Rust(_) => "rust",
            Contender::C { .. } => "c",
        }
    }

    fn command(&self, case: Case, seed: u64) -> Result<Command, String> {
        let args = [
            case.workload.name().to_string(),
            case.threads.to_string(),
            case.ops_per_thread.to_string(),
            seed.to_string(),
        ];
        match self {
            Contender::Rust(a) => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this program to re-run it: {e}"))?;
                let mut cmd = Command::new(exe);
                cmd.args(["child", a.name()]).args(args);
                Ok(cmd)
            }
            Contender::C { program, preload } => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                match &preload.lib {
                    Some(lib) => cmd.env("LD_PRELOAD", lib),
                    None => cmd.env_remove("LD_PRELOAD"),
                };
                Ok(cmd)
            }
        }
    }
}

/// A workload at a thread count with its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// The allocation pattern.
    pub workload: Workload,
    /// Threads (for producer/consumer: producers plus consumers).
    pub threads: usize,
    /// Replacements, burst slots or batch slots per thread (per producer).
    pub ops_per_thread: u64,
}

/// One measured run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// `rust` or `c`.
    pub harness: &'static str,
    /// The allocator's name.
    pub allocator: String,
    /// What was run.
    pub case: Case,
    /// Repetition number, from 0.
    pub rep: u32,
    /// What the child reported.
    pub report: Report,
}

impl Run {
    /// Nanoseconds per malloc+free pair (wall time over all threads' pairs).
    pub fn ns_per_op(&self) -> f64 {
        self.report.seconds * 1e9 / self.report.pairs.max(1) as f64
    }
}

/// A run that did not give a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The allocator's name.
    pub allocator: String,
    /// What was run.
    pub case: Case,
    /// Why: exit status, signal, or the child's last words.
    pub error: String,
}

/// Runs every case on every contender `reps` times, interleaved; `seed` seeds every run alike.
pub fn run_all(
    contenders: &[Contender],
    cases: &[Case],
    reps: u32,
    seed: u64,
) -> (Vec<Run>, Vec<Failure>) {
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for rep in 0..reps {
        eprint!("repetition {}/{reps}:", rep + 1);
        for &case in cases {
            eprint!(" {}@{}", case.workload.name(), case.threads);
            for i in 0..contenders.len() {
                let contender = &contenders[(i + rep as usize) % contenders.len()];
                match run_one(contender, case, seed) {
                    Ok(report) => runs.push(Run {
                        harness: contender.harness(),
                        allocator: contender.name().to_string(),
                        case,
                        rep,
                        report,
                    }),
                    Err(error) => failures.push(Failure {
                        allocator: contender.name().to_string(),
                        case,
                        error,
                    }),
                }
            }
        }
        eprintln!();
    }
    (runs, failures)
}

fn run_one(contender: &Contender, case: Case, seed: u64) -> Result<Report, String> {
    let out = contender
        .command(case, seed)?
        .output()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    if !out.status.success() {
        return Err(crate::child::failure("child", out.status, &out.stderr));
    }
    Report::parse(&String::from_utf8_lossy(&out.stdout))
}

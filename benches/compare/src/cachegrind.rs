//! Cache behaviour per allocation, from cachegrind's simulation — the source that works
//! everywhere, beside the hardware counters of [`crate::counters`] where the kernel exposes
//! them (it does not on the virtual machines this was written on): the C program runs under `valgrind --tool=cachegrind --cache-sim=yes` with
//! each preload library, single-threaded, at two lengths; the difference of the two runs'
//! counts over the difference of their pairs gives instructions, data references, D1 misses and
//! last-level data misses per malloc+free pair, with start-up and exit subtracted out.
//! Cachegrind does not model a TLB. One run per case: the simulation is deterministic (two runs
//! of the same case differ by a handful of instructions out of millions), so repetitions and
//! medians would only repeat it.
//!
//! May touch: child processes (valgrind).

use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::child::Report;
use crate::preload::Preload;

/// The counters read from cachegrind's summary, by the label it prints.
const COUNTERS: [(&str, &str); 4] = [
    ("I   refs:", "instructions"),
    ("D   refs:", "data_refs"),
    ("D1  misses:", "d1_misses"),
    ("LLd misses:", "lld_misses"),
];

/// Pairs of the shorter run; the longer does twice as many.
const OPS: u64 = 100_000;

/// Whether valgrind is installed.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Counters per pair for every preload on every workload in `workloads`.
pub fn run(program: &Path, preloads: &[Preload], workloads: &[&str]) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let mut out = Map::new();
    for &w in workloads {
        eprint!("cachegrind {w}:");
        let mut row = Map::new();
        for p in preloads {
            eprint!(" {}", p.name);
            match per_pair(program, p, w) {
                Ok(v) => {
                    row.insert(p.name.clone(), v);
                }
                Err(e) => notes.push(format!("cachegrind {w} on {}: {e}", p.name)),
            }
        }
        eprintln!();
        out.insert(w.to_string(), Value::Object(row));
    }
    (Value::Object(out), notes)
}

fn per_pair(program: &Path, p: &Preload, workload: &str) -> Result<Value, String> {
    let (short, pairs_short) = counts(program, p, workload, OPS)?;
    let (long, pairs_long) = counts(program, p, workload, 2 * OPS)?;
    let pairs = pairs_long.saturating_sub(pairs_short).max(1) as f64;
    let mut v = Map::new();
    for (i, (_, name)) in COUNTERS.iter().enumerate() {
        v.insert(
            name.to_string(),
            json!((long[i] - short[i]).max(0.0) / pairs),
        );
    }
    Ok(Value::Object(v))
}

fn counts(
    program: &Path,
    p: &Preload,
    workload: &str,
    ops: u64,
) -> Result<(Vec<f64>, u64), String> {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=cachegrind",
        "--cache-sim=yes",
        "--cachegrind-out-file=/dev/null",
    ])
    .arg(program)
    .args([workload, "1", &ops.to_string(), "42"]);
    match &p.lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !out.status.success() {
        // The program's own last words, not valgrind's `==pid==` commentary.
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .rfind(|l| !l.starts_with("==") && !l.starts_with("--") && !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!("valgrind failed ({}): {why}", out.status));
    }
    let report = Report::parse(&String::from_utf8_lossy(&out.stdout))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let values = COUNTERS
        .iter()
        .map(|(label, _)| parse_counter(&stderr, label))
        .collect::<Result<Vec<f64>, String>>()?;
    Ok((values, report.pairs))
}

/// The first number after `label` in cachegrind's summary (`==1== D1  misses:  1,234 ( ...`).
fn parse_counter(summary: &str, label: &str) -> Result<f64, String> {
    summary
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .ok_or_else(|| format!("no '{label}' in cachegrind's summary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_a_summary() {
        let s = "==9== I   refs:      1,234,567\n==9== D1  misses:        4,321  (  3,000 rd   +   1,321 wr)\n";
        assert_eq!(parse_counter(s, "I   refs:"), Ok(1_234_567.0));
        assert_eq!(parse_counter(s, "D1  misses:"), Ok(4321.0));
        assert!(parse_counter(s, "LLd misses:").is_err());
    }
}

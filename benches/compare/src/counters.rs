//! Cache and TLB misses per malloc+free pair from the CPU's hardware performance counters, read
//! with `perf stat`, where the kernel lets this process read them: the C program runs under each
//! preload library, single-threaded, at two lengths, and the difference of the two runs' counts
//! over the difference of their pairs gives each event per pair, with start-up and exit
//! subtracted out; repetitions are interleaved across the allocators and the medians kept.
//!
//! Whether counters are there is decided by `perf stat -e instructions true` counting something:
//! on most virtual machines (and under `perf_event_paranoid` settings that forbid it) every event
//! reads `<not supported>` or perf refuses, and the suite says so — cachegrind
//! ([`crate::cachegrind`]) is then the only source of cache figures and TLB misses are not
//! available at all, since cachegrind does not model a TLB.
//!
//! May touch: child processes (perf, the C program), one scratch file per run in the temp dir.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

use crate::child::Report;
use crate::preload::Preload;
use crate::report::median;

/// The events asked for (perf's generic names) and their keys in the result file.
pub const EVENTS: [(&str, &str); 6] = [
    ("instructions", "instructions"),
    ("L1-dcache-load-misses", "l1d_load_misses"),
    ("LLC-load-misses", "llc_load_misses"),
    ("dTLB-load-misses", "dtlb_load_misses"),
    ("dTLB-store-misses", "dtlb_store_misses"),
    ("iTLB-load-misses", "itlb_load_misses"),
];

/// Pairs of the shorter run; the longer does twice as many.
const OPS: u64 = 500_000;

/// Whether hardware counters can be read here: `Ok` when `perf stat -e instructions true`
/// counted instructions, else why not (in words for the report).
pub fn available() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "instructions", "--", "true"])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("perf is not installed or cannot run ({e})"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let why = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("perf stat failed ({}): {}", out.status, why.trim()));
    }
    match parse_csv(&text).get("instructions") {
        Some(Ok(n)) if *n > 0.0 => Ok(()),
        Some(Err(why)) => Err(format!(
            "`perf stat -e instructions true` says {why}: the kernel exposes no hardware \
             counters to this machine"
        )),
        _ => Err("`perf stat -e instructions true` counted no instructions".into()),
    }
}

/// perf's CSV output (`perf stat -x ,`): event name (without `:u`-style modifiers) → its count,
/// or the placeholder perf printed instead (`<not supported>`, `<not counted>`).
pub fn parse_csv(text: &str) -> BTreeMap<String, Result<f64, String>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 || f[2].is_empty() {
            continue;
        }
        let event = f[2].split(':').next().unwrap_or(f[2]).to_string();
        let value = f[0]
            .trim()
            .parse::<f64>()
            .map_err(|_| f[0].trim().to_string());
        out.insert(event, value);
    }
    out
}

/// Every event per pair for every preload on every workload in `workloads`, `reps` times
/// interleaved, medians; notes on what failed or was not supported.
pub fn run(
    program: &Path,
    preloads: &[Preload],
    workloads: &[&str],
    reps: u32,
) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let mut out = Map::new();
    let mut unsupported: Vec<String> = Vec::new();
    for &w in workloads {
        eprint!("hardware counters {w}:");
        let mut got: Vec<Vec<BTreeMap<String, f64>>> = vec![Vec::new(); preloads.len()];
        for rep in 0..reps.max(1) as usize {
            for i in 0..preloads.len() {
                let k = (i + rep) % preloads.len();
                match per_pair(program, &preloads[k], w, &mut unsupported) {
                    Ok(v) => got[k].push(v),
                    Err(e) => notes.push(format!("perf stat {w} on {}: {e}", preloads[k].name)),
                }
            }
            eprint!(" {}", rep + 1);
        }
        eprintln!();
        let mut row = Map::new();
        for (p, runs) in preloads.iter().zip(got) {
            if runs.is_empty() {
                continue;
            }
            let mut v = Map::new();
            for (_, key) in EVENTS {
                let xs: Vec<f64> = runs.iter().filter_map(|r| r.get(key).copied()).collect();
                if !xs.is_empty() {
                    v.insert(key.to_string(), json!(median(xs)));
                }
            }
            v.insert("runs".into(), json!(runs.len()));
            row.insert(p.name.clone(), Value::Object(v));
        }
        out.insert(w.to_string(), Value::Object(row));
    }
    unsupported.sort();
    unsupported.dedup();
    for u in unsupported {
        notes.push(format!("perf stat: {u}"));
    }
    notes.dedup();
    let events: Vec<&str> = EVENTS.iter().map(|e| e.0).collect();
    let v = json!({
        "available": true,
        "source": "perf stat (hardware counters)",
        "events": events,
        "ops": [OPS, 2 * OPS],
        "workloads": out,
    });
    (v, notes)
}

/// The JSON the suite records when counters cannot be read.
pub fn unavailable(why: &str) -> Value {
    json!({ "available": false, "why": why })
}

fn per_pair(
    program: &Path,
    p: &Preload,
    workload: &str,
    unsupported: &mut Vec<String>,
) -> Result<BTreeMap<String, f64>, String> {
    let (short, pairs_short) = counts(program, p, workload, OPS, unsupported)?;
    let (long, pairs_long) = counts(program, p, workload, 2 * OPS, unsupported)?;
    let pairs = pairs_long.saturating_sub(pairs_short).max(1) as f64;
    Ok(EVENTS
        .iter()
        .filter_map(|(_, key)| {
            let (a, b) = (short.get(*key)?, long.get(*key)?);
            Some((key.to_string(), (b - a).max(0.0) / pairs))
        })
        .collect())
}

/// One run under `perf stat`: the counts by result key (events perf could not count left out,
/// and named in `unsupported`) and the pairs the program reported.
fn counts(
    program: &Path,
    p: &Preload,
    workload: &str,
    ops: u64,
    unsupported: &mut Vec<String>,
) -> Result<(BTreeMap<String, f64>, u64), String> {
    let file = std::env::temp_dir().join(format!(
        "allocscope-perf-{}-{workload}-{ops}.csv",
        std::process::id()
    ));
    let events: Vec<&str> = EVENTS.iter().map(|e| e.0).collect();
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x", ",", "-e", &events.join(","), "-o"])
        .arg(&file)
        .arg("--")
        // The preload goes to the program only, through env, so perf itself runs on glibc.
        .arg("env");
    if let Some(lib) = &p.lib {
        cmd.arg(format!("LD_PRELOAD={}", lib.display()));
    }
    cmd.arg(program)
        .args([workload, "1", &ops.to_string(), "42"])
        .env_remove("LD_PRELOAD");
    let out = cmd.output().map_err(|e| format!("cannot run perf: {e}"))?;
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        return Err(crate::child::failure("perf stat", out.status, &out.stderr));
    }
    let report = Report::parse(&String::from_utf8_lossy(&out.stdout))?;
    let parsed = parse_csv(&text);
    let mut values = BTreeMap::new();
    for (event, key) in EVENTS {
        match parsed.get(event) {
            Some(Ok(n)) => {
                values.insert(key.to_string(), *n);
            }
            Some(Err(why)) => unsupported.push(format!("{event} {why}")),
            None => unsupported.push(format!("{event} not in perf's output")),
        }
    }
    Ok((values, report.pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_read_with_placeholders_kept_apart() {
        let text = "# started on Tue Dec  1 20:00:00 2026\n\n\
                    1234567,,instructions:u,1000,100.00,,\n\
                    <not supported>,,dTLB-load-misses,0,100.00,,\n\
                    <not counted>,,iTLB-load-misses,0,0.00,,\n\
                    42,,L1-dcache-load-misses,1000,66.67,,\n";
        let m = parse_csv(text);
        assert_eq!(m["instructions"], Ok(1_234_567.0));
        assert_eq!(m["L1-dcache-load-misses"], Ok(42.0));
        assert_eq!(m["dTLB-load-misses"], Err("<not supported>".to_string()));
        assert_eq!(m["iTLB-load-misses"], Err("<not counted>".to_string()));
        assert_eq!(m.len(), 4);
    }
}

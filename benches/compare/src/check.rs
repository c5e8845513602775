//! The regression check: compares a new suite run with a saved baseline by ratios — allocscope's
//! time over each peer's, measured in the same run — since absolute times on a shared machine
//! are noise. Per harness and peer it takes the geometric mean over the cases both runs have of
//! (new ratio ÷ baseline ratio); above 1 + margin for any peer, allocscope got slower and the
//! check fails.
//!
//! May touch: the two result files it reads, stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::report::geomean;

/// What `check` takes.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A saved suite result file to compare against.
    #[arg(long)]
    baseline: PathBuf,
    /// The new run's result file.
    #[arg(long, default_value = "bench-results/suite.json")]
    current: PathBuf,
    /// How much slower relative to the peers allocscope may get (0.10: 10%).
    #[arg(long, default_value_t = 0.10)]
    margin: f64,
}

/// The allocator the check is about.
const ME: &str = "allocscope";

/// (harness, peer, workload@threads) → allocscope's ns/op ÷ the peer's, from a suite file.
pub fn ratios(suite: &Value) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    let Some(harnesses) = suite["throughput"].as_object() else {
        return out;
    };
    for (harness, h) in harnesses {
        let mut ns: BTreeMap<(String, String), f64> = BTreeMap::new();
        for m in h["medians"].as_array().into_iter().flatten() {
            let (Some(a), Some(w), Some(t), Some(v)) = (
                m["allocator"].as_str(),
                m["workload"].as_str(),
                m["threads"].as_u64(),
                m["ns_per_op"].as_f64(),
            ) else {
                continue;
            };
            ns.insert((a.to_string(), format!("{w}@{t}")), v);
        }
        for ((_, case), &mine) in ns.iter().filter(|((a, _), _)| a == ME) {
            for ((peer, c), &theirs) in &ns {
                if c == case && peer != ME && theirs > 0.0 {
                    out.insert((harness.clone(), peer.clone(), case.clone()), mine / theirs);
                }
            }
        }
    }
    out
}

/// Per (harness, peer): the geometric mean of new ÷ baseline ratios and the worst case.
pub fn compare(baseline: &Value, current: &Value) -> Comparison {
    let (base, now) = (ratios(baseline), ratios(current));
    let mut per_peer: BTreeMap<(String, String), Vec<(f64, String)>> = BTreeMap::new();
    for ((h, p, case), r) in &now {
        if let Some(b) = base.get(&(h.clone(), p.clone(), case.clone())) {
            per_peer
                .entry((h.clone(), p.clone()))
                .or_default()
                .push((r / b, case.clone()));
        }
    }
    per_peer
        .into_iter()
        .filter_map(|(k, v)| {
            let g = geomean(&v.iter().map(|x| x.0).collect::<Vec<_>>())?;
            let worst = v.into_iter().reduce(|a, b| if b.0 > a.0 { b } else { a })?;
            Some((k, (g, worst.0, worst.1)))
        })
        .collect()
}

/// The comparison of [`compare`]: per (harness, peer), the geometric mean of new ÷ baseline
/// ratios, the worst ratio and the case it was measured on.
pub type Comparison = BTreeMap<(String, String), (f64, f64, String)>;

/// The (harness, peer) pairs against which allocscope lost more than `margin` (0.10: its time
/// relative to that peer's grew by more than 10%, as a geometric mean over the shared cases).
/// The check fails when there is any. A single bad case does not fail it on its own: one case
/// is too noisy on a shared machine, and the worst case is printed for the reader.
pub fn regressions(result: &Comparison, margin: f64) -> Vec<(String, String)> {
    result
        .iter()
        .filter(|(_, (g, _, _))| *g > 1.0 + margin)
        .map(|(k, _)| k.clone())
        .collect()
}

/// Runs the check; exit status 1 when allocscope got slower by more than the margin.
pub fn run(args: &CheckArgs) -> ExitCode {
    let read = |p: &PathBuf| -> Result<Value, String> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not a suite file: {e}", p.display()))
    };
    let (base, now) = match (read(&args.baseline), read(&args.current)) {
        (Ok(b), Ok(n)) => (b, n),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("allocscope-bench check: {e}");
            return ExitCode::from(2);
        }
    };
    if args.margin.is_nan() || args.margin < 0.0 {
        eprintln!(
            "allocscope-bench check: --margin {} must be 0 or more",
            args.margin
        );
        return ExitCode::from(2);
    }
    let result = compare(&base, &now);
    if result.is_empty() {
        eprintln!(
            "allocscope-bench check: the two runs share no case measured on allocscope and a peer"
        );
        return ExitCode::from(2);
    }
    let slower = regressions(&result, args.margin);
    println!(
        "allocscope's time ÷ each peer's, new run ÷ baseline (above 1: allocscope lost ground)"
    );
    for (key, (g, worst, at)) in &result {
        let (harness, peer) = key;
        let bad = slower.contains(key);
        println!(
            "  [{harness}] vs {peer:<10} geometric mean {g:.3}, worst {worst:.3} at {at}: {}",
            if bad { "SLOWER" } else { "ok" }
        );
    }
    if !slower.is_empty() {
        println!("check failed: allocscope is slower than the baseline by more than {:.0}% relative to a peer", args.margin * 100.0);
        ExitCode::FAILURE
    } else {
        println!("check passed (margin {:.0}%)", args.margin * 100.0);
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn suite(mine: f64) -> Value {
        json!({"throughput": {"rust": {"medians": [
            {"allocator": "mimalloc", "workload": "random", "threads": 1, "ns_per_op": 10.0},
            {"allocator": "allocscope", "workload": "random", "threads": 1, "ns_per_op": mine},
            {"allocator": "mimalloc", "workload": "larson", "threads": 2, "ns_per_op": 20.0},
            {"allocator": "allocscope", "workload": "larson", "threads": 2, "ns_per_op": 20.0},
        ]}}})
    }

    #[test]
    fn ratios_are_allocscope_over_each_peer_in_the_same_run() {
        let r = ratios(&suite(5.0));
        let key = |c: &str| ("rust".to_string(), "mimalloc".to_string(), c.to_string());
        assert_eq!(r[&key("random@1")], 0.5);
        assert_eq!(r[&key("larson@2")], 1.0);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_slowdown_beyond_the_margin_shows_and_one_within_does_not() {
        let c = compare(&suite(10.0), &suite(14.4));
        let (g, worst, at) = &c[&("rust".to_string(), "mimalloc".to_string())];
        assert!((g - 1.2).abs() < 1e-9, "{g}");
        assert!((worst - 1.44).abs() < 1e-9 && at == "random@1");
        let same = compare(&suite(10.0), &suite(10.0));
        assert!((same.values().next().unwrap().0 - 1.0).abs() < 1e-12);
    }

    /// A suite file with allocscope's and the peers' ns/op per (harness, peer, case).
    fn suite_of(rows: &[(&str, &str, &str, u64, f64)]) -> Value {
        let mut t = serde_json::Map::new();
        for &(h, a, w, threads, ns) in rows {
            let e = t
                .entry(h.to_string())
                .or_insert_with(|| json!({"medians": []}));
            e["medians"].as_array_mut().unwrap().push(json!({
                "allocator": a, "workload": w, "threads": threads, "ns_per_op": ns,
            }));
        }
        json!({ "throughput": t })
    }

    /// Medians of one run: (harness, allocator, ns/op), all on random@1.
    type Run = [(&'static str, &'static str, f64); 5];

    const BASE: Run = [
        ("c", "allocscope", 10.0),
        ("c", "glibc", 20.0),
        ("c", "mimalloc", 10.0),
        ("rust", "allocscope", 10.0),
        ("rust", "mimalloc", 10.0),
    ];

    fn on_random(run: Run) -> Value {
        let rows: Vec<_> = run
            .iter()
            .map(|&(h, a, ns)| (h, a, "random", 1, ns))
            .collect();
        suite_of(&rows)
    }

    #[test]
    fn the_margin_decides_and_each_peer_is_judged_alone() {
        let base = on_random(BASE);
        // The machine got twice as slow for everyone: no regression, whatever the margin.
        let slower_machine = on_random(BASE.map(|(h, a, ns)| (h, a, ns * 2.0)));
        assert!(regressions(&compare(&base, &slower_machine), 0.0).is_empty());
        // allocscope 15% slower against mimalloc in C only (glibc got slower too): the C
        // mimalloc pair fails a 10% margin, passes a 20% one; the Rust harness is untouched.
        let mut lost = BASE;
        lost[0].2 = 11.5;
        lost[1].2 = 23.0;
        let c = compare(&base, &on_random(lost));
        assert_eq!(
            regressions(&c, 0.10),
            [("c".to_string(), "mimalloc".to_string())]
        );
        assert!(regressions(&c, 0.20).is_empty());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn only_cases_both_runs_measured_count() {
        let base = suite_of(&[
            ("c", "allocscope", "random", 1, 10.0),
            ("c", "mimalloc", "random", 1, 10.0),
        ]);
        // larson@2 is new (nothing to compare it with), random@1 is unchanged: no regression,
        // and the new case does not enter the geometric mean.
        let now = suite_of(&[
            ("c", "allocscope", "random", 1, 10.0),
            ("c", "mimalloc", "random", 1, 10.0),
            ("c", "allocscope", "larson", 2, 50.0),
            ("c", "mimalloc", "larson", 2, 10.0),
        ]);
        let c = compare(&base, &now);
        assert_eq!(c[&("c".to_string(), "mimalloc".to_string())].2, "random@1");
        assert!(regressions(&c, 0.10).is_empty());
        // A peer the baseline never measured is not compared at all.
        let other = suite_of(&[
            ("c", "allocscope", "random", 1, 10.0),
            ("c", "tcmalloc", "random", 1, 10.0),
        ]);
        assert!(compare(&base, &other).is_empty());
    }
}

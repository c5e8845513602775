//! From runs to what people read: medians per (allocator, workload, threads), the side-by-side
//! table of ns/op and peak RSS, ratios to mimalloc and to the system allocator with their
//! geometric means, issue 2's bar for allocscope, and the result files (JSON lines of every run
//! and the medians, CSV of the medians).
//!
//! May touch: the output stream and the result files it is given.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

use crate::machine::Machine;
use crate::runner::{Case, Failure, Run};
use crate::workload::Workload;

/// The medians of one allocator's runs of one case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Median nanoseconds per malloc+free pair.
    pub ns_per_op: f64,
    /// Median wall-clock seconds.
    pub seconds: f64,
    /// Median peak RSS, KiB.
    pub peak_rss_kib: f64,
    /// Median RSS before the workload, KiB.
    pub base_rss_kib: f64,
    /// Malloc+free pairs per run.
    pub pairs: u64,
    /// How many runs the medians are of.
    pub runs: usize,
}

/// One case's medians, one cell per allocator (`None`: no run of it succeeded).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The case.
    pub case: Case,
    /// Cells in the order of [`Summary::allocators`].
    pub cells: Vec<Option<Cell>>,
}

/// Every case's medians.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// `rust` or `c`.
    pub harness: &'static str,
    /// Allocator names, in column order.
    pub allocators: Vec<String>,
    /// One row per case, in run order.
    pub rows: Vec<Row>,
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The geometric mean of positive `values`; `None` when there are none.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

/// The figure a ratio is taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Nanoseconds per pair.
    Time,
    /// Peak RSS.
    PeakRss,
}

impl Metric {
    fn of(self, cell: &Cell) -> f64 {
        match self {
            Metric::Time => cell.ns_per_op,
            Metric::PeakRss => cell.peak_rss_kib,
        }
    }
}

impl Cell {
    /// Million malloc+free pairs per second over all threads.
    pub fn throughput(&self) -> f64 {
        1e3 / self.ns_per_op
    }
}

/// The relative change of throughput per thread added, from `before` at `from` threads to
/// `now` at `to` threads.
pub fn loss_per_thread(before: f64, from: usize, now: f64, to: usize) -> f64 {
    if to <= from || before <= 0.0 {
        return 0.0;
    }
    (now / before - 1.0) / (to - from) as f64
}

/// The system allocator's name in either harness.
const SYSTEM_NAMES: [&str; 2] = ["system", "glibc"];

impl Summary {
    /// Medians of `runs`, for `allocators` (column order) and `cases` (row order).
    pub fn new(harness: &'static str, allocators: &[String], cases: &[Case], runs: &[Run]) -> Self {
        let rows = cases
            .iter()
            .map(|&case| Row {
                case,
                cells: allocators
                    .iter()
                    .map(|name| {
                        let mine: Vec<&Run> = runs
                            .iter()
                            .filter(|r| r.case == case && &r.allocator == name)
                            .collect();
                        let med =
                            |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
                        (!mine.is_empty()).then(|| Cell {
                            ns_per_op: med(&|r| r.ns_per_op()),
                            seconds: med(&|r| r.report.seconds),
                            peak_rss_kib: med(&|r| r.report.peak_rss_kib as f64),
                            base_rss_kib: med(&|r| r.report.base_rss_kib as f64),
                            pairs: mine[0].report.pairs,
                            runs: mine.len(),
                        })
                    })
                    .collect(),
            })
            .collect();
        Summary {
            harness,
            allocators: allocators.to_vec(),
            rows,
        }
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.allocators.iter().position(|a| a == name)
    }

    fn system_column(&self) -> Option<usize> {
        SYSTEM_NAMES.iter().find_map(|n| self.column(n))
    }

    /// `metric` of column `num` over column `den`, per row (`None` where either is missing).
    pub fn ratios(&self, num: usize, den: usize, metric: Metric) -> Vec<Option<f64>> {
        self.rows
            .iter()
            .map(|row| match (&row.cells[num], &row.cells[den]) {
                (Some(n), Some(d)) if metric.of(d) > 0.0 => Some(metric.of(n) / metric.of(d)),
                _ => None,
            })
            .collect()
    }

    /// The side-by-side table, then the ratio tables and issue 2's bar.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let width = 19;
        let runs = self
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten().map(|c| c.runs))
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "\n[{}] ns per malloc+free pair, peak RSS in MiB (medians of up to {runs} runs)",
            self.harness
        );
        let _ = write!(s, "{:<18}|", "workload@threads");
        for a in &self.allocators {
            let _ = write!(s, "{a:>width$}");
        }
        s.push('\n');
        for row in &self.rows {
            let _ = write!(s, "{:<18}|", case_label(row.case));
            for cell in &row.cells {
                match cell {
                    Some(c) => {
                        let _ = write!(
                            s,
                            // A space first: a time wider than 9 digits must not run into
                            // the previous cell's RSS.
                            " {:>8.1} ns {:>6.1}M",
                            c.ns_per_op,
                            c.peak_rss_kib / 1024.0
                        );
                    }
                    None => {
                        let _ = write!(s, "{:>width$}", "failed");
                    }
                }
            }
            s.push('\n');
        }
        for (title, den, metric) in [
            ("time ÷ mimalloc's", self.column("mimalloc"), Metric::Time),
            (
                "time ÷ the system allocator's",
                self.system_column(),
                Metric::Time,
            ),
            (
                "peak RSS ÷ mimalloc's",
                self.column("mimalloc"),
                Metric::PeakRss,
            ),
        ] {
            if let Some(den) = den {
                self.render_ratios(&mut s, title, den, metric);
            }
        }
        for line in self.bar_check() {
            let _ = writeln!(s, "{line}");
        }
        s.push_str(&self.render_scaling());
        s
    }

    /// Throughput (million pairs per second) of every allocator at every thread count, per
    /// workload measured at more than one, and its change per added thread against the count
    /// before (e.g. -12%/thread: each thread added cost 12% of the throughput).
    pub fn render_scaling(&self) -> String {
        let mut s = String::new();
        let mut workloads: Vec<Workload> = self.rows.iter().map(|r| r.case.workload).collect();
        workloads.dedup();
        for w in workloads {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.case.workload == w).collect();
            if rows.len() < 2 {
                continue;
            }
            let _ = writeln!(
                s,
                "\n[{}] {}: throughput in million pairs/s (change per added thread)",
                self.harness,
                w.name()
            );
            let _ = write!(s, "{:<10}|", "threads");
            for a in &self.allocators {
                let _ = write!(s, "{a:>22}");
            }
            s.push('\n');
            for (i, row) in rows.iter().enumerate() {
                let _ = write!(s, "{:<10}|", row.case.threads);
                for (col, cell) in row.cells.iter().enumerate() {
                    let now = cell.map(|c| c.throughput());
                    let before = i.checked_sub(1).and_then(|j| {
                        rows[j].cells[col].map(|c| (c.throughput(), rows[j].case.threads))
                    });
                    let text = match (now, before) {
                        (Some(t), Some((b, bt))) => format!(
                            "{t:.2} ({:+.0}%/thr)",
                            loss_per_thread(b, bt, t, row.case.threads) * 100.0
                        ),
                        (Some(t), None) => format!("{t:.2}"),
                        _ => "-".to_string(),
                    };
                    let _ = write!(s, "{text:>22}");
                }
                s.push('\n');
            }
        }
        s
    }

    fn render_ratios(&self, s: &mut String, title: &str, den: usize, metric: Metric) {
        let widths: Vec<usize> = self.allocators.iter().map(|a| a.len().max(6) + 2).collect();
        let _ = writeln!(s, "\n[{}] {title} (below 1.00: less)", self.harness);
        let _ = write!(s, "{:<18}|", "workload@threads");
        for (a, w) in self.allocators.iter().zip(&widths) {
            let _ = write!(s, "{a:>w$}");
        }
        s.push('\n');
        let columns: Vec<Vec<Option<f64>>> = (0..self.allocators.len())
            .map(|num| self.ratios(num, den, metric))
            .collect();
        let fmt = |v: Option<f64>, w: usize| match v {
            Some(v) => format!("{v:>w$.2}"),
            None => format!("{:>w$}", "-"),
        };
        for (i, row) in self.rows.iter().enumerate() {
            let _ = write!(s, "{:<18}|", case_label(row.case));
            for (col, &w) in columns.iter().zip(&widths) {
                s.push_str(&fmt(col[i], w));
            }
            s.push('\n');
        }
        for (label, pick) in [
            ("geometric mean", geomean as fn(&[f64]) -> Option<f64>),
            ("worst", |v: &[f64]| v.iter().copied().reduce(f64::max)),
        ] {
            let _ = write!(s, "{label:<18}|");
            for (col, &w) in columns.iter().zip(&widths) {
                let present: Vec<f64> = col.iter().flatten().copied().collect();
                s.push_str(&fmt(pick(&present), w));
            }
            s.push('\n');
        }
    }

    /// Issue 2's bar, line by line, when allocscope, mimalloc and the system allocator were all
    /// measured: time ≤ 1.05× mimalloc's as a geometric mean and ≤ 1.25× everywhere, ≥ 2.5×
    /// faster than the system allocator on the small-size workloads, peak RSS ≤ 1.2× mimalloc's.
    pub fn bar_check(&self) -> Vec<String> {
        let (Some(me), Some(mi), Some(sys)) = (
            self.column("allocscope"),
            self.column("mimalloc"),
            self.system_column(),
        ) else {
            return Vec::new();
        };
        let labelled = |ratios: Vec<Option<f64>>, small_only: bool| -> Vec<(f64, String)> {
            ratios
                .into_iter()
                .zip(&self.rows)
                .filter(|(_, row)| !small_only || row.case.workload.small_sizes())
                .filter_map(|(r, row)| Some((r?, case_label(row.case))))
                .collect()
        };
        let worst = |v: &[(f64, String)]| {
            v.iter()
                .cloned()
                .reduce(|a, b| if b.0 > a.0 { b } else { a })
        };
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut lines = vec![format!(
            "\n[{}] issue 2's bar for allocscope:",
            self.harness
        )];
        let time = labelled(self.ratios(me, mi, Metric::Time), false);
        let times: Vec<f64> = time.iter().map(|t| t.0).collect();
        if let Some(g) = geomean(&times) {
            lines.push(format!(
                "  time ÷ mimalloc's, geometric mean {g:.2} (bar ≤ 1.05): {}",
                verdict(g <= 1.05)
            ));
        }
        if let Some((w, at)) = worst(&time) {
            lines.push(format!(
                "  time ÷ mimalloc's, worst {w:.2} at {at} (bar ≤ 1.25): {}",
                verdict(w <= 1.25)
            ));
        }
        // Speed-up over the system allocator = its time ÷ ours; the worst is the smallest.
        let speedup = labelled(self.ratios(sys, me, Metric::Time), true);
        if let Some((w, at)) = speedup
            .iter()
            .cloned()
            .reduce(|a, b| if b.0 < a.0 { b } else { a })
        {
            lines.push(format!(
                "  speed-up over the system allocator on small sizes, least {w:.2}× at {at} (bar ≥ 2.5×): {}",
                verdict(w >= 2.5)
            ));
        }
        if let Some((w, at)) = worst(&labelled(self.ratios(me, mi, Metric::PeakRss), false)) {
            lines.push(format!(
                "  peak RSS ÷ mimalloc's, worst {w:.2} at {at} (bar ≤ 1.2): {}",
                verdict(w <= 1.2)
            ));
        }
        lines
    }
}

fn case_label(case: Case) -> String {
    format!("{}@{}", case.workload.name(), case.threads)
}

/// Writes every run, every failure and the medians as JSON lines to `jsonl` (a first line
/// describes the machine and the run), and the medians as CSV to `csv`.
pub fn write_files(
    jsonl: &Path,
    csv: &Path,
    machine: &Machine,
    summary: &Summary,
    runs: &[Run],
    failures: &[Failure],
    seed: u64,
) -> io::Result<()> {
    for path in [jsonl, csv] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    let mut out = io::BufWriter::new(std::fs::File::create(jsonl)?);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        out,
        "{}",
        json!({"kind": "machine", "harness": summary.harness, "unix_time": started, "seed": seed,
               "machine": machine.to_json()})
    )?;
    for r in runs {
        writeln!(
            out,
            "{}",
            json!({"kind": "run", "harness": r.harness, "allocator": r.allocator,
                   "workload": r.case.workload.name(), "threads": r.case.threads, "rep": r.rep,
                   "ops": r.report.pairs, "seconds": r.report.seconds, "ns_per_op": r.ns_per_op(),
                   "base_rss_kib": r.report.base_rss_kib, "peak_rss_kib": r.report.peak_rss_kib})
        )?;
    }
    for f in failures {
        writeln!(
            out,
            "{}",
            json!({"kind": "failure", "harness": summary.harness, "allocator": f.allocator,
                   "workload": f.case.workload.name(), "threads": f.case.threads, "error": f.error})
        )?;
    }
    let mut table = String::from(
        "harness,allocator,workload,threads,ops,seconds,ns_per_op,peak_rss_kib,base_rss_kib,runs\n",
    );
    for row in &summary.rows {
        for (name, cell) in summary.allocators.iter().zip(&row.cells) {
            let Some(c) = cell else { continue };
            writeln!(
                out,
                "{}",
                json!({"kind": "median", "harness": summary.harness, "allocator": name,
                       "workload": row.case.workload.name(), "threads": row.case.threads,
                       "ops": c.pairs, "seconds": c.seconds, "ns_per_op": c.ns_per_op,
                       "peak_rss_kib": c.peak_rss_kib, "base_rss_kib": c.base_rss_kib,
                       "runs": c.runs})
            )?;
            let _ = writeln!(
                table,
                "{},{name},{},{},{},{:.6},{:.3},{:.0},{:.0},{}",
                summary.harness,
                row.case.workload.name(),
                row.case.threads,
                c.pairs,
                c.seconds,
                c.ns_per_op,
                c.peak_rss_kib,
                c.base_rss_kib,
                c.runs
            );
        }
    }
    out.flush()?;
    std::fs::write(csv, table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::Report;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn loss_per_added_thread() {
        assert!((loss_per_thread(10.0, 1, 15.0, 2) - 0.5).abs() < 1e-12);
        assert!((loss_per_thread(10.0, 2, 8.0, 4) + 0.1).abs() < 1e-12);
        assert_eq!(loss_per_thread(10.0, 2, 8.0, 2), 0.0);
    }

    #[test]
    fn geomean_of_ratios() {
        let g = geomean(&[0.5, 2.0]).unwrap();
        assert!((g - 1.0).abs() < 1e-12, "{g}");
        assert!(geomean(&[]).is_none());
    }

    fn run(allocator: &str, workload: Workload, ns: f64, rss: u64) -> Run {
        Run {
            harness: "rust",
            allocator: allocator.into(),
            case: Case {
                workload,
                threads: 1,
                ops_per_thread: 1000,
            },
            rep: 0,
            report: Report {
                pairs: 1000,
                seconds: ns * 1000.0 / 1e9,
                base_rss_kib: 1000,
                peak_rss_kib: rss,
            },
        }
    }

    fn summary(runs: &[Run]) -> Summary {
        let names: Vec<String> = ["system", "mimalloc", "allocscope"]
            .map(String::from)
            .to_vec();
        let cases: Vec<Case> = [Workload::Random, Workload::Larson]
            .map(|workload| Case {
                workload,
                threads: 1,
                ops_per_thread: 1000,
            })
            .to_vec();
        Summary::new("rust", &names, &cases, runs)
    }

    #[test]
    fn medians_ratios_and_the_bar() {
        let runs = [
            run("system", Workload::Random, 12.0, 3000),
            run("mimalloc", Workload::Random, 4.0, 3000),
            run("allocscope", Workload::Random, 4.0, 3000),
            run("allocscope", Workload::Random, 100.0, 3000),
            run("allocscope", Workload::Random, 2.0, 3000),
            run("system", Workload::Larson, 10.0, 3000),
            run("mimalloc", Workload::Larson, 5.0, 3000),
            run("allocscope", Workload::Larson, 7.5, 4000),
        ];
        let s = summary(&runs);
        let cell = s.rows[0].cells[2].unwrap();
        assert!(
            (cell.ns_per_op - 4.0).abs() < 1e-9,
            "median ignores the outlier"
        );
        assert_eq!(cell.runs, 3);
        let r = s.ratios(2, 1, Metric::Time);
        assert!((r[0].unwrap() - 1.0).abs() < 1e-9 && (r[1].unwrap() - 1.5).abs() < 1e-9);
        let bar = s.bar_check().join("\n");
        assert!(
            bar.contains("worst 1.50 at larson@1 (bar ≤ 1.25): MISSED"),
            "{bar}"
        );
        assert!(
            bar.contains("least 3.00× at random@1 (bar ≥ 2.5×): met"),
            "{bar}"
        );
        assert!(bar.contains("peak RSS ÷ mimalloc's, worst 1.33"), "{bar}");
        let table = s.render();
        assert!(table.contains("random@1"), "{table}");
    }

    /// Runs of `random@1` on system and mimalloc, none of allocscope, and their summary.
    fn system_and_mimalloc_only() -> ([Run; 2], Summary) {
        let runs = [
            run("system", Workload::Random, 12.0, 3000),
            run("mimalloc", Workload::Random, 4.0, 3000),
        ];
        let s = summary(&runs);
        (runs, s)
    }

    #[test]
    fn a_missing_allocator_shows_as_failed_and_drops_out_of_ratios() {
        let (_, s) = system_and_mimalloc_only();
        assert!(s.rows[0].cells[2].is_none());
        assert_eq!(s.ratios(2, 1, Metric::Time)[0], None);
        assert!(s.render().contains("failed"));
    }

    #[test]
    fn result_files_hold_runs_and_medians() {
        let (runs, s) = system_and_mimalloc_only();
        let dir =
            std::env::temp_dir().join(format!("allocscope-bench-test-{}", std::process::id()));
        let (jsonl, csv) = (dir.join("r.jsonl"), dir.join("r.csv"));
        write_files(&jsonl, &csv, &Machine::read(), &s, &runs, &[], 1).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "machine");
        assert_eq!(lines.iter().filter(|l| l["kind"] == "run").count(), 2);
        let med: Vec<_> = lines.iter().filter(|l| l["kind"] == "median").collect();
        assert_eq!(med.len(), 2);
        assert_eq!(med[1]["allocator"], "mimalloc");
        assert!((med[1]["ns_per_op"].as_f64().unwrap() - 4.0).abs() < 1e-9);
        let csv = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("rust,mimalloc,random,1,1000,"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! One measurement per process: the parent starts a child for every (allocator, workload,
//! threads, repetition), so each child's peak RSS belongs to one allocator and no allocator
//! inherits another's heap. This module is both ends of that: what a Rust child does, and the
//! one-line report every child prints — the Rust children and the C program alike.
//!
//! Peak RSS is the child's own `VmHWM` from `/proc/self/status`, not `getrusage`'s `ru_maxrss`,
//! which after a `vfork`+`exec` (how the parent starts children) starts from the parent's peak.
//!
//! May touch: [`crate::allocator`], `/proc/self/status`, stdout.

use crate::allocator::RustAllocator;
use crate::workload::Workload;

/// What a child measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// Malloc+free pairs done over all threads.
    pub pairs: u64,
    /// Wall-clock seconds the workload took.
    pub seconds: f64,
    /// Resident memory just before the workload started (the program itself), KiB.
    pub base_rss_kib: u64,
    /// The process's peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// The first word of the report line.
const TAG: &str = "RESULT";

impl Report {
    /// The report as the line a child prints:
    /// `RESULT pairs=N seconds=F base_rss_kib=N peak_rss_kib=N`.
    pub fn to_line(self) -> String {
        format!(
            "{TAG} pairs={} seconds={:.9} base_rss_kib={} peak_rss_kib={}",
            self.pairs, self.seconds, self.base_rss_kib, self.peak_rss_kib
        )
    }

    /// The report in a child's output (its last `RESULT` line), or why there is none.
    pub fn parse(output: &str) -> Result<Report, String> {
        let line = output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(TAG).filter(|rest| rest.starts_with(' ')))
            .ok_or_else(|| format!("no {TAG} line in the child's output"))?;
        let field = |name: &str| -> Result<&str, String> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("{TAG} line lacks {name}="))
        };
        let bad = |name: &str| format!("{TAG} line has a malformed {name}");
        Ok(Report {
            pairs: field("pairs")?.parse().map_err(|_| bad("pairs"))?,
            seconds: field("seconds")?.parse().map_err(|_| bad("seconds"))?,
            base_rss_kib: field("base_rss_kib")?
                .parse()
                .map_err(|_| bad("base_rss_kib"))?,
            peak_rss_kib: field("peak_rss_kib")?
                .parse()
                .map_err(|_| bad("peak_rss_kib"))?,
        })
    }
}

/// Why a child process failed, for a note: `"{what} failed (exit status): its last stderr line"`.
pub fn failure(what: &str, status: impl std::fmt::Display, stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let last = stderr.lines().next_back().unwrap_or("").trim();
    format!("{what} failed ({status}): {last}")
}

/// A `Vm*` field of `/proc/self/status` in KiB (0 where the file does not exist).
pub fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The Rust child: runs one workload on one allocator in this process and prints its report.
pub fn run(
    allocator: RustAllocator,
    workload: Workload,
    threads: usize,
    ops: u64,
    seed: u64,
) -> Result<Report, String> {
    let base_rss_kib = proc_status_kib("VmRSS");
    let outcome = allocator.run(workload, threads, ops, seed)?;
    Ok(Report {
        pairs: outcome.pairs,
        seconds: outcome.seconds,
        base_rss_kib,
        peak_rss_kib: proc_status_kib("VmHWM"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_its_line() {
        let r = Report {
            pairs: 12345,
            seconds: 0.25,
            base_rss_kib: 2048,
            peak_rss_kib: 8192,
        };
        let out = format!("noise\n{}\ntrailing words\n", r.to_line());
        assert_eq!(Report::parse(&out), Ok(r));
    }

    #[test]
    fn missing_or_malformed_fields_are_errors() {
        assert!(Report::parse("nothing here").is_err());
        assert!(Report::parse("RESULT pairs=1 seconds=x base_rss_kib=1 peak_rss_kib=1").is_err());
        assert!(Report::parse("RESULT pairs=1 seconds=1").is_err());
        assert!(Report::parse("RESULTS pairs=1 seconds=1 base_rss_kib=1 peak_rss_kib=1").is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_at_least_current_rss() {
        let rss = proc_status_kib("VmRSS");
        assert!(rss > 0, "VmRSS not read");
        assert!(proc_status_kib("VmHWM") >= rss);
    }
}

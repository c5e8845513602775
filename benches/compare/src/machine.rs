//! What machine the figures come from: they mean little without it.
//!
//! May touch: `/proc` (read only), `std::thread::available_parallelism`.

use serde_json::{json, Value};

/// The machine, as far as the benchmark needs to describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`), or `unknown`.
    pub cpu_model: String,
    /// Logical CPUs the kernel lists.
    pub logical_cpus: usize,
    /// CPUs this process may run on (affinity, cgroup quota).
    pub usable_cpus: usize,
    /// Memory, KiB (`/proc/meminfo`), 0 when unknown.
    pub mem_total_kib: u64,
    /// Kernel release, or `unknown`.
    pub kernel: String,
    /// The 1-minute load average when the benchmark started: above a few tenths, something
    /// else was running and multi-threaded figures are not to be trusted.
    pub load_at_start: f64,
}

impl Machine {
    /// Reads the running machine.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, name: &str| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| field(l, "model name"))
                .unwrap_or_else(|| "unknown".into()),
            logical_cpus: cpuinfo
                .lines()
                .filter(|l| field(l, "processor").is_some())
                .count(),
            usable_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kib: meminfo
                .lines()
                .find_map(|l| field(l, "MemTotal"))
                .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            load_at_start: load_average(),
        }
    }

    /// One line for the report's head.
    pub fn describe(&self) -> String {
        format!(
            "machine: {}, {} logical CPUs ({} usable), {:.1} GiB, Linux {}, load average {:.2}",
            self.cpu_model,
            self.logical_cpus,
            self.usable_cpus,
            self.mem_total_kib as f64 / (1024.0 * 1024.0),
            self.kernel,
            self.load_at_start
        )
    }

    /// The machine as a JSON object for result files.
    pub fn to_json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "logical_cpus": self.logical_cpus,
            "usable_cpus": self.usable_cpus,
            "mem_total_kib": self.mem_total_kib,
            "kernel": self.kernel,
            "load_at_start": self.load_at_start,
        })
    }
}

/// The 1-minute load average (`/proc/loadavg`), 0 when unknown.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

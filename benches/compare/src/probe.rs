//! Probes that report more than a time — memory and latency — run like the workloads: each in a
//! child process of its own, allocators interleaved, several repetitions, and the medians of
//! every number they report (element-wise in arrays).
//!
//! May touch: child processes (this program, re-run), [`crate::memory`], [`crate::latency`].

use std::process::Command;

use serde_json::{Map, Value};

use crate::allocator::RustAllocator;
use crate::latency::LatencyProbe;
use crate::memory::MemoryProbe;
use crate::report::median;

/// First word of a probe child's report line.
const TAG: &str = "PROBE ";

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`crate::memory`].
    Memory,
    /// [`crate::latency`].
    Latency,
}

impl Kind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Latency => "latency",
        }
    }

    /// The probe named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Memory, Kind::Latency]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// The child's side: runs the probe and prints its line.
pub fn child(kind: Kind, allocator: RustAllocator, ops: u64, seed: u64) -> Result<String, String> {
    let v = match kind {
        Kind::Memory => allocator.with(MemoryProbe(seed))?,
        Kind::Latency => allocator.with(LatencyProbe(ops, seed))?,
    };
    Ok(format!("{TAG}{v}"))
}

/// The parent's side: every allocator `reps` times, interleaved; the medians per allocator (an
/// allocator whose runs all failed maps to an object with its last error).
pub fn run(
    kind: Kind,
    allocators: &[RustAllocator],
    reps: u32,
    ops: u64,
    seed: u64,
) -> Map<String, Value> {
    let mut got: Vec<Vec<Value>> = vec![Vec::new(); allocators.len()];
    let mut errors: Vec<Option<String>> = vec![None; allocators.len()];
    eprint!("{} probe:", kind.name());
    for rep in 0..reps as usize {
        for i in 0..allocators.len() {
            let k = (i + rep) % allocators.len();
            eprint!(" {}", allocators[k].name());
            match run_one(kind, allocators[k], ops, seed) {
                Ok(v) => got[k].push(v),
                Err(e) => errors[k] = Some(e),
            }
        }
    }
    eprintln!();
    allocators
        .iter()
        .zip(got.iter().zip(errors))
        .map(|(a, (vals, err))| {
            let v = if vals.is_empty() {
                serde_json::json!({ "error": err.unwrap_or_default() })
            } else {
                median_json(vals)
            };
            (a.name().to_string(), v)
        })
        .collect()
}

fn run_one(kind: Kind, a: RustAllocator, ops: u64, seed: u64) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let out = Command::new(exe)
        .args(["probe-child", kind.name(), a.name()])
        .args([ops.to_string(), seed.to_string()])
        .output()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    if !out.status.success() {
        return Err(crate::child::failure("child", out.status, &out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(TAG))
        .ok_or("no PROBE line in the child's output")?;
    serde_json::from_str(line).map_err(|e| format!("malformed PROBE line: {e}"))
}

/// The median of every number at the same place in `values` (which share a shape); other leaves
/// are taken from the first.
pub fn median_json(values: &[Value]) -> Value {
    match &values[0] {
        Value::Number(_) => {
            let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            serde_json::json!(median(nums))
        }
        Value::Array(first) => Value::Array(
            (0..first.len())
                .map(|i| {
                    let at: Vec<Value> = values.iter().filter_map(|v| v.get(i).cloned()).collect();
                    median_json(&at)
                })
                .collect(),
        ),
        Value::Object(first) => Value::Object(
            first
                .keys()
                .map(|k| {
                    let at: Vec<Value> = values.iter().filter_map(|v| v.get(k).cloned()).collect();
                    (k.clone(), median_json(&at))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians_are_taken_leaf_by_leaf() {
        let vals = [
            json!({"a": 1.0, "b": [1, 10], "t": "x"}),
            json!({"a": 3.0, "b": [2, 30], "t": "x"}),
            json!({"a": 100.0, "b": [3, 20], "t": "x"}),
        ];
        let m = median_json(&vals);
        assert_eq!(m["a"], json!(3.0));
        assert_eq!(m["b"], json!([2.0, 20.0]));
        assert_eq!(m["t"], json!("x"));
    }
}

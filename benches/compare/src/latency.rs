//! The latency probe: the time of every single allocation and free, in an HDR histogram, so the
//! tail (slow paths: refills, page faults, system calls) shows beside the median. One thread
//! replaces blocks at random in a window of 4096: Pareto-distributed sizes of 8 B–1 KiB, and
//! one operation in 64 a block of 1–256 KiB, so the medium and large paths are sampled too.
//!
//! The timer is the time-stamp counter (`lfence; rdtsc`, invariant on every x86_64 this runs on),
//! calibrated against `Instant` over 20 ms; elsewhere `Instant::now` (tens of ns of its own).
//! The timer's own cost (the smallest back-to-back difference) is reported, not subtracted.
//!
//! May touch: the allocator it is given, the clock.

use std::alloc::GlobalAlloc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::allocator::WithAlloc;
use crate::patterns::pareto_size;
use crate::rng::Rng;
use crate::workload::{alloc_touched, free};

/// Blocks live at once.
const WINDOW: usize = 4096;
/// Every this many operations the new block is a large one.
const LARGE_EVERY: u64 = 64;
/// Quantiles the distribution plot is drawn through.
pub const QUANTILES: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0];

/// The probe, for [`crate::allocator::RustAllocator::with`]: `ops` replacements, `seed`.
pub struct LatencyProbe(pub u64, pub u64);

impl WithAlloc for LatencyProbe {
    type Out = Result<Value, String>;
    fn call<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
        probe(a, self.0, self.1)
    }
}

/// Ticks of the timer.
#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // lfence first: rdtsc alone may run before the operation it should follow ends.
        // SAFETY: lfence (SSE2) and rdtsc exist on every x86_64 CPU; neither touches memory.
        unsafe {
            core::arch::x86_64::_mm_lfence();
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// The timer's name in the report.
pub const TIMER: &str = if cfg!(target_arch = "x86_64") {
    "lfence+rdtsc (calibrated against Instant)"
} else {
    "Instant::now"
};

/// Nanoseconds per tick, measured over 20 ms.
fn ns_per_tick() -> f64 {
    let (t0, c0) = (Instant::now(), ticks());
    while t0.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    let (ns, c) = (t0.elapsed().as_nanos() as f64, ticks() - c0);
    ns / c.max(1) as f64
}

fn histogram() -> Result<Histogram<u64>, String> {
    // Bounds wide enough for any pause (2^40 ticks: minutes); `saturating_record` would clamp
    // at the top of an auto-resizing histogram's current range instead of growing it.
    Histogram::new_with_bounds(1, 1 << 40, 3).map_err(|e| format!("cannot make a histogram: {e}"))
}

fn probe<A: GlobalAlloc>(a: &A, ops: u64, seed: u64) -> Result<Value, String> {
    let ns = ns_per_tick();
    let mut rng = Rng::new(seed);
    let (mut allocs, mut frees) = (histogram()?, histogram()?);
    let overhead = (0..1000)
        .map(|_| {
            let t = ticks();
            ticks() - t
        })
        .min()
        .unwrap_or(0);
    let mut slots = Vec::with_capacity(WINDOW);
    for _ in 0..WINDOW {
        let size = pareto_size(&mut rng);
        slots.push((alloc_touched(a, size, 1)?, size));
    }
    for i in 0..ops {
        let k = rng.below(WINDOW);
        let (p, old) = slots[k];
        let size = if i % LARGE_EVERY == 0 {
            rng.between(1 << 10, 256 << 10)
        } else {
            pareto_size(&mut rng)
        };
        let t0 = ticks();
        // SAFETY: slot k holds a live block of `old` bytes, replaced right below.
        unsafe { free(a, p, old) };
        let t1 = ticks();
        let q = alloc_touched(a, size, i as u8)?;
        let t2 = ticks();
        slots[k] = (q, size);
        frees.saturating_record(t1.saturating_sub(t0));
        allocs.saturating_record(t2.saturating_sub(t1));
    }
    for (p, size) in slots {
        // SAFETY: every slot holds a live block of its size.
        unsafe { free(a, p, size) };
    }
    let summary = |h: &Histogram<u64>| {
        let at = |q: f64| h.value_at_quantile(q) as f64 * ns;
        json!({
            "min": h.min() as f64 * ns, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "p999": at(0.999), "max": h.max() as f64 * ns,
            "curve": QUANTILES.iter().map(|&q| at(q)).collect::<Vec<f64>>(),
        })
    };
    Ok(json!({
        "timer": TIMER,
        "ns_per_tick": ns,
        "timer_overhead_ns": overhead as f64 * ns,
        "ops": ops,
        "alloc": summary(&allocs),
        "free": summary(&frees),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_the_timer_runs() {
        let v = probe(&std::alloc::System, 20_000, 1).unwrap();
        assert!(v["ns_per_tick"].as_f64().unwrap() > 0.0);
        for side in ["alloc", "free"] {
            let f = |k: &str| v[side][k].as_f64().unwrap();
            assert!(f("min") <= f("p50") && f("p50") <= f("p90") && f("p90") <= f("p99"));
            assert!(f("p99") <= f("p999") && f("p999") <= f("max"), "{v}");
            assert!(f("max") > 0.0, "{side}: no time measured");
        }
    }
}

//! The memory probe: what an allocator costs in resident memory, measured in a child process of
//! its own. It allocates 64 Ki blocks of 16–2048 bytes (about 64 MiB asked for), frees three
//! quarters of them at random, then the rest, and reads `VmRSS` along the way:
//! overhead = resident ÷ requested at the peak, fragmentation = resident ÷ still-requested after
//! the random frees, retained = what stays resident once everything is freed (does memory go back
//! to the OS?), and the RSS after every step for the "RSS over time" plot.
//!
//! May touch: the allocator it is given, `/proc/self/status` (through [`crate::child`]).

use std::alloc::GlobalAlloc;

use serde_json::{json, Value};

use crate::allocator::WithAlloc;
use crate::child::proc_status_kib;
use crate::rng::Rng;
use crate::workload::{alloc_touched, free};

/// Blocks allocated at the peak.
const BLOCKS: usize = 64 * 1024;
/// RSS samples per phase (allocate, random frees, final frees).
const SAMPLES_PER_PHASE: usize = 16;

/// The probe, for [`crate::allocator::RustAllocator::with`].
pub struct MemoryProbe(pub u64);

impl WithAlloc for MemoryProbe {
    type Out = Result<Value, String>;
    fn call<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
        probe(a, self.0)
    }
}

fn probe<A: GlobalAlloc>(a: &A, seed: u64) -> Result<Value, String> {
    let mut rng = Rng::new(seed);
    let mut timeline = Vec::with_capacity(3 * SAMPLES_PER_PHASE + 1);
    let base = proc_status_kib("VmRSS");
    let rss = || proc_status_kib("VmRSS").saturating_sub(base);
    timeline.push(rss());
    let step = BLOCKS / SAMPLES_PER_PHASE;
    let mut blocks = Vec::with_capacity(BLOCKS);
    let mut requested = 0usize;
    for i in 0..BLOCKS {
        let size = rng.between(16, 2048);
        // Every byte written, so the whole block is resident as a program's data would be.
        let p = alloc_touched(a, size, 1)?;
        // SAFETY: `p` is a fresh block of `size` bytes.
        unsafe { p.write_bytes(7, size) };
        requested += size;
        blocks.push(Some((p, size)));
        if (i + 1) % step == 0 {
            timeline.push(rss());
        }
    }
    let at_peak = rss();
    let peak_requested = requested;
    // Three quarters freed at random positions: the survivors pin pages all over the heap.
    let mut order: Vec<usize> = (0..BLOCKS).collect();
    for i in (1..BLOCKS).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (freed, kept) = order.split_at(BLOCKS * 3 / 4);
    for (n, &k) in freed.iter().enumerate() {
        if let Some((p, size)) = blocks[k].take() {
            // SAFETY: each index is freed once (`take`), the block live until now.
            unsafe { free(a, p, size) };
            requested -= size;
        }
        if (n + 1) % (freed.len() / SAMPLES_PER_PHASE) == 0 {
            timeline.push(rss());
        }
    }
    let after_random_frees = rss();
    let live_requested = requested;
    for (n, &k) in kept.iter().enumerate() {
        if let Some((p, size)) = blocks[k].take() {
            // SAFETY: as above.
            unsafe { free(a, p, size) };
        }
        if (n + 1) % (kept.len() / SAMPLES_PER_PHASE) == 0 {
            timeline.push(rss());
        }
    }
    let retained = rss();
    let peak = proc_status_kib("VmHWM").saturating_sub(base);
    Ok(json!({
        "requested_kib": peak_requested / 1024,
        "rss_at_peak_kib": at_peak,
        "overhead": at_peak as f64 * 1024.0 / peak_requested as f64,
        "fragmentation": after_random_frees as f64 * 1024.0 / live_requested.max(1) as f64,
        "retained_kib": retained,
        "retained_share": retained as f64 / at_peak.max(1) as f64,
        "peak_rss_kib": peak,
        "timeline_kib": timeline,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reports_sane_ratios_on_the_system_allocator() {
        let v = probe(&std::alloc::System, 1).unwrap();
        let overhead = v["overhead"].as_f64().unwrap();
        assert!(overhead > 0.9, "resident below what was written: {v}");
        assert!(v["fragmentation"].as_f64().unwrap() >= 1.0, "{v}");
        assert_eq!(
            v["timeline_kib"].as_array().unwrap().len(),
            3 * SAMPLES_PER_PHASE + 1
        );
        assert!(v["peak_rss_kib"].as_u64().unwrap() >= v["rss_at_peak_kib"].as_u64().unwrap());
    }
}

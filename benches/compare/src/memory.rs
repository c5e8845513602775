//! The memory probe: what an allocator costs in resident memory, measured in a child process of
//! its own. It allocates 64 Ki blocks of 16–2048 bytes (about 64 MiB asked for), frees three
//! quarters of them at random, then the rest, and reads `VmRSS` along the way:
//! overhead = resident ÷ requested at the peak, fragmentation = resident ÷ still-requested after
//! the random frees, retained = what stays resident once everything is freed (does memory go back
//! to the OS?) — right away and after a 200 ms pause and a few more calls — and the RSS after
//! every step for the "RSS over time" plot.
//!
//! May touch: the allocator it is given, `/proc/self/status` (through [`crate::child`]).

use std::alloc::GlobalAlloc;

use serde_json::{json, Value};

use crate::allocator::WithAlloc;
use std::io::Read;

use crate::rng::Rng;
use crate::workload::{alloc_touched, free};

/// Blocks allocated at the peak.
const BLOCKS: usize = 64 * 1024;
/// How long the probe waits after the last free before looking at RSS once more.
const PAUSE_MS: u64 = 200;
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
    let mut timeline = Vec::with_capacity(3 * SAMPLES_PER_PHASE + 2);
    let base = rss_kib();
    let rss = || rss_kib().saturating_sub(base);
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
    // Allocators that give memory back on a delay (mimalloc's purge, jemalloc's decay) do so
    // from a later call: wait, then allocate and free a little, and look again.
    std::thread::sleep(std::time::Duration::from_millis(PAUSE_MS));
    for _ in 0..64 {
        let p = alloc_touched(a, 64, 1)?;
        // SAFETY: `p` is a fresh 64-byte block, not used after.
        unsafe { free(a, p, 64) };
    }
    timeline.push(rss());
    let retained_after_pause = rss();
    let peak = crate::child::proc_status_kib("VmHWM").saturating_sub(base);
    Ok(json!({
        "requested_kib": peak_requested / 1024,
        "rss_at_peak_kib": at_peak,
        "overhead": at_peak as f64 * 1024.0 / peak_requested as f64,
        "fragmentation": after_random_frees as f64 * 1024.0 / live_requested.max(1) as f64,
        "retained_kib": retained,
        "retained_share": retained as f64 / at_peak.max(1) as f64,
        "retained_after_pause_kib": retained_after_pause,
        "peak_rss_kib": peak,
        "timeline_kib": timeline,
    }))
}

/// `VmRSS` in KiB, read into a stack buffer: a heap string here would come from `System`, and
/// when `System` is the allocator measured it would land on top of its heap and keep glibc
/// from giving the heap's end back.
fn rss_kib() -> u64 {
    let mut buf = [0u8; 4096];
    let Ok(mut file) = std::fs::File::open("/proc/self/status") else {
        return 0;
    };
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = std::str::from_utf8(&buf[..len]).unwrap_or("");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_without_the_heap_agrees_with_the_usual_reading() {
        let (a, b) = (rss_kib(), crate::child::proc_status_kib("VmRSS"));
        assert!(a > 0 && a.abs_diff(b) < 4096, "{a} vs {b}");
    }

    #[test]
    fn the_probe_reports_sane_ratios_on_the_system_allocator() {
        let v = probe(&std::alloc::System, 1).unwrap();
        let overhead = v["overhead"].as_f64().unwrap();
        assert!(overhead > 0.9, "resident below what was written: {v}");
        assert!(v["fragmentation"].as_f64().unwrap() >= 1.0, "{v}");
        assert_eq!(
            v["timeline_kib"].as_array().unwrap().len(),
            3 * SAMPLES_PER_PHASE + 2
        );
        assert!(v["peak_rss_kib"].as_u64().unwrap() >= v["rss_at_peak_kib"].as_u64().unwrap());
    }
}

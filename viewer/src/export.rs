//! What leaves the viewer as files: folded stacks (the lingua franca of flamegraph tools), SVG
//! flamegraphs through `inferno`, and DHAT's JSON (opens in DHAT's viewer, `dh_view.html`).
//!
//! May touch: [`crate::model`] (reading), [`crate::symbols`], `inferno`, `serde_json`.

use std::collections::HashMap;
use std::io::{self, Write};

use allocscope_tracker::trace_format::NO_STACK;

use crate::model::{Metric, Profile};
use crate::symbols::{frame_label, frame_name, Symbolizer};

/// Name of the pseudo-frame gathering allocations whose stack was not sampled.
pub const UNSAMPLED: &str = "[not sampled]";

/// One stack's frame names, outermost first (what a flamegraph stacks bottom-up).
pub fn stack_names(profile: &Profile, symbols: &mut Symbolizer, stack: u32) -> Vec<String> {
    if stack == NO_STACK {
        return vec![UNSAMPLED.to_owned()];
    }
    let frames = symbols.stack(profile.frames(stack));
    if frames.is_empty() {
        return vec![format!("[stack {stack}]")];
    }
    frames.iter().rev().map(frame_name).collect()
}

/// Folded stacks (`outer;inner value`), one line per stack with a non-zero `metric`, sorted
/// so that the output is the same for the same trace.
pub fn folded(profile: &Profile, symbols: &mut Symbolizer, metric: Metric) -> Vec<String> {
    let mut merged: HashMap<String, u64> = HashMap::new();
    for (id, stats) in profile.top_stacks(metric) {
        let names: Vec<String> = stack_names(profile, symbols, id)
            .into_iter()
            .map(|n| n.replace(';', ":"))
            .collect();
        *merged.entry(names.join(";")).or_default() += metric.value(&stats);
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .map(|(stack, value)| format!("{stack} {value}"))
        .collect();
    lines.sort();
    lines
}

/// Writes an SVG flamegraph of `metric`. With nothing to draw, writes inferno's "no stack
/// counts" picture rather than failing.
pub fn flamegraph_svg(
    profile: &Profile,
    symbols: &mut Symbolizer,
    metric: Metric,
    out: impl Write,
) -> io::Result<()> {
    let lines = folded(profile, symbols, metric);
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!("allocscope: {} {}", metric.name(), unit_word(metric));
    options.count_name = unit_word(metric).to_owned();
    options.colors =
        inferno::flamegraph::color::Palette::Multi(inferno::flamegraph::color::MultiPalette::Rust);
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| io::Error::other(e.to_string()))
}

fn unit_word(metric: Metric) -> &'static str {
    if metric.is_bytes() {
        "bytes"
    } else {
        "allocations"
    }
}

/// DHAT's JSON (`dhatFileVersion` 2, heap mode), times in microseconds.
pub fn dhat_json(profile: &Profile, symbols: &mut Symbolizer) -> serde_json::Value {
    use serde_json::json;
    let mut ftbl: Vec<String> = vec!["[root]".to_owned()];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut pps = Vec::new();
    let mut ids: Vec<u32> = profile.stack_stats.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let s = &profile.stack_stats[&id];
        let labels: Vec<String> = if id == NO_STACK {
            vec![UNSAMPLED.to_owned()]
        } else {
            symbols
                .stack(profile.frames(id))
                .iter()
                .map(|f| format!("{:#x}: {}", f.address, frame_label(f)))
                .collect()
        };
        // Innermost first, as DHAT lists them.
        let fs: Vec<usize> = labels
            .into_iter()
            .map(|l| {
                *index.entry(l.clone()).or_insert_with(|| {
                    ftbl.push(l);
                    ftbl.len() - 1
                })
            })
            .collect();
        pps.push(json!({
            "tb": s.allocated_bytes,
            "tbk": s.allocated_count,
            "tl": s.freed_lifetime_ns / 1_000,
            "mb": s.max_live_bytes,
            "mbk": s.max_live_count,
            "gb": s.peak_bytes,
            "gbk": 0,
            "eb": s.leaked_bytes,
            "ebk": s.leaked_count,
            "fs": fs,
        }));
    }
    let (cmd, pid) = profile
        .start
        .as_ref()
        .map_or((String::new(), 0), |s| (s.program.clone(), s.pid));
    json!({
        "dhatFileVersion": 2,
        "mode": "rust-heap",
        "verb": "Allocated",
        "bklt": true,
        "bkacc": false,
        "tu": "µs",
        "Mtu": "s",
        "tuth": profile.options.temporary_ns / 1_000,
        "cmd": cmd,
        "pid": pid,
        "te": profile.duration_ns() / 1_000,
        "tg": profile.peak_time_ns / 1_000,
        "pps": pps,
        "ftbl": ftbl,
    })
}

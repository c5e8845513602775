//! The post-mortem report in text (`allocscope report`): how the run ended, the corruption and
//! leak reports, what was still allocated at the end grouped by stack, the peak, and the top
//! allocation sites, every stack symbolised.
//!
//! May touch: [`crate::model`] (reading), [`crate::symbols`].

use std::fmt::Write as _;

use allocscope_tracker::symbolize::format_stack;
use allocscope_tracker::trace_format::{Ending, NO_STACK};

use crate::export::UNSAMPLED;
use crate::model::{format_bytes, format_ns, Metric, Profile};
use crate::symbols::Symbolizer;

/// What the report found, for the command's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Findings {
    /// Corruption reports in the trace.
    pub corruption: usize,
    /// Leak reports in the trace (from the tracker's leak check).
    pub leaks: usize,
}

/// Writes the report; `top` limits each per-stack list.
pub fn write_report(
    out: &mut String,
    profile: &Profile,
    symbols: &mut Symbolizer,
    top: usize,
) -> Findings {
    let program = profile
        .start
        .as_ref()
        .map_or("(unknown program)".to_owned(), |s| {
            format!("{} (pid {})", s.program, s.pid)
        });
    let _ = writeln!(out, "allocscope report: {program}");
    let ending = match (profile.end.is_some(), profile.ending) {
        (_, Some(Ending::Truncated { offset })) => {
            format!("the trace is cut short at byte {offset} (the process was killed?)")
        }
        (true, _) if profile.exec.is_some() => "the process went on as another program (exec); \
            that program's trace, if it was traced, is <this file>.<pid>"
            .to_owned(),
        (true, _) => "the process shut down cleanly".to_owned(),
        (false, _) => "no end marker: the process died before finishing its trace".to_owned(),
    };
    let _ = writeln!(
        out,
        "  duration {}; {}",
        format_ns(profile.duration_ns()),
        ending
    );
    if let Some(s) = &profile.start {
        let _ = writeln!(out, "  options: {}", s.options);
    }
    let _ = writeln!(
        out,
        "  {} events, {} allocations, {} allocated, {} temporary (freed within {})",
        profile.events,
        profile.allocations,
        format_bytes(profile.allocated_bytes),
        profile.temporary_count,
        format_ns(profile.options.temporary_ns)
    );
    let _ = writeln!(
        out,
        "  peak heap: {} at {}",
        format_bytes(profile.peak_bytes),
        format_ns(profile.peak_time_ns)
    );
    let _ = writeln!(
        out,
        "  still allocated at the end: {} in {} blocks",
        format_bytes(profile.leaked_bytes()),
        profile.leaked_count()
    );
    if profile.dropped.events > 0 {
        let _ = writeln!(
            out,
            "  warning: {} events were dropped (the writer fell behind): figures are low",
            profile.dropped.events
        );
    }

    let corruption: Vec<_> = profile.corruption_reports().collect();
    let _ = writeln!(out, "\n== Corruption reports: {} ==", corruption.len());
    for r in &corruption {
        let _ = writeln!(out, "{}", r.text.trim_end());
    }
    let leaks: Vec<_> = profile.leak_reports().collect();
    let _ = writeln!(
        out,
        "\n== Leaks found by the tracker's leak check: {} ==",
        leaks.len()
    );
    for r in &leaks {
        let _ = writeln!(out, "{}", r.text.trim_end());
    }

    let sections = [
        (Metric::Leaked, "Still allocated at the end, by stack"),
        (Metric::Peak, "Live at the peak, by stack"),
        (
            Metric::Allocated,
            "Top allocation sites, by bytes allocated",
        ),
    ];
    for (metric, title) in sections {
        let stacks = profile.top_stacks(metric);
        let _ = writeln!(out, "\n== {title} ({} stacks) ==", stacks.len());
        for (id, s) in stacks.iter().take(top) {
            let (bytes, count) = match metric {
                Metric::Leaked => (s.leaked_bytes, s.leaked_count),
                Metric::Peak => (s.peak_bytes, 0),
                _ => (s.allocated_bytes, s.allocated_count),
            };
            let _ = write!(out, "{}", format_bytes(bytes));
            if count > 0 {
                let _ = write!(out, " in {count} blocks");
            }
            out.push('\n');
            write_stack(out, profile, symbols, *id);
        }
        if stacks.len() > top {
            let _ = writeln!(out, "... and {} more", stacks.len() - top);
        }
    }
    Findings {
        corruption: corruption.len(),
        leaks: leaks.len(),
    }
}

/// A stack, symbolised, in AddressSanitizer's layout.
pub fn write_stack(out: &mut String, profile: &Profile, symbols: &mut Symbolizer, id: u32) {
    if id == NO_STACK {
        let _ = writeln!(out, "    {UNSAMPLED}");
        return;
    }
    let frames = symbols.stack(profile.frames(id));
    if frames.is_empty() {
        let _ = writeln!(out, "    [stack {id} not in the trace]");
    }
    format_stack(out, &frames);
}

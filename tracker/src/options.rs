//! What the tracker does, chosen at run time: parsed from `ALLOCSCOPE_OPTIONS`
//! (`sample=512k,guard=1/1000,canary=16,quarantine=64m,...`, like `MALLOC_CONF` and
//! `ASAN_OPTIONS`) or set in code with [`OptionsBuilder`]. Both end in [`OptionsBuilder::build`],
//! which checks the combination and says in one line what is wrong.
//!
//! May touch: nothing but plain data (and `std::fs` to read a suppressions file when asked).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Name of the environment variable read by trackers created with `Tracker::new()`.
pub const ENV_VAR: &str = "ALLOCSCOPE_OPTIONS";

/// How often allocations go to the guard-page pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardRate {
    /// Never.
    Off,
    /// About one allocation in `n` (randomised so that patterns don't hide bugs).
    OneIn(u32),
    /// Every allocation that fits a slot ("guard everything", for hunting).
    All,
}

/// Which live blocks the leak check reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakCheck {
    /// No leak check at exit (an on-demand check still works).
    Off,
    /// Blocks no pointer reaches from globals, thread stacks or other live memory (LSan-like).
    Unreachable,
    /// Every block still allocated (for programs that free everything before exit).
    All,
}

/// How call stacks are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwinder {
    /// The default. On x86-64 Linux: a walk by frame sizes learnt from earlier DWARF walks
    /// (tens of nanoseconds, with or without frame pointers), checked against DWARF on the
    /// first captures, on every stack not seen before, and then one capture in 4096 per
    /// thread; one disagreement turns the process to DWARF for good, and a stack through code
    /// not seen yet takes DWARF (and teaches it).
    /// Elsewhere: as `Backtrace`.
    Auto,
    /// The `backtrace` crate (DWARF unwind tables): works on any build, costs microseconds.
    Backtrace,
    /// Follows frame pointers: tens of nanoseconds, but needs code built with
    /// `-C force-frame-pointers=yes`; frames without one end the stack early.
    FramePointers,
}

/// The tracker's run-time options. Build with [`Options::builder`] or [`Options::parse`].
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Mean bytes between sampled stacks (exponentially distributed); 1 = every allocation,
    /// 0 = never.
    pub sample_bytes: u64,
    /// How often allocations go to the guard-page pool.
    pub guard: GuardRate,
    /// Slots in the guard-page pool; a freed slot stays inaccessible until all others are used.
    pub guard_slots: usize,
    /// Largest block the pool takes (rounded up to whole pages per slot).
    pub guard_max_size: usize,
    /// Share of guarded blocks placed against the slot's start to catch underflows (0.0–1.0).
    pub guard_underflow_share: f64,
    /// Bytes of red zone before and after each block (0 = no canaries).
    pub canary_bytes: usize,
    /// Bytes of freed blocks held back, poisoned, before reuse (0 = no quarantine).
    pub quarantine_bytes: usize,
    /// Abort the process after the first corruption report instead of ignoring the bad call.
    pub halt_on_error: bool,
    /// Print reports on standard error.
    pub print_reports: bool,
    /// Leak check at exit.
    pub leak_check: LeakCheck,
    /// Leak reports whose stack has a frame containing one of these texts are not printed.
    pub suppressions: Vec<String>,
    /// Check every live block's canaries and the quarantine at exit.
    pub check_at_exit: bool,
    /// Trace file to write (`%p` is replaced by the process id). A path already held by a
    /// running traced process (a program run by a traced shell inherits its options) is not
    /// taken over: the newcomer writes `<path>.<pid>` instead; so does a program exec'd in
    /// place of a traced one (the same pid), and `<path>.<pid>.<n>` the n-th of a process.
    pub trace_path: Option<PathBuf>,
    /// Unix socket to listen on for a live viewer (`%p` is replaced by the process id).
    pub socket_path: Option<PathBuf>,
    /// Interval between heap snapshots in the trace (`None`: none).
    pub snapshot_interval: Option<Duration>,
    /// Events per thread buffer before it is handed to the writer.
    pub batch_events: usize,
    /// Most bytes of event batches queued for the writer; beyond it events are dropped
    /// and counted.
    pub stream_buffer_bytes: usize,
    /// Longest a thread waits for room in the queue before dropping its batch.
    pub stream_wait: Duration,
    /// Most frames kept per stack.
    pub stack_depth: usize,
    /// How stacks are captured.
    pub unwinder: Unwinder,
    /// Record the stack of frees of sampled and guarded blocks.
    pub free_stacks: bool,
    /// Record the default path's blocks in the shadow map (a 32-bit word per 16-byte granule
    /// of the core heap's arenas, beside the heap; on Linux) instead of the block table: the
    /// same checks, a quarter of the table's footprint. Off: every block in the table.
    pub shadow: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sample_bytes: 512 * 1024,
            guard: GuardRate::OneIn(1000),
            guard_slots: 256,
            guard_max_size: 4096,
            guard_underflow_share: 0.25,
            canary_bytes: 0,
            quarantine_bytes: 0,
            halt_on_error: false,
            print_reports: true,
            leak_check: LeakCheck::Unreachable,
            suppressions: Vec::new(),
            check_at_exit: true,
            trace_path: None,
            socket_path: None,
            snapshot_interval: Some(Duration::from_secs(1)),
            batch_events: 4096,
            stream_buffer_bytes: 64 << 20,
            stream_wait: Duration::from_millis(200),
            stack_depth: 48,
            unwinder: Unwinder::Auto,
            free_stacks: true,
            shadow: true,
        }
    }
}

/// A bad option: which one, the value given, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionsError {
    /// The option's name.
    pub key: String,
    /// The value given (empty when the problem is the key).
    pub value: String,
    /// What would have been accepted.
    pub reason: String,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "allocscope option `{}`: {}", self.key, self.reason)
        } else {
            write!(
                f,
                "allocscope option `{}={}`: {}",
                self.key, self.value, self.reason
            )
        }
    }
}

impl std::error::Error for OptionsError {}

fn bad(key: &str, value: &str, reason: impl Into<String>) -> OptionsError {
    OptionsError {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// The option names [`Options::parse`] knows, for the unknown-option message.
pub const KNOWN_KEYS: &[&str] = &[
    "sample",
    "guard",
    "guard_slots",
    "guard_max",
    "guard_underflow",
    "canary",
    "quarantine",
    "halt_on_error",
    "print_reports",
    "leak_check",
    "suppress",
    "suppressions",
    "check_at_exit",
    "trace",
    "socket",
    "snapshot",
    "batch",
    "stream_buffer",
    "stream_wait",
    "stack_depth",
    "unwinder",
    "free_stacks",
    "shadow",
];

impl Options {
    /// A builder starting from the defaults.
    pub fn builder() -> OptionsBuilder {
        OptionsBuilder {
            options: Options::default(),
        }
    }

    /// Parses `key=value,key=value` over the defaults.
    pub fn parse(text: &str) -> Result<Options, OptionsError> {
        Options::builder().parse(text)?.build()
    }

    /// Options from `ALLOCSCOPE_OPTIONS` (defaults when unset).
    pub fn from_env() -> Result<Options, OptionsError> {
        match std::env::var(ENV_VAR) {
            Ok(text) => Options::parse(&text),
            Err(std::env::VarError::NotPresent) => Ok(Options::default()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(bad(ENV_VAR, "", "the variable is not valid UTF-8"))
            }
        }
    }

    /// Whether any event is streamed (a trace file or a socket is set).
    pub fn streams(&self) -> bool {
        self.trace_path.is_some() || self.socket_path.is_some()
    }
}

impl fmt::Display for Options {
    /// The options in `ALLOCSCOPE_OPTIONS` syntax (parses back to the same options, except
    /// for suppressions read from a file, which are listed one by one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sample={}", self.sample_bytes)?;
        match self.guard {
            GuardRate::Off => f.write_str(",guard=0")?,
            GuardRate::OneIn(n) => write!(f, ",guard=1/{n}")?,
            GuardRate::All => f.write_str(",guard=all")?,
        }
        write!(
            f,
            ",guard_slots={},guard_max={},guard_underflow={},canary={},quarantine={}",
            self.guard_slots,
            self.guard_max_size,
            self.guard_underflow_share,
            self.canary_bytes,
            self.quarantine_bytes
        )?;
        write!(
            f,
            ",halt_on_error={},print_reports={},check_at_exit={},free_stacks={},shadow={}",
            u8::from(self.halt_on_error),
            u8::from(self.print_reports),
            u8::from(self.check_at_exit),
            u8::from(self.free_stacks),
            u8::from(self.shadow)
        )?;
        let leak = match self.leak_check {
            LeakCheck::Off => "0",
            LeakCheck::Unreachable => "unreachable",
            LeakCheck::All => "all",
        };
        write!(f, ",leak_check={leak}")?;
        for s in &self.suppressions {
            write!(f, ",suppress={s}")?;
        }
        if let Some(p) = &self.trace_path {
            write!(f, ",trace={}", p.display())?;
        }
        if let Some(p) = &self.socket_path {
            write!(f, ",socket={}", p.display())?;
        }
        match self.snapshot_interval {
            None => f.write_str(",snapshot=0")?,
            Some(d) => write!(f, ",snapshot={}ms", d.as_millis())?,
        }
        write!(
            f,
            ",batch={},stream_buffer={},stream_wait={}ms,stack_depth={},unwinder={}",
            self.batch_events,
            self.stream_buffer_bytes,
            self.stream_wait.as_millis(),
            self.stack_depth,
            match self.unwinder {
                Unwinder::Auto => "auto",
                Unwinder::Backtrace => "backtrace",
                Unwinder::FramePointers => "fp",
            }
        )
    }
}

/// Sets options one by one or from text, then checks them together in [`OptionsBuilder::build`].
#[derive(Clone, Debug)]
#[must_use]
pub struct OptionsBuilder {
    options: Options,
}

impl OptionsBuilder {
    /// Applies `key=value,key=value` text (as in `ALLOCSCOPE_OPTIONS`); later keys win.
    pub fn parse(mut self, text: &str) -> Result<Self, OptionsError> {
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => (k.trim(), v.trim()),
                Some(_) => return Err(bad(item, "", "no option name before `=`")),
                None => return Err(bad(item, "", "expected key=value")),
            };
            self.set(key, value)?;
        }
        Ok(self)
    }

    /// Sets one option by name, as the text form does.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptionsError> {
        let o = &mut self.options;
        match key {
            "sample" => o.sample_bytes = parse_size(key, value)? as u64,
            "guard" => o.guard = parse_guard(value)?,
            "guard_slots" => o.guard_slots = parse_count(key, value)?,
            "guard_max" => o.guard_max_size = parse_size(key, value)?,
            "guard_underflow" => o.guard_underflow_share = parse_share(key, value)?,
            "canary" => o.canary_bytes = parse_size(key, value)?,
            "quarantine" => o.quarantine_bytes = parse_size(key, value)?,
            "halt_on_error" => o.halt_on_error = parse_bool(key, value)?,
            "print_reports" => o.print_reports = parse_bool(key, value)?,
            "check_at_exit" => o.check_at_exit = parse_bool(key, value)?,
            "free_stacks" => o.free_stacks = parse_bool(key, value)?,
            // `headers`: the option's name while the records were headers in front of the blocks.
            "shadow" | "headers" => o.shadow = parse_bool(key, value)?,
            "leak_check" => {
                o.leak_check = match value {
                    "0" | "false" | "off" | "none" => LeakCheck::Off,
                    "1" | "true" | "on" | "unreachable" => LeakCheck::Unreachable,
                    "all" => LeakCheck::All,
                    _ => return Err(bad(key, value, "expected 0, unreachable or all")),
                }
            }
            "suppress" => {
                if value.is_empty() {
                    return Err(bad(
                        key,
                        value,
                        "expected a function or file name to suppress",
                    ));
                }
                o.suppressions.push(value.into());
            }
            "suppressions" => {
                let text = std::fs::read_to_string(value)
                    .map_err(|e| bad(key, value, format!("cannot read the file: {e}")))?;
                o.suppressions.extend(parse_suppressions(&text));
            }
            "trace" => o.trace_path = parse_path(key, value)?,
            "socket" => o.socket_path = parse_path(key, value)?,
            "snapshot" => o.snapshot_interval = parse_interval(key, value)?,
            "batch" => o.batch_events = parse_count(key, value)?,
            "stream_buffer" => o.stream_buffer_bytes = parse_size(key, value)?,
            "stream_wait" => {
                o.stream_wait = parse_interval(key, value)?.unwrap_or(Duration::ZERO);
            }
            "stack_depth" => o.stack_depth = parse_count(key, value)?,
            "unwinder" => {
                o.unwinder = match value {
                    "auto" => Unwinder::Auto,
                    "backtrace" | "dwarf" => Unwinder::Backtrace,
                    "fp" | "frame_pointers" => Unwinder::FramePointers,
                    _ => return Err(bad(key, value, "expected auto, backtrace or fp")),
                }
            }
            _ => match allocscope_core::options::parse(key.as_bytes(), value.as_bytes()) {
                // The heap's own keys: it reads them itself from the same variable.
                Some(Ok(_)) => {}
                Some(Err(expected)) => return Err(bad(key, value, expected)),
                None => {
                    return Err(bad(
                        key,
                        "",
                        format!(
                            "unknown option (known: {}, and the heap's {})",
                            KNOWN_KEYS.join(", "),
                            allocscope_core::options::KEYS.join(", ")
                        ),
                    ))
                }
            },
        }
        Ok(())
    }

    /// Mean bytes between sampled stacks; 1 records every allocation, 0 none.
    pub fn sample_bytes(mut self, bytes: u64) -> Self {
        self.options.sample_bytes = bytes;
        self
    }

    /// Guard-page pool rate.
    pub fn guard(mut self, rate: GuardRate) -> Self {
        self.options.guard = rate;
        self
    }

    /// Slots in the guard-page pool.
    pub fn guard_slots(mut self, slots: usize) -> Self {
        self.options.guard_slots = slots;
        self
    }

    /// Largest block the guard pool takes.
    pub fn guard_max_size(mut self, bytes: usize) -> Self {
        self.options.guard_max_size = bytes;
        self
    }

    /// Share of guarded blocks placed to catch underflows instead of overflows.
    pub fn guard_underflow_share(mut self, share: f64) -> Self {
        self.options.guard_underflow_share = share;
        self
    }

    /// Red-zone bytes on each side of every block (0 = off).
    pub fn canary_bytes(mut self, bytes: usize) -> Self {
        self.options.canary_bytes = bytes;
        self
    }

    /// Bytes of freed blocks held poisoned before reuse (0 = off).
    pub fn quarantine_bytes(mut self, bytes: usize) -> Self {
        self.options.quarantine_bytes = bytes;
        self
    }

    /// Abort after the first corruption report.
    pub fn halt_on_error(mut self, yes: bool) -> Self {
        self.options.halt_on_error = yes;
        self
    }

    /// Print reports on standard error.
    pub fn print_reports(mut self, yes: bool) -> Self {
        self.options.print_reports = yes;
        self
    }

    /// Leak check at exit.
    pub fn leak_check(mut self, check: LeakCheck) -> Self {
        self.options.leak_check = check;
        self
    }

    /// Don't report leaks whose stack mentions `pattern` (a function or file name part).
    pub fn suppress(mut self, pattern: impl Into<String>) -> Self {
        self.options.suppressions.push(pattern.into());
        self
    }

    /// Check canaries and quarantine at exit.
    pub fn check_at_exit(mut self, yes: bool) -> Self {
        self.options.check_at_exit = yes;
        self
    }

    /// Write a trace file.
    pub fn trace_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.trace_path = Some(path.into());
        self
    }

    /// Listen on a Unix socket for a live viewer.
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.socket_path = Some(path.into());
        self
    }

    /// Interval between heap snapshots (`None`: no snapshots).
    pub fn snapshot_interval(mut self, interval: Option<Duration>) -> Self {
        self.options.snapshot_interval = interval;
        self
    }

    /// Events per thread buffer.
    pub fn batch_events(mut self, events: usize) -> Self {
        self.options.batch_events = events;
        self
    }

    /// Most bytes of batches queued for the writer.
    pub fn stream_buffer_bytes(mut self, bytes: usize) -> Self {
        self.options.stream_buffer_bytes = bytes;
        self
    }

    /// Longest wait for room in the writer's queue before a batch is dropped.
    pub fn stream_wait(mut self, wait: Duration) -> Self {
        self.options.stream_wait = wait;
        self
    }

    /// Most frames per stack.
    pub fn stack_depth(mut self, frames: usize) -> Self {
        self.options.stack_depth = frames;
        self
    }

    /// How stacks are captured.
    pub fn unwinder(mut self, unwinder: Unwinder) -> Self {
        self.options.unwinder = unwinder;
        self
    }

    /// Record free stacks of sampled and guarded blocks.
    pub fn free_stacks(mut self, yes: bool) -> Self {
        self.options.free_stacks = yes;
        self
    }

    /// Record the default path's blocks in the shadow map (see [`Options::shadow`]).
    pub fn shadow(mut self, yes: bool) -> Self {
        self.options.shadow = yes;
        self
    }

    /// Checks the options together.
    pub fn build(self) -> Result<Options, OptionsError> {
        let o = self.options;
        if o.canary_bytes > MAX_CANARY {
            return Err(
                bad("canary", &o.canary_bytes.to_string(), "at most 4096 bytes").with_hint(),
            );
        }
        if o.guard != GuardRate::Off && o.guard_slots == 0 {
            return Err(bad(
                "guard_slots",
                "0",
                "the guard pool needs at least one slot",
            ));
        }
        if o.guard_slots > MAX_GUARD_SLOTS {
            return Err(bad(
                "guard_slots",
                &o.guard_slots.to_string(),
                format!("at most {MAX_GUARD_SLOTS} slots"),
            ));
        }
        if o.guard_max_size == 0 || o.guard_max_size > MAX_GUARD_SIZE {
            return Err(bad(
                "guard_max",
                &o.guard_max_size.to_string(),
                "between 1 byte and 1 MiB",
            ));
        }
        if !(0.0..=1.0).contains(&o.guard_underflow_share) {
            return Err(bad(
                "guard_underflow",
                &o.guard_underflow_share.to_string(),
                "a share between 0 and 1 (like 1/4 or 0.25)",
            ));
        }
        if o.batch_events == 0 || o.batch_events > 1 << 20 {
            return Err(bad(
                "batch",
                &o.batch_events.to_string(),
                "between 1 and 1048576 events",
            ));
        }
        if o.stack_depth == 0 || o.stack_depth > MAX_STACK_DEPTH {
            return Err(bad(
                "stack_depth",
                &o.stack_depth.to_string(),
                format!("between 1 and {MAX_STACK_DEPTH} frames"),
            ));
        }
        Ok(o)
    }
}

impl OptionsError {
    fn with_hint(mut self) -> Self {
        self.reason
            .push_str(" (red zones past that only cost memory)");
        self
    }
}

/// Largest red zone.
pub const MAX_CANARY: usize = 4096;
/// Most guard-pool slots (each costs at least two pages of address space).
pub const MAX_GUARD_SLOTS: usize = 1 << 20;
/// Largest block the guard pool takes.
pub const MAX_GUARD_SIZE: usize = 1 << 20;
/// Most frames a stack keeps.
pub const MAX_STACK_DEPTH: usize = 256;

/// Suppression patterns from an LSan-style file: `leak:PATTERN` lines (a bare pattern is
/// accepted too), `#` comments.
pub fn parse_suppressions(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.strip_prefix("leak:").unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `512k`, `64m`, `1g`, `4096` (k, m, g are binary: KiB, MiB, GiB).
fn parse_size(key: &str, value: &str) -> Result<usize, OptionsError> {
    let lower = value.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (digits, shift) = match trimmed.as_bytes().last() {
        Some(b'k') => (&trimmed[..trimmed.len() - 1], 10),
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 20),
        Some(b'g') => (&trimmed[..trimmed.len() - 1], 30),
        _ => (trimmed, 0),
    };
    let n: usize = digits.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected a byte count like 4096, 512k, 64m or 1g",
        )
    })?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| bad(key, value, "too large"))
}

fn parse_count(key: &str, value: &str) -> Result<usize, OptionsError> {
    value
        .parse()
        .map_err(|_| bad(key, value, "expected a whole number"))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, OptionsError> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(key, value, "expected 0 or 1")),
    }
}

/// `1/4`, `0.25`.
fn parse_share(key: &str, value: &str) -> Result<f64, OptionsError> {
    let share = match value.split_once('/') {
        Some((a, b)) => {
            let a: f64 = a
                .parse()
                .map_err(|_| bad(key, value, "expected a share like 1/4"))?;
            let b: f64 = b
                .parse()
                .map_err(|_| bad(key, value, "expected a share like 1/4"))?;
            if b == 0.0 {
                return Err(bad(key, value, "the denominator is zero"));
            }
            a / b
        }
        None => value
            .parse()
            .map_err(|_| bad(key, value, "expected a share like 1/4 or 0.25"))?,
    };
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(bad(key, value, "a share between 0 and 1"))
    }
}

/// `1/1000`, `0` (off), `all`.
fn parse_guard(value: &str) -> Result<GuardRate, OptionsError> {
    let expected = "expected 1/N (one allocation in N), 0 (off) or all";
    match value {
        "0" | "off" => return Ok(GuardRate::Off),
        "all" | "1" | "1/1" => return Ok(GuardRate::All),
        _ => {}
    }
    let n = value
        .strip_prefix("1/")
        .ok_or_else(|| bad("guard", value, expected))?;
    match n.parse::<u32>() {
        Ok(0) | Err(_) => Err(bad("guard", value, expected)),
        Ok(1) => Ok(GuardRate::All),
        Ok(n) => Ok(GuardRate::OneIn(n)),
    }
}

/// `1s`, `500ms`, `0` (off); a bare number is milliseconds.
fn parse_interval(key: &str, value: &str) -> Result<Option<Duration>, OptionsError> {
    let expected = "expected a duration like 500ms or 2s, or 0 for off";
    let (digits, unit_ms) = if let Some(d) = value.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = value.strip_suffix('s') {
        (d, 1000)
    } else {
        (value, 1)
    };
    let n: u64 = digits.parse().map_err(|_| bad(key, value, expected))?;
    let ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| bad(key, value, "too large"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

fn parse_path(key: &str, value: &str) -> Result<Option<PathBuf>, OptionsError> {
    if value.is_empty() {
        return Err(bad(key, value, "expected a path"));
    }
    Ok(Some(PathBuf::from(value)))
}

/// Replaces `%p` in a configured path with the process id (so each process of a family gets its
/// own trace).
pub fn expand_pid(path: &std::path::Path) -> PathBuf {
    let text = path.to_string_lossy();
    if text.contains("%p") {
        PathBuf::from(text.replace("%p", &std::process::id().to_string()))
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let o = Options::parse("sample=512k,guard=1/1000,canary=16,quarantine=64m").unwrap();
        assert_eq!(o.sample_bytes, 512 * 1024);
        assert_eq!(o.guard, GuardRate::OneIn(1000));
        assert_eq!(o.canary_bytes, 16);
        assert_eq!(o.quarantine_bytes, 64 << 20);
    }

    #[test]
    fn every_value_form_parses() {
        let o = Options::parse(
            "sample=1, guard=all, guard_underflow=1/2, leak_check=all, snapshot=250ms, \
             stream_wait=2s, unwinder=fp, trace=/tmp/t.%p, suppress=my_crate::cache, halt_on_error=1",
        )
        .unwrap();
        assert_eq!(o.sample_bytes, 1);
        assert_eq!(o.guard, GuardRate::All);
        assert_eq!(o.guard_underflow_share, 0.5);
        assert_eq!(o.leak_check, LeakCheck::All);
        assert_eq!(o.snapshot_interval, Some(Duration::from_millis(250)));
        assert_eq!(o.stream_wait, Duration::from_secs(2));
        assert_eq!(o.unwinder, Unwinder::FramePointers);
        assert_eq!(
            o.trace_path.as_deref(),
            Some(std::path::Path::new("/tmp/t.%p"))
        );
        assert_eq!(o.suppressions, ["my_crate::cache"]);
        assert!(o.halt_on_error);
        assert_eq!(
            Options::parse("guard=0,snapshot=0").unwrap().guard,
            GuardRate::Off
        );
        assert_eq!(
            Options::parse("snapshot=0").unwrap().snapshot_interval,
            None
        );
    }

    #[test]
    fn display_parses_back_to_the_same_options() {
        let o = Options::builder()
            .sample_bytes(4096)
            .guard(GuardRate::OneIn(7))
            .canary_bytes(32)
            .quarantine_bytes(1 << 20)
            .suppress("foo")
            .trace_path("/tmp/x")
            .build()
            .unwrap();
        assert_eq!(Options::parse(&o.to_string()).unwrap(), o);
        assert_eq!(
            Options::parse(&Options::default().to_string()).unwrap(),
            Options::default()
        );
    }

    #[test]
    fn bad_options_say_what_is_wrong_in_one_line() {
        let e = Options::parse("sample=lots").unwrap_err();
        assert_eq!(e.key, "sample");
        let text = e.to_string();
        assert!(
            text.contains("sample=lots") && text.contains("512k"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let e = Options::parse("colour=blue").unwrap_err();
        assert!(e.to_string().contains("unknown option") && e.to_string().contains("canary"));
        assert_eq!(Options::parse("guard=1/0").unwrap_err().key, "guard");
        assert_eq!(Options::parse("guard=2/3").unwrap_err().key, "guard");
        assert_eq!(
            Options::parse("canary").unwrap_err().to_string(),
            "allocscope option `canary`: expected key=value"
        );
        assert_eq!(Options::parse("canary=1m").unwrap_err().key, "canary");
        assert_eq!(
            Options::parse("guard_underflow=3/2").unwrap_err().key,
            "guard_underflow"
        );
        assert_eq!(
            Options::parse("leak_check=maybe").unwrap_err().key,
            "leak_check"
        );
        assert_eq!(
            Options::parse("guard_slots=0").unwrap_err().key,
            "guard_slots"
        );
        assert!(Options::parse("guard=0,guard_slots=0").is_ok());
        // The heap's own keys are the heap's to read: accepted, their values checked.
        assert!(Options::parse("purge_delay=50,huge_pages=1,sample=1").is_ok());
        let e = Options::parse("purge_delay=soon").unwrap_err();
        assert!(
            e.key == "purge_delay" && e.to_string().contains("milliseconds"),
            "{e}"
        );
        assert_eq!(
            Options::parse("huge_pages=2").unwrap_err().key,
            "huge_pages"
        );
        let e = Options::parse("colour=blue").unwrap_err().to_string();
        assert!(e.contains("purge_delay"), "{e}");
        assert_eq!(
            Options::parse("=5").unwrap_err().to_string(),
            "allocscope option `=5`: no option name before `=`"
        );
        let e = Options::builder().stack_depth(0).build().unwrap_err();
        assert_eq!(e.key, "stack_depth");
    }

    #[test]
    fn suppression_files_use_lsan_syntax() {
        let s = parse_suppressions("# comment\nleak:libfoo\n\nbar::baz\nleak:\n");
        assert_eq!(s, ["libfoo", "bar::baz"]);
    }
}

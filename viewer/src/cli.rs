//! The `allocscope` command line: parses arguments (clap), runs one command, and turns every
//! failure into one line on standard error with exit status 2 (1 is kept for "the report found
//! problems" and for a traced command's own failure).
//!
//! May touch: processes (`run`, `record`), files named on the command line, [`crate::model`],
//! [`crate::report`], [`crate::export`].

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use allocscope_tracker::trace_format::{Ending, TraceError};
use clap::{Parser, Subcommand, ValueEnum};

use crate::model::{format_bytes, LoadOptions, Metric, Profile, TimeRange};
use crate::symbols::Symbolizer;

/// File name of the release-mode preload library.
pub const PRELOAD_LIB: &str = "liballocscope.so";

/// File name of the instrumented (tracker) preload library `record` needs.
pub const TRACKER_PRELOAD_LIB: &str = "liballocscope_debug.so";

/// allocscope: run programs on the allocscope heap, record heap traces, report and view them.
#[derive(Debug, Parser)]
#[command(name = "allocscope", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Runs CMD on the release-mode allocator (LD_PRELOAD of liballocscope.so).
    Run {
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Runs CMD on the instrumented preload library, writing a trace; prints the leak and
    /// corruption summary and exits with CMD's status.
    Record {
        /// Trace file to write (`%p` is the process id).
        #[arg(short, long, default_value = "allocscope.%p.trace")]
        output: PathBuf,
        /// Extra tracker options in ALLOCSCOPE_OPTIONS syntax (`sample=1,canary=16`).
        #[arg(long)]
        options: Option<String>,
        /// Also open the viewer on the process as it runs (through a socket).
        #[arg(long)]
        live: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// The post-mortem report in text: corruption, leaks by stack, peak, top allocation sites.
    Report {
        /// The trace file.
        file: PathBuf,
        /// Exit with status 1 when the trace holds a corruption or leak report (for CI).
        #[arg(long)]
        fail_on_leak_or_corruption: bool,
        /// Stacks listed per section.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Time range.
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Opens the desktop viewer on a trace file, or attached to a running process's socket.
    View {
        /// The trace file.
        #[arg(required_unless_present = "attach")]
        file: Option<PathBuf>,
        /// A running instrumented process's socket (its `socket=` option) to watch live.
        #[arg(long, conflicts_with = "file")]
        attach: Option<PathBuf>,
        /// The panel to open on.
        #[arg(long, value_enum, default_value_t = crate::app::Tab::Overview)]
        tab: crate::app::Tab,
        /// Open with this time range selected.
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Writes an SVG flamegraph (through inferno).
    Flamegraph {
        /// The trace file.
        file: PathBuf,
        /// SVG file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// What the widths measure.
        #[arg(long, value_enum, default_value_t = Metric::Allocated)]
        kind: Metric,
        /// Time range.
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Exports the aggregated stacks: folded lines, or DHAT's JSON (opens in dh_view.html).
    Export {
        /// The trace file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// File to write (standard output when left out).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// What folded values measure (folded only).
        #[arg(long, value_enum, default_value_t = Metric::Allocated)]
        kind: Metric,
        /// Time range.
        #[command(flatten)]
        range: RangeArgs,
    },
}

/// Time-range filter in milliseconds from the trace's start.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RangeArgs {
    /// Only allocations made at or after this time (milliseconds).
    #[arg(long)]
    pub from_ms: Option<f64>,
    /// Only allocations made up to this time (milliseconds); "live" means live then.
    #[arg(long)]
    pub to_ms: Option<f64>,
}

impl RangeArgs {
    fn load_options(self) -> Result<LoadOptions, CliError> {
        for (name, value) in [("--from-ms", self.from_ms), ("--to-ms", self.to_ms)] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(CliError(format!(
                    "{name} must be a time in milliseconds from the trace's start (0 or more)"
                )));
            }
        }
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms) {
            if from > to {
                return Err(CliError(format!(
                    "--from-ms {from} is after --to-ms {to}: give the earlier time first"
                )));
            }
        }
        let range = (self.from_ms.is_some() || self.to_ms.is_some()).then(|| TimeRange {
            start_ns: self.from_ms.map_or(0, ms_to_ns),
            end_ns: self.to_ms.map_or(u64::MAX, ms_to_ns),
        });
        Ok(LoadOptions {
            range,
            ..LoadOptions::default()
        })
    }
}

fn ms_to_ns(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6) as u64
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `frame;frame;frame value` lines (flamegraph.pl, inferno, speedscope).
    Folded,
    /// DHAT's JSON.
    Dhat,
}

/// A failure to report in one line (exit status 2).
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Runs the command line; what `main` returns.
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match execute(cli.command) {
        Ok(code) => code,
        Err(CliError(message)) => {
            eprintln!("allocscope: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Cmd) -> Result<ExitCode, CliError> {
    match command {
        Cmd::Run { command } => {
            let lib = find_library(PRELOAD_LIB).ok_or_else(|| {
                CliError(format!(
                    "{PRELOAD_LIB} not found next to this executable nor in target/release \
                     (build it with `cargo build --release -p allocscope-preload`)"
                ))
            })?;
            run_preloaded(&lib, &command)
        }
        Cmd::Record {
            output,
            options,
            live,
            command,
        } => {
            let lib = find_library(TRACKER_PRELOAD_LIB).ok_or_else(|| {
                CliError(format!(
                    "record needs the instrumented preload library {TRACKER_PRELOAD_LIB}, \
                     not found next to this executable nor in target/release (build it with \
                     `cargo build --release -p allocscope-preload-debug`)"
                ))
            })?;
            record(&lib, &output, options.as_deref(), live, &command)
        }
        Cmd::Report {
            file,
            fail_on_leak_or_corruption,
            top,
            range,
        } => {
            let (profile, mut symbols) = load_symbolized(&file, range)?;
            let mut text = String::new();
            let findings = crate::report::write_report(&mut text, &profile, &mut symbols, top);
            write_stdout(text.as_bytes())?;
            let bad = findings.corruption + findings.leaks > 0;
            Ok(ExitCode::from(u8::from(fail_on_leak_or_corruption && bad)))
        }
        Cmd::View {
            file,
            attach,
            tab,
            range,
        } => {
            let source = match (file, attach) {
                (_, Some(socket)) => {
                    crate::app::Source::Live(crate::app::Live::attach(&socket).map_err(CliError)?)
                }
                (Some(file), None) => crate::app::Source::File(file),
                (None, None) => {
                    return Err(CliError(
                        "view needs a trace FILE or --attach SOCKET".into(),
                    ))
                }
            };
            crate::app::run(source, tab, range.load_options()?.range).map_err(CliError)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Flamegraph {
            file,
            output,
            kind,
            range,
        } => {
            let (profile, mut symbols) = load_symbolized(&file, range)?;
            if crate::export::folded(&profile, &mut symbols, kind).is_empty() {
                // inferno would say only "No stack counts found"; name what is empty and why.
                return Err(CliError(format!(
                    "{}: no stacks to draw for --kind {}: the trace (in this range) holds no \
                     sampled allocation stacks. Record with stacks sampled more often \
                     (ALLOCSCOPE_OPTIONS=sample=1 records every allocation's), or pick another \
                     --kind or range; nothing was written",
                    file.display(),
                    kind.name()
                )));
            }
            let out = std::fs::File::create(&output)
                .map_err(|e| CliError(format!("cannot create {}: {e}", output.display())))?;
            let mut out = std::io::BufWriter::new(out);
            crate::export::flamegraph_svg(&profile, &mut symbols, kind, &mut out)
                .and_then(|()| out.flush())
                .map_err(|e| CliError(format!("cannot write {}: {e}", output.display())))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export {
            file,
            format,
            output,
            kind,
            range,
        } => {
            let (profile, mut symbols) = load_symbolized(&file, range)?;
            let mut text = match format {
                ExportFormat::Folded => {
                    crate::export::folded(&profile, &mut symbols, kind).join("\n")
                }
                ExportFormat::Dhat => {
                    serde_json::to_string(&crate::export::dhat_json(&profile, &mut symbols))?
                }
            };
            text.push('\n');
            match output {
                Some(path) => std::fs::write(&path, text)
                    .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?,
                None => write_stdout(text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The traces that processes started by the recorded program wrote beside `trace` during the
/// run: a traced program that execs another leaves the path to itself, and the new program
/// writes `PATH.<pid>`, or `PATH.<pid>.<n>` for the n-th program of one process (see the
/// `trace=` option).
fn child_traces(trace: &Path, since: std::time::SystemTime) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (trace.parent(), trace.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&prefix).is_some_and(names_a_child_trace)
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Whether `rest`, what follows `PATH.` in a file's name, is `<pid>` or `<pid>.<n>`.
fn names_a_child_trace(rest: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once('.') {
        Some((pid, n)) => number(pid) && number(n),
        None => number(rest),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn load_symbolized(file: &Path, range: RangeArgs) -> Result<(Profile, Symbolizer), CliError> {
    let profile = load(file, range.load_options()?)?;
    let symbols = Symbolizer::new(&profile.modules);
    Ok((profile, symbols))
}

/// `allocscope record`: runs the command on the instrumented library with a trace, then prints
/// the summary of what the trace holds; returns the command's status.
fn record(
    lib: &Path,
    output: &Path,
    extra_options: Option<&str>,
    live: bool,
    command: &[OsString],
) -> Result<ExitCode, CliError> {
    // Absolute: the program may change directory before it first allocates (a shell's `cd`),
    // and its trace must land where the summary below reads it.
    let output = std::path::absolute(output).map_err(|e| {
        CliError(format!(
            "cannot use the trace path {}: {e}",
            output.display()
        ))
    })?;
    if let Some(dir) = output.parent().filter(|d| !d.is_dir()) {
        return Err(CliError(format!(
            "cannot write the trace {}: the directory {} does not exist",
            output.display(),
            dir.display()
        )));
    }
    let mut opts = format!("trace={}", output.display());
    let socket = std::env::temp_dir().join("allocscope-live.%p.sock");
    if live {
        opts.push_str(&format!(",socket={}", socket.display()));
    }
    if let Some(extra) = extra_options {
        if extra
            .split(',')
            .any(|item| item.trim().starts_with("trace="))
        {
            return Err(CliError(
                "--options sets trace=...: give the trace's path with -o instead".to_owned(),
            ));
        }
        opts.push(',');
        opts.push_str(extra);
    }
    // The library would refuse them at the program's start, and abort it: say so here.
    allocscope_tracker::options::Options::parse(&opts)
        .map_err(|e| CliError(format!("{e} (in --options)")))?;
    let started = std::time::SystemTime::now();
    let mut child = preloaded(lib, command, &[("ALLOCSCOPE_OPTIONS", &opts)])?.spawn()?;
    let pid = child.id();
    if live {
        let socket = PathBuf::from(socket.display().to_string().replace("%p", &pid.to_string()));
        watch_live(&socket, &mut child);
    }
    let status = child.wait()?;
    let trace = PathBuf::from(output.display().to_string().replace("%p", &pid.to_string()));
    match Profile::load_file(&trace, LoadOptions::default(), &mut |_| {}) {
        Ok(profile) => {
            let ending = match (profile.end.is_some(), profile.ending) {
                (_, Some(Ending::Truncated { .. })) => {
                    "; the trace is cut short (the process was killed?)"
                }
                (true, _) if profile.exec.is_some() => "; it went on as another program (exec)",
                (true, _) => "",
                (false, _) => "; no end marker (the process ended without finishing its trace)",
            };
            eprintln!(
                "allocscope: trace {}: {} corruption reports, {} leak reports, {} in {} \
                 blocks still allocated at {}, peak {}{ending}",
                trace.display(),
                profile.corruption_reports().count(),
                profile.leak_reports().count(),
                format_bytes(profile.leaked_bytes()),
                profile.leaked_count(),
                if profile.end.is_some() {
                    "exit"
                } else {
                    "the trace's end"
                },
                format_bytes(profile.peak_bytes),
            );
        }
        Err(TraceError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => eprintln!(
            "allocscope: no trace at {} (the program made no allocation through the library?)",
            trace.display()
        ),
        Err(e) => eprintln!("allocscope: cannot read the trace {}: {e}", trace.display()),
    }
    let others = child_traces(&trace, started);
    if !others.is_empty() {
        eprintln!(
            "allocscope: {} more trace(s), of programs it started or became: {}",
            others.len(),
            others
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(exit_code_of(status))
}

/// Opens the viewer on the child's socket once the tracker has made it (at the child's first
/// allocation); returns when the window closes, or at once if the child ends first.
fn watch_live(socket: &Path, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        if std::time::Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            eprintln!(
                "allocscope: no live socket appeared at {}",
                socket.display()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let opened = crate::app::Live::attach(socket).and_then(|live| {
        crate::app::run(
            crate::app::Source::Live(live),
            crate::app::Tab::Overview,
            None,
        )
    });
    if let Err(e) = opened {
        eprintln!("allocscope: {e}");
    }
}

/// Loads a trace with a progress bar on standard error (hidden when it is not a terminal).
pub fn load(path: &Path, options: LoadOptions) -> Result<Profile, CliError> {
    let len = std::fs::metadata(path)
        .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?
        .len();
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("reading trace");
    let result = Profile::load_file(path, options, &mut |done| bar.set_position(done));
    bar.finish_and_clear();
    result.map_err(|e| CliError(format!("{}: {e}", path.display())))
}

/// A library next to this executable, or in `target/release` under the working directory.
pub fn find_library(name: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(name));
            // target/debug/allocscope next to target/release/liballocscope.so.
            if let Some(target) = dir.parent() {
                candidates.push(target.join("release").join(name));
            }
        }
    }
    candidates.push(Path::new("target").join("release").join(name));
    candidates.into_iter().find(|p| p.is_file())
}

/// Runs `command` with `lib` preloaded; returns its status.
fn run_preloaded(lib: &Path, command: &[OsString]) -> Result<ExitCode, CliError> {
    let status = preloaded(lib, command, &[])?.status()?;
    Ok(exit_code_of(status))
}

/// The command with `lib` put first in `LD_PRELOAD` and the extra environment set.
fn preloaded(lib: &Path, command: &[OsString], env: &[(&str, &str)]) -> Result<Command, CliError> {
    let lib = lib.canonicalize()?;
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let (program, args) = command
        .split_first()
        .ok_or_else(|| CliError("no command given".to_owned()))?;
    if which(program).is_none() {
        return Err(CliError(format!(
            "cannot run {}: no such program",
            Path::new(program).display()
        )));
    }
    let mut cmd = Command::new(program);
    cmd.args(args).env("LD_PRELOAD", preload);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// The program's path as the shell would find it.
fn which(program: &std::ffi::OsStr) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(p))
        .find(|c| c.is_file())
}

fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            // The shell's convention for a child killed by a signal.
            return ExitCode::from((128 + signal).clamp(0, 255) as u8);
        }
    }
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::names_a_child_trace;

    #[test]
    fn child_traces_are_named_by_pid_and_by_pid_and_program() {
        for name in ["1234", "1234.3", "7.12"] {
            assert!(names_a_child_trace(name), "{name}");
        }
        for name in ["", "12a", "1234.", ".3", "1234.3.4", "1234.x", "old"] {
            assert!(!names_a_child_trace(name), "{name}");
        }
    }
}

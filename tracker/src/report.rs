//! Reports: the facts of one detected problem, and their text in AddressSanitizer's words and
//! layout, with stacks symbolised. Rendering runs only when something went wrong (or at a leak
//! check), with the re-entrancy flag set.
//!
//! May touch: [`crate::symbolize`], [`crate::stacks`], `libc::write` (standard error, without
//! std's lock: a report may be raised while the program holds it).

#[cfg(unix)]
use core::sync::atomic::{AtomicI32, Ordering};
use std::fmt::Write as _;

use crate::stacks;
use crate::symbolize::{first_program_frame, format_stack, symbolize_stack};
use crate::trace_format::{ReportKind, ReportRecord};

/// A detected problem, as the API hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What went wrong.
    pub kind: ReportKind,
    /// The bad address (the freed pointer, the damaged byte, the faulting access; for a leak,
    /// the first leaked block).
    pub address: usize,
    /// The block concerned: start and requested size.
    pub block: Option<(usize, usize)>,
    /// Offset of the bad byte from the block's start (negative: before it).
    pub offset: Option<isize>,
    /// Trace id of the thread that hit the problem.
    pub thread: u32,
    /// Where the problem was detected.
    pub access_stack: u32,
    /// Where the block was allocated (0: not sampled).
    pub alloc_stack: u32,
    /// Where the block was freed (0: not recorded).
    pub free_stack: u32,
    /// For a memory leak: blocks and bytes in this group.
    pub leaked: Option<(usize, usize)>,
    /// The report as printed.
    pub text: String,
}

/// How the problem was noticed (the first line after the title).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detection {
    /// At a call of free / dealloc.
    Free,
    /// At a call of realloc.
    Realloc,
    /// By a scan (on demand or at exit).
    Scan,
    /// When the block left quarantine.
    QuarantineExit,
    /// By a fault in the guard-page pool.
    Fault { write: Option<bool> },
    /// By the leak check.
    LeakCheck { direct: bool },
}

/// Everything a report says, before rendering.
#[derive(Clone, Debug)]
pub(crate) struct Facts {
    pub(crate) kind: ReportKind,
    pub(crate) detection: Detection,
    pub(crate) address: usize,
    /// Block start, requested size.
    pub(crate) block: Option<(usize, usize)>,
    pub(crate) thread: u32,
    pub(crate) access_stack: u32,
    pub(crate) alloc_stack: u32,
    pub(crate) alloc_thread: u32,
    pub(crate) free_stack: u32,
    pub(crate) free_thread: u32,
    /// alloc-dealloc-mismatch: (size, align) at alloc, then at dealloc.
    pub(crate) mismatch: Option<((usize, usize), (usize, usize))>,
    /// memory-leak: (blocks, bytes).
    pub(crate) leaked: Option<(usize, usize)>,
}

impl Facts {
    pub(crate) fn new(kind: ReportKind, detection: Detection, address: usize, thread: u32) -> Self {
        Facts {
            kind,
            detection,
            address,
            block: None,
            thread,
            access_stack: 0,
            alloc_stack: 0,
            alloc_thread: 0,
            free_stack: 0,
            free_thread: 0,
            mismatch: None,
            leaked: None,
        }
    }

    pub(crate) fn offset(&self) -> Option<isize> {
        self.block
            .map(|(start, _)| self.address.wrapping_sub(start) as isize)
    }

    /// Renders the text and packs the report.
    pub(crate) fn into_report(self) -> Report {
        let text = render(&self);
        Report {
            kind: self.kind,
            address: self.address,
            block: self.block,
            offset: self.offset(),
            thread: self.thread,
            access_stack: self.access_stack,
            alloc_stack: self.alloc_stack,
            free_stack: self.free_stack,
            leaked: self.leaked,
            text,
        }
    }
}

impl Report {
    /// The report as the trace stores it.
    pub(crate) fn to_record(&self, time_ns: u64) -> ReportRecord {
        ReportRecord {
            time_ns,
            kind: self.kind,
            address: self.address as u64,
            block_start: self.block.map(|b| b.0 as u64),
            block_size: self.block.map(|b| b.1 as u64),
            offset: self.offset.map(|o| o as i64),
            thread: self.thread,
            access_stack: self.access_stack,
            alloc_stack: self.alloc_stack,
            free_stack: self.free_stack,
            text: self.text.clone(),
        }
    }
}

fn push_stack(out: &mut String, id: u32, missing: &str) -> Option<String> {
    match stacks::frames_of(id) {
        Some(frames) => {
            let symbols = symbolize_stack(frames);
            format_stack(out, &symbols);
            first_program_frame(&symbols)
        }
        None => {
            let _ = writeln!(out, "    <{missing}>");
            None
        }
    }
}

const NOT_SAMPLED: &str = "stack not recorded (only sampled allocations keep one: \
     ALLOCSCOPE_OPTIONS=sample=1 samples every allocation)";

/// A thread as reports name it: `T<id>`, or "an unknown thread" where none was kept (ids start
/// at 1; 0 is "not recorded").
fn thread(id: u32) -> String {
    if id == 0 {
        "an unknown thread".to_owned()
    } else {
        format!("thread T{id}")
    }
}

fn render(f: &Facts) -> String {
    let mut out = String::new();
    let pid = std::process::id();
    let _ = write!(out, "=={pid}==ERROR: allocscope: {}", f.kind);
    match f.kind {
        ReportKind::DoubleFree => {
            let _ = writeln!(out, " on {:#x} in {}:", f.address, thread(f.thread));
        }
        ReportKind::InvalidFree => {
            let _ = writeln!(
                out,
                " (attempting free on address which was not malloc()-ed: {:#x}) in {}:",
                f.address,
                thread(f.thread)
            );
        }
        ReportKind::AllocDeallocMismatch => {
            if let Some(((s0, a0), (s1, a1))) = f.mismatch {
                let _ = writeln!(
                    out,
                    " (allocated with size {s0}, align {a0}; freed with size {s1}, align {a1}) on {:#x} in {}:",
                    f.address,
                    thread(f.thread)
                );
            }
        }
        ReportKind::MemoryLeak => {
            let (blocks, bytes) = f.leaked.unwrap_or((0, 0));
            let direct = matches!(f.detection, Detection::LeakCheck { direct: true });
            let _ = writeln!(
                out,
                ": {} leak of {bytes} byte(s) in {blocks} object(s) allocated from:",
                if direct { "Direct" } else { "Indirect" }
            );
        }
        _ => {
            let _ = writeln!(out, " on address {:#x} in {}", f.address, thread(f.thread));
        }
    }
    let mut summary_frame = None;
    if f.kind == ReportKind::MemoryLeak {
        summary_frame = push_stack(&mut out, f.alloc_stack, NOT_SAMPLED);
    } else {
        let how = match f.detection {
            Detection::Free => "detected when the block was freed",
            Detection::Realloc => "detected when the block was reallocated",
            Detection::Scan => "detected by a heap scan",
            Detection::QuarantineExit => "detected when the freed block left quarantine",
            Detection::Fault { write: Some(true) } => "WRITE access to a guard page",
            Detection::Fault { write: Some(false) } => "READ access to a guard page",
            Detection::Fault { write: None } => "access to a guard page",
            Detection::LeakCheck { .. } => "detected by the leak check",
        };
        let _ = writeln!(out, "{how}, at:");
        summary_frame = summary_frame.or(push_stack(&mut out, f.access_stack, "no stack"));
        if let Some((start, size)) = f.block {
            let end = start + size;
            let a = f.address;
            let location = if a >= end
                && f.kind != ReportKind::UseAfterFree
                && f.kind != ReportKind::DoubleFree
            {
                format!("{} bytes after", a - end)
            } else if a < start {
                format!("{} bytes before", start - a)
            } else {
                format!("{} bytes inside of", a - start)
            };
            if size == 0 && f.kind == ReportKind::DoubleFree {
                // A freed block's record may keep its stacks but not its size.
                let _ = writeln!(out, "{a:#x} is the start of a block freed before");
            } else {
                let _ = writeln!(
                    out,
                    "{a:#x} is located {location} {size}-byte region [{start:#x},{end:#x})"
                );
            }
        }
        if f.free_stack != 0 || matches!(f.kind, ReportKind::DoubleFree | ReportKind::UseAfterFree)
        {
            let _ = writeln!(out, "freed by {} here:", thread(f.free_thread));
            let missing = if f.alloc_stack != 0 {
                "free stack not recorded (sampled blocks keep one with free_stacks=1, the default)"
            } else {
                "free stack not recorded (only sampled blocks keep one: \
                 ALLOCSCOPE_OPTIONS=sample=1 samples every allocation)"
            };
            push_stack(&mut out, f.free_stack, missing);
        }
        if f.block.is_some() || f.alloc_stack != 0 {
            let what = if f.free_stack != 0 {
                "previously allocated"
            } else {
                "allocated"
            };
            let _ = writeln!(out, "{what} by {} here:", thread(f.alloc_thread));
            let alloc_frame = push_stack(&mut out, f.alloc_stack, NOT_SAMPLED);
            summary_frame = summary_frame.or(alloc_frame);
        }
    }
    match (f.kind, f.leaked) {
        (ReportKind::MemoryLeak, Some((blocks, bytes))) => {
            let _ = writeln!(
                out,
                "SUMMARY: allocscope: {bytes} byte(s) leaked in {blocks} allocation(s)."
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "SUMMARY: allocscope: {} {}",
                f.kind,
                summary_frame.unwrap_or_else(|| format!("{:#x}", f.address))
            );
        }
    }
    out
}

/// A copy of standard error taken when the first tracker starts (-1: none), for reports written
/// after the program closed fd 2: coreutils' programs close it at exit, before the exit-time leak
/// check, whose reports were lost (`tr` leaking 64 bytes printed nothing). Only used when a
/// write to fd 2 fails with EBADF, so a program that points fd 2 elsewhere is followed there.
/// Relaxed: set once, before any report, by the thread that registers the first state.
#[cfg(unix)]
static SPARE_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Takes the copy of fd 2 ([`SPARE_STDERR`]): a descriptor above the usual ones, closed at exec.
#[cfg(unix)]
pub(crate) fn keep_stderr() {
    // SAFETY: duplicates a descriptor; a closed fd 2 or a full table just fails (-1).
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
    // Relaxed: see `SPARE_STDERR`.
    SPARE_STDERR.store(fd, Ordering::Relaxed);
}

/// Writes text to standard error directly (no std lock, no allocation); to the copy of it
/// taken at the start when the program has closed fd 2.
pub(crate) fn print_raw(text: &str) {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut fd = 2;
    let mut bytes = text.as_bytes();
    while !bytes.is_empty() {
        // At most 1 GiB a call: the count is a c_uint on Windows.
        let count = bytes.len().min(1 << 30) as _;
        // SAFETY: writes from a valid slice to an open or closed descriptor (which fails).
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), count) };
        if n <= 0 {
            let error = std::io::Error::last_os_error();
            // EINTR: retry; EBADF on fd 2: the copy; anything else: standard error is gone.
            if n < 0 && error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            #[cfg(unix)]
            if n < 0 && fd == 2 && error.raw_os_error() == Some(libc::EBADF) {
                // Relaxed: see `SPARE_STDERR`.
                fd = SPARE_STDERR.load(Ordering::Relaxed);
                if fd >= 0 {
                    continue;
                }
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Writes one line to standard error.
pub(crate) fn print_line(line: &str) {
    print_raw(line);
    print_raw("\n");
}

//! The trace format: the one definition of everything a trace carries, with the writer and the
//! reader that every producer (the tracker's writer thread) and consumer (the viewer, `allocscope
//! report`) goes through.
//!
//! May touch: `std::io`, serde/postcard (payload encoding), crc32fast. Nothing here knows about
//! the allocator: a trace is plain data.
//!
//! # Layout
//!
//! ```text
//! file   = header frame*
//! header = MAGIC (8 bytes, "ALSCTRAC") | VERSION (u32, little endian)
//! frame  = length (u32 LE, 1..=MAX_FRAME_LEN) | crc32 of payload (u32 LE) | payload
//! payload = one `Record`, encoded with postcard (varint integers, so small values stay small)
//! ```
//!
//! The same bytes flow over the live Unix socket. A frame is the unit of survival: the writer
//! emits whole frames with one `write_all` each, so a process killed at any point leaves a file
//! whose every complete frame is readable; [`TraceReader`] stops cleanly at a partial last frame
//! and says so ([`Ending::Truncated`]). A frame whose checksum or payload does not decode is
//! garbage and yields [`TraceError`] — the reader never panics and never trusts a length before
//! checking it against [`MAX_FRAME_LEN`].
//!
//! # What a trace holds
//!
//! The first record is [`Record::Start`]. Then, in any order: [`Record::Modules`] (what is
//! mapped where, to symbolise addresses later), [`Record::Thread`], [`Record::Stack`] (a
//! de-duplicated call stack: raw return addresses, innermost first), [`Record::Batch`] (one
//! thread's alloc/free/realloc events in order), [`Record::Snapshot`] (heap totals and the page
//! map), [`Record::Report`] (a corruption or leak report), [`Record::Dropped`] (how many events
//! were dropped because the writer fell behind). A stack definition is always written before the
//! first batch that names it. [`Record::End`] marks a clean shutdown; its absence means the
//! traced process died. [`Record::Exec`] before it says the process went on as another program
//! (`exec`).
//!
//! # Versioning
//!
//! [`VERSION`] changes whenever an existing record changes shape. Readers refuse other versions
//! with [`TraceError::UnsupportedVersion`] rather than misreading them.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// First eight bytes of every trace.
pub const MAGIC: [u8; 8] = *b"ALSCTRAC";

/// Format version written after [`MAGIC`].
pub const VERSION: u32 = 1;

/// Largest payload a frame may carry. The writer splits anything larger; a reader treats a larger
/// length as garbage (it protects the reader from allocating on a corrupt length).
pub const MAX_FRAME_LEN: u32 = 16 << 20;

/// Bytes of the file header.
pub const HEADER_LEN: usize = 12;

/// Bytes in front of every frame's payload (length and checksum).
pub const FRAME_HEADER_LEN: usize = 8;

/// Stack id meaning "no stack recorded" (the allocation was not sampled).
pub const NO_STACK: u32 = 0;

/// One unit of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Who is traced, written first.
    Start(TraceStart),
    /// The loaded modules (replaces any earlier map: written again after `dlopen`).
    Modules(Vec<Module>),
    /// A thread got its trace id.
    Thread(ThreadInfo),
    /// A call stack, written once, before any event that names its id.
    Stack(StackDef),
    /// Events of one thread, in the order that thread performed them.
    Batch(EventBatch),
    /// Heap totals and the page map at one moment.
    Snapshot(HeapSnapshot),
    /// A corruption or leak report.
    Report(ReportRecord),
    /// Events lost so far because the writer fell behind (cumulative counts).
    Dropped(DroppedCounts),
    /// The process shut down cleanly; nothing follows.
    End(TraceEnd),
    /// The process replaced its program (`exec`): its trace ends here ([`Record::End`]
    /// follows), and the new program's, if it is traced, is another file.
    Exec(TraceExec),
}

/// The first record of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStart {
    /// OS process id of the traced program.
    pub pid: u32,
    /// Path of the program's executable, if known.
    pub program: String,
    /// Wall-clock time of the trace's time zero, in nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
    /// The OS page size (for the fragmentation map).
    pub page_size: u64,
    /// The options in force, in `ALLOCSCOPE_OPTIONS` syntax.
    pub options: String,
    /// Version of the tracker that wrote the trace.
    pub tracker_version: String,
}

/// A loaded executable or shared library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// File path (the executable's real path for the main program).
    pub path: String,
    /// Load bias: add it to an address in the file's ELF view to get the run-time address.
    pub bias: u64,
    /// Mapped segments in run-time addresses.
    pub segments: Vec<Segment>,
}

/// One loaded segment of a [`Module`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First run-time address.
    pub start: u64,
    /// One past the last run-time address.
    pub end: u64,
    /// Whether the segment holds code.
    pub executable: bool,
}

/// A thread's trace id and what is known of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// The id events and reports use (small, assigned in order of first allocation).
    pub id: u32,
    /// The OS thread id.
    pub os_tid: u64,
    /// The thread's name, if it had one when it first allocated.
    pub name: Option<String>,
}

/// A de-duplicated call stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDef {
    /// Id used by events and reports (never [`NO_STACK`]).
    pub id: u32,
    /// Return addresses, innermost first (the allocation call site is among the first few).
    pub frames: Vec<u64>,
}

/// Events of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The thread's trace id (see [`ThreadInfo`]).
    pub thread: u32,
    /// Events in program order.
    pub events: Vec<Event>,
}

/// What happened to one block. Times are nanoseconds since the trace's time zero; stack ids
/// refer to [`StackDef`]s ([`NO_STACK`] when not sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A block was handed out.
    Alloc {
        /// When.
        time_ns: u64,
        /// The block's address as the program sees it.
        addr: u64,
        /// Requested size in bytes.
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
        /// Allocation stack.
        stack: u32,
    },
    /// A block was given back.
    Free {
        /// When.
        time_ns: u64,
        /// The block's address.
        addr: u64,
        /// The block's requested size.
        size: u64,
        /// Stack of the free (recorded for sampled blocks only).
        stack: u32,
    },
    /// A block was resized (possibly moved).
    Realloc {
        /// When.
        time_ns: u64,
        /// Address before.
        old_addr: u64,
        /// Address after.
        new_addr: u64,
        /// Size before.
        old_size: u64,
        /// Size after.
        new_size: u64,
        /// Alignment.
        align: u64,
        /// Stack of the call.
        stack: u32,
    },
}

impl Event {
    /// The event's time in nanoseconds since the trace's time zero.
    pub fn time_ns(&self) -> u64 {
        match *self {
            Event::Alloc { time_ns, .. }
            | Event::Free { time_ns, .. }
            | Event::Realloc { time_ns, .. } => time_ns,
        }
    }
}

/// Heap-wide totals as the core allocator counts them (mirrors `allocscope_core::stats::Stats`
/// so the format does not change when the core's type does).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapTotals {
    /// Bytes in live blocks.
    pub live_bytes: u64,
    /// Bytes of committed memory.
    pub committed_bytes: u64,
    /// Bytes of reserved address space.
    pub reserved_bytes: u64,
    /// Allocations since start.
    pub allocs: u64,
    /// Frees since start.
    pub frees: u64,
    /// Large blocks alive.
    pub large_blocks: u64,
    /// Per size class: (block size, live blocks, pages).
    pub classes: Vec<ClassTotals>,
}

/// One size class in a [`HeapTotals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTotals {
    /// Block size in bytes.
    pub block_size: u64,
    /// Live blocks.
    pub live_blocks: u64,
    /// Pages assigned.
    pub pages: u64,
}

/// One page of the core heap (mirrors `allocscope_core::stats::PageInfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRecord {
    /// First byte.
    pub address: u64,
    /// Bytes spanned.
    pub size: u64,
    /// Size class, `None` for an unused page or a large block.
    pub class: Option<u8>,
    /// Block size (0 when unused).
    pub block_size: u64,
    /// Blocks the page can hold.
    pub capacity: u32,
    /// Blocks in use.
    pub used: u32,
    /// Whether the page is committed.
    pub committed: bool,
}

/// Heap state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapSnapshot {
    /// When (nanoseconds since time zero).
    pub time_ns: u64,
    /// The core allocator's totals.
    pub heap: HeapTotals,
    /// The core allocator's pages.
    pub pages: Vec<PageRecord>,
    /// Blocks the program holds, as the tracker counts them.
    pub tracked_live_blocks: u64,
    /// Bytes the program holds (requested sizes).
    pub tracked_live_bytes: u64,
    /// Bytes the tracker itself uses (tables, red zones, quarantine, buffers).
    pub overhead_bytes: u64,
}

/// The kinds of report, named as AddressSanitizer names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReportKind {
    /// A write or read past the end of a block.
    HeapBufferOverflow,
    /// A write or read before the start of a block.
    HeapBufferUnderflow,
    /// An access to a freed block.
    UseAfterFree,
    /// A block freed twice.
    DoubleFree,
    /// A pointer freed that this heap never gave, or one inside a block.
    InvalidFree,
    /// A block freed with a different size or alignment than it was allocated with.
    AllocDeallocMismatch,
    /// Blocks still allocated and unreachable at a leak check.
    MemoryLeak,
}

impl ReportKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ReportKind; 7] = [
        ReportKind::HeapBufferOverflow,
        ReportKind::HeapBufferUnderflow,
        ReportKind::UseAfterFree,
        ReportKind::DoubleFree,
        ReportKind::InvalidFree,
        ReportKind::AllocDeallocMismatch,
        ReportKind::MemoryLeak,
    ];

    /// AddressSanitizer's word for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::HeapBufferOverflow => "heap-buffer-overflow",
            ReportKind::HeapBufferUnderflow => "heap-buffer-underflow",
            ReportKind::UseAfterFree => "use-after-free",
            ReportKind::DoubleFree => "double-free",
            ReportKind::InvalidFree => "invalid-free",
            ReportKind::AllocDeallocMismatch => "alloc-dealloc-mismatch",
            ReportKind::MemoryLeak => "memory-leak",
        }
    }
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A report as the trace keeps it: the facts, the stacks by id, and the text as printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// When (nanoseconds since time zero).
    pub time_ns: u64,
    /// What went wrong.
    pub kind: ReportKind,
    /// The bad address (for a leak: the first leaked block).
    pub address: u64,
    /// Start of the block concerned, if one is known.
    pub block_start: Option<u64>,
    /// Requested size of that block.
    pub block_size: Option<u64>,
    /// Offset of the bad byte from the block's start (negative: before it).
    pub offset: Option<i64>,
    /// Thread that hit the problem.
    pub thread: u32,
    /// Where the problem was detected (free call, faulting access, scan).
    pub access_stack: u32,
    /// Where the block was allocated.
    pub alloc_stack: u32,
    /// Where the block was freed.
    pub free_stack: u32,
    /// The report as printed, symbolised.
    pub text: String,
}

/// Cumulative counts of what the tracker could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedCounts {
    /// Events dropped because the writer lagged.
    pub events: u64,
    /// Batches those events came in.
    pub batches: u64,
}

/// The clean-shutdown marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEnd {
    /// When (nanoseconds since time zero).
    pub time_ns: u64,
    /// Events written in total.
    pub events_written: u64,
    /// Final drop counts.
    pub dropped: DroppedCounts,
}

/// The marker of a trace ended by an `exec` of the traced process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceExec {
    /// When (nanoseconds since time zero).
    pub time_ns: u64,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a trace could not be read.
#[derive(Debug)]
pub enum TraceError {
    /// The underlying reader failed.
    Io(io::Error),
    /// The first bytes are not [`MAGIC`]: not a trace.
    NotATrace,
    /// A trace of another format version.
    UnsupportedVersion(u32),
    /// A frame at `offset` is damaged (bad length, checksum or payload).
    Corrupt {
        /// Byte offset of the frame's header in the stream.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Io(e) => write!(f, "cannot read trace: {e}"),
            TraceError::NotATrace => f.write_str("not an allocscope trace (bad magic bytes)"),
            TraceError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "trace format version {v} is not supported (this build reads {VERSION})"
                )
            }
            TraceError::Corrupt { offset, reason } => {
                write!(f, "trace is corrupt at byte {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for TraceError {}

impl From<io::Error> for TraceError {
    fn from(e: io::Error) -> Self {
        TraceError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Writes a trace: the header on creation, then one frame per [`TraceWriter::write`].
pub struct TraceWriter<W: Write> {
    out: W,
    /// Reused encoding buffer: the frame header's 8 bytes, then the payload.
    buf: Vec<u8>,
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header to `out`.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&header)?;
        Ok(TraceWriter {
            out,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Appends one record as one frame (a single `write_all`, so it lands whole or is the
    /// trace's truncated tail). A record too large for one frame is refused with
    /// `InvalidInput`; [`Record::Batch`]es are split by the producer long before that.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let buf = std::mem::take(&mut self.buf);
        let mut buf = postcard::to_extend(record, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let payload_len = buf.len() - FRAME_HEADER_LEN;
        let result = if payload_len == 0 || payload_len > MAX_FRAME_LEN as usize {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large for one frame",
            ))
        } else {
            let crc = crc32fast::hash(&buf[FRAME_HEADER_LEN..]);
            buf[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
            self.out.write_all(&buf)
        };
        self.buf = buf;
        result
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Gives the underlying writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// How a read trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The stream ended exactly at a frame boundary.
    Clean,
    /// The stream ended inside a frame starting at this offset (the writer was killed); every
    /// frame before it was read.
    Truncated {
        /// Byte offset of the partial frame.
        offset: u64,
    },
}

/// Reads frames back. Stops with `Ok(None)` at the end of the stream, complete or truncated
/// (see [`TraceReader::ending`]); any damage inside the stream is a [`TraceError`].
pub struct TraceReader<R: Read> {
    input: R,
    offset: u64,
    ending: Option<Ending>,
    payload: Vec<u8>,
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, TraceError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut input, &mut header)?;
        if got < MAGIC.len() || header[..8] != MAGIC {
            return Err(TraceError::NotATrace);
        }
        if got < HEADER_LEN {
            return Err(TraceError::Corrupt {
                offset: 8,
                reason: "header cut short",
            });
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION {
            return Err(TraceError::UnsupportedVersion(version));
        }
        Ok(TraceReader {
            input,
            offset: HEADER_LEN as u64,
            ending: None,
            payload: Vec::new(),
        })
    }

    /// The next record, or `None` at the end of the stream.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        if self.ending.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        let mut head = [0u8; FRAME_HEADER_LEN];
        let got = read_full(&mut self.input, &mut head)?;
        if got == 0 {
            self.ending = Some(Ending::Clean);
            return Ok(None);
        }
        if got < FRAME_HEADER_LEN {
            self.ending = Some(Ending::Truncated { offset: start });
            return Ok(None);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(TraceError::Corrupt {
                offset: start,
                reason: "impossible frame length",
            });
        }
        // Read through `take` so that a corrupt but plausible length costs only the bytes that
        // are really there, never a preallocation of `len`.
        self.payload.clear();
        let got = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.payload)?;
        if got < len as usize {
            self.ending = Some(Ending::Truncated { offset: start });
            return Ok(None);
        }
        if crc32fast::hash(&self.payload) != crc {
            return Err(TraceError::Corrupt {
                offset: start,
                reason: "checksum mismatch",
            });
        }
        let record = postcard::from_bytes(&self.payload).map_err(|_| TraceError::Corrupt {
            offset: start,
            reason: "payload does not decode",
        })?;
        self.offset = start + FRAME_HEADER_LEN as u64 + u64::from(len);
        Ok(Some(record))
    }

    /// How the stream ended; `None` until [`TraceReader::next_record`] has returned `None`.
    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                // Nothing after damage is trusted: end the iteration.
                self.ending = Some(Ending::Truncated {
                    offset: self.offset,
                });
                Some(Err(e))
            }
        }
    }
}

/// A whole trace in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Every complete record, in file order.
    pub records: Vec<Record>,
    /// Whether the file ended cleanly or inside a frame.
    pub ending: Ending,
}

/// Reads every complete record of a trace file (a truncated tail is not an error).
pub fn read_trace_file(path: &Path) -> Result<Trace, TraceError> {
    let file = std::fs::File::open(path)?;
    read_trace(io::BufReader::new(file))
}

/// Reads every complete record from `input` (a truncated tail is not an error).
pub fn read_trace<R: Read>(input: R) -> Result<Trace, TraceError> {
    let mut reader = TraceReader::new(input)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    let ending = reader.ending().unwrap_or(Ending::Clean);
    Ok(Trace { records, ending })
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Start(TraceStart {
                pid: 42,
                program: "/bin/prog".into(),
                unix_time_ns: 1,
                page_size: 4096,
                options: "sample=1".into(),
                tracker_version: "0.1.0".into(),
            }),
            Record::Stack(StackDef {
                id: 1,
                frames: vec![0x1000, 0x2000],
            }),
            Record::Batch(EventBatch {
                thread: 1,
                events: vec![
                    Event::Alloc {
                        time_ns: 5,
                        addr: 0x10,
                        size: 8,
                        align: 8,
                        stack: 1,
                    },
                    Event::Free {
                        time_ns: 6,
                        addr: 0x10,
                        size: 8,
                        stack: NO_STACK,
                    },
                ],
            }),
            Record::Exec(TraceExec { time_ns: 7 }),
            Record::End(TraceEnd::default()),
        ]
    }

    fn encode(records: &[Record]) -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn round_trip_keeps_every_record() {
        let records = sample_records();
        let trace = read_trace(&encode(&records)[..]).unwrap();
        assert_eq!(trace.records, records);
        assert_eq!(trace.ending, Ending::Clean);
    }

    #[test]
    fn every_truncation_point_yields_the_complete_prefix() {
        let records = sample_records();
        let bytes = encode(&records);
        // Frame boundaries, to know how many records each prefix holds.
        let mut boundaries = vec![HEADER_LEN];
        for r in &records {
            let one = encode(std::slice::from_ref(r)).len() - HEADER_LEN;
            boundaries.push(boundaries.last().unwrap() + one);
        }
        for cut in HEADER_LEN..bytes.len() {
            let trace = read_trace(&bytes[..cut]).unwrap();
            let complete = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
            assert_eq!(trace.records, records[..complete], "cut at {cut}");
            let at_boundary = boundaries.contains(&cut);
            assert_eq!(trace.ending == Ending::Clean, at_boundary, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            read_trace(&b"hello world, not a trace"[..]),
            Err(TraceError::NotATrace)
        ));
        let mut bytes = encode(&sample_records());
        bytes[8] = 9;
        assert!(matches!(
            read_trace(&bytes[..]),
            Err(TraceError::UnsupportedVersion(9))
        ));
        let mut bytes = encode(&sample_records());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            read_trace(&bytes[..]),
            Err(TraceError::Corrupt { .. })
        ));
        let mut bytes = encode(&sample_records());
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_trace(&bytes[..]),
            Err(TraceError::Corrupt { .. })
        ));
    }

    #[test]
    fn report_kinds_use_asan_words() {
        let words: Vec<&str> = ReportKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            words,
            [
                "heap-buffer-overflow",
                "heap-buffer-underflow",
                "use-after-free",
                "double-free",
                "invalid-free",
                "alloc-dealloc-mismatch",
                "memory-leak"
            ]
        );
    }
}

//! The event stream: per-thread buffers, a bounded queue of full batches, and the one writer
//! thread that owns all I/O (trace file and live Unix socket).
//!
//! ```text
//! thread: event -> its EventBuffer -> full? -> data queue (bounded, wait <= stream_wait) --+
//! reports, thread names -> control queue (unbounded: never dropped) ---------------------+-> writer
//! writer: stack defs first, then the batch -> frames (trace_format) -> file | socket clients
//!         every snapshot interval: heap snapshot, module map if changed, drop counts
//! ```
//!
//! Memory is bounded by the data queue's capacity (`stream_buffer` bytes of batches): when the
//! writer cannot keep up for longer than `stream_wait`, the batch is dropped and counted, and
//! the count goes into the trace — the program is never blocked for good. Reports travel on
//! the control queue, which is never dropped (reports are rare). Everything here runs with the
//! re-entrancy flag set, so its own allocations are internal.
//!
//! May touch: crossbeam-channel, `std::fs`, `std::os::unix::net`, [`crate::trace_format`],
//! [`crate::stacks`] (to write stack definitions), [`crate::modules`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use allocscope_core::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

#[cfg(windows)]
use crate::windows::{UnixListener, UnixStream};

use crate::options::{expand_pid, Options};
use crate::thread_state::{enter_always, monotonic_ns, thread_id, Local};
use crate::trace_format::{
    DroppedCounts, Event, EventBatch, HeapSnapshot, Record, ReportRecord, StackDef, ThreadInfo,
    TraceEnd, TraceExec, TraceStart, TraceWriter,
};
use crate::{modules, stacks};

/// Most events in one frame when a large batch is written (keeps frames far below the limit).
const EVENTS_PER_FRAME: usize = 32 * 1024;

/// A batch of one thread's events on its way to the writer.
struct Batch {
    thread: u32,
    events: Vec<Event>,
}

/// Rare messages that must not be dropped.
enum Control {
    Thread(ThreadInfo),
    Report(ReportRecord),
    /// Write everything queued so far, flush, and answer.
    Flush(Sender<()>),
    /// As `Flush`, then write the end marker and stop.
    Finish(Sender<()>),
    /// As `Finish` for an `exec` about to replace the program, but the writer waits for
    /// `Resume` (the exec failed): the end marker goes to the trace file alone, and the writer
    /// remembers where it began.
    EndForExec(Sender<()>),
    /// The exec failed: the end marker is cut off the file and the trace goes on.
    Resume(Sender<()>),
}

/// Produces a heap snapshot at the given trace time (supplied by the tracker's state).
pub(crate) type SnapshotFn = Box<dyn FnMut(u64) -> HeapSnapshot + Send>;

/// A thread's buffer is sent once its oldest event is this old (100 ms), full or not.
const BATCH_AGE_NS: u64 = 100_000_000;

/// One tracker's connection to its writer thread.
pub(crate) struct Stream {
    data_tx: Sender<Batch>,
    ctl_tx: Sender<Control>,
    /// Monotonic time of the trace's time zero.
    start_ns: u64,
    batch_events: usize,
    wait: Duration,
    /// Relaxed counters: statistics, read by the writer for `Dropped` records.
    dropped_events: AtomicU64,
    dropped_batches: AtomicU64,
    /// Set once `finish` ran; later events are dropped silently (the process is exiting).
    finished: AtomicBool,
    /// Set while the trace is ended for an exec ([`Stream::end_for_exec`]), until the exec
    /// fails ([`Stream::resume_after_failed_exec`]). Events keep being queued meanwhile.
    ended_for_exec: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread's trace id (0 until it runs). What that thread allocated before its
    /// re-entrancy flag was set — the thread library's start-up, glibc's TLS-destructor node —
    /// is the tracker's, not the program's: the leak check skips it ([`Stream::writer_thread`]).
    writer_thread: AtomicU32,
    /// The process the writer runs in: a `vfork` child shares this memory (and this writer)
    /// with its parent, but not the trace.
    pid: u32,
    /// Events of threads past their thread-locals ([`Stream::send_late`]), their number, and
    /// the most it may hold (as many as the data queue, 4096 at least) before they are dropped
    /// and counted.
    late: Mutex<Vec<Batch>>,
    late_events: AtomicUsize,
    late_limit: usize,
}

/// A thread's buffer of events for one stream.
pub(crate) struct EventBuffer {
    stream: &'static Stream,
    thread: u32,
    events: Vec<Event>,
}

impl EventBuffer {
    /// Hands the buffered events to the writer (thread exit).
    pub(crate) fn flush_and_close(mut self) {
        self.send();
    }

    fn send(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::replace(
            &mut self.events,
            Vec::with_capacity(self.stream.batch_events),
        );
        self.stream.send_batch(Batch {
            thread: self.thread,
            events,
        });
    }
}

impl Stream {
    /// Opens the outputs and starts the writer thread. Must be called with the re-entrancy flag
    /// set. The error is a one-line message for the user.
    pub(crate) fn start(
        options: &Options,
        snapshot: SnapshotFn,
    ) -> Result<&'static Stream, String> {
        let mut sinks = Vec::new();
        #[cfg(unix)]
        detach_in_forked_children();
        if let Some(path) = &options.trace_path {
            let (path, file) = open_trace(&expand_pid(path))?;
            let writer = TraceWriter::new(BufWriter::with_capacity(256 * 1024, file))
                .and_then(|mut w| w.flush().map(|()| w))
                .map_err(|e| format!("cannot write trace file {}: {e}", path.display()))?;
            sinks.push(Sink::File(writer));
        }
        let listener = match &options.socket_path {
            Some(path) => Some(listen(&expand_pid(path))?),
            None => None,
        };
        let per_batch = options.batch_events.max(1) * core::mem::size_of::<Event>();
        let capacity = (options.stream_buffer_bytes / per_batch).max(2);
        let (data_tx, data_rx) = bounded(capacity);
        let (ctl_tx, ctl_rx) = unbounded();
        let stream: &'static Stream = Box::leak(Box::new(Stream {
            data_tx,
            ctl_tx,
            start_ns: monotonic_ns(),
            batch_events: options.batch_events,
            wait: options.stream_wait,
            dropped_events: AtomicU64::new(0),
            dropped_batches: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            ended_for_exec: AtomicBool::new(false),
            writer: Mutex::new(None),
            writer_thread: AtomicU32::new(0),
            pid: std::process::id(),
            late: Mutex::new(Vec::new()),
            late_events: AtomicUsize::new(0),
            late_limit: capacity
                .saturating_mul(options.batch_events.max(1))
                .max(4096),
        }));
        let start = TraceStart {
            pid: std::process::id(),
            program: std::fs::read_link("/proc/self/exe")
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            unix_time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            page_size: crate::os_memory::page_size() as u64,
            options: options.to_string(),
            tracker_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let writer = Writer {
            stream,
            data_rx,
            ctl_rx,
            sinks,
            listener,
            start,
            threads: Vec::new(),
            modules: Vec::new(),
            modules_fingerprint: 0,
            written_stacks: HashSet::new(),
            snapshot,
            snapshot_interval: options.snapshot_interval,
            last_dropped: DroppedCounts::default(),
            events_written: 0,
        };
        let handle = std::thread::Builder::new()
            .name("allocscope-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the trace writer thread: {e}"))?;
        *stream.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(stream)
    }

    /// Nanoseconds since the trace's time zero.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        monotonic_ns().saturating_sub(self.start_ns)
    }

    /// Adds an event to the calling thread's buffer (or, during thread teardown, sends it
    /// alone). Call with the re-entrancy flag set.
    pub(crate) fn record(&'static self, local: Option<&Local>, event: Event) {
        let Some(local) = local else {
            self.send_late(event);
            return;
        };
        let Ok(mut slot) = local.events.try_borrow_mut() else {
            self.send_batch(Batch {
                thread: thread_id(),
                events: vec![event],
            });
            return;
        };
        let mine = matches!(&*slot, Some(b) if core::ptr::eq(b.stream, self));
        if !mine {
            if let Some(mut other) = slot.take() {
                other.send();
            }
            self.announce_thread();
            *slot = Some(EventBuffer {
                stream: self,
                thread: thread_id(),
                events: Vec::with_capacity(self.batch_events),
            });
        }
        if let Some(buffer) = slot.as_mut() {
            let time = event.time_ns();
            buffer.events.push(event);
            // Full, or holding events older than `BATCH_AGE_NS`: a thread that allocates
            // slowly is seen (by a live viewer, in a trace cut short) within that time, not
            // only once it has filled a batch. (An idle thread's last events wait for its next
            // event or its exit: no other thread may take its buffer.)
            let oldest = buffer.events.first().map_or(time, Event::time_ns);
            if buffer.events.len() >= self.batch_events
                || time.saturating_sub(oldest) >= BATCH_AGE_NS
            {
                buffer.send();
            }
        }
    }

    /// Sends the calling thread's partial buffer now.
    pub(crate) fn flush_current_thread(&'static self, local: Option<&Local>) {
        if let Some(local) = local {
            if let Ok(mut slot) = local.events.try_borrow_mut() {
                if let Some(buffer) = slot.as_mut() {
                    if core::ptr::eq(buffer.stream, self) {
                        buffer.send();
                    }
                }
            }
        }
    }

    #[cfg(windows)]
    fn announce_thread(&self) {
        let _ = self.ctl_tx.send(Control::Thread(ThreadInfo {
            id: thread_id(),
            os_tid: crate::windows::os_thread_id(),
            name: None,
        }));
    }

    #[cfg(unix)]
    fn announce_thread(&self) {
        let mut name = [0u8; 64];
        // SAFETY: pthread_getname_np writes a NUL-terminated name of at most 64 bytes into our
        // buffer (16 on Linux).
        let ok = unsafe {
            libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), name.len())
        } == 0;
        let name = ok
            .then(|| {
                let len = name.iter().position(|&b| b == 0).unwrap_or(0);
                String::from_utf8_lossy(&name[..len]).into_owned()
            })
            .filter(|n| !n.is_empty());
        // SAFETY: gettid has no preconditions.
        let os_tid = unsafe { libc::gettid() } as u64;
        let _ = self.ctl_tx.send(Control::Thread(ThreadInfo {
            id: thread_id(),
            os_tid,
            name,
        }));
    }

    fn send_batch(&self, batch: Batch) {
        // Relaxed: a flag checked for speed; a batch racing with `finish` is simply dropped.
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let n = batch.events.len() as u64;
        let sent = match self.data_tx.try_send(batch) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(batch)) => {
                self.data_tx.send_timeout(batch, self.wait).is_ok()
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            // Relaxed: statistics.
            self.dropped_events.fetch_add(n, Ordering::Relaxed);
            self.dropped_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues an event of a thread with no `Local` (its thread-locals destroyed: the last
    /// frees of its exit path) for the writer, which takes such events at its next wake-up
    /// (within 20 ms). Not through the channels: crossbeam's send and the wake-up of a waiting
    /// receiver need the sending thread's thread-locals (its `thread::current`), and std
    /// panics when asked for them that late (inside `free`, an abort). glibc frees the TLS
    /// blocks of cached thread stacks from each exiting detached thread past that point.
    fn send_late(&self, event: Event) {
        // Relaxed: see `send_batch`.
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let thread = thread_id();
        let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed: changed under the lock only.
        if self.late_events.load(Ordering::Relaxed) >= self.late_limit {
            drop(late);
            // Relaxed: statistics.
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
            self.dropped_batches.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match late.last_mut() {
            Some(batch) if batch.thread == thread => batch.events.push(event),
            _ => late.push(Batch {
                thread,
                events: vec![event],
            }),
        }
        // Relaxed: the writer takes the events under the lock; the count only tells it to.
        self.late_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The events queued by [`Stream::send_late`] so far, in the order they came.
    fn take_late(&self) -> Vec<Batch> {
        // Relaxed: a hint; an event queued just after this load is taken at the next call.
        if self.late_events.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
        self.late_events.store(0, Ordering::Relaxed);
        std::mem::take(&mut *late)
    }

    /// Queues a report (never dropped, while the stream runs).
    pub(crate) fn send_report(&self, report: ReportRecord) {
        // Relaxed: see `send_batch`.
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let _ = self.ctl_tx.send(Control::Report(report));
    }

    /// The writer thread's trace id, 0 before it started.
    pub(crate) fn writer_thread(&self) -> u32 {
        // Relaxed: see the store in `Writer::run`.
        self.writer_thread.load(Ordering::Relaxed)
    }

    /// Events dropped so far.
    pub(crate) fn dropped(&self) -> DroppedCounts {
        DroppedCounts {
            // Relaxed: statistics.
            events: self.dropped_events.load(Ordering::Relaxed),
            batches: self.dropped_batches.load(Ordering::Relaxed),
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written and flushed.
    pub(crate) fn flush(&'static self, local: Option<&Local>, timeout: Duration) -> bool {
        // Relaxed: see `finish`.
        if self.finished.load(Ordering::Relaxed) {
            return false;
        }
        self.flush_current_thread(local);
        let (tx, rx) = bounded(1);
        self.control_now(Control::Flush(tx)) && rx.recv_timeout(timeout).is_ok()
    }

    /// Sends `control` and wakes the writer for it: the writer waits on the data queue (up to
    /// its 20 ms tick) and reads control messages between batches, so an empty batch, which
    /// writes nothing, makes it read this one now. Those who wait for an answer (a flush, the
    /// end of the trace at exit, each exec attempt: a shell tries every `PATH` entry) waited
    /// the tick out: ten failed execs took 370 ms under `trace=`, none without. `false` when
    /// the writer is gone.
    fn control_now(&self, control: Control) -> bool {
        if self.ctl_tx.send(control).is_err() {
            return false;
        }
        // A full queue has batches the writer is taking already.
        let _ = self.data_tx.try_send(Batch {
            thread: 0,
            events: Vec::new(),
        });
        true
    }

    /// [`Stream::finish`] for a process about to end without running its exit hooks (`_exit`):
    /// only in the process whose writer this is — a `vfork` child runs in its parent's memory,
    /// and this stream is the parent's.
    pub(crate) fn finish_in_own_process(&'static self, local: Option<&Local>, timeout: Duration) {
        if std::process::id() == self.pid {
            self.finish(local, timeout);
        }
    }

    /// Ends the trace for an `exec` about to replace the program (in the process whose writer
    /// this is, as [`Stream::finish_in_own_process`]): everything queued is written, and the
    /// end marker to the trace file, so that a program that becomes another leaves its whole
    /// trace. The writer stays, waiting: an exec that fails returns to the program, whose
    /// trace [`Stream::resume_after_failed_exec`] takes up again. (Live clients get no end
    /// marker: after a successful exec their connection closes.)
    pub(crate) fn end_for_exec(&'static self, local: Option<&Local>, timeout: Duration) {
        // Relaxed: see `send_batch`. A forked child's copy has no writer to end.
        if std::process::id() != self.pid || self.finished.load(Ordering::Relaxed) {
            return;
        }
        // Relaxed: only this flag's own value matters (a second thread's exec during the first
        // one's finds the trace ended already); the control queue orders the writer's work.
        if self.ended_for_exec.swap(true, Ordering::Relaxed) {
            return;
        }
        self.flush_current_thread(local);
        let (tx, rx) = bounded(1);
        if self.control_now(Control::EndForExec(tx)) {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// After an exec that failed: the end marker [`Stream::end_for_exec`] wrote is taken back
    /// and the trace goes on, with what was queued meanwhile.
    pub(crate) fn resume_after_failed_exec(&'static self, timeout: Duration) {
        // Relaxed: as in `end_for_exec`.
        if std::process::id() != self.pid || !self.ended_for_exec.swap(false, Ordering::Relaxed) {
            return;
        }
        let (tx, rx) = bounded(1);
        if self.control_now(Control::Resume(tx)) {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// Writes everything queued, the end marker, and stops the writer (process exit).
    pub(crate) fn finish(&'static self, local: Option<&Local>, timeout: Duration) {
        // Relaxed: see `send_batch`. Finished already, or a forked child's copy of its parent's
        // stream (see `detach_in_forked_children`): there is no writer to wait for.
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        self.flush_current_thread(local);
        let (tx, rx) = bounded(1);
        if self.control_now(Control::Finish(tx)) {
            let _ = rx.recv_timeout(timeout);
        }
        // Relaxed: see `send_batch`.
        self.finished.store(true, Ordering::Relaxed);
    }
}

/// Opens the trace file for this process. One path is often shared by a whole process tree
/// (the options travel in the environment to every program a traced shell runs): the first
/// process to take the file's lock (`flock`, held for the process's life) owns the path and
/// truncates it; one that finds it locked by a live tracer — a program exec'd by a traced
/// parent — writes `<path>.<pid>` instead of clobbering the parent's trace (it used to
/// truncate it, leaving the parent a trace without its header). A program exec'd in place (the
/// same process: `exec prog` in a shell, `env`, `nice`) finds the lock gone with the program it
/// replaced, whose trace is still there under this pid: it too moves on, to `<path>.<pid>`, and
/// a third program of the process to `<path>.<pid>.3` (it used to truncate its predecessor's),
/// and it holds the lock of each predecessor's trace, as the predecessor did.
fn open_trace(path: &std::path::Path) -> Result<(std::path::PathBuf, File), String> {
    let open = |path: &std::path::Path| {
        let mut open = std::fs::OpenOptions::new();
        // Not truncated before the lock says the file is ours; read for its header.
        open.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        open.mode(0o600);
        open.open(path)
            .map_err(|e| format!("cannot create trace file {}: {e}", path.display()))
    };
    let pid = std::process::id();
    let mut candidate = path.to_path_buf();
    for n in 1..=64u32 {
        let file = open(&candidate)?;
        if lock_exclusive(&file) {
            if !traced_by_process(&file, pid) {
                file.set_len(0)
                    .map_err(|e| format!("cannot write trace file {}: {e}", candidate.display()))?;
                return Ok((candidate, file));
            }
            // A trace of this process's earlier program: its lock went with that program's
            // descriptor, and is held again here, for this program's life (the descriptor
            // closes at its exec), so that no program this one starts takes the path over.
            core::mem::forget(file);
        }
        candidate = match n {
            1 => format!("{}.{pid}", path.display()),
            _ => format!("{}.{pid}.{}", path.display(), n + 1),
        }
        .into();
    }
    Err(format!(
        "cannot create trace file {}: it and 63 names beside it are other traces of this \
         process; remove them or choose another trace= path",
        path.display()
    ))
}

/// Whether `file` holds a trace that process `pid` wrote — this very process, before an exec
/// (a reused pid's stale trace counts too: it is skipped, not lost). Leaves the file's offset
/// at 0.
fn traced_by_process(file: &File, pid: u32) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut reader = std::io::BufReader::with_capacity(4096, file);
    let ours = crate::trace_format::TraceReader::new(&mut reader)
        .ok()
        .and_then(|mut r| r.next_record().ok().flatten())
        .is_some_and(|record| matches!(record, Record::Start(start) if start.pid == pid));
    let mut file = file;
    // A file whose offset cannot be reset is not one to write a trace into either.
    ours || file.seek(SeekFrom::Start(0)).is_err()
}

/// Takes `file`'s exclusive lock without waiting; `false` only when another open file holds it
/// (a file system without locks counts as taken by us).
#[cfg(unix)]
fn lock_exclusive(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid descriptor; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EWOULDBLOCK)
}

#[cfg(windows)]
fn lock_exclusive(_file: &File) -> bool {
    true
}

/// Registers (once) a fork handler: a child of a traced process inherits its parent's streams
/// but not their writer threads, so in the child every stream is marked finished — its events
/// are dropped instead of queued for nobody, and its exit does not wait for a writer that does
/// not exist. (A child that execs starts a tracker, and a trace, of its own.)
#[cfg(unix)]
fn detach_in_forked_children() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn child() {
        // Runs in the child right after fork, alone: only atomic loads and stores here (no
        // allocation, no lock another thread of the parent may have held).
        crate::state::for_each_state(|s| {
            if let Some(stream) = s.stream() {
                // Relaxed: the child has one thread.
                stream.finished.store(true, Ordering::Relaxed);
            }
        });
    }
    // Relaxed: a once-flag; the handler is idempotent, so a race registering it twice is
    // harmless.
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: `child` is an `extern "C" fn()` that never unwinds.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    }
}

#[cfg(windows)]
fn listen(path: &std::path::Path) -> Result<UnixListener, String> {
    Err(crate::windows::no_socket(path))
}

/// Creates the listening socket, readable and writable by the owner only.
#[cfg(unix)]
fn listen(path: &std::path::Path) -> Result<UnixListener, String> {
    // A stale socket from an earlier run would make bind fail.
    if std::fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    }) {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        format!(
            "cannot restrict socket {} to its owner: {e}",
            path.display()
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure socket {}: {e}", path.display()))?;
    Ok(listener)
}

enum Sink {
    File(TraceWriter<BufWriter<File>>),
    Client(TraceWriter<BufWriter<UnixStream>>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn RecordSink {
        match self {
            Sink::File(w) => w,
            Sink::Client(w) => w,
        }
    }
}

trait RecordSink {
    fn put(&mut self, record: &Record) -> std::io::Result<()>;
    fn flush_out(&mut self) -> std::io::Result<()>;
}

impl<W: Write> RecordSink for TraceWriter<W> {
    fn put(&mut self, record: &Record) -> std::io::Result<()> {
        self.write(record)
    }
    fn flush_out(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// The writer thread's state.
struct Writer {
    stream: &'static Stream,
    data_rx: Receiver<Batch>,
    ctl_rx: Receiver<Control>,
    sinks: Vec<Sink>,
    listener: Option<UnixListener>,
    /// Replayed to each new socket client so it can make sense of what follows.
    start: TraceStart,
    threads: Vec<ThreadInfo>,
    modules: Vec<crate::trace_format::Module>,
    modules_fingerprint: u64,
    written_stacks: HashSet<u32>,
    snapshot: SnapshotFn,
    snapshot_interval: Option<Duration>,
    last_dropped: DroppedCounts,
    events_written: u64,
}

impl Writer {
    fn run(mut self) {
        // Everything this thread allocates is the tracker's own.
        core::mem::forget(enter_always());
        // Relaxed: read by the leak check, which runs long after (at exit or on demand); a
        // check racing this very store could only miss the exclusion.
        self.stream
            .writer_thread
            .store(thread_id(), Ordering::Relaxed);
        self.put(&Record::Start(self.start.clone()));
        self.refresh_modules();
        let tick = self
            .snapshot_interval
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
        let mut next_snapshot = self.snapshot_interval.map(|i| Instant::now() + i);
        // The start record and module map go to disk at the first idle moment: a program that
        // leaves by `_exit` (dash does) runs no exit hook, and its trace must still say what
        // it is. (The file's magic was flushed when it was opened, in `Stream::start`.)
        let mut dirty = true;
        loop {
            while let Ok(control) = self.ctl_rx.try_recv() {
                if self.control(control) {
                    return;
                }
            }
            for batch in self.stream.take_late() {
                self.batch(batch);
                dirty = true;
            }
            // Wait for data, or for the tick; control messages are checked between batches.
            match self.data_rx.recv_timeout(if dirty {
                Duration::ZERO
            } else {
                tick.min(Duration::from_millis(20))
            }) {
                Ok(batch) => {
                    self.batch(batch);
                    dirty = true;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if dirty {
                self.flush_all();
                dirty = false;
            }
            self.accept_clients();
            if let Some(at) = next_snapshot {
                if Instant::now() >= at {
                    self.periodic();
                    next_snapshot = self.snapshot_interval.map(|i| Instant::now() + i);
                }
            }
        }
    }

    /// Handles one control message; `true` when the writer must stop.
    fn control(&mut self, control: Control) -> bool {
        match control {
            Control::Thread(info) => {
                self.put(&Record::Thread(info.clone()));
                self.threads.push(info);
            }
            Control::Report(report) => {
                for id in [report.access_stack, report.alloc_stack, report.free_stack] {
                    self.define_stack(id);
                }
                self.put(&Record::Report(report));
                self.flush_all();
            }
            Control::Flush(ack) => {
                self.drain();
                self.flush_all();
                let _ = ack.send(());
            }
            Control::Finish(ack) => {
                let end = self.write_out();
                self.put(&end);
                self.flush_all();
                let _ = ack.send(());
                return true;
            }
            Control::EndForExec(ack) => {
                let end = self.write_out();
                let exec = Record::Exec(TraceExec {
                    time_ns: self.stream.now(),
                });
                let cut = self.put_file_end(&[exec, end]);
                let _ = ack.send(());
                return self.wait_out_exec(cut);
            }
            // Not ended for an exec (a resume racing a second thread's exec): nothing to undo.
            Control::Resume(ack) => {
                let _ = ack.send(());
            }
        }
        false
    }

    /// Writes everything queued and flushes; returns the end marker to write.
    fn write_out(&mut self) -> Record {
        self.accept_clients();
        self.drain();
        self.periodic();
        self.flush_all();
        Record::End(TraceEnd {
            time_ns: self.stream.now(),
            events_written: self.events_written,
            dropped: self.stream.dropped(),
        })
    }

    /// Writes the `end` records to the trace file alone and flushes it; returns the file's
    /// length before them (where a failed exec cuts them off again), `None` without a file.
    fn put_file_end(&mut self, end: &[Record]) -> Option<u64> {
        let i = self.sinks.iter().position(|s| matches!(s, Sink::File(_)))?;
        let Sink::File(file) = &mut self.sinks[i] else {
            return None;
        };
        let before = file.get_ref().get_ref().metadata().ok()?.len();
        if end
            .iter()
            .try_for_each(|r| file.write(r))
            .and_then(|()| file.flush())
            .is_err()
        {
            self.sinks.remove(i);
            return None;
        }
        Some(before)
    }

    /// The trace is ended for an exec: waits for the exec's failure ([`Control::Resume`]) or
    /// the process's end. The exec's success ends the process image, this thread with it.
    /// Returns whether the writer must stop (`Finish`); thread and report records that arrive
    /// meanwhile are written after the resume.
    fn wait_out_exec(&mut self, cut: Option<u64>) -> bool {
        let mut held = Vec::new();
        while let Ok(control) = self.ctl_rx.recv() {
            match control {
                Control::Resume(ack) => {
                    self.cut_end_marker(cut);
                    let _ = ack.send(());
                    return held.into_iter().any(|c| self.control(c));
                }
                // The trace has its end already.
                Control::Finish(ack) => {
                    let _ = ack.send(());
                    return true;
                }
                Control::Flush(ack) | Control::EndForExec(ack) => {
                    let _ = ack.send(());
                }
                other => held.push(other),
            }
        }
        true
    }

    /// Takes the end marker off the trace file: its length back to `cut`, and the writing
    /// position with it. A file that cannot be cut stops being written (a trace that goes on
    /// after its end marker would be read as ending there).
    fn cut_end_marker(&mut self, cut: Option<u64>) {
        use std::io::{Seek, SeekFrom};
        let Some(len) = cut else { return };
        self.sinks.retain_mut(|sink| match sink {
            Sink::File(w) => {
                let mut file = w.get_ref().get_ref();
                let cut = file
                    .set_len(len)
                    .and_then(|()| file.seek(SeekFrom::Start(len)));
                if let Err(e) = &cut {
                    crate::report::print_line(&format!(
                        "allocscope: cannot take the trace back up after a failed exec, \
                         tracing stops: {e}"
                    ));
                }
                cut.is_ok()
            }
            Sink::Client(_) => true,
        });
    }

    fn drain(&mut self) {
        while let Ok(batch) = self.data_rx.try_recv() {
            self.batch(batch);
        }
        for batch in self.stream.take_late() {
            self.batch(batch);
        }
    }

    fn batch(&mut self, batch: Batch) {
        // A client whose connect() returned before these events were made gets them: accept
        // it first (a non-blocking accept per batch of thousands of events; without it a
        // viewer that attached just before a burst could miss it until the next idle tick).
        self.accept_clients();
        for e in &batch.events {
            let stack = match *e {
                Event::Alloc { stack, .. }
                | Event::Free { stack, .. }
                | Event::Realloc { stack, .. } => stack,
            };
            self.define_stack(stack);
        }
        self.events_written += batch.events.len() as u64;
        for chunk in batch.events.chunks(EVENTS_PER_FRAME) {
            let record = Record::Batch(EventBatch {
                thread: batch.thread,
                events: chunk.to_vec(),
            });
            self.put(&record);
        }
    }

    fn define_stack(&mut self, id: u32) {
        if id == 0 || self.written_stacks.contains(&id) {
            return;
        }
        if let Some(frames) = stacks::frames_of(id) {
            self.written_stacks.insert(id);
            let frames = frames.iter().map(|&f| f as u64).collect();
            self.put(&Record::Stack(StackDef { id, frames }));
        }
    }

    fn periodic(&mut self) {
        self.refresh_modules();
        let snapshot = (self.snapshot)(self.stream.now());
        self.put(&Record::Snapshot(snapshot));
        let dropped = self.stream.dropped();
        if dropped != self.last_dropped {
            self.put(&Record::Dropped(dropped));
            self.last_dropped = dropped;
        }
        self.flush_all();
    }

    fn refresh_modules(&mut self) {
        let modules = modules::current();
        let fingerprint = modules::fingerprint(&modules);
        if fingerprint != self.modules_fingerprint || self.modules.is_empty() {
            self.modules_fingerprint = fingerprint;
            self.modules = modules;
            self.put(&Record::Modules(self.modules.clone()));
        }
    }

    /// Writes to every sink; a socket client that fails is dropped, a file that fails is
    /// dropped with a message (the program goes on).
    fn put(&mut self, record: &Record) {
        self.sinks
            .retain_mut(|sink| match sink.writer().put(record) {
                Ok(()) => true,
                Err(e) => {
                    if let Sink::File(_) = sink {
                        crate::report::print_line(&format!(
                            "allocscope: trace file write failed, tracing stops: {e}"
                        ));
                    }
                    false
                }
            });
    }

    fn flush_all(&mut self) {
        self.sinks
            .retain_mut(|sink| sink.writer().flush_out().is_ok());
    }

    fn accept_clients(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        while let Ok((socket, _)) = listener.accept() {
            let _ = socket.set_nonblocking(false);
            let _ = socket.set_write_timeout(Some(Duration::from_secs(5)));
            let Ok(mut writer) = TraceWriter::new(BufWriter::with_capacity(256 * 1024, socket))
            else {
                continue;
            };
            // Replay what a late viewer needs to make sense of the rest.
            let mut ok = writer.write(&Record::Start(self.start.clone())).is_ok()
                && writer.write(&Record::Modules(self.modules.clone())).is_ok();
            for t in &self.threads {
                ok = ok && writer.write(&Record::Thread(t.clone())).is_ok();
            }
            let mut ids: Vec<u32> = self.written_stacks.iter().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(frames) = stacks::frames_of(id) {
                    let def = StackDef {
                        id,
                        frames: frames.iter().map(|&f| f as u64).collect(),
                    };
                    ok = ok && writer.write(&Record::Stack(def)).is_ok();
                }
            }
            if ok && writer.flush().is_ok() {
                self.sinks.push(Sink::Client(writer));
            }
        }
    }
}

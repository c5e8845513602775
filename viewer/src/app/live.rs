//! Live mode: a running instrumented process's event stream (the tracker's `socket=` option)
//! read on a thread of its own.
//!
//! The reading thread owns the growing [`Profile`] and aggregates every record without taking
//! a lock. Now and then — every [`PUBLISH_EVERY`] at most, later if copying takes long, and
//! whenever the stream goes quiet — it publishes a finished copy without the time-slot index
//! (and, when the viewer shows a time range, that range's view from the index), swapping an
//! `Arc` under a lock held only for the swap. When the stream ends, the last copy keeps the
//! index, so the viewer computes ranges itself from then on. The UI thread takes the latest copy in O(1); it never waits for the
//! stream, and the stream never waits for the UI.
//!
//! May touch: `std::os::unix::net`, the tracker's trace reader, [`crate::model`].

use std::cell::RefCell;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use allocscope_tracker::trace_format::{Ending, TraceReader};

use crate::model::{LoadOptions, Profile, TimeRange};

/// The longest a received record waits before the viewer can see it, while the stream flows.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// A publication may take at most this share of the reading thread's time: after one that
/// took `d`, the next waits at least `d * PUBLISH_SPACING`.
const PUBLISH_SPACING: u32 = 4;

/// A live stream being read.
#[derive(Debug)]
pub struct Live {
    /// The socket attached to.
    pub socket: PathBuf,
    state: Mutex<LiveState>,
    /// Events aggregated so far by the reading thread (also those not yet published).
    ingested: AtomicU64,
}

/// What the reading thread has published.
#[derive(Debug)]
pub struct LiveState {
    /// The profile as of the latest publication (finished: live figures as of then).
    pub profile: Arc<Profile>,
    /// The range the viewer shows (set by the viewer; the next publication computes it).
    pub range: Option<TimeRange>,
    /// The view of a range as of the latest publication.
    pub view: Option<(TimeRange, Arc<Profile>)>,
    /// Bumped per publication.
    pub generation: u64,
    /// Whether the stream is still open.
    pub connected: bool,
    /// Why it closed, if it did.
    pub note: Option<String>,
    /// Publications so far.
    pub publications: u64,
    /// The longest publication (copy and range view), in nanoseconds.
    pub longest_publication_ns: u64,
}

impl Live {
    /// Connects to a tracker's socket and starts reading.
    pub fn attach(socket: &Path) -> Result<Arc<Live>, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot attach to {}: {e}", socket.display()))?;
        Live::start(socket, stream)
    }

    /// Starts reading a connected stream (what [`Live::attach`] does after connecting).
    pub fn start(socket: &Path, stream: UnixStream) -> Result<Arc<Live>, String> {
        stream
            .set_read_timeout(Some(PUBLISH_EVERY))
            .map_err(|e| format!("cannot configure {}: {e}", socket.display()))?;
        let live = Arc::new(Live {
            socket: socket.to_path_buf(),
            state: Mutex::new(LiveState {
                profile: Arc::new(Profile::new(LoadOptions::default())),
                range: None,
                view: None,
                generation: 0,
                connected: true,
                note: None,
                publications: 0,
                longest_publication_ns: 0,
            }),
            ingested: AtomicU64::new(0),
        });
        let reader_side = Arc::clone(&live);
        std::thread::Builder::new()
            .name("allocscope-live".into())
            .spawn(move || reader_side.read(stream))
            .map_err(|e| format!("cannot start the reading thread: {e}"))?;
        Ok(live)
    }

    /// The published state (a poisoned lock still holds good data: it is only swapped).
    pub fn state(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events the reading thread has aggregated so far, published or not.
    pub fn ingested_events(&self) -> u64 {
        // Relaxed: a statistic; nothing is read through it.
        self.ingested.load(Ordering::Relaxed)
    }

    /// Asks for `range`'s view in the publications from now on.
    pub fn show_range(&self, range: Option<TimeRange>) {
        self.state().range = range;
    }

    fn read(&self, stream: UnixStream) {
        let profile = RefCell::new(Profile::new(LoadOptions {
            slot_index: true,
            ..LoadOptions::default()
        }));
        let mut publisher = Publisher {
            live: self,
            profile: &profile,
            published_records: 0,
            published_range: None,
            due: Instant::now(),
        };
        let input = std::io::BufReader::with_capacity(
            256 << 10,
            QuietReader {
                stream,
                on_read: |quiet| publisher.maybe_publish(quiet),
            },
        );
        let note = match TraceReader::new(input) {
            Err(e) => e.to_string(),
            Ok(mut reader) => loop {
                match reader.next_record() {
                    Ok(Some(record)) => {
                        let mut p = profile.borrow_mut();
                        let before = p.events;
                        p.push(record);
                        // Relaxed: a statistic (see `ingested_events`).
                        self.ingested
                            .fetch_add(p.events - before, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        break match reader.ending() {
                            Some(Ending::Truncated { .. }) => "cut inside a frame".to_owned(),
                            _ => "the stream ended".to_owned(),
                        };
                    }
                    Err(e) => break e.to_string(),
                }
            },
        };
        // The last publication keeps the index: the viewer computes ranges itself from now on.
        let fresh = Arc::new(profile.borrow().finished());
        let range = self.state().range;
        let view = range.map(|r| (r, Arc::new(fresh.range_view(r))));
        let mut state = self.state();
        state.view = view;
        state.profile = fresh;
        state.connected = false;
        state.note = Some(note);
        state.generation += 1;
    }
}

/// Decides when the reading thread publishes.
struct Publisher<'a> {
    live: &'a Live,
    profile: &'a RefCell<Profile>,
    published_records: u64,
    published_range: Option<TimeRange>,
    due: Instant,
}

impl Publisher<'_> {
    /// Called before each read of the socket (`quiet`: the last one timed out).
    fn maybe_publish(&mut self, quiet: bool) {
        let records = self.profile.borrow().records;
        let range = self.live.state().range;
        let fresh_records = records != self.published_records;
        let now = Instant::now();
        if !(fresh_records && (quiet || now >= self.due)) && range == self.published_range {
            return;
        }
        let started = Instant::now();
        // The index stays here: ranges are computed on this thread.
        let view = range.map(|r| (r, Arc::new(self.profile.borrow().range_view(r))));
        let fresh = Arc::new(self.profile.borrow_mut().finished_without_index());
        let took = started.elapsed();
        {
            let mut state = self.live.state();
            state.profile = fresh;
            state.view = view;
            state.generation += 1;
            state.publications += 1;
            state.longest_publication_ns = state.longest_publication_ns.max(took.as_nanos() as u64);
        }
        self.published_records = records;
        self.published_range = range;
        self.due = Instant::now() + PUBLISH_EVERY.max(took * PUBLISH_SPACING);
    }
}

/// The socket, read with a timeout so that a quiet stream still gets its records published:
/// before every read (and after every timeout) `on_read` may publish. Timeouts never reach
/// the trace reader.
struct QuietReader<F: FnMut(bool)> {
    stream: UnixStream,
    on_read: F,
}

impl<F: FnMut(bool)> Read for QuietReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut quiet = false;
        loop {
            (self.on_read)(quiet);
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    quiet = true
                }
                result => return result,
            }
        }
    }
}

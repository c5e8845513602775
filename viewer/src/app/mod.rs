//! The desktop viewer's logic, independent of the window that shows it: [`ViewerApp`] holds
//! one trace's aggregated data and the panels, and draws them into any `egui::Ui` (the eframe
//! window in `allocscope view`, a test harness in the tests).
//!
//! May touch: egui, [`crate::model`], [`crate::symbols`], [`crate::export`]; the trace source
//! again when the time range changes (the data are re-aggregated, raw events are never kept).

mod corruption;
mod flamegraph;
mod fragmentation;
mod leaks;
mod live;
mod overview;
mod sizes;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use eframe::egui;

use allocscope_tracker::trace_format::TraceError;

pub use corruption::CorruptionPanel;
pub use flamegraph::{FlameNode, FlamegraphPanel, ROW_HEIGHT};
pub use fragmentation::{FragmentationFigures, FragmentationPanel};
pub use leaks::{LeakSort, LeaksPanel};
pub use live::{Live, LiveState, PUBLISH_EVERY};
pub use overview::OverviewPanel;
pub use sizes::SizesPanel;

use crate::model::{LoadOptions, Profile, TimeRange};
use crate::symbols::Symbolizer;

/// Where a trace comes from (read again for the exact figures of a time range).
#[derive(Clone, Debug)]
pub enum Source {
    /// A trace file.
    File(PathBuf),
    /// A trace in memory.
    Bytes(Arc<[u8]>),
    /// A running process's live stream.
    Live(Arc<Live>),
}

impl Source {
    /// The whole trace as of now.
    fn load(&self) -> Result<Arc<Profile>, TraceError> {
        match self {
            Source::Live(live) => Ok(Arc::clone(&live.state().profile)),
            _ => self
                .read(
                    LoadOptions::default(),
                    &AtomicU64::new(0),
                    &AtomicBool::new(false),
                )
                .map(Arc::new),
        }
    }

    /// Bytes a full read goes through (for progress), if known.
    fn len(&self) -> Option<u64> {
        match self {
            Source::File(path) => std::fs::metadata(path).ok().map(|m| m.len()),
            Source::Bytes(bytes) => Some(bytes.len() as u64),
            Source::Live(_) => None,
        }
    }

    /// Reads a file or in-memory trace with `options`, storing the bytes read so far in
    /// `progress`; stops with an error once `cancel` is set. A live stream is not kept: it
    /// cannot be read again (its ranges come from the time-slot sums).
    fn read(
        &self,
        options: LoadOptions,
        progress: &AtomicU64,
        cancel: &AtomicBool,
    ) -> Result<Profile, TraceError> {
        // Relaxed, both: a progress figure and a stop flag; no data travel through them.
        let mut report = |offset| progress.store(offset, Ordering::Relaxed);
        match self {
            Source::File(path) => {
                let file = std::fs::File::open(path)?;
                let input = Cancellable {
                    inner: std::io::BufReader::with_capacity(1 << 20, file),
                    cancel,
                };
                Profile::load(input, options, &mut report)
            }
            Source::Bytes(bytes) => Profile::load(
                Cancellable {
                    inner: &bytes[..],
                    cancel,
                },
                options,
                &mut report,
            ),
            Source::Live(_) => Err(TraceError::Io(std::io::Error::other(
                "a live stream is not kept, so it cannot be read again",
            ))),
        }
    }

    /// How the source is named in the title bar.
    pub fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Bytes(_) => "(trace in memory)".to_owned(),
            Source::Live(live) => {
                let state = live.state();
                let what = if state.connected {
                    "attached".to_owned()
                } else {
                    format!(
                        "disconnected ({}); the data received are kept",
                        state.note.as_deref().unwrap_or("the stream ended")
                    )
                };
                format!(
                    "live {}: {what}, {} events",
                    live.socket.display(),
                    state.profile.events
                )
            }
        }
    }
}

/// A reader that fails once its flag is set (a re-read the user no longer waits for).
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Relaxed: a stop flag; stopping a little late is harmless.
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

/// A trace being read again, on a thread of its own, for a range's exact figures.
#[derive(Debug)]
pub struct Reread {
    /// The range being read for.
    pub range: TimeRange,
    /// Bytes read so far.
    progress: Arc<AtomicU64>,
    /// Bytes in all, if known.
    total: Option<u64>,
    cancel: Arc<AtomicBool>,
    result: Receiver<Result<Profile, TraceError>>,
}

impl Reread {
    /// The share read so far, `0.0..=1.0`, if the size is known.
    pub fn fraction(&self) -> Option<f32> {
        // Relaxed: a progress figure.
        let done = self.progress.load(Ordering::Relaxed);
        self.total
            .filter(|&t| t > 0)
            .map(|t| (done as f64 / t as f64).min(1.0) as f32)
    }
}

impl Drop for Reread {
    fn drop(&mut self) {
        // Relaxed: see `Cancellable`.
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// One trace's data as the panels see it.
pub struct TraceData {
    /// Where it came from.
    pub source: Source,
    /// The whole trace (the overview's timeline).
    pub full: Arc<Profile>,
    /// The trace filtered to the selected range (the same as `full` without a selection). A
    /// live stream's comes from its time-slot sums (widened to whole slots, see
    /// [`Profile::range_view`]); a file's from reading it again for the range, which takes a
    /// moment: until [`TraceData::rereading`] is done the previous figures stay.
    pub filtered: Arc<Profile>,
    /// The selected range.
    pub range: Option<TimeRange>,
    /// The trace being read again for the selected range's exact figures.
    pub rereading: Option<Reread>,
    /// Symbols for the trace's addresses.
    pub symbols: Symbolizer,
    /// Bumped whenever `filtered` changes, so panels know to rebuild what they derived.
    pub generation: u64,
    /// Why the last re-read failed, until taken.
    pub error: Option<String>,
    /// The live state's generation last taken in.
    live_seen: u64,
    /// Frame names of each stack symbolised so far, outermost first, and its allocation
    /// site's label: a stack never changes, so panels rebuilt for fresh figures (live mode)
    /// do not symbolise again.
    names: HashMap<u32, (Arc<[String]>, Arc<str>)>,
}

impl TraceData {
    /// Loads a trace (a live stream: what it has received so far).
    pub fn load(source: Source) -> Result<TraceData, TraceError> {
        let full = source.load()?;
        let symbols = Symbolizer::new(&full.modules);
        Ok(TraceData {
            source,
            filtered: Arc::clone(&full),
            full,
            range: None,
            rereading: None,
            symbols,
            generation: 1,
            error: None,
            live_seen: 0,
            names: HashMap::new(),
        })
    }

    /// Takes in what a live stream published, or a finished re-read, since the last call;
    /// `true` if anything changed. Never waits for either.
    pub fn poll(&mut self) -> bool {
        if let Some(job) = &self.rereading {
            match job.result.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(Ok(exact)) => {
                    self.filtered = Arc::new(exact);
                    self.rereading = None;
                    self.generation += 1;
                    return true;
                }
                Ok(Err(e)) => {
                    self.error = Some(format!("cannot read the trace again for the range: {e}"));
                    self.rereading = None;
                }
                Err(TryRecvError::Disconnected) => self.rereading = None,
            }
        }
        let Source::Live(live) = &self.source else {
            return false;
        };
        let (full, view) = {
            let state = live.state();
            if state.generation == self.live_seen {
                return false;
            }
            self.live_seen = state.generation;
            (Arc::clone(&state.profile), state.view.clone())
        };
        if full.modules.len() != self.full.modules.len() {
            self.symbols = Symbolizer::new(&full.modules);
            self.names.clear();
        }
        match (self.range, view) {
            (None, _) => self.filtered = Arc::clone(&full),
            (Some(r), Some((shown, view))) if shown == r => self.filtered = view,
            // The range's view comes with the next publication; the last one stands till then.
            (Some(_), _) => {}
        }
        self.full = full;
        self.generation += 1;
        true
    }

    /// A stack's frame names, outermost first (as [`crate::export::stack_names`] gives them),
    /// and its allocation site's label (the first frame of the program's own, else the
    /// whole stack), symbolised once per stack.
    pub fn stack_names(&mut self, stack: u32) -> (Arc<[String]>, Arc<str>) {
        if let Some(known) = self.names.get(&stack) {
            return known.clone();
        }
        let p = &self.filtered;
        let names: Arc<[String]> = crate::export::stack_names(p, &mut self.symbols, stack).into();
        let frames = self.symbols.stack(p.frames(stack));
        let site: Arc<str> = crate::symbols::site_frame(&frames)
            .map_or_else(|| names.join(";"), crate::symbols::frame_label)
            .into();
        self.names
            .insert(stack, (Arc::clone(&names), Arc::clone(&site)));
        (names, site)
    }

    /// Whether this is a live stream still open.
    pub fn is_live_and_connected(&self) -> bool {
        matches!(&self.source, Source::Live(l) if l.state().connected)
    }

    /// Filters every panel to `range` (`None`: the whole trace). A live stream's range comes
    /// at once from its time-slot sums, and its publications carry the range's view from then
    /// on; a trace file or in-memory trace is read again on a thread of its own for the exact
    /// figures ([`TraceData::rereading`]; [`TraceData::poll`] takes them in).
    pub fn set_range(&mut self, range: Option<TimeRange>) {
        if range == self.range {
            return;
        }
        self.rereading = None;
        self.range = range;
        self.generation += 1;
        let Some(r) = range else {
            self.filtered = Arc::clone(&self.full);
            if let Source::Live(live) = &self.source {
                live.show_range(None);
            }
            return;
        };
        // A live stream still open has its index on the reading thread: its next
        // publication brings the view.
        if self.full.index.is_some() {
            self.filtered = Arc::new(self.full.range_view(r));
        }
        match &self.source {
            Source::Live(live) => live.show_range(Some(r)),
            source => self.rereading = Some(Self::reread(source.clone(), r, self.full.options)),
        }
    }

    fn reread(source: Source, range: TimeRange, options: LoadOptions) -> Reread {
        let progress = Arc::new(AtomicU64::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let (send, result) = std::sync::mpsc::channel();
        let job = Reread {
            range,
            progress: Arc::clone(&progress),
            total: source.len(),
            cancel: Arc::clone(&cancel),
            result,
        };
        let options = LoadOptions {
            range: Some(range),
            ..options
        };
        let spawned = std::thread::Builder::new()
            .name("allocscope-reread".into())
            .spawn(move || {
                // The receiver is gone when the range changed meanwhile: nothing to tell.
                let _ = send.send(source.read(options, &progress, &cancel));
            });
        if let Err(e) = spawned {
            // The job's channel is then closed: `poll` drops it, the slot figures stand.
            eprintln!("allocscope: cannot start reading the trace again: {e}");
        }
        job
    }
}

/// The viewer's tabs (also `allocscope view --tab`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tab {
    /// Heap over time, time-range selection.
    Overview,
    /// Allocations live at the end, by stack.
    Leaks,
    /// Interactive flamegraph.
    Flamegraph,
    /// The heap's pages by occupancy.
    Fragmentation,
    /// Corruption reports.
    Corruption,
    /// Size histogram and temporaries.
    Sizes,
}

impl Tab {
    /// Every tab, in bar order.
    pub const ALL: [Tab; 6] = [
        Tab::Overview,
        Tab::Leaks,
        Tab::Flamegraph,
        Tab::Fragmentation,
        Tab::Corruption,
        Tab::Sizes,
    ];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Leaks => "Leaks",
            Tab::Flamegraph => "Flamegraph",
            Tab::Fragmentation => "Fragmentation",
            Tab::Corruption => "Corruption",
            Tab::Sizes => "Sizes",
        }
    }
}

/// The whole viewer.
pub struct ViewerApp {
    /// The trace shown.
    pub data: TraceData,
    /// The tab shown.
    pub tab: Tab,
    /// Panels.
    pub overview: OverviewPanel,
    /// Leaks panel.
    pub leaks: LeaksPanel,
    /// Flamegraph panel.
    pub flamegraph: FlamegraphPanel,
    /// Fragmentation panel.
    pub fragmentation: FragmentationPanel,
    /// Corruption panel.
    pub corruption: CorruptionPanel,
    /// Sizes panel.
    pub sizes: SizesPanel,
    /// The last error (re-reading the trace for a range), shown in the status line.
    pub error: Option<String>,
}

impl ViewerApp {
    /// A viewer on loaded data, showing the overview.
    pub fn new(data: TraceData) -> Self {
        ViewerApp {
            data,
            tab: Tab::Overview,
            overview: OverviewPanel::default(),
            leaks: LeaksPanel::default(),
            flamegraph: FlamegraphPanel::default(),
            fragmentation: FragmentationPanel::default(),
            corruption: CorruptionPanel::default(),
            sizes: SizesPanel::default(),
            error: None,
        }
    }

    /// Filters every panel to `range`.
    pub fn set_range(&mut self, range: Option<TimeRange>) {
        self.data.set_range(range);
    }

    /// Draws the viewer.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.data.poll();
        if let Some(e) = self.data.error.take() {
            self.error = Some(e);
        }
        if self.data.is_live_and_connected() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(250));
        }
        if self.data.rereading.is_some() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(50));
        }
        egui::Panel::top("allocscope-tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                for tab in Tab::ALL {
                    ui.selectable_value(&mut self.tab, tab, tab.title());
                }
                ui.separator();
                match self.data.range {
                    Some(r) => {
                        ui.label(format!(
                            "Range: {} – {}",
                            crate::model::format_ns(r.start_ns),
                            crate::model::format_ns(r.end_ns)
                        ));
                        range_precision(ui, &self.data);
                    }
                    None => {
                        ui.label("Range: whole trace");
                    }
                }
            });
        });
        egui::Panel::bottom("allocscope-status").show(ui, |ui| {
            let p = &self.data.full;
            let mut status = self.data.source.name();
            if p.end.is_none() && !matches!(self.data.source, Source::Live(_)) {
                status.push_str(" — no end marker: the process died before finishing its trace");
            }
            if let Some(e) = &self.error {
                status.push_str(" — ");
                status.push_str(e);
            }
            ui.label(status);
        });
        egui::CentralPanel::default().show(ui, |ui| match self.tab {
            Tab::Overview => {
                if let Some(change) = self.overview.ui(ui, &self.data) {
                    self.set_range(change);
                }
            }
            Tab::Leaks => self.leaks.ui(ui, &mut self.data),
            Tab::Flamegraph => self.flamegraph.ui(ui, &mut self.data),
            Tab::Fragmentation => self.fragmentation.ui(ui, &self.data),
            Tab::Corruption => self.corruption.ui(ui, &mut self.data),
            Tab::Sizes => self.sizes.ui(ui, &mut self.data),
        });
    }
}

/// Says what the range's figures are: being read (with a progress bar), widened to whole
/// time slots (live mode), or exact.
fn range_precision(ui: &mut egui::Ui, data: &TraceData) {
    if let Some(job) = &data.rereading {
        ui.label("reading the trace again for the range; the figures shown are the previous ones");
        let bar = egui::ProgressBar::new(job.fraction().unwrap_or(0.0))
            .desired_width(120.0)
            .show_percentage();
        ui.add(bar);
        return;
    }
    match (data.filtered.options.range, &data.full.index) {
        (Some(shown), Some(index)) if Some(shown) != data.range => {
            ui.label(format!(
                "(figures for {} – {}: whole {} time slots)",
                crate::model::format_ns(shown.start_ns),
                crate::model::format_ns(shown.end_ns.saturating_add(1)),
                crate::model::format_ns(index.slot_ns())
            ));
        }
        _ => {}
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        ViewerApp::ui(self, ui);
    }
}

/// Opens the viewer window on a trace file or a live stream at `tab`, with `range` selected;
/// returns when the window closes.
pub fn run(source: Source, tab: Tab, range: Option<TimeRange>) -> Result<(), String> {
    let name = source.name();
    let data = TraceData::load(source).map_err(|e| format!("{name}: {e}"))?;
    let mut app = ViewerApp::new(data);
    app.tab = tab;
    app.set_range(range);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_title(format!("allocscope - {name}")),
        ..eframe::NativeOptions::default()
    };
    eframe::run_native("allocscope", options, Box::new(|_cc| Ok(Box::new(app))))
        .map_err(|e| format!("cannot open the viewer window: {e}"))
}

/// A stable colour for a name (flamegraph frames), warm like flamegraph.pl's.
pub(crate) fn name_colour(name: &str) -> egui::Color32 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let r = 205 + (h % 50) as u8;
    let g = 80 + ((h >> 8) % 130) as u8;
    let b = 40 + ((h >> 16) % 50) as u8;
    egui::Color32::from_rgb(r, g, b)
}

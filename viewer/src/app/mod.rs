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
mod overview;
mod sizes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use eframe::egui;

use allocscope_tracker::trace_format::{Ending, TraceError, TraceReader};

pub use corruption::CorruptionPanel;
pub use flamegraph::{FlameNode, FlamegraphPanel, ROW_HEIGHT};
pub use fragmentation::{FragmentationFigures, FragmentationPanel};
pub use leaks::{LeakSort, LeaksPanel};
pub use overview::OverviewPanel;
pub use sizes::SizesPanel;

use crate::model::{LoadOptions, Profile, TimeRange};
use crate::symbols::Symbolizer;

/// Where a trace comes from (read again when the time range changes).
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
    fn load(&self, options: LoadOptions) -> Result<Profile, TraceError> {
        match self {
            Source::File(path) => Profile::load_file(path, options, &mut |_| {}),
            Source::Bytes(bytes) => Profile::load(&bytes[..], options, &mut |_| {}),
            Source::Live(live) if options.range.is_none() => Ok(live.state().profile.finished()),
            Source::Live(_) => Err(TraceError::Io(std::io::Error::other(
                "a time range needs a trace file (a live stream is not kept)",
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

/// A live stream from a running instrumented process (the tracker's `socket=` option), read
/// on a thread of its own into a profile that keeps growing.
#[derive(Debug)]
pub struct Live {
    /// The socket attached to.
    pub socket: PathBuf,
    state: Mutex<LiveState>,
}

/// What the reading thread has gathered so far.
#[derive(Debug)]
pub struct LiveState {
    /// The profile, records pushed as they arrive.
    pub profile: Profile,
    /// Bumped per record.
    pub generation: u64,
    /// Whether the stream is still open.
    pub connected: bool,
    /// Why it closed, if it did.
    pub note: Option<String>,
}

impl Live {
    /// Connects to a tracker's socket and starts reading.
    pub fn attach(socket: &Path) -> Result<Arc<Live>, String> {
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("cannot attach to {}: {e}", socket.display()))?;
        let live = Arc::new(Live {
            socket: socket.to_path_buf(),
            state: Mutex::new(LiveState {
                profile: Profile::new(LoadOptions::default()),
                generation: 0,
                connected: true,
                note: None,
            }),
        });
        let reader_side = Arc::clone(&live);
        std::thread::Builder::new()
            .name("allocscope-live".into())
            .spawn(move || reader_side.read(std::io::BufReader::new(stream)))
            .map_err(|e| format!("cannot start the reading thread: {e}"))?;
        Ok(live)
    }

    /// The shared state (a poisoned lock still holds good data: records are pushed whole).
    pub fn state(&self) -> MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, input: impl std::io::Read) {
        let note = match TraceReader::new(input) {
            Err(e) => e.to_string(),
            Ok(mut reader) => loop {
                match reader.next_record() {
                    Ok(Some(record)) => {
                        let mut state = self.state();
                        state.profile.push(record);
                        state.generation += 1;
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
        let mut state = self.state();
        state.connected = false;
        state.note = Some(note);
        state.generation += 1;
    }
}

/// One trace's data as the panels see it.
pub struct TraceData {
    /// Where it came from.
    pub source: Source,
    /// The whole trace (the overview's timeline).
    pub full: Profile,
    /// The trace filtered to the selected range (the same as `full` without a selection).
    pub filtered: Profile,
    /// The selected range.
    pub range: Option<TimeRange>,
    /// Symbols for the trace's addresses.
    pub symbols: Symbolizer,
    /// Bumped whenever `filtered` changes, so panels know to rebuild what they derived.
    pub generation: u64,
    /// The live state's generation last taken in.
    live_seen: u64,
}

impl TraceData {
    /// Loads a trace.
    pub fn load(source: Source) -> Result<TraceData, TraceError> {
        let full = source.load(LoadOptions::default())?;
        let symbols = Symbolizer::new(&full.modules);
        Ok(TraceData {
            source,
            filtered: full.clone(),
            full,
            range: None,
            symbols,
            generation: 1,
            live_seen: 0,
        })
    }

    /// Takes in what a live stream brought since the last call; `true` if anything changed.
    pub fn poll(&mut self) -> bool {
        let Source::Live(live) = &self.source else {
            return false;
        };
        let fresh = {
            let state = live.state();
            if state.generation == self.live_seen {
                return false;
            }
            self.live_seen = state.generation;
            state.profile.finished()
        };
        if fresh.modules.len() != self.full.modules.len() {
            self.symbols = Symbolizer::new(&fresh.modules);
        }
        self.filtered = fresh.clone();
        self.full = fresh;
        self.range = None;
        self.generation += 1;
        true
    }

    /// Whether this is a live stream still open.
    pub fn is_live_and_connected(&self) -> bool {
        matches!(&self.source, Source::Live(l) if l.state().connected)
    }

    /// Filters every panel to `range` (`None`: the whole trace).
    pub fn set_range(&mut self, range: Option<TimeRange>) -> Result<(), TraceError> {
        if range == self.range {
            return Ok(());
        }
        self.filtered = match range {
            None => self.full.clone(),
            Some(r) => self.source.load(LoadOptions {
                range: Some(r),
                ..self.full.options
            })?,
        };
        self.range = range;
        self.generation += 1;
        Ok(())
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
        if let Err(e) = self.data.set_range(range) {
            self.error = Some(format!("cannot re-read the trace: {e}"));
        }
    }

    /// Draws the viewer.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.data.poll();
        if self.data.is_live_and_connected() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(250));
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

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        ViewerApp::ui(self, ui);
    }
}

/// Opens the viewer window on a trace file or a live stream at `tab`; returns when the window
/// closes.
pub fn run(source: Source, tab: Tab) -> Result<(), String> {
    let name = source.name();
    let data = TraceData::load(source).map_err(|e| format!("{name}: {e}"))?;
    let mut app = ViewerApp::new(data);
    app.tab = tab;
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

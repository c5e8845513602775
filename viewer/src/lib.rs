//! allocscope's viewer (in progress, see issue 5): the desktop app (eframe/egui) and the
//! `allocscope` command line — record, report, flamegraph, export, view — reading traces through
//! the tracker's trace-format module.

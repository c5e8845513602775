//! The leaks panel: allocations still live at the end of the trace (at the end of the selected
//! range when one is set), grouped by stack, sortable by bytes or blocks; the selected group's
//! stack is shown symbolised, with the tracker's own leak reports below.
//!
//! May touch: egui, [`crate::model`], [`crate::symbols`].

use eframe::egui;

use super::TraceData;
use crate::model::{format_bytes, Metric};

/// Sort order of the leak table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeakSort {
    /// Most bytes first.
    #[default]
    Bytes,
    /// Most blocks first.
    Blocks,
}

/// One row: a stack and what it leaves allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakRow {
    /// Stack id.
    pub stack: u32,
    /// Bytes still allocated.
    pub bytes: u64,
    /// Blocks still allocated.
    pub blocks: u64,
    /// The allocation site (first program frame).
    pub site: String,
}

/// Rows listed at most (the largest by the current sort): bounds a rebuild's symbolising.
pub const MAX_ROWS: usize = 500;

/// The leaks panel.
#[derive(Debug, Default)]
pub struct LeaksPanel {
    rows: Vec<LeakRow>,
    /// Stacks with blocks beyond the rows listed.
    others: u64,
    built_for: u64,
    /// The current sort.
    pub sort: LeakSort,
    /// The selected row's stack id.
    pub selected: Option<u32>,
}

impl LeaksPanel {
    /// The rows in display order.
    pub fn rows(&self) -> &[LeakRow] {
        &self.rows
    }

    /// Re-derives the rows if the data changed.
    pub fn refresh(&mut self, data: &mut TraceData) {
        if self.built_for == data.generation {
            return;
        }
        self.built_for = data.generation;
        let metric = if data.range.is_some() {
            Metric::Live
        } else {
            Metric::Leaked
        };
        let p = &data.filtered;
        let blocks = |s: &crate::model::StackStats| match metric {
            Metric::Live => s.live_count,
            _ => s.leaked_count,
        };
        let (top, others, _) = match self.sort {
            LeakSort::Bytes => p.top_stacks_by(MAX_ROWS, |s| metric.value(s)),
            LeakSort::Blocks => p.top_stacks_by(MAX_ROWS, blocks),
        };
        self.others = others;
        self.rows = top
            .into_iter()
            .map(|(stack, s)| {
                let (bytes, blocks) = match metric {
                    Metric::Live => (s.live_bytes, s.live_count),
                    _ => (s.leaked_bytes, s.leaked_count),
                };
                let site = data.stack_names(stack).1.to_string();
                LeakRow {
                    stack,
                    bytes,
                    blocks,
                    site,
                }
            })
            .collect();
        self.apply_sort();
        if self
            .selected
            .is_none_or(|s| !self.rows.iter().any(|r| r.stack == s))
        {
            self.selected = self.rows.first().map(|r| r.stack);
        }
    }

    /// Sorts the rows by `sort` (the rows are taken again: the largest by bytes need not be
    /// the largest by blocks).
    pub fn set_sort(&mut self, sort: LeakSort) {
        if sort != self.sort {
            self.sort = sort;
            self.built_for = 0;
        }
    }

    fn apply_sort(&mut self) {
        match self.sort {
            LeakSort::Bytes => self
                .rows
                .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.stack.cmp(&b.stack))),
            LeakSort::Blocks => self
                .rows
                .sort_by(|a, b| b.blocks.cmp(&a.blocks).then(a.stack.cmp(&b.stack))),
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &mut TraceData) {
        self.refresh(data);
        let when = if data.range.is_some() {
            "live at the end of the selected range"
        } else {
            "never freed before the trace ended"
        };
        ui.heading(format!(
            "Leaks: {} stacks with blocks {when}",
            self.rows.len() as u64 + self.others
        ));
        if self.others > 0 {
            ui.label(format!(
                "The {} largest are listed; {} smaller stacks are not.",
                self.rows.len(),
                self.others
            ));
        }
        let mut sort = self.sort;
        egui::ScrollArea::vertical()
            .max_height(ui.available_height() * 0.55)
            .show(ui, |ui| {
                egui::Grid::new("leak-table")
                    .striped(true)
                    .num_columns(3)
                    .show(ui, |ui| {
                        let current = sort;
                        let arrow = |s: LeakSort| if current == s { " (sorted)" } else { "" };
                        if ui
                            .button(format!("Bytes{}", arrow(LeakSort::Bytes)))
                            .clicked()
                        {
                            sort = LeakSort::Bytes;
                        }
                        if ui
                            .button(format!("Blocks{}", arrow(LeakSort::Blocks)))
                            .clicked()
                        {
                            sort = LeakSort::Blocks;
                        }
                        ui.label("Allocation site");
                        ui.end_row();
                        for row in &self.rows {
                            let picked = self.selected == Some(row.stack);
                            if ui
                                .selectable_label(picked, format_bytes(row.bytes))
                                .clicked()
                            {
                                self.selected = Some(row.stack);
                            }
                            ui.label(row.blocks.to_string());
                            ui.label(&row.site);
                            ui.end_row();
                        }
                    });
            });
        if sort != self.sort {
            self.set_sort(sort);
        }
        ui.separator();
        if let Some(stack) = self.selected {
            ui.label(format!("Stack {stack}:"));
            let mut text = String::new();
            crate::report::write_stack(&mut text, &data.filtered, &mut data.symbols, stack);
            egui::ScrollArea::vertical()
                .id_salt("leak-stack")
                .max_height(ui.available_height() * 0.6)
                .show(ui, |ui| ui.monospace(text));
        } else {
            ui.label("Select a row to see its stack.");
        }
        let reports: Vec<_> = data.filtered.leak_reports().collect();
        if !reports.is_empty() {
            ui.separator();
            ui.label(format!(
                "The tracker's leak check found {} unreachable groups:",
                reports.len()
            ));
            egui::ScrollArea::vertical()
                .id_salt("leak-reports")
                .show(ui, |ui| {
                    for r in reports {
                        ui.monospace(r.text.trim_end());
                    }
                });
        }
    }
}

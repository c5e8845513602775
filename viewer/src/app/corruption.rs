//! The corruption panel: every corruption report of the trace (in range), with the block's
//! allocation and free stacks and the stack where the problem was detected, symbolised.
//!
//! May touch: egui, [`crate::model`], [`crate::report`].

use eframe::egui;

use super::TraceData;
use crate::model::format_ns;

/// The corruption panel.
#[derive(Debug, Default)]
pub struct CorruptionPanel {
    /// Index of the selected report among the corruption reports.
    pub selected: Option<usize>,
}

impl CorruptionPanel {
    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &mut TraceData) {
        let reports: Vec<_> = data.filtered.corruption_reports().cloned().collect();
        ui.heading(format!("Corruption reports: {}", reports.len()));
        if reports.is_empty() {
            ui.label("No corruption was detected in this trace (or in the selected range).");
            return;
        }
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                for (i, r) in reports.iter().enumerate() {
                    let title = format!(
                        "{} at {:#x} ({}, thread {})",
                        r.kind.as_str(),
                        r.address,
                        format_ns(r.time_ns),
                        r.thread
                    );
                    let picked = self.selected.unwrap_or(0) == i;
                    if ui.selectable_label(picked, title).clicked() {
                        self.selected = Some(i);
                    }
                }
            });
            ui.separator();
            let Some(r) = reports.get(self.selected.unwrap_or(0)) else {
                ui.label("Select a report.");
                return;
            };
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.vertical(|ui| {
                    let mut text = String::new();
                    for (what, stack) in [
                        ("Detected at", r.access_stack),
                        ("Allocated at", r.alloc_stack),
                        ("Freed at", r.free_stack),
                    ] {
                        if stack != 0 {
                            text.push_str(what);
                            text.push_str(":\n");
                            crate::report::write_stack(
                                &mut text,
                                &data.filtered,
                                &mut data.symbols,
                                stack,
                            );
                        }
                    }
                    ui.monospace(text);
                    ui.separator();
                    ui.label("As the tracker printed it:");
                    ui.monospace(r.text.trim_end());
                });
            });
        });
    }
}

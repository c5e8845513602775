//! The sizes panel: the histogram of allocation sizes (power-of-two bins) and the temporary
//! allocations — blocks freed within the threshold after their allocation — with the stacks
//! that make most of them.
//!
//! May touch: egui, [`crate::model`].

use eframe::egui;
use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Vec2};

use super::TraceData;
use crate::model::{format_bytes, format_ns, Metric};

/// The sizes panel.
#[derive(Debug, Default)]
pub struct SizesPanel {
    temporary_sites: Vec<(String, u64, u64)>,
    built_for: u64,
}

/// A bin's label: the sizes it holds.
pub fn bin_label(bin: usize) -> String {
    match bin {
        0 => "0".to_owned(),
        1 => "1".to_owned(),
        b if b >= 64 => ">= 8 EiB".to_owned(),
        // Small bins name their exact bounds; larger ones the half-open [low, high) in K/M/G.
        b if b <= 10 => format!("{}–{}", 1u64 << (b - 1), (1u64 << b) - 1),
        b => format!("{}–{}", short(1u64 << (b - 1)), short(1u64 << b)),
    }
}

fn short(v: u64) -> String {
    match v {
        v if v >= 1 << 30 => format!("{}G", v >> 30),
        v if v >= 1 << 20 => format!("{}M", v >> 20),
        v if v >= 1 << 10 => format!("{}K", v >> 10),
        v => v.to_string(),
    }
}

impl SizesPanel {
    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &mut TraceData) {
        let p = &data.filtered;
        ui.heading("Allocation sizes");
        let bins: Vec<(usize, u64, u64)> = p
            .size_histogram
            .iter()
            .enumerate()
            .filter(|(_, (count, _))| *count > 0)
            .map(|(i, &(c, b))| (i, c, b))
            .collect();
        if bins.is_empty() {
            ui.label("No allocation in this trace (or in the selected range).");
        } else {
            let most = bins.iter().map(|b| b.1).max().unwrap_or(1).max(1);
            let height = 180.0;
            let (rect, response) = ui.allocate_exact_size(
                Vec2::new(ui.available_width(), height + 36.0),
                Sense::hover(),
            );
            let painter = ui.painter_at(rect);
            let slot = rect.width() / bins.len() as f32;
            let mut hovered = None;
            for (k, &(bin, count, bytes)) in bins.iter().enumerate() {
                let h = height * (count as f32 / most as f32);
                let x = rect.left() + k as f32 * slot;
                let bar = Rect::from_min_max(
                    Pos2::new(x + 2.0, rect.top() + height - h),
                    Pos2::new(x + slot - 2.0, rect.top() + height),
                );
                painter.rect_filled(bar, 1.0, Color32::from_rgb(100, 150, 220));
                painter.text(
                    Pos2::new(x + slot / 2.0, rect.top() + height + 4.0),
                    Align2::CENTER_TOP,
                    bin_label(bin),
                    FontId::proportional(11.0),
                    ui.visuals().text_color(),
                );
                if response
                    .hover_pos()
                    .is_some_and(|pos| pos.x >= x && pos.x < x + slot)
                {
                    hovered = Some((bin, count, bytes));
                }
            }
            if let Some((bin, count, bytes)) = hovered {
                response.on_hover_text_at_pointer(format!(
                    "{} B: {count} allocations, {}",
                    bin_label(bin),
                    format_bytes(bytes)
                ));
            }
            egui::Grid::new("size-bins").striped(true).show(ui, |ui| {
                ui.label("Size (bytes)");
                ui.label("Allocations");
                ui.label("Bytes");
                ui.end_row();
                for &(bin, count, bytes) in &bins {
                    ui.label(bin_label(bin));
                    ui.label(count.to_string());
                    ui.label(format_bytes(bytes));
                    ui.end_row();
                }
            });
        }
        ui.separator();
        ui.heading("Temporary allocations");
        ui.label(format!(
            "{} of {} allocations ({}) were freed within {} of being made.",
            p.temporary_count,
            p.allocations,
            format_bytes(p.temporary_bytes),
            format_ns(p.options.temporary_ns)
        ));
        if self.built_for != data.generation {
            self.built_for = data.generation;
            let (top, _, _) = p.top_stacks_by(20, |s| Metric::Temporary.value(s));
            self.temporary_sites = top
                .into_iter()
                .map(|(id, s)| {
                    let site = data.stack_names(id).1.to_string();
                    (site, s.temporary_count, s.temporary_bytes)
                })
                .collect();
        }
        egui::Grid::new("temporary-sites")
            .striped(true)
            .show(ui, |ui| {
                ui.label("Allocation site");
                ui.label("Temporary");
                ui.label("Bytes");
                ui.end_row();
                for (site, count, bytes) in &self.temporary_sites {
                    ui.label(site);
                    ui.label(count.to_string());
                    ui.label(format_bytes(*bytes));
                    ui.end_row();
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::bin_label;

    #[test]
    fn bins_are_labelled_by_their_sizes() {
        assert_eq!(bin_label(0), "0");
        assert_eq!(bin_label(1), "1");
        assert_eq!(bin_label(6), "32–63");
        assert_eq!(bin_label(11), "1K–2K");
        assert_eq!(bin_label(21), "1M–2M");
        assert_eq!(bin_label(64), ">= 8 EiB");
    }
}

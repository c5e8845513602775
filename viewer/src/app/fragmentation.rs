//! The fragmentation map: the core heap's pages from the latest snapshot in the trace, one cell
//! per page coloured by how full it is, with committed and used totals and the fragmentation
//! ratio; hovering a cell shows the page's address, size class and occupancy.
//!
//! May touch: egui, the snapshot's page records (reading).

use eframe::egui;
use egui::{Color32, Pos2, Rect, Sense, Vec2};

use allocscope_tracker::trace_format::PageRecord;

use super::TraceData;
use crate::model::{format_bytes, format_ns};

/// Accessible name of the page grid.
pub const GRID_LABEL: &str = "page map";

/// What the panel explains on itself.
pub const EXPLANATION: &str = "Fragmentation is memory the heap has committed but that holds no \
live block: free slots scattered in partly used pages, which the heap cannot give back to the \
OS while one block in the page lives. Ratio = 1 - used / committed (0 % = every committed byte \
in use).";

/// Totals of one page map.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FragmentationFigures {
    /// Pages in the map.
    pub pages: usize,
    /// Bytes of committed pages.
    pub committed_bytes: u64,
    /// Bytes in live blocks on those pages.
    pub used_bytes: u64,
    /// `1 - used / committed` (0 when nothing is committed).
    pub ratio: f64,
}

impl FragmentationFigures {
    /// Sums a page map.
    pub fn of(pages: &[PageRecord]) -> Self {
        let mut f = FragmentationFigures {
            pages: pages.len(),
            ..Self::default()
        };
        for p in pages.iter().filter(|p| p.committed) {
            f.committed_bytes += p.size;
            f.used_bytes += used_bytes(p);
        }
        f.ratio = if f.committed_bytes == 0 {
            0.0
        } else {
            1.0 - f.used_bytes as f64 / f.committed_bytes as f64
        };
        f
    }
}

/// Bytes in live blocks on a page (a large block fills its span).
fn used_bytes(p: &PageRecord) -> u64 {
    if p.class.is_none() && p.used > 0 {
        p.size
    } else {
        (u64::from(p.used) * p.block_size).min(p.size)
    }
}

/// How full a page is, 0.0–1.0.
fn occupancy(p: &PageRecord) -> f32 {
    if p.size == 0 {
        0.0
    } else {
        used_bytes(p) as f32 / p.size as f32
    }
}

/// The fragmentation panel.
#[derive(Debug, Default)]
pub struct FragmentationPanel {
    /// Index of the page under the pointer in the last frame drawn.
    pub hovered: Option<usize>,
}

impl FragmentationPanel {
    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &TraceData) {
        ui.heading("Fragmentation map");
        ui.label(EXPLANATION);
        let Some(snapshot) = &data.full.latest_snapshot else {
            ui.label(
                "This trace has no heap snapshot (the tracker writes them every \
                 `snapshot=` interval).",
            );
            return;
        };
        let figures = FragmentationFigures::of(&snapshot.pages);
        ui.label(format!(
            "Snapshot at {}: {} pages, {} committed, {} used, fragmentation {:.1} %",
            format_ns(snapshot.time_ns),
            figures.pages,
            format_bytes(figures.committed_bytes),
            format_bytes(figures.used_bytes),
            figures.ratio * 100.0
        ));
        ui.label(
            "Cells: one per page. Green = full, yellow to red = mostly free, grey = not committed.",
        );
        const CELL: f32 = 12.0;
        let per_row = ((ui.available_width() / CELL).floor() as usize).max(1);
        let rows = snapshot.pages.len().div_ceil(per_row).max(1);
        egui::ScrollArea::vertical().show(ui, |ui| {
            let (response, painter) = ui.allocate_painter(
                Vec2::new(per_row as f32 * CELL, rows as f32 * CELL),
                Sense::hover(),
            );
            response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, GRID_LABEL));
            let origin = response.rect.left_top();
            let mut hovered = None;
            for (i, p) in snapshot.pages.iter().enumerate() {
                let cell = Rect::from_min_size(
                    Pos2::new(
                        origin.x + (i % per_row) as f32 * CELL,
                        origin.y + (i / per_row) as f32 * CELL,
                    ),
                    Vec2::splat(CELL - 1.0),
                );
                painter.rect_filled(cell, 1.0, page_colour(p));
                if response.hover_pos().is_some_and(|pos| cell.contains(pos)) {
                    hovered = Some(i);
                }
            }
            if let Some(p) = hovered.map(|i| &snapshot.pages[i]) {
                let class = p.class.map_or("large block or unused".to_owned(), |c| {
                    format!("class {c} ({} B blocks)", p.block_size)
                });
                response.on_hover_text_at_pointer(format!(
                    "page {:#x}, {}\n{}\n{} / {} blocks used ({:.0} %){}",
                    p.address,
                    format_bytes(p.size),
                    class,
                    p.used,
                    p.capacity,
                    occupancy(p) * 100.0,
                    if p.committed { "" } else { "\nnot committed" }
                ));
            }
            self.hovered = hovered;
        });
    }
}

fn page_colour(p: &PageRecord) -> Color32 {
    if !p.committed {
        return Color32::from_gray(70);
    }
    let o = occupancy(p);
    if o >= 0.999 {
        return Color32::from_rgb(40, 170, 70);
    }
    // Mostly free is red, mostly used is yellow.
    Color32::from_rgb(230, (60.0 + 170.0 * o) as u8, 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(used: u32, capacity: u32, block_size: u64, committed: bool) -> PageRecord {
        PageRecord {
            address: 0x1000,
            size: 4096,
            class: Some(3),
            block_size,
            capacity,
            used,
            committed,
        }
    }

    #[test]
    fn the_ratio_is_the_committed_share_not_in_live_blocks() {
        let pages = [
            page(64, 64, 64, true), // full: 4096 used
            page(16, 64, 64, true), // a quarter: 1024 used
            page(0, 64, 64, false), // not committed: not counted
        ];
        let f = FragmentationFigures::of(&pages);
        assert_eq!((f.pages, f.committed_bytes, f.used_bytes), (3, 8192, 5120));
        assert!((f.ratio - 0.375).abs() < 1e-9);
        assert_eq!(FragmentationFigures::of(&[]).ratio, 0.0);
    }
}

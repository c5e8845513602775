//! The overview panel: the run in figures, heap in use (and committed, from snapshots) over
//! time, the allocation rate, and the time-range selection (drag across the chart) that filters
//! every other panel.
//!
//! May touch: egui, [`crate::model`] (reading).

use eframe::egui;
use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Vec2};

use super::TraceData;
use crate::model::{format_bytes, format_ns, TimeRange};

/// Accessible name of the heap chart (tests find it by this label).
pub const CHART_LABEL: &str = "heap in use over time";

/// The overview panel.
#[derive(Debug, Default)]
pub struct OverviewPanel {
    /// Where a drag started, in nanoseconds.
    drag_from: Option<u64>,
    /// The span dragged so far (shown before it is applied).
    dragging: Option<TimeRange>,
}

impl OverviewPanel {
    /// Draws the panel; returns a new range when the user selected or cleared one.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &TraceData) -> Option<Option<TimeRange>> {
        let full = &data.full;
        let p = &data.filtered;
        let mut change = None;
        if let Some(start) = &full.start {
            ui.heading(format!("{} (pid {})", start.program, start.pid));
        }
        egui::Grid::new("overview-figures")
            .num_columns(2)
            .show(ui, |ui| {
                let rows = [
                    ("Duration", format_ns(full.duration_ns())),
                    ("Events", full.events.to_string()),
                    (
                        "Allocations in range",
                        format!("{} ({})", p.allocations, format_bytes(p.allocated_bytes)),
                    ),
                    (
                        "Peak heap",
                        format!(
                            "{} at {}",
                            format_bytes(p.peak_bytes),
                            format_ns(p.peak_time_ns)
                        ),
                    ),
                    (
                        "Still allocated at the end",
                        format!(
                            "{} in {} blocks",
                            format_bytes(p.leaked_bytes()),
                            p.leaked_count()
                        ),
                    ),
                    (
                        "Reports",
                        format!(
                            "{} corruption, {} leak",
                            p.corruption_reports().count(),
                            p.leak_reports().count()
                        ),
                    ),
                ];
                for (k, v) in rows {
                    ui.label(k);
                    ui.label(v);
                    ui.end_row();
                }
            });
        ui.horizontal(|ui| {
            ui.label("Drag across the chart to select a time range; every panel then shows it.");
            if data.range.is_some() && ui.button("Clear selection").clicked() {
                change = Some(None);
            }
        });
        let timeline = &full.timeline;
        let level = timeline.heap_in_use();
        let span = timeline
            .bucket_ns
            .saturating_mul(level.len().max(1) as u64)
            .max(full.duration_ns())
            .max(1);
        let height = (ui.available_height() * 0.6).max(120.0);
        let (response, painter) = ui.allocate_painter(
            Vec2::new(ui.available_width(), height),
            Sense::click_and_drag(),
        );
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, CHART_LABEL));
        let rect = response.rect;
        painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
        // Each line has its own scale: committed memory often dwarfs what the program holds.
        let heap_max = level.iter().copied().max().unwrap_or(0).max(1);
        let committed_max = full
            .snapshots
            .iter()
            .map(|s| s.committed_bytes)
            .max()
            .unwrap_or(0)
            .max(1);
        let x_of = |t: u64| rect.left() + rect.width() * (t as f32 / span as f32);
        let t_of =
            |x: f32| (((x - rect.left()) / rect.width()).clamp(0.0, 1.0) * span as f32) as u64;
        let y_of =
            |v: u64, max: u64| rect.bottom() - rect.height() * 0.85 * (v as f32 / max as f32);
        // Selection behind the lines.
        if let Some(r) = self.dragging.or(data.range) {
            let sel = Rect::from_x_y_ranges(x_of(r.start_ns)..=x_of(r.end_ns), rect.y_range());
            painter.rect_filled(sel, 0.0, Color32::from_rgba_unmultiplied(80, 140, 255, 50));
        }
        let heap: Vec<Pos2> = level
            .iter()
            .enumerate()
            .map(|(i, &v)| Pos2::new(x_of(timeline.bucket_start(i + 1)), y_of(v, heap_max)))
            .collect();
        painter.line(heap, Stroke::new(2.0, Color32::from_rgb(230, 120, 40)));
        let committed: Vec<Pos2> = full
            .snapshots
            .iter()
            .map(|s| Pos2::new(x_of(s.time_ns), y_of(s.committed_bytes, committed_max)))
            .collect();
        if committed.len() > 1 {
            painter.line(committed, Stroke::new(1.5, Color32::from_rgb(90, 160, 230)));
        }
        let font = FontId::proportional(12.0);
        painter.text(
            rect.left_top() + Vec2::new(6.0, 4.0),
            Align2::LEFT_TOP,
            format!(
                "heap in use (orange, top = {}); committed by the heap (blue, top = {})",
                format_bytes(heap_max),
                format_bytes(committed_max)
            ),
            font.clone(),
            ui.visuals().text_color(),
        );
        painter.text(
            rect.right_bottom() - Vec2::new(6.0, 4.0),
            Align2::RIGHT_BOTTOM,
            format_ns(span),
            font,
            ui.visuals().text_color(),
        );
        if let Some(pos) = response.interact_pointer_pos() {
            let t = t_of(pos.x);
            if response.drag_started() {
                self.drag_from = Some(t);
            }
            if let Some(from) = self.drag_from {
                self.dragging = Some(TimeRange {
                    start_ns: from.min(t),
                    end_ns: from.max(t),
                });
            }
        }
        if response.drag_stopped() {
            if let Some(r) = self.dragging.take() {
                if r.end_ns > r.start_ns {
                    change = Some(Some(r));
                }
            }
            self.drag_from = None;
        }
        if let Some(pos) = response.hover_pos() {
            let t = t_of(pos.x);
            let i = (t / timeline.bucket_ns.max(1)) as usize;
            if let (Some(v), Some(b)) = (level.get(i), timeline.buckets.get(i)) {
                response.on_hover_text_at_pointer(format!(
                    "{}: {} in use, {} allocations in this bucket",
                    format_ns(t),
                    format_bytes(*v),
                    b.allocations
                ));
            }
        }
        // Allocation rate, as bars.
        ui.label("Allocations per bucket");
        let (rate_rect, _) = ui.allocate_exact_size(
            Vec2::new(
                ui.available_width(),
                ui.available_height().clamp(40.0, 120.0),
            ),
            Sense::hover(),
        );
        let rate_painter = ui.painter_at(rate_rect);
        let most = timeline
            .buckets
            .iter()
            .map(|b| b.allocations)
            .max()
            .unwrap_or(0)
            .max(1);
        for (i, b) in timeline.buckets.iter().enumerate() {
            let x0 = rate_rect.left()
                + rate_rect.width() * (timeline.bucket_start(i) as f32 / span as f32);
            let x1 = rate_rect.left()
                + rate_rect.width() * (timeline.bucket_start(i + 1) as f32 / span as f32);
            let h = rate_rect.height() * (b.allocations as f32 / most as f32);
            let bar = Rect::from_min_max(
                Pos2::new(x0, rate_rect.bottom() - h),
                Pos2::new(x1.max(x0 + 1.0), rate_rect.bottom()),
            );
            rate_painter.rect_filled(bar, 0.0, Color32::from_rgb(120, 180, 120));
        }
        change
    }
}

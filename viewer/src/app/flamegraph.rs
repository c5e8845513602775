//! The flamegraph panel, drawn in egui from the aggregated stacks: callers at the top, callees
//! below (an icicle), widths by bytes or counts for the chosen metric. Click a frame to zoom into
//! it, hover for its figures, type to highlight matching frames; "Export SVG" writes the same
//! graph through inferno next to the trace.
//!
//! May touch: egui, [`crate::model`], [`crate::export`] (stack names, SVG).

use eframe::egui;
use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Vec2};

use super::{name_colour, Source, TraceData};
use crate::model::{format_bytes, Metric};

/// Accessible name of the flamegraph canvas.
pub const CANVAS_LABEL: &str = "flamegraph";

/// Stacks drawn at most; the smaller ones are one "[N smaller stacks]" frame (narrower than a
/// pixel each at this count, and this bounds the work of a rebuild whatever the trace).
pub const MAX_STACKS: usize = 2_000;

/// Height of one frame row, in points.
pub const ROW_HEIGHT: f32 = 20.0;

/// One frame of the merged call tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlameNode {
    /// Function name (the root is "all").
    pub name: String,
    /// The metric summed over this frame and its callees.
    pub value: u64,
    /// Callees, largest first.
    pub children: Vec<FlameNode>,
}

impl FlameNode {
    /// Builds the tree from (outermost-first names, value) pairs.
    pub fn build(stacks: impl IntoIterator<Item = (Vec<String>, u64)>) -> FlameNode {
        let mut root = FlameNode {
            name: "all".to_owned(),
            ..FlameNode::default()
        };
        for (names, value) in stacks {
            root.value += value;
            let mut node = &mut root;
            for name in names {
                let i = match node.children.iter().position(|c| c.name == name) {
                    Some(i) => i,
                    None => {
                        node.children.push(FlameNode {
                            name,
                            ..FlameNode::default()
                        });
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i];
                node.value += value;
            }
        }
        root.sort();
        root
    }

    fn sort(&mut self) {
        self.children
            .sort_by(|a, b| b.value.cmp(&a.value).then(a.name.cmp(&b.name)));
        for c in &mut self.children {
            c.sort();
        }
    }

    /// The node at `path` (names below the root), if it exists.
    pub fn find(&self, path: &[String]) -> Option<&FlameNode> {
        path.iter().try_fold(self, |node, name| {
            node.children.iter().find(|c| &c.name == name)
        })
    }

    /// The metric summed over frames whose name contains `query` (a match inside a match is
    /// not counted twice).
    pub fn matched(&self, query: &str) -> u64 {
        if self.name.contains(query) {
            self.value
        } else {
            self.children.iter().map(|c| c.matched(query)).sum()
        }
    }

    /// Depth of the deepest frame (the root counts 1).
    pub fn depth(&self) -> usize {
        1 + self
            .children
            .iter()
            .map(FlameNode::depth)
            .max()
            .unwrap_or(0)
    }
}

/// The flamegraph panel.
#[derive(Debug)]
pub struct FlamegraphPanel {
    /// What widths measure.
    pub metric: Metric,
    /// The merged tree for `metric`.
    pub tree: FlameNode,
    built_for: (u64, Metric),
    /// The zoomed frame's path below the root (empty: the whole graph).
    pub zoom: Vec<String>,
    /// Highlight frames containing this text.
    pub search: String,
    /// The frame under the pointer in the last frame drawn: (path, value).
    pub hovered: Option<(Vec<String>, u64)>,
    /// Outcome of the last SVG export.
    pub exported: Option<String>,
}

impl Default for FlamegraphPanel {
    fn default() -> Self {
        FlamegraphPanel {
            metric: Metric::Allocated,
            tree: FlameNode::default(),
            built_for: (0, Metric::Allocated),
            zoom: Vec::new(),
            search: String::new(),
            hovered: None,
            exported: None,
        }
    }
}

impl FlamegraphPanel {
    /// Re-derives the tree if the data or the metric changed.
    pub fn refresh(&mut self, data: &mut TraceData) {
        if self.built_for == (data.generation, self.metric) {
            return;
        }
        self.built_for = (data.generation, self.metric);
        let p = &data.filtered;
        let metric = self.metric;
        let (top, others, others_value) = p.top_stacks_by(MAX_STACKS, |s| metric.value(s));
        let mut stacks: Vec<(Vec<String>, u64)> = top
            .into_iter()
            .map(|(id, s)| (data.stack_names(id).0.to_vec(), metric.value(&s)))
            .collect();
        if others > 0 {
            stacks.push((vec![format!("[{others} smaller stacks]")], others_value));
        }
        self.tree = FlameNode::build(stacks);
        if self.tree.find(&self.zoom).is_none() {
            self.zoom.clear();
        }
    }

    fn format(&self, v: u64) -> String {
        if self.metric.is_bytes() {
            format_bytes(v)
        } else {
            format!("{v} allocations")
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui, data: &mut TraceData) {
        self.refresh(data);
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("Measure")
                .selected_text(self.metric.name())
                .show_ui(ui, |ui| {
                    for m in Metric::ALL {
                        ui.selectable_value(&mut self.metric, m, m.name());
                    }
                });
            let label = ui.label("Search:");
            ui.add(egui::TextEdit::singleline(&mut self.search).desired_width(160.0))
                .labelled_by(label.id);
            if !self.zoom.is_empty() && ui.button("Reset zoom").clicked() {
                self.zoom.clear();
            }
            if ui.button("Export SVG").clicked() {
                self.exported = Some(self.export_svg(data));
            }
        });
        self.refresh(data);
        let total = self.tree.value;
        if !self.search.is_empty() {
            let m = self.tree.matched(&self.search);
            ui.label(format!(
                "Matched: {} ({:.1}% of {})",
                self.format(m),
                100.0 * m as f64 / total.max(1) as f64,
                self.format(total)
            ));
        }
        match self.zoom.last() {
            Some(name) => ui.label(format!("Zoomed into: {name}")),
            None => ui.label(format!(
                "All: {} (click a frame to zoom)",
                self.format(total)
            )),
        };
        if let Some(msg) = &self.exported {
            ui.label(msg.clone());
        }
        let zoomed = self.tree.find(&self.zoom).unwrap_or(&self.tree).clone();
        let rows = zoomed.depth() as f32;
        let size = Vec2::new(ui.available_width(), (rows * ROW_HEIGHT).max(ROW_HEIGHT));
        let mut clicked_path = None;
        let mut hovered = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            let (response, painter) = ui.allocate_painter(size, Sense::click());
            response
                .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, CANVAS_LABEL));
            let pointer = response.hover_pos();
            let mut path = self.zoom.clone();
            let ctx = DrawCtx {
                painter: &painter,
                pointer,
                search: &self.search,
                scale: response.rect.width() / zoomed.value.max(1) as f32,
                text: ui.visuals().strong_text_color(),
            };
            ctx.draw(&zoomed, response.rect.left_top(), &mut path, &mut hovered);
            if response.clicked() {
                clicked_path = hovered.clone().map(|(p, _)| p);
            }
            if let Some((p, v)) = &hovered {
                let name = p.last().map_or("all", String::as_str);
                response.on_hover_text_at_pointer(format!(
                    "{name}\n{} ({:.1}%)",
                    self.format(*v),
                    100.0 * *v as f64 / total.max(1) as f64
                ));
            }
        });
        self.hovered = hovered;
        if let Some(p) = clicked_path {
            self.zoom = p;
        }
    }

    fn export_svg(&self, data: &mut TraceData) -> String {
        let path = match &data.source {
            Source::File(p) => p.with_extension(format!("{}.svg", self.metric.name())),
            Source::Bytes(_) | Source::Live(_) => std::env::temp_dir()
                .join(format!("allocscope-flamegraph.{}.svg", self.metric.name())),
        };
        let result = std::fs::File::create(&path).and_then(|f| {
            crate::export::flamegraph_svg(
                &data.filtered,
                &mut data.symbols,
                self.metric,
                std::io::BufWriter::new(f),
            )
        });
        match result {
            Ok(()) => format!("Wrote {}", path.display()),
            Err(e) => format!("Cannot write {}: {e}", path.display()),
        }
    }
}

struct DrawCtx<'a> {
    painter: &'a egui::Painter,
    pointer: Option<Pos2>,
    search: &'a str,
    scale: f32,
    text: Color32,
}

impl DrawCtx<'_> {
    /// Draws `node` with its top-left at `at`, then its callees below it.
    fn draw(
        &self,
        node: &FlameNode,
        at: Pos2,
        path: &mut Vec<String>,
        hovered: &mut Option<(Vec<String>, u64)>,
    ) {
        let width = node.value as f32 * self.scale;
        if width < 0.5 {
            return;
        }
        let rect = Rect::from_min_size(at, Vec2::new(width, ROW_HEIGHT - 1.0));
        let matched = !self.search.is_empty() && node.name.contains(self.search);
        let fill = if matched {
            Color32::from_rgb(200, 60, 200)
        } else if self.search.is_empty() {
            name_colour(&node.name)
        } else {
            name_colour(&node.name).gamma_multiply(0.45)
        };
        self.painter.rect_filled(rect, 1.0, fill);
        if self.pointer.is_some_and(|p| rect.contains(p)) {
            *hovered = Some((path.clone(), node.value));
            self.painter.rect_stroke(
                rect,
                1.0,
                Stroke::new(1.5, Color32::WHITE),
                egui::StrokeKind::Inside,
            );
        }
        if width > 24.0 {
            let chars = ((width - 6.0) / 7.0) as usize;
            let label: String = if node.name.chars().count() > chars {
                let mut s: String = node.name.chars().take(chars.saturating_sub(1)).collect();
                s.push('…');
                s
            } else {
                node.name.clone()
            };
            self.painter.text(
                rect.left_center() + Vec2::new(3.0, 0.0),
                Align2::LEFT_CENTER,
                label,
                FontId::monospace(12.0),
                self.text,
            );
        }
        let mut x = at.x;
        for child in &node.children {
            path.push(child.name.clone());
            self.draw(child, Pos2::new(x, at.y + ROW_HEIGHT), path, hovered);
            path.pop();
            x += child.value as f32 * self.scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(';').map(str::to_owned).collect()
    }

    #[test]
    fn stacks_merge_into_a_tree_sorted_by_value() {
        let tree = FlameNode::build([
            (names("main;a;x"), 10),
            (names("main;b"), 30),
            (names("main;a;y"), 5),
        ]);
        assert_eq!(tree.value, 45);
        assert_eq!(tree.depth(), 4);
        let main = &tree.children[0];
        assert_eq!((main.name.as_str(), main.value), ("main", 45));
        let order: Vec<&str> = main.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(tree.find(&names("main;a")).unwrap().value, 15);
        assert!(tree.find(&names("main;z")).is_none());
        assert_eq!(tree.matched("main"), 45);
        assert_eq!(tree.matched("b"), 30);
        assert_eq!(tree.matched("x"), 10);
    }
}

//! A small SVG line chart — several named series over a shared x axis, linear or logarithmic
//! axes — enough for the analysis's plots without a plotting crate.
//!
//! May touch: nothing (returns the SVG text).

use std::fmt::Write as _;

/// Colours of the series, in order.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A chart to draw.
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Logarithmic x axis (values must be positive).
    pub log_x: bool,
    /// Logarithmic y axis (values must be positive).
    pub log_y: bool,
    /// Named series of (x, y) points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Labels for x ticks at the given x values (empty: five evenly spaced numbers).
    pub x_ticks: Vec<(f64, String)>,
}

const W: f64 = 640.0;
const H: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

impl Chart<'_> {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let tx = |v: f64| if self.log_x { v.max(1e-12).log10() } else { v };
        let ty = |v: f64| if self.log_y { v.max(1e-12).log10() } else { v };
        let points = self.series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points.filter(|p| p.0.is_finite() && p.1.is_finite()) {
            x0 = x0.min(tx(x));
            x1 = x1.max(tx(x));
            y0 = y0.min(ty(y));
            y1 = y1.max(ty(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            y1 = y0 + 1.0;
        }
        y1 += (y1 - y0) * 0.05;
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - (ty(y) - y0) / (y1 - y0) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>
"##,
            LEFT + pw / 2.0,
            escape(self.title)
        );
        // y ticks: five, in the axis's own scale.
        for i in 0..=4 {
            let v = y0 + (y1 - y0) * f64::from(i) / 4.0;
            let value = if self.log_y { 10f64.powf(v) } else { v };
            let y = TOP + ph - (v - y0) / (y1 - y0) * ph;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                number(value)
            );
        }
        let ticks: Vec<(f64, String)> = if self.x_ticks.is_empty() {
            (0..=4)
                .map(|i| {
                    let v = x0 + (x1 - x0) * f64::from(i) / 4.0;
                    let value = if self.log_x { 10f64.powf(v) } else { v };
                    (value, number(value))
                })
                .collect()
        } else {
            self.x_ticks.clone()
        };
        for (x, label) in ticks {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                px(x),
                TOP + ph + 18.0,
                escape(&label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
            LEFT + pw / 2.0,
            H - 10.0,
            escape(self.x_label),
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(self.y_label)
        );
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = pts
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let ly = TOP + 14.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                W - RIGHT + 10.0,
                W - RIGHT + 30.0,
                W - RIGHT + 36.0,
                ly + 4.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A number short enough for a tick label.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_line_and_a_legend_per_series() {
        let c = Chart {
            title: "t <1>",
            x_label: "x",
            y_label: "y",
            log_x: true,
            log_y: false,
            series: vec![
                ("a".into(), vec![(1.0, 1.0), (2.0, 3.0)]),
                ("b".into(), vec![(1.0, 2.0), (16.0, 0.5)]),
            ],
            x_ticks: vec![(1.0, "1".into()), (16.0, "16".into())],
        };
        let svg = c.render();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;") && svg.ends_with("</svg>\n"));
        assert!(svg.contains(">16</text>"));
    }
}

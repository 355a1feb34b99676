//! Line charts as standalone SVG text, for storm reports: no scripts, no
//! fonts or styles from elsewhere, readable in a browser or a Markdown
//! viewer next to the report.
//!
//! Guarantees: the output is well-formed SVG 1.1 whatever the input (text
//! is escaped, non-finite points are skipped, an empty chart says "no
//! data"); the y axis starts at 0 and both axes end on a round number.
//! Not guaranteed: pretty output for more than eight series (colours repeat).

use std::fmt::Write;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line: `(x, y)` points in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (limits, thresholds).
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            dashed: false,
        }
    }
}

/// A chart with a title, axis labels and its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// The chart as an SVG document.
pub fn render(chart: &Chart) -> String {
    let finite = |(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| finite(p)))
    };
    let x_max = points().map(|p| p.0).fold(0.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let (x_step, x_end) = axis(x_max);
    let (y_step, y_end) = axis(y_max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x.max(0.0) / x_end * plot_w;
    let sy = |y: f64| TOP + plot_h - y.max(0.0) / y_end * plot_h;

    let mut svg = String::new();
    // `write!` to a String cannot fail.
    let _ = write!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"##,
        WIDTH / 2.0,
        escape(&chart.title)
    );
    // Grid and tick labels.
    let mut y = 0.0;
    while y <= y_end + y_step / 2.0 {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            tick_label(y, y_step)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_end + x_step / 2.0 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#999999"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 4.0,
            TOP + plot_h + 18.0,
            tick_label(x, x_step)
        );
        x += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        escape(&chart.x_label),
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );

    let drawn: Vec<&Series> = chart
        .series
        .iter()
        .filter(|s| s.points.iter().any(finite))
        .collect();
    if drawn.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#999999">no data</text>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    let mut legend_x = LEFT;
    for (i, series) in drawn.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let path: Vec<String> = series
            .points
            .iter()
            .filter(|p| finite(p))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="{}"/>"#,
            path.join(" ")
        );
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="38" x2="{:.1}" y2="38" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="42">{}</text>"#,
            legend_x + 18.0,
            legend_x + 22.0,
            escape(&series.name)
        );
        legend_x += 32.0 + 7.0 * series.name.chars().count() as f64;
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round tick step for `0..=max` with about five ticks, and the axis end.
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (0.2, 1.0);
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil() * step)
}

fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0}")
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{value:.decimals$}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).expect("well-formed SVG")
    }

    #[test]
    fn a_chart_is_well_formed_svg_with_one_line_per_series() {
        let chart = Chart {
            title: "accepted & <429>".into(),
            x_label: "seconds".into(),
            y_label: "requests/s".into(),
            series: vec![
                Series::new("accepted", vec![(0.0, 10.0), (1.0, 95.0), (2.0, 40.0)]),
                Series {
                    dashed: true,
                    ..Series::new("limit", vec![(0.0, 100.0), (2.0, 100.0)])
                },
                Series::new("empty", vec![]),
            ],
        };
        let svg = render(&chart);
        let doc = parse(&svg);
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let lines: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].attribute("points").map(|p| p.split(' ').count()),
            Some(3)
        );
        assert!(lines[1].attribute("stroke-dasharray").is_some());
        assert!(doc
            .descendants()
            .any(|n| n.text() == Some("accepted & <429>")));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart {
            title: "lag".into(),
            x_label: "s".into(),
            y_label: "events".into(),
            series: vec![Series::new("x", vec![(f64::NAN, 1.0)])],
        };
        let svg = render(&chart);
        let doc = parse(&svg);
        assert!(doc.descendants().any(|n| n.text() == Some("no data")));
        assert!(!doc.descendants().any(|n| n.has_tag_name("polyline")));
    }

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(axis(95.0), (20.0, 100.0));
        assert_eq!(axis(1000.0), (200.0, 1000.0));
        assert_eq!(axis(0.0), (0.2, 1.0));
        assert_eq!(axis(7.0), (2.0, 8.0));
        assert_eq!(tick_label(0.4, 0.2), "0.4");
    }
}

//! Line charts drawn on the server as SVG: no JavaScript, no chart library, readable without
//! styles. A chart shows the mean per bucket as a line and the min–max range as a band.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::history::series::Point;

/// How values are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes (B, KiB, MiB, GiB).
    Bytes,
    /// Seconds (ms, s, min, h).
    Seconds,
    /// A plain count.
    Count,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 22.0;

/// `&`, `<`, `>`, `"` and `'` as entities.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A value with its unit, for people (`1.5 MiB`, `250 ms`).
pub fn format_value(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut v = value;
            let mut i = 0;
            while v.abs() >= 1024.0 && i + 1 < units.len() {
                v /= 1024.0;
                i += 1;
            }
            if i == 0 || v >= 100.0 {
                format!("{v:.0} {}", units[i])
            } else {
                format!("{v:.1} {}", units[i])
            }
        }
        Unit::Seconds if value == 0.0 => "0 s".into(),
        Unit::Seconds if value < 1.0 => format!("{:.0} ms", value * 1000.0),
        Unit::Seconds if value < 120.0 => format!("{value:.1} s"),
        Unit::Seconds if value < 7200.0 => format!("{:.1} min", value / 60.0),
        Unit::Seconds => format!("{:.1} h", value / 3600.0),
        Unit::Count if value.fract() == 0.0 => format!("{value:.0}"),
        Unit::Count => format!("{value:.2}"),
    }
}

/// The smallest of 1, 2, 5 × 10^k (times 1024^k for bytes) at or above `value`.
fn nice_ceiling(value: f64, unit: Unit) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let base = if unit == Unit::Bytes {
        1024f64.powf(value.log(1024.0).floor().max(0.0))
    } else {
        1.0
    };
    let scaled = value / base;
    let magnitude = 10f64.powf(scaled.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= scaled)
        .unwrap_or(10.0 * magnitude);
    nice * base
}

/// Width of the plot area (inside the axis labels).
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
/// Height of the plot area.
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

/// Where a chart puts times and values: `[from, to]` across the plot area, `0..=ymax` up it.
struct Frame {
    /// Left edge.
    from: DateTime<Utc>,
    /// Right edge.
    to: DateTime<Utc>,
    /// `to - from` in milliseconds, at least 1.
    span: f64,
    /// Value at the top.
    ymax: f64,
}

impl Frame {
    /// The frame for `points` over `[from, to]`: the top is a round value at or above the
    /// highest maximum (or mean).
    fn new(points: &[Point], unit: Unit, from: DateTime<Utc>, to: DateTime<Utc>) -> Frame {
        let top = points
            .iter()
            .filter_map(|p| p.max.or(p.avg))
            .fold(0.0f64, f64::max);
        Frame {
            from,
            to,
            span: (to - from).num_milliseconds().max(1) as f64,
            ymax: nice_ceiling(top, unit),
        }
    }

    /// Horizontal position of `t` (clamped to the plot area).
    fn x(&self, t: DateTime<Utc>) -> f64 {
        LEFT + ((t - self.from).num_milliseconds() as f64 / self.span).clamp(0.0, 1.0) * PLOT_W
    }

    /// Vertical position of `v` (clamped to the plot area).
    fn y(&self, v: f64) -> f64 {
        TOP + PLOT_H - (v / self.ymax).clamp(0.0, 1.0) * PLOT_H
    }
}

/// An SVG line chart of `points` over `[from, to]`.
pub fn line_chart(
    title: &str,
    unit: Unit,
    points: &[Point],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    let frame = Frame::new(points, unit, from, to);
    let mut svg = String::new();
    let title = escape(title);
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}"><title>{title}</title><text class="chart-title" x="{LEFT}" y="15">{title}</text>"#
    );
    value_axis(&mut svg, &frame, unit);
    time_axis(&mut svg, &frame);
    let with_range: Vec<&Point> = points
        .iter()
        .filter(|p| p.min.is_some() && p.max.is_some())
        .collect();
    if with_range.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no samples in this range</text>"#,
            LEFT + PLOT_W / 2.0,
            TOP + PLOT_H / 2.0
        );
    } else {
        band_and_line(&mut svg, &frame, points, &with_range);
        // Sparse series (a new node, a short range) would be invisible as a line alone.
        if points.len() <= 60 {
            dots(&mut svg, &frame, points);
        }
        if let Some(last) = points.iter().rev().find_map(|p| p.avg) {
            let _ = write!(
                svg,
                r#"<text class="last" x="{}" y="15" text-anchor="end">last bucket: mean {}</text>"#,
                WIDTH - RIGHT,
                escape(&format_value(last, unit))
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Grid lines with value labels at the bottom, middle and top.
fn value_axis(svg: &mut String, frame: &Frame, unit: Unit) {
    for fraction in [0.0, 0.5, 1.0] {
        let value = frame.ymax * fraction;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            frame.y(value) + 4.0,
            escape(&format_value(value, unit)),
            y = frame.y(value),
        );
    }
}

/// Time labels at the start, middle and end (with the date when the range passes a day).
fn time_axis(svg: &mut String, frame: &Frame) {
    let (from, to) = (frame.from, frame.to);
    let time_format = if to - from > chrono::Duration::hours(24) {
        "%m-%d %H:%M"
    } else {
        "%H:%M"
    };
    for (t, anchor) in [
        (from, "start"),
        (from + (to - from) / 2, "middle"),
        (to, "end"),
    ] {
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
            frame.x(t),
            HEIGHT - 6.0,
            t.format(time_format)
        );
    }
}

/// The min–max band of the buckets `with_range` (those with both) and the line of the means
/// of `points`.
fn band_and_line(svg: &mut String, frame: &Frame, points: &[Point], with_range: &[&Point]) {
    let mut band = String::new();
    for p in with_range {
        let _ = write!(
            band,
            "{:.1},{:.1} ",
            frame.x(p.t),
            frame.y(p.max.unwrap_or(0.0))
        );
    }
    for p in with_range.iter().rev() {
        let _ = write!(
            band,
            "{:.1},{:.1} ",
            frame.x(p.t),
            frame.y(p.min.unwrap_or(0.0))
        );
    }
    let line: String = points
        .iter()
        .filter_map(|p| Some(format!("{:.1},{:.1}", frame.x(p.t), frame.y(p.avg?))))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = write!(
        svg,
        r#"<polygon class="band" points="{}"/><polyline class="line" points="{line}"/>"#,
        band.trim_end()
    );
}

/// A dot at each bucket's mean.
fn dots(svg: &mut String, frame: &Frame, points: &[Point]) {
    for p in points {
        if let Some(avg) = p.avg {
            let _ = write!(
                svg,
                r#"<circle class="dot" cx="{:.1}" cy="{:.1}" r="2"/>"#,
                frame.x(p.t),
                frame.y(avg)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, v: f64) -> Point {
        Point {
            t: DateTime::from_timestamp(t, 0).unwrap(),
            min: Some(v / 2.0),
            max: Some(v),
            avg: Some(v * 0.75),
            count: 1,
        }
    }

    #[test]
    fn values_for_people() {
        assert_eq!(format_value(0.0, Unit::Bytes), "0 B");
        assert_eq!(format_value(1536.0, Unit::Bytes), "1.5 KiB");
        assert_eq!(format_value(5.0 * 1024.0 * 1024.0, Unit::Bytes), "5.0 MiB");
        assert_eq!(format_value(0.25, Unit::Seconds), "250 ms");
        assert_eq!(format_value(42.0, Unit::Seconds), "42.0 s");
        assert_eq!(format_value(3.0, Unit::Count), "3");
        assert_eq!(nice_ceiling(3.2, Unit::Count), 5.0);
        assert_eq!(nice_ceiling(1500.0, Unit::Bytes), 2048.0);
        assert_eq!(nice_ceiling(0.0, Unit::Seconds), 1.0);
    }

    #[test]
    fn draws_a_line_and_escapes_the_title() {
        let from = DateTime::from_timestamp(0, 0).unwrap();
        let to = DateTime::from_timestamp(100, 0).unwrap();
        let svg = line_chart(
            "lag <pg>",
            Unit::Bytes,
            &[point(0, 100.0), point(50, 2048.0)],
            from,
            to,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("<polyline class=\"line\""), "{svg}");
        assert!(
            svg.contains("lag &lt;pg&gt;") && !svg.contains("<pg>"),
            "{svg}"
        );
        assert!(svg.contains("2.0 KiB"), "{svg}");
        let empty = line_chart("x", Unit::Count, &[], from, to);
        assert!(empty.contains("no samples in this range"));
    }
}

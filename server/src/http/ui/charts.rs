//! Line charts drawn on the server as SVG: no JavaScript, no chart library, readable without
//! styles. A chart shows the mean per bucket as a line and the min–max range as a band; a
//! service check's chart adds a strip under it, its state per bucket.

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
    /// Milliseconds (shown as ms, s, min, h).
    Milliseconds,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 22.0;
/// Height of the lane under the plot area where a check chart shows its state.
const STRIP_H: f64 = 18.0;

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
        Unit::Milliseconds if value == 0.0 => "0 ms".into(),
        Unit::Milliseconds if value < 10.0 => format!("{value:.1} ms"),
        Unit::Milliseconds if value < 1000.0 => format!("{value:.0} ms"),
        Unit::Milliseconds => format_value(value / 1000.0, Unit::Seconds),
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
    /// Height of the whole chart: the plot area, a check's state strip if any, time labels.
    height: f64,
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
    fn new(
        points: &[Point],
        unit: Unit,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        strip: bool,
    ) -> Frame {
        let top = points
            .iter()
            .filter_map(|p| p.max.or(p.avg))
            .fold(0.0f64, f64::max);
        Frame {
            height: HEIGHT + if strip { STRIP_H } else { 0.0 },
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
    chart(title, unit, points, None, from, to)
}

/// An SVG chart of one service check over `[from, to]`: how long its attempts took
/// (`duration`, the `check_duration_ms` series) as a line chart, and under it a strip of its
/// state per bucket of `step` (`passing`, the `check_passing` series): green where it passed
/// in every sample, red where it failed in every one, amber where it changed (both in one
/// bucket); blank where no sample arrived.
pub fn check_chart(
    title: &str,
    duration: &[Point],
    passing: &[Point],
    step: std::time::Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    chart(
        title,
        Unit::Milliseconds,
        duration,
        Some((passing, step)),
        from,
        to,
    )
}

/// A line chart of `points`, with a state strip of `strip` (a check's passing series and its
/// step) when given.
fn chart(
    title: &str,
    unit: Unit,
    points: &[Point],
    strip: Option<(&[Point], std::time::Duration)>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> String {
    let frame = Frame::new(points, unit, from, to, strip.is_some());
    let mut svg = String::new();
    let title = escape(title);
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {}" role="img" aria-label="{title}"><title>{title}</title><text class="chart-title" x="{LEFT}" y="15">{title}</text>"#,
        frame.height
    );
    value_axis(&mut svg, &frame, unit);
    time_axis(&mut svg, &frame);
    if let Some((passing, step)) = strip {
        state_strip(&mut svg, &frame, passing, step);
    }
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

/// A check's state under the plot area: one rectangle per run of buckets in the same state
/// (`passing`'s mean: 1 passed throughout, 0 failed throughout, between: changed), each
/// titled with its state and times. Colours are attributes, so the strip reads without styles.
fn state_strip(svg: &mut String, frame: &Frame, passing: &[Point], step: std::time::Duration) {
    let step = chrono::Duration::from_std(step).unwrap_or(chrono::Duration::minutes(1));
    let y = TOP + PLOT_H + 6.0;
    let height = STRIP_H - 8.0;
    let _ = write!(
        svg,
        r##"<text class="axis" x="{}" y="{:.1}" text-anchor="end">state</text><rect class="strip-lane" x="{LEFT}" y="{y:.1}" width="{PLOT_W}" height="{height}" fill="#f6f8fa"/>"##,
        LEFT - 6.0,
        y + height - 1.0,
    );
    // Runs of adjacent buckets in one state: (state, start, end).
    let mut runs: Vec<(&str, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for p in passing {
        let state = match p.avg {
            Some(a) if a >= 1.0 => "passing",
            Some(a) if a <= 0.0 => "failing",
            Some(_) => "changed",
            None => continue,
        };
        match runs.last_mut() {
            Some((s, _, end)) if *s == state && *end >= p.t => *end = p.t + step,
            _ => runs.push((state, p.t, p.t + step)),
        }
    }
    for (state, start, end) in runs {
        let fill = match state {
            "passing" => "#1a7f37",
            "failing" => "#cf222e",
            _ => "#bf8700",
        };
        let x = frame.x(start);
        let width = (frame.x(end.min(frame.to)) - x).max(1.0);
        let _ = write!(
            svg,
            r#"<rect class="strip-{state}" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height}" fill="{fill}"><title>{state} {} – {}</title></rect>"#,
            start.format("%Y-%m-%d %H:%M:%S"),
            end.format("%H:%M:%S UTC"),
        );
    }
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
            frame.height - 6.0,
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
            values: 1,
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

    #[test]
    fn a_check_chart_shows_runs_of_its_state_under_the_duration() {
        let from = DateTime::from_timestamp(0, 0).unwrap();
        let to = DateTime::from_timestamp(60, 0).unwrap();
        let state = |t: i64, avg: f64| Point {
            t: DateTime::from_timestamp(t, 0).unwrap(),
            min: Some(avg.floor()),
            max: Some(avg.ceil()),
            avg: Some(avg),
            count: 2,
            values: 2,
        };
        // Passing for two buckets, failing, one bucket with both, then a gap and passing.
        let passing = [
            state(0, 1.0),
            state(10, 1.0),
            state(20, 0.0),
            state(30, 0.5),
            state(50, 1.0),
        ];
        let svg = check_chart(
            "pg-port",
            &[point(0, 4.0), point(20, 1200.0)],
            &passing,
            std::time::Duration::from_secs(10),
            from,
            to,
        );
        assert_eq!(svg.matches("class=\"strip-passing\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"strip-failing\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("class=\"strip-changed\"").count(), 1, "{svg}");
        assert!(
            svg.contains("passing 1970-01-01 00:00:00 – 00:00:20 UTC"),
            "{svg}"
        );
        assert!(svg.contains("<polyline class=\"line\""), "{svg}");
        assert!(svg.contains("viewBox=\"0 0 720 188\""), "{svg}");
        assert_eq!(format_value(0.4, Unit::Milliseconds), "0.4 ms");
        assert_eq!(format_value(250.0, Unit::Milliseconds), "250 ms");
        assert_eq!(format_value(1500.0, Unit::Milliseconds), "1.5 s");
    }
}

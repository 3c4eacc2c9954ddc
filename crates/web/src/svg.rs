//! The pictures, drawn on the server as SVG: the uptime bars of the last days, the
//! response-time chart, and the badges. Functions from numbers to markup, escaped by maud.

use maud::{Markup, html};
use sitemon_core::dashboard::DayUptime;
use sitemon_core::report::HistoryBucket;
use time::OffsetDateTime;

/// How a day's (or a window's) uptime reads: the class of its colour and a word for it,
/// so that colour is never the only signal.
pub(crate) fn uptime_class(uptime_pct: Option<f64>) -> (&'static str, &'static str) {
    match uptime_pct {
        None => ("none", "no data"),
        Some(u) if u >= 99.9 => ("good", "up"),
        Some(u) if u >= 99.0 => ("fair", "some downtime"),
        Some(_) => ("bad", "down"),
    }
}

/// A percentage for people: `100 %`, `99.95 %`, `12.3 %`.
pub(crate) fn percent(value: f64) -> String {
    if value >= 100.0 {
        "100%".to_owned()
    } else if value >= 99.0 {
        format!("{:.2}%", (value * 100.0).floor() / 100.0)
    } else {
        format!("{value:.1}%")
    }
}

/// Milliseconds for people: `0.8 ms`, `123 ms`, `1.25 s`.
pub(crate) fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// Width of one day's bar and the gap after it, in SVG units.
const BAR: u32 = 4;
const GAP: u32 = 1;
const BAR_HEIGHT: u32 = 24;

/// One bar per day, oldest on the left, coloured by uptime; each bar's `<title>` gives the
/// day and the exact figure on hover, and a visually hidden sentence sums the days up for
/// screen readers.
pub(crate) fn uptime_bars(days: &[DayUptime]) -> Markup {
    let width = days.len() as u32 * (BAR + GAP);
    let measured: Vec<&DayUptime> = days.iter().filter(|d| d.checks > 0).collect();
    let checks: i64 = measured.iter().map(|d| d.checks).sum();
    let up: i64 = measured.iter().map(|d| d.up).sum();
    let bad: Vec<String> = measured
        .iter()
        .filter(|d| d.uptime_pct.is_some_and(|u| u < 99.9))
        .map(|d| format!("{} {}", d.day, percent(d.uptime_pct.unwrap_or(0.0))))
        .collect();
    let summary = if checks == 0 {
        format!("No checks in the last {} days.", days.len())
    } else {
        let mut text = format!(
            "{} over the last {} days ({} days measured)",
            percent(100.0 * up as f64 / checks as f64),
            days.len(),
            measured.len()
        );
        if bad.is_empty() {
            text.push_str("; every day at least 99.9%.");
        } else {
            text.push_str(&format!("; days below 99.9%: {}.", bad.join(", ")));
        }
        text
    };
    html! {
        svg.bars role="img" aria-hidden="true" viewBox={ "0 0 " (width) " " (BAR_HEIGHT) }
            width=(width) height=(BAR_HEIGHT) preserveAspectRatio="none" {
            @for (i, day) in days.iter().enumerate() {
                @let (class, _) = uptime_class(day.uptime_pct);
                rect class=(class) x=(i as u32 * (BAR + GAP)) width=(BAR) height=(BAR_HEIGHT) {
                    title {
                        (day.day) ": "
                        @match day.uptime_pct {
                            Some(u) => { (percent(u)) " up, " (day.checks) " checks" }
                            None => "no checks",
                        }
                    }
                }
            }
        }
        span.sr-only { "Uptime by day: " (summary) }
    }
}

/// The response-time chart of a site: p50 and p95 per bucket, a line each, broken where
/// buckets are missing; time along the bottom, milliseconds up the side.
pub(crate) fn response_chart(
    buckets: &[HistoryBucket],
    from: OffsetDateTime,
    until: OffsetDateTime,
    every_secs: i64,
) -> Markup {
    const W: f64 = 1000.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 52.0;
    const BOTTOM: f64 = 24.0;
    const TOP: f64 = 8.0;
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - BOTTOM - TOP;
    let top_ms = buckets
        .iter()
        .filter_map(|b| b.p95_ms.or(b.p50_ms))
        .fold(0.0_f64, f64::max);
    let scale = nice_ceiling(top_ms.max(1.0));
    let t0 = from.unix_timestamp() as f64;
    let span = ((until.unix_timestamp() as f64) - t0).max(1.0);
    let x = |at: OffsetDateTime| {
        LEFT + ((at.unix_timestamp() as f64 - t0) / span).clamp(0.0, 1.0) * plot_w
    };
    let y = |ms: f64| TOP + plot_h - (ms / scale).clamp(0.0, 1.0) * plot_h;
    // Runs of adjacent buckets become one line each; a lone bucket a dot (a zero-length
    // stroke with round caps).
    let line = |pick: fn(&HistoryBucket) -> Option<f64>| -> String {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut previous: Option<OffsetDateTime> = None;
        for bucket in buckets {
            let Some(ms) = pick(bucket).filter(|v| v.is_finite()) else {
                previous = None;
                continue;
            };
            let middle = bucket
                .bucket_start
                .checked_add(time::Duration::seconds(every_secs / 2))
                .unwrap_or(bucket.bucket_start);
            let joined =
                previous.is_some_and(|p| (bucket.bucket_start - p).whole_seconds() <= every_secs);
            let point = (x(middle), y(ms));
            match runs.last_mut() {
                Some(run) if joined => run.push(point),
                _ => runs.push(vec![point]),
            }
            previous = Some(bucket.bucket_start);
        }
        let mut path = String::new();
        for run in &runs {
            for (i, (px, py)) in run.iter().enumerate() {
                path.push_str(&format!(
                    "{}{px:.1} {py:.1}",
                    if i == 0 { "M" } else { "L" }
                ));
            }
            if run.len() == 1 {
                path.push_str("h0.1");
            }
        }
        path
    };
    let ticks = [0.0, 0.25, 0.5, 0.75, 1.0].map(|f| f * scale);
    let time_ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let at = from + time::Duration::seconds((span * f64::from(i) / 4.0) as i64);
            (x(at), short_time(at, span))
        })
        .collect();
    html! {
        svg.chart role="img" viewBox={ "0 0 " (W) " " (H) } aria-labelledby="chart-title" {
            title id="chart-title" {
                "Response time, p50 and p95 per bucket, " (buckets.len()) " buckets"
            }
            @for ms in ticks {
                line.grid x1=(LEFT) x2=(W - 8.0) y1=(format!("{:.1}", y(ms))) y2=(format!("{:.1}", y(ms))) {}
                text.axis x=(LEFT - 4.0) y=(format!("{:.1}", y(ms) + 4.0)) text-anchor="end" { (millis(ms)) }
            }
            @for (i, (tx, label)) in time_ticks.iter().enumerate() {
                text.axis x=(format!("{tx:.1}")) y=(H - 6.0)
                    text-anchor=(match i { 0 => "start", 4 => "end", _ => "middle" }) { (label) }
            }
            path.p95 d=(line(|b| b.p95_ms)) {}
            path.p50 d=(line(|b| b.p50_ms)) {}
        }
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|v| *v >= value)
        .unwrap_or(value)
}

fn short_time(at: OffsetDateTime, span_secs: f64) -> String {
    let format = if span_secs <= 2.0 * 86_400.0 {
        time::macros::format_description!("[hour]:[minute]")
    } else {
        time::macros::format_description!("[month repr:short] [day]")
    };
    at.format(&format).unwrap_or_default()
}

/// The colours of badges, as shields.io's flat style has them.
pub(crate) const GREEN: &str = "#4c1";
pub(crate) const YELLOW: &str = "#dfb317";
pub(crate) const RED: &str = "#e05d44";
pub(crate) const GREY: &str = "#9f9f9f";

/// A flat two-part badge: `label` on grey, `value` on `color`.
pub(crate) fn badge(label: &str, value: &str, color: &str) -> String {
    // Verdana 11 px is about 6.5 px a character; 10 px of padding each side.
    let width = |text: &str| text.chars().count() as u32 * 65 / 10 + 10;
    let (lw, vw) = (width(label), width(value));
    let total = lw + vw;
    let markup = html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(total) height="20" role="img"
            aria-label={ (label) ": " (value) } {
            title { (label) ": " (value) }
            linearGradient id="s" x2="0" y2="100%" {
                stop offset="0" stop-color="#bbb" stop-opacity=".1" {}
                stop offset="1" stop-opacity=".1" {}
            }
            clipPath id="r" { rect width=(total) height="20" rx="3" fill="#fff" {} }
            g clip-path="url(#r)" {
                rect width=(lw) height="20" fill="#555" {}
                rect x=(lw) width=(vw) height="20" fill=(color) {}
                rect width=(total) height="20" fill="url(#s)" {}
            }
            g fill="#fff" text-anchor="middle"
                font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11" {
                text x=(f64::from(lw) / 2.0) y="15" fill="#010101" fill-opacity=".3" { (label) }
                text x=(f64::from(lw) / 2.0) y="14" { (label) }
                text x=(f64::from(lw) + f64::from(vw) / 2.0) y="15" fill="#010101" fill-opacity=".3" { (value) }
                text x=(f64::from(lw) + f64::from(vw) / 2.0) y="14" { (value) }
            }
        }
    };
    markup.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn bucket(at: OffsetDateTime, p50: f64, p95: f64) -> HistoryBucket {
        HistoryBucket {
            bucket_start: at,
            checks: 10,
            uptime_pct: Some(100.0),
            p50_ms: Some(p50),
            p95_ms: Some(p95),
            p99_ms: Some(p95),
            top_error: None,
        }
    }

    #[test]
    fn the_chart_draws_a_line_per_percentile_broken_at_gaps() {
        let from = datetime!(2026-11-29 10:00 UTC);
        let hour = time::Duration::hours(1);
        let buckets = [
            bucket(from, 10.0, 20.0),
            bucket(from + hour, 12.0, 40.0),
            // Two hours missing: the line starts again.
            bucket(from + hour * 4, 11.0, 30.0),
        ];
        let svg = response_chart(&buckets, from, from + hour * 24, 3600).into_string();
        let p95 = svg
            .split("class=\"p95\" d=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a p95 path");
        assert_eq!(p95.matches('M').count(), 2, "{p95}");
        assert_eq!(p95.matches('L').count(), 1, "{p95}");
        // The lone bucket is a dot.
        assert!(p95.ends_with("h0.1"), "{p95}");
        assert!(svg.contains("class=\"p50\""), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        // The axis tops at a round 50 ms over the highest p95 (40 ms).
        assert!(svg.contains(">50 ms<"), "{svg}");
    }

    #[test]
    fn an_empty_chart_is_still_a_picture() {
        let from = datetime!(2026-11-29 10:00 UTC);
        let svg = response_chart(&[], from, from + time::Duration::days(1), 3600).into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn bars_have_a_figure_each_and_a_sentence() {
        let days: Vec<DayUptime> = (0..90)
            .map(|i| DayUptime {
                day: date!(2026 - 09 - 01) + time::Duration::days(i),
                checks: if i == 0 { 0 } else { 100 },
                up: if i == 5 { 90 } else { 100 },
                degraded: 0,
                uptime_pct: if i == 0 {
                    None
                } else if i == 5 {
                    Some(90.0)
                } else {
                    Some(100.0)
                },
            })
            .collect();
        let svg = uptime_bars(&days).into_string();
        assert_eq!(svg.matches("<rect").count(), 90);
        assert!(
            svg.contains("<title>2026-09-06: 90.0% up, 100 checks</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>2026-09-01: no checks</title>"),
            "{svg}"
        );
        assert!(svg.contains("class=\"bad\""));
        assert!(svg.contains("days below 99.9%: 2026-09-06 90.0%."), "{svg}");
    }

    #[test]
    fn badges_escape_and_size_their_text() {
        let svg = badge("uptime 24h", "<99%>", RED);
        assert!(svg.contains("&lt;99%&gt;"), "{svg}");
        assert!(!svg.contains("<99%>"), "{svg}");
        assert!(svg.contains(RED));
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"117\""),
            "{svg}"
        );
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(percent(100.0), "100%");
        assert_eq!(percent(99.957), "99.95%");
        assert_eq!(percent(42.0), "42.0%");
        assert_eq!(millis(0.84), "0.8 ms");
        assert_eq!(millis(123.4), "123 ms");
        assert_eq!(millis(1250.0), "1.25 s");
        assert_eq!(nice_ceiling(40.0), 50.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(2.0), 2.0);
    }
}

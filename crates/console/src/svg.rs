//! The expiry timeline as inline SVG: one bar for the expired certificates, then one per week
//! for the next year, each stacked by issuing CA (the largest CAs get their own colour, the
//! rest are drawn together as "other"). No script, no style attribute: presentation
//! attributes only, so the page's Content-Security-Policy holds.

use std::fmt::Write;

use certfleet_services::{FleetOverview, TIMELINE_WEEK_COUNT};

use crate::html::escape;

const COLOURS: [&str; 6] = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#718096"];
const WIDTH: usize = 800;
const HEIGHT: usize = 220;
const LEFT: usize = 48;
const BOTTOM: usize = 28;

/// A CA's label: the first 12 hex digits of its ID, or the issuer of certificates without one.
pub fn ca_label(ca: Option<&certfleet_pki::CertificateId>) -> String {
    match ca {
        Some(id) => id.as_str()[..12].to_owned(),
        None => "no registered CA".to_owned(),
    }
}

/// The timeline of `overview`, with its legend.
pub fn timeline(overview: &FleetOverview) -> String {
    // Series: the five largest CAs, then everything else together.
    let mut series: Vec<(String, u64, Vec<u64>)> = Vec::new();
    for (index, line) in overview.timeline.iter().enumerate() {
        let mut bars = Vec::with_capacity(TIMELINE_WEEK_COUNT + 1);
        bars.push(line.expired);
        bars.extend(&line.weeks);
        if index < COLOURS.len() - 1 {
            series.push((ca_label(line.ca.as_ref()), line.total(), bars));
        } else {
            if series.len() < COLOURS.len() {
                series.push(("other CAs".to_owned(), 0, vec![0; TIMELINE_WEEK_COUNT + 1]));
            }
            if let Some(other) = series.last_mut() {
                other.1 += line.total();
                for (sum, value) in other.2.iter_mut().zip(bars) {
                    *sum += value;
                }
            }
        }
    }
    let columns = TIMELINE_WEEK_COUNT + 1;
    let totals: Vec<u64> = (0..columns).map(|column| series.iter().map(|s| s.2[column]).sum()).collect();
    let peak = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_height = HEIGHT - BOTTOM - 10;
    let step = (WIDTH - LEFT - 10) as f64 / columns as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"expiry-timeline\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\" aria-label=\"ACTIVE certificates by week of expiry\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"16\" font-size=\"11\">{peak}</text><text x=\"4\" y=\"{y}\" font-size=\"11\">0</text>",
        y = HEIGHT - BOTTOM,
        x2 = WIDTH - 10,
    );
    for column in 0..columns {
        let x = LEFT as f64 + column as f64 * step;
        let mut base = (HEIGHT - BOTTOM) as f64;
        for (index, (label, _, bars)) in series.iter().enumerate() {
            let value = bars[column];
            if value == 0 {
                continue;
            }
            let height = (value as f64 / peak as f64 * plot_height as f64).max(1.0);
            base -= height;
            let when = if column == 0 { "expired".to_owned() } else { format!("week {}", column) };
            let colour = if column == 0 { "#c53030" } else { COLOURS[index % COLOURS.len()] };
            let _ = write!(
                svg,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{base:.1}\" width=\"{w:.1}\" height=\"{height:.1}\" fill=\"{colour}\" \
                 data-week=\"{column}\" data-count=\"{value}\"><title>{} · {when}: {value}</title></rect>",
                escape(label),
                w = (step - 1.0).max(1.0),
            );
        }
        if column == 0 || (column > 1 && column % 13 == 1) {
            let label = if column == 0 { "expired".to_owned() } else { format!("+{}w", column - 1) };
            let _ =
                write!(svg, "<text x=\"{x:.1}\" y=\"{y}\" font-size=\"11\">{label}</text>", y = HEIGHT - BOTTOM + 16);
        }
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for (index, (label, total, _)) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<li><svg width=\"12\" height=\"12\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> {} ({total})</li>",
            COLOURS[index % COLOURS.len()],
            escape(label)
        );
    }
    svg.push_str("</ul>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_services::TimelineSeries;

    fn overview(lines: usize) -> FleetOverview {
        let timeline = (0..lines)
            .map(|n| {
                let mut weeks = vec![0; TIMELINE_WEEK_COUNT];
                weeks[n % TIMELINE_WEEK_COUNT] = 3;
                TimelineSeries {
                    ca: Some(certfleet_pki::CertificateId::parse(&format!("{:x}", n % 16).repeat(64)).unwrap()),
                    expired: 1,
                    weeks,
                    later: 0,
                }
            })
            .collect();
        FleetOverview {
            total: 0,
            by_status: Default::default(),
            expiring: [0; 3],
            expired_active: lines as u64,
            timeline,
            by_ca: Default::default(),
            computed_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_timeline_stacks_at_most_six_series_and_keeps_every_count() {
        let svg = timeline(&overview(9));
        assert_eq!(svg.matches("<li>").count(), 6, "five CAs and the others");
        assert!(svg.contains("other CAs (16)"), "four CAs of 4 each: {svg}");
        // Every certificate is drawn: the data-count values add up to the total.
        let drawn: u64 = svg
            .split("data-count=\"")
            .skip(1)
            .map(|rest| rest[..rest.find('"').unwrap()].parse::<u64>().unwrap())
            .sum();
        assert_eq!(drawn, 9 * 4);
        assert!(!svg.contains("style="));
    }

    #[test]
    fn an_empty_fleet_draws_an_empty_axis() {
        let svg = timeline(&overview(0));
        assert!(svg.contains("<svg id=\"expiry-timeline\""));
        assert_eq!(svg.matches("class=\"bar\"").count(), 0);
    }
}

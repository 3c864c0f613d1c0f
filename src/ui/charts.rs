//! Throughput and 429 charts, drawn on the server as SVG with plotters (its SVG backend
//! only: labels are SVG `<text>` the browser sets in its own font; no font files needed).

use super::UiError;
use super::html::esc;
use crate::store::dashboard::MinuteThroughput;
use plotters::prelude::*;

const WIDTH: u32 = 560;
const HEIGHT: u32 = 200;

/// One line of a chart.
pub struct Line {
    pub name: &'static str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

pub const BLUE: RGBColor = RGBColor(0x2f, 0x6f, 0xd6);
pub const GREEN: RGBColor = RGBColor(0x2e, 0x9e, 0x5b);
pub const RED: RGBColor = RGBColor(0xd6, 0x45, 0x45);
pub const GREY: RGBColor = RGBColor(0x8a, 0x94, 0xa6);

/// The three charts of a throughput window, as HTML (title, key, inline SVG).
pub fn throughput(rows: &[MinuteThroughput]) -> Result<String, UiError> {
    let minutes: Vec<String> = rows
        .iter()
        .map(|r| format!("{:02}:{:02}", r.minute.0.hour(), r.minute.0.minute()))
        .collect();
    let column = |f: fn(&MinuteThroughput) -> i64| -> Vec<f64> {
        rows.iter().map(|r| f(r) as f64).collect()
    };
    let work = chart(
        "Files and tickets per minute",
        &minutes,
        &[
            Line {
                name: "files uploaded",
                color: BLUE,
                values: column(|r| r.files),
            },
            Line {
                name: "tickets created",
                color: GREEN,
                values: column(|r| r.tickets),
            },
        ],
    )?;
    let largest = rows.iter().map(|r| r.bytes).max().unwrap_or(0);
    let (unit, scale) = crate::human::byte_unit(u64::try_from(largest).unwrap_or(0));
    let unit = if unit == "B" { "bytes" } else { unit };
    let bytes = chart(
        &format!("{unit} uploaded per minute"),
        &minutes,
        &[Line {
            name: unit,
            color: BLUE,
            values: rows.iter().map(|r| r.bytes as f64 / scale).collect(),
        }],
    )?;
    let requests = chart(
        "API and S3 requests per minute (all workers)",
        &minutes,
        &[
            Line {
                name: "requests",
                color: GREY,
                values: column(|r| r.requests),
            },
            Line {
                name: "429 rate-limited",
                color: RED,
                values: column(|r| r.rate_limited),
            },
        ],
    )?;
    Ok(format!("<div class=charts>{work}{bytes}{requests}</div>"))
}

/// One line chart over the minutes, in a titled box with its key.
pub fn chart(title: &str, minutes: &[String], lines: &[Line]) -> Result<String, UiError> {
    let svg = svg(minutes, lines)?;
    let key: String = lines
        .iter()
        .map(|l| {
            format!(
                "<span class=key style=\"background:rgb({},{},{})\"></span>{}",
                l.color.0,
                l.color.1,
                l.color.2,
                esc(l.name)
            )
        })
        .collect();
    Ok(format!(
        "<div class=chart><h3>{}</h3><div class=muted>{key}</div>{svg}</div>",
        esc(title)
    ))
}

fn svg(minutes: &[String], lines: &[Line]) -> Result<String, UiError> {
    let err = |e: &dyn std::fmt::Display| UiError::Chart(e.to_string());
    let n = minutes.len().max(2);
    let top = lines
        .iter()
        .flat_map(|l| l.values.iter().copied())
        .fold(0.0_f64, f64::max);
    let top = if top <= 0.0 { 1.0 } else { top * 1.15 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..(n - 1) as f64, 0.0..top)
            .map_err(|e| err(&e))?;
        let label = |x: &f64| {
            let i = x.round().max(0.0) as usize;
            minutes.get(i).cloned().unwrap_or_default()
        };
        let value = |y: &f64| {
            if top < 10.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.0}")
            }
        };
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&label)
            .y_label_formatter(&value)
            .light_line_style(RGBColor(0xee, 0xf0, 0xf3))
            .bold_line_style(RGBColor(0xdd, 0xe1, 0xe8))
            .axis_style(GREY)
            .label_style(
                ("sans-serif", 11)
                    .into_font()
                    .color(&RGBColor(0x55, 0x55, 0x66)),
            )
            .draw()
            .map_err(|e| err(&e))?;
        for line in lines {
            chart
                .draw_series(LineSeries::new(
                    line.values.iter().enumerate().map(|(i, v)| (i as f64, *v)),
                    line.color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_lines_and_minute_labels() {
        let minutes: Vec<String> = (0..10).map(|m| format!("12:{m:02}")).collect();
        let html = chart(
            "Files & tickets",
            &minutes,
            &[Line {
                name: "files <uploaded>",
                color: BLUE,
                values: (0..10).map(|v| v as f64).collect(),
            }],
        )
        .unwrap();
        assert!(html.contains("<svg"), "{html}");
        assert!(html.contains("<polyline"), "{html}");
        assert!(html.contains("12:00"), "{html}");
        assert!(html.contains("Files &amp; tickets"), "{html}");
        assert!(html.contains("files &lt;uploaded&gt;"), "{html}");
    }

    #[test]
    fn an_idle_window_draws_an_empty_chart_rather_than_failing() {
        let html = chart(
            "idle",
            &["12:00".to_string()],
            &[Line {
                name: "x",
                color: RED,
                values: vec![0.0],
            }],
        )
        .unwrap();
        assert!(html.contains("<svg"));
    }
}

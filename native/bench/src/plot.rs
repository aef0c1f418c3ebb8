//! The latency-vs-load plot (`sale.svg`): for each subject, p50 and p99 latency against the
//! throughput it achieved at each level.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::{Run, Subject};

const COLOURS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Draws the plot of `runs` into `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn latency_vs_load(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    let subjects: Vec<Subject> = {
        let mut s: Vec<Subject> = runs.iter().map(|r| r.subject).collect();
        s.sort();
        s.dedup();
        s
    };
    let max_x = runs
        .iter()
        .map(|r| r.requests_per_second)
        .fold(1.0, f64::max)
        * 1.1;
    let max_y = runs.iter().map(|r| r.latency_ms.p99).fold(0.1, f64::max) * 1.1;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "flashcart bench sale: latency vs load (solid p50, thin p99)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("achieved requests per second")
            .y_desc("latency (ms)")
            .draw()?;
        for (k, subject) in subjects.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let mut points: Vec<&Run> = runs.iter().filter(|r| r.subject == *subject).collect();
            points.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            let p50: Vec<(f64, f64)> = points
                .iter()
                .map(|r| (r.requests_per_second, r.latency_ms.p50))
                .collect();
            let p99: Vec<(f64, f64)> = points
                .iter()
                .map(|r| (r.requests_per_second, r.latency_ms.p99))
                .collect();
            chart
                .draw_series(LineSeries::new(p50, colour.stroke_width(2)).point_size(3))?
                .label(subject.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(LineSeries::new(p99, colour.stroke_width(1)).point_size(2))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

//! The history drawn (`--plot PATH`, SVG): one row per component, its builds in the order
//! they were measured along x (labelled by digest), and three panels — start-up (compile,
//! cache load, first request; ms, log scale, as compile is ~100× the others),
//! instantiation (p50, p99; µs) and memory per instance (KiB).

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::history::{History, Record};

const COLOURS: [RGBColor; 3] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
];

const ROW_HEIGHT: u32 = 280;
const WIDTH: u32 = 1380;

type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Series = (&'static str, fn(&Record) -> f64);

/// Draws `history` into `path` (an `.svg` file).
///
/// # Errors
/// When the path does not end in `.svg` (plotters is built with its SVG backend only), the
/// history is empty, or the file cannot be written.
pub fn history(history: &History, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg")),
        "--plot {}: the plot is an SVG file (name it *.svg)",
        path.display()
    );
    let components = history.by_component();
    anyhow::ensure!(
        !components.is_empty(),
        "the history is empty: nothing to plot (run `flashcart bench cold-start` first)"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let rows = components.len();
    let root = SVGBackend::new(path, (WIDTH, 50 + ROW_HEIGHT * rows as u32)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(50);
        title.titled(
            "flashcart bench cold-start: each component's builds, oldest first (x: digest)",
            ("sans-serif", 22),
        )?;
        let cells = body.split_evenly((rows, 3));
        for (row, (name, builds)) in components.iter().enumerate() {
            let cell = |column: usize| &cells[row * 3 + column];
            panel(
                cell(0),
                &format!("{name}: start-up (ms, log)"),
                builds,
                &[
                    ("compile", |r| r.figures.compile_ms),
                    ("cache load", |r| r.figures.cache_load_ms),
                    ("first request", |r| r.figures.first_request_ms),
                ],
                true,
            )?;
            panel(
                cell(1),
                &format!("{name}: instantiate (µs)"),
                builds,
                &[
                    ("p50", |r| r.figures.instantiate_p50_us),
                    ("p99", |r| r.figures.instantiate_p99_us),
                ],
                false,
            )?;
            panel(
                cell(2),
                &format!("{name}: memory per instance (KiB)"),
                builds,
                &[("linear memory", |r| r.figures.memory_kib)],
                false,
            )?;
        }
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn panel(
    area: &Panel<'_>,
    caption: &str,
    builds: &[&Record],
    series: &[Series],
    log: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = builds.len();
    let values = builds
        .iter()
        .flat_map(|r| series.iter().map(move |(_, value)| value(r)));
    let max = values.clone().fold(0.0_f64, f64::max).max(1e-3) * 1.15;
    let min = values.fold(f64::INFINITY, f64::min).max(1e-3) / 1.5;
    let x_range = -0.5..(n as f64 - 0.5);
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            builds[i as usize].short_digest().chars().take(8).collect()
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(60);
    macro_rules! draw_on {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels(n.min(8))
                .x_label_formatter(&label)
                .y_labels(6)
                .draw()?;
            for (k, (name, value)) in series.iter().enumerate() {
                let colour = COLOURS[k % COLOURS.len()];
                let points: Vec<(f64, f64)> = builds
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as f64, value(r)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(4))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if log {
        draw_on!(builder.build_cartesian_2d(x_range, (min..max).log_scale())?);
    } else {
        draw_on!(builder.build_cartesian_2d(x_range, 0.0..max)?);
    }
    Ok(())
}

//! What a scenario leaves behind: a table on stdout, `docs/bench/<scenario>.json`
//! and a chart `docs/bench/<scenario>.svg`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

/// A printed table: a header and rows of cells, aligned on output.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds one row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table with columns aligned.
    pub(crate) fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(&self.header));
        for row in &self.rows {
            println!("{}", line(row));
        }
        println!();
    }
}

/// Prints a scenario's goals (a JSON array of `{what, measured, met}`) as a table.
pub(crate) fn print_goals(goals: &serde_json::Value) {
    let mut table = Table::new(&["goal", "measured", "met"]);
    for goal in goals.as_array().into_iter().flatten() {
        table.row(vec![
            goal["what"].as_str().unwrap_or_default().to_owned(),
            goal["measured"].to_string(),
            if goal["met"] == true { "yes" } else { "NO" }.into(),
        ]);
    }
    table.print();
}

/// Where the scenario's files go (`docs/bench/` of the checkout by default).
pub(crate) fn out_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the workspace root")?
            .join("docs/bench"),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `value` as pretty JSON to `dir/<name>.json`.
pub(crate) fn write_json(
    dir: &Path,
    name: &str,
    value: &impl Serialize,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(path)
}

/// One line of a chart.
pub(crate) struct Series {
    /// The legend's name.
    pub(crate) name: String,
    /// (x, y) points, in x order.
    pub(crate) points: Vec<(f64, f64)>,
    /// Drawn dashed: a ceiling rather than a measurement of voicehub.
    pub(crate) ceiling: bool,
}

/// One panel of a chart.
pub(crate) struct Panel {
    /// Caption above the panel.
    pub(crate) title: String,
    /// Axis names.
    pub(crate) x_label: String,
    /// Axis names.
    pub(crate) y_label: String,
    /// A logarithmic x axis (concurrency 1..256).
    pub(crate) log_x: bool,
    /// The lines.
    pub(crate) series: Vec<Series>,
}

const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// Draws `panels` in a grid of `columns` to `dir/<name>.svg`.
pub(crate) fn write_chart(
    dir: &Path,
    name: &str,
    columns: usize,
    panels: &[Panel],
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.svg"));
    let rows = panels.len().div_ceil(columns);
    let size = (560 * u32::try_from(columns)?, 380 * u32::try_from(rows)?);
    {
        let root = SVGBackend::new(&path, size).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
    }
    Ok(path)
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> anyhow::Result<()> {
    // A logarithmic x axis is drawn as log2(x) on a linear axis labelled with
    // the original values, so only the measured points get a tick.
    let x_of = |x: f64| if panel.log_x { x.log2() } else { x };
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| x_of(p.0)).fold(f64::MIN, f64::max);
    let x_min = points().map(|p| x_of(p.0)).fold(x_max, f64::min);
    let (x_min, x_max) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    let y_max = points().map(|p| p.1).fold(0.0, f64::max) * 1.1 + f64::EPSILON;
    // log2 of a concurrency: a small number, so the casts are exact.
    #[allow(clippy::cast_possible_truncation)]
    let powers = (x_min.round() as i32..x_max.round() as i32).count();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    let x_label = |x: &f64| {
        let value = if panel.log_x { x.exp2() } else { *x };
        format!("{value:.0}")
    };
    let y_label = |y: &f64| {
        if y_max >= 100.0 {
            format!("{y:.0}")
        } else {
            format!("{y:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        // One label per power of two on a log axis (1, 2, 4, … 256).
        .x_labels(if panel.log_x { powers + 1 } else { 10 })
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .light_line_style(WHITE)
        .draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = series.points.iter().map(|(x, y)| (x_of(*x), *y)).collect();
        let drawn = if series.ceiling {
            chart.draw_series(DashedLineSeries::new(
                points.clone(),
                6,
                4,
                color.stroke_width(1),
            ))?
        } else {
            chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
        };
        drawn.label(&series.name).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_written_as_svg_with_its_legend() {
        let dir = tempfile::tempdir().unwrap();
        let panel = |log_x| Panel {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x,
            series: vec![
                Series {
                    name: "measured".into(),
                    points: vec![(1.0, 2.0), (16.0, 5.0)],
                    ceiling: false,
                },
                Series {
                    name: "ceiling".into(),
                    points: vec![(1.0, 4.0), (16.0, 9.0)],
                    ceiling: true,
                },
            ],
        };
        let path = write_chart(dir.path(), "c", 2, &[panel(true), panel(false)]).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("ceiling"), "{svg}");
    }
}

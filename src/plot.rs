//! PNG plots for the benchmarks and the evaluation: line charts (one line per series) and heatmap
//! panels. Text is drawn with DejaVu Sans from the system (Debian: fonts-dejavu-core), or the font
//! named by $DHSA_FONT.

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";

fn ensure_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<String> =
            std::env::var("DHSA_FONT").ok().into_iter().chain(FONT_PATHS.iter().map(|s| s.to_string())).collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                    .map_err(|_| format!("{p} is not a usable TrueType font"));
            }
        }
        Err("plots need a TrueType font: install fonts-dejavu-core, or set DHSA_FONT=/path/to/font.ttf".into())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with markers, written as PNG.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        bail!("nothing to plot");
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = (x1 - x0) * 0.05;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0f64..(y1 * 1.1).max(1e-9))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// One heatmap panel: `values[row][col]` in [0, 1] (NaN: not measured).
pub struct Panel {
    pub title: String,
    pub values: Vec<Vec<f64>>,
}

/// Heatmap panels side by side (e.g. passkey success: rows = context lengths, cols = depths).
pub fn heatmaps(
    path: &Path,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    panels: &[Panel],
) -> Result<()> {
    ensure_font()?;
    if panels.is_empty() || row_labels.is_empty() || col_labels.is_empty() {
        bail!("nothing to plot");
    }
    let w = 360 * panels.len() as u32 + 40;
    let root = BitMapBackend::new(path, (w, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, (FONT, 22)).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len()));
    let (nr, nc) = (row_labels.len(), col_labels.len());
    for (area, p) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0..nc, 0..nr)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nc)
            .y_labels(nr)
            .x_label_formatter(&|i| col_labels.get(*i).cloned().unwrap_or_default())
            .y_label_formatter(&|i| row_labels.get(*i).cloned().unwrap_or_default())
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series((0..nr).flat_map(|r| (0..nc).map(move |c| (r, c))).map(|(r, c)| {
                let v = p.values.get(r).and_then(|row| row.get(c)).copied().unwrap_or(f64::NAN);
                let color = if v.is_nan() {
                    RGBColor(200, 200, 200)
                } else {
                    let v = v.clamp(0.0, 1.0);
                    RGBColor((220.0 * (1.0 - v)) as u8 + 30, (190.0 * v) as u8 + 40, 60)
                };
                Rectangle::new([(c, r), (c + 1, r + 1)], color.filled())
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// One panel of `mask_panels`: per row of queries (None: not observed), the share of the row's
/// dense attention mass in each key bin, and the share of each bin's keys that were kept.
pub struct MaskPanel {
    pub title: String,
    pub mass: Vec<Option<Vec<f32>>>,
    pub kept: Vec<Option<Vec<f32>>>,
}

/// Kept keys over the dense attention map, one panel per mode stacked vertically: x = key
/// position, y = query position (down); blue = kept, red = dropped, darker = more mass (log scale).
/// `geometry` = (context, keys per bin, queries per row).
pub fn mask_panels(path: &Path, title: &str, geometry: (usize, usize, usize), panels: &[MaskPanel]) -> Result<()> {
    ensure_font()?;
    let (ctx, bin, g) = geometry;
    let Some(first) = panels.first() else { bail!("nothing to plot") };
    let n_rows = first.mass.len();
    let row_px = (512 / n_rows.max(1)).max(1) as u32;
    let n_bins = ctx.div_ceil(bin);
    let (pw, ph) = (n_bins as u32 + 110, n_rows as u32 * row_px + 110);
    let root = BitMapBackend::new(path, (pw, ph * panels.len() as u32 + 70)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, (FONT, 20)).map_err(|e| anyhow!("{e}"))?;
    let (legend, root) = root.split_vertically(24);
    legend
        .draw_text(
            "blue: kept keys, red: dropped keys; darker = larger share of the row's dense attention mass (log scale 1e-5 .. 1)",
            &(FONT, 14).into_text_style(&legend),
            (60, 4),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let lerp = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        RGBColor((a.0 + (b.0 - a.0) * t) as u8, (a.1 + (b.1 - a.1) * t) as u8, (a.2 + (b.2 - a.2) * t) as u8)
    };
    for (area, p) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, (FONT, 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..(n_bins * bin) as f64, (n_rows * g) as f64..0f64)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("key position")
            .y_desc("query position")
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let cells = (0..n_rows).flat_map(|r| (0..n_bins).map(move |b| (r, b))).filter_map(|(r, b)| {
            let m = *p.mass.get(r)?.as_ref()?.get(b)? as f64;
            let k = *p.kept.get(r)?.as_ref()?.get(b)? as f64;
            if m <= 0.0 && k <= 0.0 {
                return None;
            }
            let t = ((m.max(1e-12).log10() + 5.0) / 5.0).clamp(0.0, 1.0);
            let c = if k >= 0.5 {
                lerp((220.0, 232.0, 255.0), (8.0, 40.0, 150.0), t)
            } else {
                lerp((255.0, 255.0, 255.0), (200.0, 15.0, 15.0), t)
            };
            let (x0, y0) = ((b * bin) as f64, (r * g) as f64);
            Some(Rectangle::new([(x0, y0), (x0 + bin as f64, y0 + g as f64)], c.filled()))
        });
        chart.draw_series(cells).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

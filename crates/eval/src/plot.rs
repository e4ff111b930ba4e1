//! Per-token trace plots (plotters): p(positive label) at every position of a text, one x
//! tick per token, as SVG and PNG. Text is drawn with DejaVu Sans, embedded in the binary
//! (`assets/`, free license), so plots look the same on every machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the embedded font with plotters (once); every kiln plot calls it first.
pub fn register_font() {
    REGISTER.call_once(|| {
        // The font is a fixed, valid file; registering cannot fail for it.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws `values` (one per token, in [0, 1]) with the tokens as x ticks to `path`; the
/// extension picks SVG or PNG.
///
/// # Errors
/// An unknown extension or a file that cannot be written.
pub fn trace(
    path: &Path,
    title: &str,
    tokens: &[String],
    values: &[f32],
    y_label: &str,
) -> Result<()> {
    register_font();
    let width = (160 + 48 * tokens.len()).clamp(480, 4000) as u32;
    let size = (width, 420);
    let fail = |e: String| Error::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, title, tokens, values, y_label).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root, title, tokens, values, y_label).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        _ => Err(Error::Invalid(format!(
            "{}: plots are .svg or .png",
            path.display()
        ))),
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    tokens: &[String],
    values: &[f32],
    y_label: &str,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let n = tokens.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(90)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n).into_segmented(), 0f32..1f32)
        .map_err(e)?;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            tokens.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_label_style(
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .y_desc(y_label)
        .disable_x_mesh()
        .draw()
        .map_err(e)?;
    let points: Vec<(SegmentValue<usize>, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (SegmentValue::CenterOf(i), v))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .map_err(e)?;
    chart
        .draw_series(points.into_iter().map(|p| Circle::new(p, 4, BLUE.filled())))
        .map_err(e)?;
    // The undecided line.
    chart
        .draw_series(LineSeries::new(
            [
                (SegmentValue::Exact(0), 0.5f32),
                (SegmentValue::Last, 0.5f32),
            ],
            BLACK.mix(0.3),
        ))
        .map_err(e)?;
    Ok(())
}

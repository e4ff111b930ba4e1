//! Inline SVG charts, drawn on the server: metric curves, a sweep's parallel coordinates and
//! its heatmap. Every text from the store is escaped here.

use std::fmt::Write;

/// Ten colors that stay apart (matplotlib's tab10); series cycle through them.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The color of series `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn esc(s: &str) -> String {
    html_escape::encode_safe(s).into_owned()
}

/// A number short enough for an axis label.
pub fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e5 || v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        let s = if v.abs() >= 100.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.4}")
        };
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A number to six significant digits (a compare table's cell: runs often differ in the
/// fourth).
pub fn precise(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    #[allow(clippy::cast_possible_truncation)] // |log10| of a finite f64 is below 400
    let exp = v.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            return s.trim_end_matches('0').trim_end_matches('.').to_owned();
        }
        return s;
    }
    format!("{v:.5e}")
}

/// One curve: its legend label and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Line {
    /// The legend's text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// Index into [`PALETTE`].
    pub color: usize,
}

/// The range of `values`, widened when flat so a line sits mid-chart.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// Curves over a shared x axis (steps), with axis labels and a legend; `None` when no line
/// has a finite point.
pub fn line_chart(title: &str, lines: &[Line], width: u32, height: u32) -> Option<String> {
    let (x0, x1) = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)))?;
    let (y0, y1) = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))?;
    let (w, h) = (f64::from(width), f64::from(height));
    let legend_rows = if lines.len() > 1 {
        lines.len().min(8)
    } else {
        0
    };
    let (left, right, top) = (56.0, 12.0, 22.0);
    let bottom = 22.0 + 14.0 * legend_rows as f64;
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (y1 - y) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{}</title><text x="{left}" y="14" font-size="12">{}</text>"#,
        esc(title),
        esc(title)
    );
    let (ax, ay) = (h - bottom, w - right);
    let _ = write!(
        s,
        r##"<path d="M{left} {top}V{ax}H{ay}" stroke="#999" fill="none"/><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><text x="{left}" y="{}" font-size="10">{}</text><text x="{ay}" y="{}" font-size="10" text-anchor="end">{}</text>"##,
        left - 4.0,
        top + 8.0,
        short(y1),
        left - 4.0,
        ax,
        short(y0),
        ax + 12.0,
        short(x0),
        ax + 12.0,
        short(x1)
    );
    for line in lines {
        let c = color(line.color);
        let finite: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if let [(x, y)] = finite.as_slice() {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                px(*x),
                py(*y)
            );
            continue;
        }
        let mut points = String::new();
        for (x, y) in &finite {
            let _ = write!(points, "{:.1},{:.1} ", px(*x), py(*y));
        }
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="1.5"/>"#,
            points.trim_end()
        );
    }
    for (i, line) in lines.iter().take(legend_rows).enumerate() {
        let y = h - bottom + 26.0 + 14.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{left}" y="{}" width="10" height="3" fill="{}"/><text x="{}" y="{y}" font-size="10">{}</text>"#,
            y - 4.0,
            color(line.color),
            left + 14.0,
            esc(&line.label)
        );
    }
    s.push_str("</svg>");
    Some(s)
}

/// One vertical axis of a parallel-coordinates plot: its name and each line's value on it,
/// as text (categories) or numbers.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The parameter or metric.
    pub name: String,
    /// One value per line (`None`: missing).
    pub values: Vec<Option<String>>,
}

/// Where each value sits on an axis, from 0 (bottom) to 1 (top): numbers by value,
/// anything else by its sorted order.
fn positions(values: &[Option<String>]) -> Vec<Option<f64>> {
    let numbers: Option<Vec<Option<f64>>> = values
        .iter()
        .map(|v| match v {
            None => Some(None),
            Some(s) => s.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some),
        })
        .collect();
    if let Some(numbers) = numbers
        && let Some((lo, hi)) = range(numbers.iter().flatten().copied())
    {
        return numbers
            .into_iter()
            .map(|v| v.map(|x| (x - lo) / (hi - lo)))
            .collect();
    }
    let mut levels: Vec<&String> = values.iter().flatten().collect();
    levels.sort();
    levels.dedup();
    let n = levels.len().max(2) - 1;
    values
        .iter()
        .map(|v| {
            v.as_ref().and_then(|s| {
                levels
                    .iter()
                    .position(|l| *l == s)
                    .map(|i| i as f64 / n as f64)
            })
        })
        .collect()
}

/// Parallel coordinates: one axis per swept parameter and the ranking metric last; one line
/// per run, in the run's color.
pub fn parallel_coordinates(axes: &[Axis], colors: &[usize], width: u32) -> Option<String> {
    if axes.len() < 2 {
        return None;
    }
    let height = 300.0;
    let (top, bottom, margin) = (30.0, 260.0, 60.0);
    let w = f64::from(width);
    let gap = (w - 2.0 * margin) / (axes.len() - 1) as f64;
    let placed: Vec<Vec<Option<f64>>> = axes.iter().map(|a| positions(&a.values)).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart parallel" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>parallel coordinates</title>"#
    );
    for (line, color_index) in colors.iter().enumerate() {
        let mut d = String::new();
        for (i, axis) in placed.iter().enumerate() {
            if let Some(Some(p)) = axis.get(line) {
                let (x, y) = (margin + gap * i as f64, bottom - p * (bottom - top));
                let _ = write!(d, "{}{x:.1} {y:.1}", if d.is_empty() { "M" } else { "L" });
            }
        }
        if !d.is_empty() {
            let _ = write!(
                s,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="2" opacity="0.8"/>"#,
                color(*color_index)
            );
        }
    }
    for (i, axis) in axes.iter().enumerate() {
        let x = margin + gap * i as f64;
        let label = |p: f64| {
            axis.values
                .iter()
                .zip(&placed[i])
                .find(|(_, q)| **q == Some(p))
                .and_then(|(v, _)| v.clone())
                .unwrap_or_default()
        };
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#333"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="{}" y="{}" font-size="10">{}</text><text x="{}" y="{}" font-size="10">{}</text>"##,
            top - 10.0,
            esc(&axis.name),
            x + 3.0,
            top + 4.0,
            esc(&label(1.0)),
            x + 3.0,
            bottom,
            esc(&label(0.0))
        );
    }
    s.push_str("</svg>");
    Some(s)
}

/// A heatmap of `value(x, y)` over two parameters' levels, each cell labelled with its
/// value; greener is better.
pub fn heatmap(
    x_name: &str,
    xs: &[String],
    y_name: &str,
    ys: &[String],
    cells: &[(usize, usize, f64)],
    higher_is_better: bool,
) -> Option<String> {
    let (lo, hi) = range(cells.iter().map(|c| c.2))?;
    let (cw, ch, left, top) = (90.0, 40.0, 90.0, 30.0);
    let width = left + cw * xs.len() as f64 + 10.0;
    let height = top + ch * ys.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart heatmap" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>heatmap</title><text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="4" y="18" font-size="11">{} ↓</text>"#,
        left + cw * xs.len() as f64 / 2.0,
        height - 6.0,
        esc(x_name),
        esc(y_name)
    );
    for &(ix, iy, v) in cells {
        let mut t = (v - lo) / (hi - lo);
        if !higher_is_better {
            t = 1.0 - t;
        }
        // Red (worst) to green (best).
        let (r, g) = ((220.0 * (1.0 - t)) as u8 + 30, (180.0 * t) as u8 + 50);
        let (x, y) = (left + cw * ix as f64, top + ch * iy as f64);
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="rgb({r},{g},80)" stroke="white"/><text x="{}" y="{}" font-size="11" text-anchor="middle" fill="white">{}</text>"#,
            x + cw / 2.0,
            y + ch / 2.0 + 4.0,
            short(v)
        );
    }
    for (i, x) in xs.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            left + cw * (i as f64 + 0.5),
            top + ch * ys.len() as f64 + 12.0,
            esc(x)
        );
    }
    for (i, y) in ys.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#,
            left - 6.0,
            top + ch * (i as f64 + 0.5) + 4.0,
            esc(y)
        );
    }
    s.push_str("</svg>");
    Some(s)
}

/// Exponential moving average with TensorBoard's debiasing: `weight` 0 leaves the points as
/// they are, 0.99 smooths hard.
pub fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let weight = weight.clamp(0.0, 0.999);
    if weight == 0.0 {
        return points.to_vec();
    }
    let mut avg = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        avg = avg * weight + (1.0 - weight) * y;
        let debias = 1.0 - weight.powi(i32::try_from(i + 1).unwrap_or(i32::MAX));
        out.push((x, avg / debias));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_escapes_its_labels_and_draws_each_line() {
        let lines = [
            Line {
                label: "<b>run 1</b>".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)],
                color: 0,
            },
            Line {
                label: "run 2".into(),
                points: vec![(0.0, 2.0)],
                color: 1,
            },
        ];
        let svg = line_chart("a & b", &lines, 400, 200).expect("drawn");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("&lt;b&gt;run 1&lt;") && !svg.contains("<b>"));
        assert!(svg.contains("a &amp; b"));
        assert!(line_chart("empty", &[], 400, 200).is_none());
    }

    #[test]
    fn precise_numbers_keep_six_significant_digits() {
        assert_eq!(precise(0.047_893_352_170_164_39), "0.0478934");
        assert_eq!(precise(4_675.856_282_881_289), "4675.86");
        assert_eq!(precise(60.0), "60");
        assert_eq!(precise(8.790_476e-5), "8.79048e-5");
        assert_eq!(precise(0.000_123_456_7), "0.000123457");
        assert_eq!(precise(1.5e-7), "1.50000e-7");
        assert_eq!(precise(0.0), "0");
    }

    #[test]
    fn smoothing_is_debiased_and_zero_weight_is_identity() {
        let pts = [(0.0, 1.0), (1.0, 3.0)];
        assert_eq!(smooth(&pts, 0.0), pts.to_vec());
        let s = smooth(&pts, 0.5);
        // First point: 0.5·1 / (1 − 0.5) = 1; second: (0.25 + 1.5) / 0.75.
        assert!((s[0].1 - 1.0).abs() < 1e-12);
        assert!((s[1].1 - 1.75 / 0.75).abs() < 1e-12);
    }

    #[test]
    fn axes_place_numbers_by_value_and_text_by_order() {
        let num = positions(&[Some("0".into()), Some("0.5".into()), Some("2".into()), None]);
        assert_eq!(num, vec![Some(0.0), Some(0.25), Some(1.0), None]);
        let text = positions(&[Some("b".into()), Some("a".into()), Some("c".into())]);
        assert_eq!(text, vec![Some(0.5), Some(0.0), Some(1.0)]);
    }
}

//! HTML and Markdown for a [`Report`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::Report;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A metric value as the report prints it: four decimals, or scientific notation for a
/// non-zero value under 1e-3 in size (`1.23e-5`, not `0.0000`).
pub(crate) fn number(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

fn values(report: &Report, param: &str) -> Vec<String> {
    let mut v: Vec<String> = report
        .trials
        .iter()
        .filter_map(|t| t.params.get(param).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    });
    v
}

/// The metric over the first two swept params, as an SVG heatmap.
fn heatmap(report: &Report) -> Option<String> {
    let x_param = report.swept.first()?;
    let y_param = report.swept.get(1);
    let xs = values(report, x_param);
    let ys = y_param.map_or_else(|| vec![String::new()], |p| values(report, p));
    let cell = |x: &str, y: &str| {
        report
            .trials
            .iter()
            .filter(|t| {
                t.params.get(x_param).map(String::as_str) == Some(x)
                    && y_param.is_none_or(|p| t.params.get(p).map(String::as_str) == Some(y))
            })
            .filter_map(|t| t.metrics.get(&report.metric))
            .copied()
            .fold(None, |acc: Option<(f64, usize)>, v| {
                Some(acc.map_or((v, 1), |(s, n)| (s + v, n + 1)))
            })
            .map(|(s, n)| s / n as f64)
    };
    let all: Vec<f64> = xs
        .iter()
        .flat_map(|x| ys.iter().filter_map(|y| cell(x, y)))
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    // The darkest cell is the best one.
    let lower_better = report.direction() == kiln_core::MetricDirection::Lower;
    let mut svg = String::new();
    kiln_eval::plot::register_font();
    {
        let size = ((140 + 110 * xs.len()) as u32, (120 + 70 * ys.len()) as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} by {x_param}{}",
                    report.metric,
                    y_param.map_or(String::new(), |p| format!(" × {p}"))
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0..xs.len()).into_segmented(),
                (0..ys.len()).into_segmented(),
            )
            .ok()?;
        let label = |names: &[String], v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_param.as_str())
            .y_desc(y_param.map_or("", String::as_str))
            .x_labels(xs.len())
            .y_labels(ys.len())
            .x_label_formatter(&|v| label(&xs, v))
            .y_label_formatter(&|v| label(&ys, v))
            .draw()
            .ok()?;
        for (i, x) in xs.iter().enumerate() {
            for (j, y) in ys.iter().enumerate() {
                let Some(v) = cell(x, y) else { continue };
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 1.0 };
                let t = if lower_better { 1.0 - t } else { t };
                let colour = RGBColor(
                    (235.0 - 200.0 * t) as u8,
                    (240.0 - 130.0 * t) as u8,
                    (255.0 - 60.0 * t) as u8,
                );
                let corner = |a: usize, b: usize| (SegmentValue::Exact(a), SegmentValue::Exact(b));
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [corner(i, j), corner(i + 1, j + 1)],
                        colour.filled(),
                    )))
                    .ok()?;
                let ink = if t > 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        number(v),
                        (SegmentValue::CenterOf(i), SegmentValue::CenterOf(j)),
                        ("sans-serif", 15).into_font().color(&ink),
                    )))
                    .ok()?;
            }
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// Loss curves of every trial (each curve key holding `loss`), as SVG.
fn curves(report: &Report) -> Option<String> {
    let series: Vec<(String, &Vec<(i64, f64)>)> = report
        .trials
        .iter()
        .flat_map(|t| {
            t.curves.iter().map(move |(k, c)| {
                let label = report
                    .swept
                    .iter()
                    .filter_map(|p| t.params.get(p).map(|v| format!("{p}={v}")))
                    .collect::<Vec<_>>()
                    .join(" ");
                (format!("trial {} {label} {k}", t.trial), c)
            })
        })
        .filter(|(_, c)| c.len() > 1)
        .collect();
    // A stage every trial shares (cached: e.g. the teacher) has the same curve in every
    // trial: draw it once.
    let mut seen = std::collections::HashSet::new();
    let series: Vec<(String, &Vec<(i64, f64)>)> = series
        .into_iter()
        .filter(|(label, c)| {
            let stage_metric = label.rsplit(' ').next().unwrap_or_default().to_owned();
            let points: Vec<(i64, u64)> = c.iter().map(|&(s, v)| (s, v.to_bits())).collect();
            seen.insert((stage_metric, points))
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let max_step = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .max()? as f64;
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let mut svg = String::new();
    kiln_eval::plot::register_font();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "loss curves (train: loss, validation: val_loss)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_step.max(1.0), (lo * 0.95)..(hi * 1.02))
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .ok()?;
        for (i, (label, c)) in series.iter().enumerate() {
            let colour =
                Palette99::pick(i).stroke_width(if label.ends_with("val_loss") { 2 } else { 1 });
            chart
                .draw_series(LineSeries::new(
                    c.iter().map(|&(s, v)| (s as f64, v)),
                    colour,
                ))
                .ok()?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], Palette99::pick(i)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

const SORT_JS: &str = r#"document.querySelectorAll('table.sortable th').forEach((th, i) => th.onclick = () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const val = r => { const t = r.cells[i].textContent; const n = parseFloat(t); return t === '' ? null : isNaN(n) ? t : n; };
  // Empty cells (a trial without that metric) go last either way.
  rows.sort((a, b) => { const x = val(a), y = val(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const o = x < y ? -1 : x > y ? 1 : 0; return dir === 'asc' ? o : -o; });
  rows.forEach(r => body.appendChild(r));
});"#;

/// The trial table's metric columns: the ranking metric first, then other final metrics
/// that are not timings.
fn metric_columns(report: &Report) -> Vec<String> {
    let mut cols: Vec<String> = report
        .trials
        .iter()
        .flat_map(|t| t.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|m| {
            let name = m.rsplit('.').next().unwrap_or(m);
            *m != report.metric
                && (name.contains("accuracy") || name.ends_with("loss") || name == "gap_mean")
        })
        .collect();
    cols.insert(0, report.metric.clone());
    cols
}

/// The report as one self-contained HTML page.
pub fn html(report: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln report: {name}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f2f4f8;cursor:pointer}}
tr.best td{{background:#e8f5e9;font-weight:bold}}section{{margin-bottom:28px}}pre{{background:#f6f6f6;padding:8px}}</style>
</head><body><h1>Sweep report: {name}</h1>
<p>Experiment {id}, {n} trial(s) with a succeeded run. Ranked by <b>{metric}</b>.</p>",
        name = esc(&report.name),
        id = report.experiment_id,
        n = report.trials.len(),
        metric = esc(&report.metric),
    );
    let cols = metric_columns(report);
    h.push_str(
        "<section><h2>Trials</h2><table class=\"sortable\"><thead><tr><th>trial</th><th>run</th>",
    );
    for p in &report.swept {
        let _ = write!(h, "<th>{}</th>", esc(p));
    }
    for c in &cols {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for i in report.ranking() {
        let t = &report.trials[i];
        let class = if Some(i) == report.best {
            " class=\"best\""
        } else {
            ""
        };
        let _ = write!(h, "<tr{class}><td>{}</td><td>{}</td>", t.trial, t.run_id);
        for p in &report.swept {
            let _ = write!(
                h,
                "<td>{}</td>",
                esc(t.params.get(p).map_or("", String::as_str))
            );
        }
        for c in &cols {
            let _ = write!(
                h,
                "<td>{}</td>",
                t.metrics.get(c).map_or(String::new(), |v| number(*v))
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></section>");
    if let Some(svg) = heatmap(report) {
        let _ = write!(h, "<section id=\"heatmap\"><h2>Heatmap</h2>{svg}</section>");
    }
    if let Some(svg) = curves(report) {
        let _ = write!(
            h,
            "<section id=\"curves\"><h2>Loss curves</h2>{svg}</section>"
        );
    }
    if let Some(best) = report.best.map(|i| &report.trials[i]) {
        let _ = write!(
            h,
            "<section><h2>Best trial: {} (run {})</h2>",
            best.trial, best.run_id
        );
        for (_, path) in best.artifacts.iter().filter(|(_, p)| {
            p.extension().is_some_and(|e| e == "svg")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("trace-"))
        }) {
            if let Ok(svg) = std::fs::read_to_string(path) {
                let svg = svg.trim_start_matches(|c| c != '<');
                let svg = svg.find("<svg").map_or(svg, |i| &svg[i..]);
                let _ = write!(h, "<div class=\"trace\">{svg}</div>");
            }
        }
        for (probe, rows) in &report.top_k {
            let _ = write!(
                h,
                "<h3>Next tokens after “{}”</h3><table><tr><th>token</th><th>p</th></tr>",
                esc(probe)
            );
            for (tok, p) in rows {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(&format!("{tok:?}")),
                    number(f64::from(*p))
                );
            }
            h.push_str("</table>");
        }
        for (probe, text) in &report.samples {
            let _ = write!(
                h,
                "<h3>Greedy sample</h3><pre><b>{}</b>{}</pre>",
                esc(probe),
                esc(text)
            );
        }
        h.push_str("</section>");
    }
    let _ = writeln!(h, "<script>{SORT_JS}</script></body></html>");
    h
}

/// The report as Markdown, for terminals and pull requests.
pub fn markdown(report: &Report) -> String {
    let cols = metric_columns(report);
    let mut m = format!(
        "# Sweep report: {}\n\nExperiment {}, {} trial(s). Ranked by `{}`.\n\n| trial | run |",
        report.name,
        report.experiment_id,
        report.trials.len(),
        report.metric
    );
    for p in report.swept.iter().chain(&cols) {
        let _ = write!(m, " {p} |");
    }
    m.push_str("\n|---|---|");
    for _ in report.swept.iter().chain(&cols) {
        m.push_str("---|");
    }
    m.push('\n');
    let order = report.ranking();
    for i in order {
        let t = &report.trials[i];
        let star = if Some(i) == report.best {
            " **best**"
        } else {
            ""
        };
        let _ = write!(m, "| {}{star} | {} |", t.trial, t.run_id);
        for p in &report.swept {
            let _ = write!(m, " {} |", t.params.get(p).map_or("", String::as_str));
        }
        for c in &cols {
            let _ = write!(
                m,
                " {} |",
                t.metrics.get(c).map_or(String::new(), |v| number(*v))
            );
        }
        m.push('\n');
    }
    for (probe, text) in &report.samples {
        let shown = if text.is_empty() {
            " (ends at once)"
        } else {
            text.as_str()
        };
        let _ = write!(m, "\nBest model, greedy: **{probe}**{shown}\n");
    }
    m
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Trial;

    /// A report over trials 1…n; `values[i]` is trial i+1's `eval.<metric>` (none: missing).
    fn report(metric: &str, values: &[Option<f64>]) -> Report {
        let key = format!("eval.{metric}");
        let trials = values
            .iter()
            .enumerate()
            .map(|(i, v)| Trial {
                trial: i as i64 + 1,
                run_id: i as i64 + 10,
                params: BTreeMap::new(),
                metrics: v.map(|v| (key.clone(), v)).into_iter().collect(),
                curves: BTreeMap::new(),
                artifacts: Vec::new(),
            })
            .collect();
        let mut report = Report {
            name: "x".into(),
            experiment_id: 1,
            swept: Vec::new(),
            trials,
            metric: key,
            best: None,
            top_k: Vec::new(),
            samples: Vec::new(),
        };
        report.best = report.best_trial();
        report
    }

    /// Trial numbers in the order the Markdown table lists them.
    fn markdown_order(report: &Report) -> Vec<i64> {
        markdown(report)
            .lines()
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
            .filter_map(|l| l.trim_start_matches("| ").split([' ', '|']).next())
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Trial numbers in the order the HTML table lists them.
    fn html_order(report: &Report) -> Vec<i64> {
        let page = html(report);
        let body = &page[page.find("<tbody>").expect("a table")..];
        let body = &body[..body.find("</tbody>").expect("its end")];
        body.split("<tr")
            .skip(1)
            .filter_map(|row| row.split("<td>").nth(1)?.split('<').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn trials_rank_best_first_and_those_without_the_metric_last() {
        let acc = report(
            "accuracy",
            &[Some(0.5), None, Some(0.9), Some(f64::NAN), Some(0.7)],
        );
        assert_eq!(acc.best, Some(2));
        assert_eq!(markdown_order(&acc), vec![3, 5, 1, 2, 4]);
        assert_eq!(html_order(&acc), vec![3, 5, 1, 2, 4]);
        assert!(html(&acc).contains("<tr class=\"best\"><td>3</td>"));
        let loss = report("val_loss", &[None, Some(0.3), Some(0.1), Some(2.0)]);
        assert_eq!(loss.best, Some(2));
        assert_eq!(markdown_order(&loss), vec![3, 2, 4, 1]);
        assert_eq!(html_order(&loss), vec![3, 2, 4, 1]);
        let gap = report("gap_mean", &[Some(0.2), Some(0.05)]);
        assert_eq!(markdown_order(&gap), vec![2, 1], "a gap is lower-is-better");
        let none = report("accuracy", &[None, None]);
        assert_eq!(none.best, None);
        assert_eq!(markdown_order(&none), vec![1, 2]);
    }

    #[test]
    fn small_values_print_in_scientific_notation() {
        assert_eq!(number(0.0), "0.0000");
        assert_eq!(number(0.123_456), "0.1235");
        assert_eq!(number(12.5), "12.5000");
        assert_eq!(number(0.001), "0.0010");
        assert_eq!(number(0.000_999), "9.99e-4");
        assert_eq!(number(1.234e-5), "1.23e-5");
        assert_eq!(number(-1.234e-5), "-1.23e-5");
        let tiny = report("val_loss", &[Some(2.5e-6), Some(1.0)]);
        let md = markdown(&tiny);
        assert!(md.contains("| 2.50e-6 |"), "{md}");
        assert!(!md.contains("0.0000"), "{md}");
        assert!(html(&tiny).contains("<td>2.50e-6</td>"));
    }
}

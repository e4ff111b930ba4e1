//! `kiln bench report`: one self-contained HTML page of every benchmark figure's history,
//! per machine: a plot of the median with its spread per suite run, and the latest figure.

use std::collections::BTreeMap;

use kiln_store::BenchRow;
use plotters::prelude::*;

use crate::render::esc;

/// The page for `rows` (as [`kiln_store::Store::bench_rows`] returns them).
pub fn bench_html(rows: &[BenchRow]) -> String {
    let mut by_machine: BTreeMap<&str, BTreeMap<&str, Vec<&BenchRow>>> = BTreeMap::new();
    for r in rows {
        by_machine
            .entry(r.machine.as_str())
            .or_default()
            .entry(r.name.as_str())
            .or_default()
            .push(r);
    }
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln benchmarks</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:1000px}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th:first-child,td:first-child{text-align:left}</style></head><body>\
         <h1>kiln benchmarks</h1>",
    );
    if rows.is_empty() {
        out.push_str("<p>No figures yet: run <code>kiln bench suite</code>.</p>");
    }
    for (machine, figures) in &by_machine {
        out.push_str(&format!("<h2>{}</h2><table><tr><th>benchmark</th><th>latest</th><th>unit</th><th>peer, same run</th><th>kiln ÷ peer</th><th>runs</th><th>commit</th></tr>", esc(machine)));
        for (name, history) in figures {
            if let Some(last) = history.last() {
                let (peer, ratio) = last.peer.as_ref().map_or_else(Default::default, |(p, r)| {
                    (
                        format!("{} {:.1} ± {:.1}", esc(&p.name), p.value, p.spread),
                        format!("{r:.2}×"),
                    )
                });
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{:.1} ± {:.1}</td><td>{}</td><td>{peer}</td><td>{ratio}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    last.value,
                    last.spread,
                    esc(&last.unit),
                    history.len(),
                    esc(last
                        .git_commit
                        .as_deref()
                        .map_or("", |c| &c[..c.len().min(10)]))
                ));
            }
        }
        out.push_str("</table>");
        for (name, history) in figures {
            out.push_str(&format!("<h3>{}</h3>", esc(name)));
            if let Some(svg) = plot(name, history) {
                out.push_str(&svg);
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// The median per suite run with a bar of ± its spread (blue), and the peer's (red).
fn plot(name: &str, history: &[&BenchRow]) -> Option<String> {
    let first = history.first()?;
    let lo = history
        .iter()
        .map(|r| r.value - r.spread)
        .fold(f64::INFINITY, f64::min)
        .min(0.0_f64.max(first.value * 0.5))
        .min(
            history
                .iter()
                .filter_map(|r| r.peer.as_ref().map(|(p, _)| p.value))
                .fold(f64::INFINITY, f64::min),
        );
    let hi = history
        .iter()
        .map(|r| r.value + r.spread)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(
            history
                .iter()
                .filter_map(|r| r.peer.as_ref().map(|(p, _)| p.value))
                .fold(f64::NEG_INFINITY, f64::max),
        )
        * 1.05;
    let n = history.len();
    let mut svg = String::new();
    kiln_eval::plot::register_font();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 260)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let direction = if first.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{name} ({}, {direction})", first.unit),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5).max(0.5), lo..hi.max(lo + 1e-9))
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("suite run")
            .x_label_formatter(&|x| format!("{}", x.round() as i64 + 1))
            .draw()
            .ok()?;
        // ± the spread as a vertical bar, the median as a dot.
        chart
            .draw_series(history.iter().enumerate().map(|(i, r)| {
                PathElement::new(
                    vec![
                        (i as f64, r.value - r.spread),
                        (i as f64, r.value + r.spread),
                    ],
                    BLUE.mix(0.5),
                )
            }))
            .ok()?;
        chart
            .draw_series(
                history
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Circle::new((i as f64, r.value), 3, BLUE.filled())),
            )
            .ok()?;
        chart
            .draw_series(LineSeries::new(
                history.iter().enumerate().map(|(i, r)| (i as f64, r.value)),
                BLUE,
            ))
            .ok()?;
        // The peer of the same run, where one was measured.
        chart
            .draw_series(history.iter().enumerate().filter_map(|(i, r)| {
                let (peer, _) = r.peer.as_ref()?;
                Some(Circle::new((i as f64, peer.value), 3, RED.filled()))
            }))
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

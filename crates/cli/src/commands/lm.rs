//! `kiln topk`, `kiln nll`, `kiln generate`, `kiln trace`: the research measurements on any
//! model directory (kiln's `model/` outputs and checkpoints, or a Hugging Face directory).

use std::path::Path;

use anyhow::{Context, Result};
use kiln_eval::Lm;
use kiln_eval::decode::GenerateOptions;
use kiln_model::Flex;
use kiln_store::{Cell, QueryResult};

use crate::args::TableFormat;

fn load(dir: &Path) -> Result<Lm<Flex>> {
    Lm::load(dir, &Default::default())
        .with_context(|| format!("loading the model {}", dir.display()))
}

pub fn topk(model: &Path, text: &str, k: usize, format: TableFormat) -> Result<()> {
    let lm = load(model)?;
    let rows = lm.top_k(text, k)?;
    let table = QueryResult {
        columns: vec!["rank".into(), "id".into(), "token".into(), "prob".into()],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    Cell::Int(r.rank as i64),
                    Cell::Int(i64::from(r.id)),
                    Cell::Text(r.token.clone()),
                    Cell::Real(f64::from(r.prob)),
                ]
            })
            .collect(),
    };
    crate::output::print(&table, format)
}

pub fn nll(model: &Path, given: Option<&str>, text: &str, json: bool) -> Result<()> {
    let lm = load(model)?;
    let value = match given {
        Some(g) => lm.conditional_nll(g, text)?,
        None => lm.nll(text)?,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"text": text, "given": given, "nll": value})
        );
    } else {
        println!("{value:.6}");
    }
    Ok(())
}

pub fn generate(
    model: &Path,
    prompt: Option<&str>,
    poe: &[String],
    instruction: bool,
    opts: &GenerateOptions,
    json: bool,
) -> Result<()> {
    let lm = load(model)?;
    let wrap = |p: &str| {
        if instruction {
            kiln_data::alpaca::prompt(p, "")
        } else {
            p.to_owned()
        }
    };
    let contexts: Vec<String> = match prompt {
        Some(p) => vec![wrap(p)],
        None => poe.iter().map(|p| wrap(p)).collect(),
    };
    let refs: Vec<&str> = contexts.iter().map(String::as_str).collect();
    let (out, text) = lm.generate_poe(&refs, opts)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"contexts": contexts, "tokens": out.tokens, "text": text, "stop": out.stop})
        );
    } else {
        println!("{text}");
        if out.stop == kiln_eval::decode::Stop::ContextFull {
            eprintln!(
                "warning: stopped early: the model's context ({} tokens) is full",
                lm.config.n_positions
            );
        }
    }
    Ok(())
}

pub fn trace(
    model: &Path,
    text: &str,
    labels: &[String],
    format: TableFormat,
    plot: Option<&Path>,
) -> Result<()> {
    let lm = load(model)?;
    let (neg, pos) = match labels {
        [n, p] => (n.as_str(), p.as_str()),
        _ => anyhow::bail!("--labels takes two tokens: NEGATIVE POSITIVE"),
    };
    let points = lm.trace(text, neg, pos)?;
    if let Some(path) = plot {
        let tokens: Vec<String> = points.iter().map(|p| lm.token_text(p.token)).collect();
        let values: Vec<f32> = points.iter().map(|p| p.positive).collect();
        kiln_eval::plot::trace(
            path,
            text,
            &tokens,
            &values,
            &format!("p({pos:?}) vs p({neg:?})"),
        )?;
        eprintln!("plot written to {}", path.display());
    }
    let table = QueryResult {
        columns: vec![
            "position".into(),
            "token".into(),
            format!("p({pos:?})"),
            format!("p({neg:?})"),
            "top next token".into(),
            "top prob".into(),
        ],
        rows: points
            .iter()
            .map(|p| {
                vec![
                    Cell::Int(p.position as i64),
                    Cell::Text(lm.token_text(p.token)),
                    Cell::Real(f64::from(p.positive)),
                    Cell::Real(f64::from(p.negative)),
                    Cell::Text(lm.token_text(p.top_token)),
                    Cell::Real(f64::from(p.top_prob)),
                ]
            })
            .collect(),
    };
    crate::output::print(&table, format)
}

pub fn sentiment(model: &Path, data: &Path, split: &str, json: bool) -> Result<()> {
    let (config, m) = kiln_model::hf::load::<Flex>(model, &Default::default())
        .with_context(|| format!("loading the model {}", model.display()))?;
    let pad = config.eos_token_id.map_or(0, |e| e as u32);
    let report = kiln_eval::classify::evaluate(&m, data, split, 32, Some(config.n_positions), pad)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{split}: {} rows", report.rows);
        println!("accuracy       {:.4}", report.accuracy);
        println!("accuracy_2way  {:.4}", report.accuracy_2way);
        println!("loss           {:.4}", report.loss);
        for (truth, row) in &report.confusion {
            for (predicted, count) in row {
                println!("{truth:>8} predicted {predicted:<8} {count}");
            }
        }
    }
    Ok(())
}

pub fn gap(model: &Path, teacher: &Path, prompt: &str, text: &str, json: bool) -> Result<()> {
    let lm = load(model)?;
    let (_, t) = kiln_model::hf::load::<Flex>(teacher, &Default::default())
        .with_context(|| format!("loading the teacher {}", teacher.display()))?;
    let g = lm.gap(&t, text, prompt)?;
    if json {
        println!("{}", serde_json::to_string(&g)?);
    } else {
        println!("max {:.6}  mean {:.3e}  sum {:.6}", g.max, g.mean, g.sum);
    }
    Ok(())
}

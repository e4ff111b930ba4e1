//! `kiln topk`, `kiln nll`, `kiln generate`, `kiln trace`, `kiln sentiment`, `kiln gap`: the
//! research measurements on any model directory (kiln's `model/` outputs and checkpoints, or a
//! Hugging Face directory), on the device `--device` names.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_eval::Lm;
use kiln_eval::decode::GenerateOptions;
use kiln_model::CausalLm;
use kiln_model::burn::tensor::backend::Backend;
use kiln_model::device::{self, InferJob};
use kiln_store::{Cell, QueryResult};

use crate::args::{Command, TableFormat};

/// Runs one of the measurement commands on its `--device`.
///
/// # Errors
/// A device or precision that cannot be used (before any model is loaded), or the command's
/// own errors.
pub fn run(command: &Command, json: bool) -> Result<()> {
    struct Job<'a> {
        command: &'a Command,
        json: bool,
    }
    impl InferJob for Job<'_> {
        type Output = Result<()>;
        fn run<B: Backend>(self, device: B::Device) -> Result<()> {
            measure::<B>(self.command, self.json, &device)
        }
    }
    let on = match command {
        Command::Topk { on, .. }
        | Command::Nll { on, .. }
        | Command::Generate { on, .. }
        | Command::Trace { on, .. }
        | Command::Iterate { on, .. }
        | Command::Sentiment { on, .. }
        | Command::Gap { on, .. } => on,
        _ => anyhow::bail!("not a measurement command"),
    };
    let (dev, precision) = on.parse()?;
    device::dispatch_infer(dev, precision, Job { command, json })?
}

fn measure<B: Backend>(command: &Command, json: bool, device: &B::Device) -> Result<()> {
    let prefix = match command {
        Command::Topk { tok, .. }
        | Command::Nll { tok, .. }
        | Command::Generate { tok, .. }
        | Command::Trace { tok, .. }
        | Command::Iterate { tok, .. }
        | Command::Gap { tok, .. } => tok.add_prefix_space,
        _ => None,
    };
    let load = |dir: &Path| load::<B>(dir, device, prefix);
    match command {
        Command::Topk {
            model,
            text,
            k,
            format,
            ..
        } => topk(&load(model)?, text, *k, *format),
        Command::Nll {
            model, given, text, ..
        } => nll(&load(model)?, given.as_deref(), text, json),
        Command::Generate {
            model,
            prompt,
            poe,
            instruction,
            temperature,
            top_k,
            seed,
            max_new_tokens,
            no_cache,
            ..
        } => {
            let opts = GenerateOptions {
                max_new_tokens: *max_new_tokens,
                temperature: *temperature,
                top_k: *top_k,
                seed: *seed,
                stop: None,
                kv_cache: !*no_cache,
            };
            let lm = load(model)?;
            generate(&lm, prompt.as_deref(), poe, *instruction, &opts, json)
        }
        Command::Trace {
            model,
            text,
            labels,
            format,
            plot,
            ..
        } => trace(&load(model)?, text, labels, *format, plot.as_deref()),
        Command::Iterate {
            model,
            text,
            format,
            ..
        } => iterate(&load(model)?, text, *format),
        Command::Sentiment {
            model,
            data,
            split,
            prompt,
            ..
        } => sentiment::<B>(model, data, split, prompt.as_deref(), json, device),
        Command::Gap {
            model,
            teacher,
            prompt,
            text,
            ..
        } => {
            let t = kiln_model::load::<B>(teacher, device)
                .with_context(|| format!("loading the teacher {}", teacher.display()))?;
            gap(&load(model)?, &t, prompt, text, json)
        }
        _ => anyhow::bail!("not a measurement command"),
    }
}

fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
    add_prefix_space: Option<bool>,
) -> Result<Lm<B>> {
    Lm::load_with(dir, device, add_prefix_space)
        .with_context(|| format!("loading the model {}", dir.display()))
}
fn topk<B: Backend>(lm: &Lm<B>, text: &str, k: usize, format: TableFormat) -> Result<()> {
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

fn nll<B: Backend>(lm: &Lm<B>, given: Option<&str>, text: &str, json: bool) -> Result<()> {
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

fn generate<B: Backend>(
    lm: &Lm<B>,
    prompt: Option<&str>,
    poe: &[String],
    instruction: bool,
    opts: &GenerateOptions,
    json: bool,
) -> Result<()> {
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
        if let (kiln_eval::decode::Stop::ContextFull, Some(n)) =
            (out.stop, lm.model.max_positions())
        {
            eprintln!("warning: stopped early: the model's context ({n} tokens) is full");
        }
    }
    Ok(())
}

fn trace<B: Backend>(
    lm: &Lm<B>,
    text: &str,
    labels: &[String],
    format: TableFormat,
    plot: Option<&Path>,
) -> Result<()> {
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

fn iterate<B: Backend>(lm: &Lm<B>, text: &str, format: TableFormat) -> Result<()> {
    let steps = lm.iterate(text)?;
    let table = QueryResult {
        columns: vec![
            "position".into(),
            "token".into(),
            "greedy next".into(),
            "p".into(),
            "text's next".into(),
            "p(text's next)".into(),
        ],
        rows: steps
            .iter()
            .map(|s| {
                vec![
                    Cell::Int(s.position as i64),
                    Cell::Text(lm.token_text(s.token)),
                    Cell::Text(lm.token_text(s.greedy)),
                    Cell::Real(f64::from(s.greedy_prob)),
                    s.next.map_or(Cell::Null, |n| Cell::Text(lm.token_text(n))),
                    s.next_prob.map_or(Cell::Null, |p| Cell::Real(f64::from(p))),
                ]
            })
            .collect(),
    };
    crate::output::print(&table, format)
}

fn sentiment<B: Backend>(
    model: &Path,
    data: &Path,
    split: &str,
    prompt: Option<&str>,
    json: bool,
    device: &B::Device,
) -> Result<()> {
    let m = kiln_model::load::<B>(model, device)
        .with_context(|| format!("loading the model {}", model.display()))?;
    let pad = kiln_model::config_token_id(model, "eos_token_id").unwrap_or(0);
    let prompt = match prompt {
        Some(p) => kiln_data::tokenizer::Tok::load(data)
            .with_context(|| format!("loading the dataset's tokenizer from {}", data.display()))?
            .encode(p)?,
        None => Vec::new(),
    };
    let report =
        kiln_eval::classify::evaluate(&m, data, split, 32, m.max_positions(), pad, &prompt)?;
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

fn gap<B: Backend>(
    lm: &Lm<B>,
    teacher: &kiln_model::Model<B>,
    prompt: &str,
    text: &str,
    json: bool,
) -> Result<()> {
    let g = lm.gap(teacher, text, prompt)?;
    if json {
        println!("{}", serde_json::to_string(&g)?);
    } else {
        println!("max {:.6}  mean {:.3e}  sum {:.6}", g.max, g.mean, g.sum);
    }
    Ok(())
}

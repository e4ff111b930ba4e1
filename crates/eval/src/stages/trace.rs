//! `eval.trace`: per-token sentiment traces of probe sentences: for every token, the softmax
//! over the two label tokens and the top predicted next token, as `traces.json`, one CSV per
//! text, and plots (`trace-N.svg`, `trace-N.png`).

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_model::burn::tensor::backend::Backend;

use super::{path, write_csv, write_json};
use crate::Lm;

/// The `eval.trace` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalTrace;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "model",
        ParamType::Path,
        "model directory (with its tokenizer)",
    ),
    ParamSpec::required("texts", ParamType::List, "probe sentences"),
    ParamSpec::optional(
        "negative",
        ParamType::String,
        "negative label token (default \" bad\")",
    ),
    ParamSpec::optional(
        "positive",
        ParamType::String,
        "positive label token (default \" good\")",
    ),
    super::DEVICE,
    super::PRECISION,
    kiln_data::stages::ADD_PREFIX_SPACE,
];

impl Stage for EvalTrace {
    fn kind(&self) -> &'static str {
        "eval.trace"
    }
    fn version(&self) -> u32 {
        // 2: trace-N.csv through the csv crate; 3: accurate softmax row sums (f64)
        // 4: fused RMSNorm and SwiGLU (last bits of Llama-family models), BOS from the tokenizer's configuration.
        // 5: few-row products (decoding, short texts) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 6: a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        6
    }
    fn doc(&self) -> &'static str {
        "per-token sentiment traces of probe sentences: tables and SVG/PNG plots"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

impl super::OnDevice for EvalTrace {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let lm = Lm::<B>::load_with(
            &path(ctx, "model")?,
            device,
            ctx.p().bool("add_prefix_space")?,
        )?;
        let neg = ctx.param_str("negative").unwrap_or_else(|| " bad".into());
        let pos = ctx.param_str("positive").unwrap_or_else(|| " good".into());
        let texts = ctx.p().strings("texts")?.unwrap_or_default();
        if texts.is_empty() {
            return Err("`texts` is empty: give at least one probe sentence".into());
        }
        let mut all = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let points = lm.trace(text, &neg, &pos)?;
            let tokens: Vec<String> = points.iter().map(|p| lm.token_text(p.token)).collect();
            let rows = points.iter().zip(&tokens).map(|(p, t)| {
                [
                    p.position.to_string(),
                    t.clone(),
                    p.positive.to_string(),
                    p.negative.to_string(),
                    lm.token_text(p.top_token),
                    p.top_prob.to_string(),
                ]
            });
            write_csv(
                &ctx.out_dir.join(format!("trace-{i}.csv")),
                &[
                    "position",
                    "token",
                    "positive",
                    "negative",
                    "top_token",
                    "top_prob",
                ],
                rows,
            )?;
            let values: Vec<f32> = points.iter().map(|p| p.positive).collect();
            for ext in ["svg", "png"] {
                crate::plot::trace(
                    &ctx.out_dir.join(format!("trace-{i}.{ext}")),
                    text,
                    &tokens,
                    &values,
                    &format!("p({pos:?}) vs p({neg:?})"),
                )?;
            }
            if let Some(last) = points.last() {
                ctx.metrics
                    .record("final_positive", i as i64, f64::from(last.positive));
            }
            all.push(serde_json::json!({"text": text, "tokens": tokens, "points": points}));
        }
        write_json(ctx, "traces.json", &all)?;
        Ok(())
    }
}

//! `eval.generate`: answers for a held-out instruction file (Alpaca format), generated with the
//! training template's prompt: `generations.jsonl` (instruction, input, reference, response)
//! and, over the records whose reference answer is short (≤ 8 words), exact-match and
//! contains rates (case-insensitive, whitespace-trimmed).

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::alpaca::{self, Record};
use kiln_model::burn::tensor::backend::Backend;

use super::path;
use crate::Lm;
use crate::decode::GenerateOptions;

/// The `eval.generate` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalGenerate;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "model",
        ParamType::Path,
        "model directory (with its tokenizer)",
    ),
    ParamSpec::required(
        "source",
        ParamType::Path,
        "Alpaca-format records (JSON list or JSONL)",
    ),
    ParamSpec::optional(
        "max_new_tokens",
        ParamType::Int,
        "tokens per answer (default 64)",
    )
    .at_least(1),
    ParamSpec::optional("temperature", ParamType::Float, "0 (default) is greedy")
        .range(0.0, f64::MAX),
    ParamSpec::optional(
        "top_k",
        ParamType::Int,
        "sample among the k most probable tokens",
    )
    .at_least(1),
    ParamSpec::optional("seed", ParamType::Int, "sampling seed (default 0)").at_least(0),
    ParamSpec::optional(
        "limit",
        ParamType::Int,
        "answer at most N records (default all)",
    )
    .at_least(1),
    super::DEVICE,
    super::PRECISION,
    kiln_data::stages::ADD_PREFIX_SPACE,
];

fn short(answer: &str) -> bool {
    answer.split_whitespace().count() <= 8
}

impl Stage for EvalGenerate {
    fn kind(&self) -> &'static str {
        "eval.generate"
    }
    fn version(&self) -> u32 {
        // 2: accurate softmax row sums (f64 accumulation). 3: fused RMSNorm and SwiGLU (last bits of Llama-family models), BOS from the tokenizer's configuration.
        3
    }
    fn doc(&self) -> &'static str {
        "answers for held-out instructions: generations.jsonl, exact-match and contains rates"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

impl super::OnDevice for EvalGenerate {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let lm = Lm::<B>::load_with(
            &path(ctx, "model")?,
            device,
            ctx.p().bool("add_prefix_space")?,
        )?;
        let records = alpaca::read(&path(ctx, "source")?)?;
        let opts = GenerateOptions {
            max_new_tokens: ctx.p().count("max_new_tokens")?.unwrap_or(64),
            temperature: ctx.p().f64("temperature")?.unwrap_or(0.0),
            top_k: ctx.p().count("top_k")?,
            seed: ctx.p().u64("seed")?.unwrap_or(0),
            stop: None,
            kv_cache: true,
        };
        let limit = ctx.p().count("limit")?.unwrap_or(usize::MAX);
        let mut lines = String::new();
        let (mut scored, mut exact, mut contains, mut done) = (0usize, 0usize, 0usize, 0usize);
        // Multi-turn records have no single reference answer: only single ones are answered.
        let singles: Vec<(usize, &str, &str, &str)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Record::Single {
                    instruction,
                    input,
                    output,
                } => Some((i, instruction.as_str(), input.as_str(), output.as_str())),
                Record::Multi(_) => None,
            })
            .take(limit)
            .collect();
        let total = singles.len();
        for (index, instruction, input, output) in singles {
            if ctx.cancel.is_cancelled() {
                return Err("interrupted".into());
            }
            let prompt = alpaca::prompt(instruction, input);
            let (_, response) = lm
                .generate(&prompt, &opts)
                .map_err(|e| format!("record {index}: {e}"))?;
            let response = response.trim().to_owned();
            if short(output) {
                scored += 1;
                let (r, o) = (response.to_lowercase(), output.trim().to_lowercase());
                exact += usize::from(r == o);
                contains += usize::from(!o.is_empty() && r.contains(&o));
            }
            lines.push_str(&serde_json::to_string(&serde_json::json!({
                "instruction": instruction, "input": input, "reference": output, "response": response,
            }))?);
            lines.push('\n');
            done += 1;
            ctx.progress.update(done as u64, Some(total as u64), None);
        }
        std::fs::write(ctx.out_dir.join("generations.jsonl"), lines)?;
        ctx.metrics.record("generated", 0, done as f64);
        ctx.metrics.record("short_references", 0, scored as f64);
        if scored > 0 {
            ctx.metrics
                .record("exact_match", 0, exact as f64 / scored as f64);
            ctx.metrics
                .record("contains", 0, contains as f64 / scored as f64);
        }
        Ok(())
    }
}

//! `eval.generate`: answers for held-out instruction or chat records, generated after the
//! prompt the training template writes (`template`, as `data.instruct` takes it; default
//! `alpaca`): `generations.jsonl` (instruction, input, reference, response, prompt) and, over
//! the records whose reference answer is short (≤ 8 words), exact-match and contains rates
//! (case-insensitive, whitespace-trimmed). A conversation's reference is its last answer.

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::instruct::{self, Conversation, Template};
use kiln_model::burn::tensor::backend::Backend;
use serde_json::Value;

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
        "held-out records (.json, .jsonl, .csv, .parquet) as data.instruct reads them",
    ),
    ParamSpec::optional(
        "template",
        ParamType::Any,
        "the training template (data.instruct's): alpaca (default), human-assistant, chatml, chat_template (the model directory's), or a custom one",
    ),
    ParamSpec::optional(
        "columns",
        ParamType::Map,
        "kiln's name (instruction, input, output, system, turns) -> the source's column",
    ),
    ParamSpec::optional(
        "max_new_tokens",
        ParamType::Int,
        "tokens per answer (default 64)",
    )
    .at_least(1),
    ParamSpec::optional(
        "batch_size",
        ParamType::Int,
        "prompts decoded at once, left-padded through one KV cache (default 8; 1: one at a time)",
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
        // 4: templates; conversations answered (their last answer is the reference); the prompt kept.
        // 5: few-row products (decoding, short texts) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 6: prompts decoded 8 at a time, left-padded (`batch_size`), and a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        6
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
        let model_dir = path(ctx, "model")?;
        let template_value = ctx
            .params
            .get("template")
            .cloned()
            .unwrap_or_else(|| Value::String("alpaca".into()));
        let template = Template::parse(&template_value, Some(&model_dir))?;
        let columns: BTreeMap<String, String> = ctx.p().string_map("columns")?.unwrap_or_default();
        let source = path(ctx, "source")?;
        let rows = instruct::read_rows(&source)?;
        let (bos, eos) = instruct::bos_eos(&lm.tok)?;
        let opts = GenerateOptions {
            max_new_tokens: ctx.p().count("max_new_tokens")?.unwrap_or(64),
            temperature: ctx.p().f64("temperature")?.unwrap_or(0.0),
            top_k: ctx.p().count("top_k")?,
            seed: ctx.p().u64("seed")?.unwrap_or(0),
            stop: None,
            kv_cache: true,
        };
        let limit = ctx.p().count("limit")?.unwrap_or(usize::MAX);
        let batch_size = ctx.p().count("batch_size")?.unwrap_or(8);
        let mut asks = Vec::new();
        for (index, row) in rows.iter().enumerate().take(limit) {
            let c = Conversation::of(row, &columns, &source, index)?;
            let (prompt, reference) = instruct::prompt_and_reference(&template, &c, &bos, &eos)
                .map_err(|e| format!("{}: record {index}: {e}", source.display()))?;
            let field = |k: &str| match &c {
                Conversation::Fields(f) => f.get(k).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            asks.push((
                index,
                field("instruction"),
                field("input"),
                prompt,
                reference,
            ));
        }
        let mut lines = String::new();
        let (mut scored, mut exact, mut contains, mut done) = (0usize, 0usize, 0usize, 0usize);
        let total = asks.len();
        for chunk in asks.chunks(batch_size) {
            if ctx.cancel.is_cancelled() {
                return Err("interrupted".into());
            }
            let prompts: Vec<&str> = chunk.iter().map(|a| a.3.as_str()).collect();
            let first = chunk.first().map_or(0, |a| a.0);
            let answers = lm
                .generate_batch(&prompts, &opts)
                .map_err(|e| format!("records {first}..{}: {e}", first + chunk.len()))?;
            for ((_, instruction, input, prompt, output), (_, response)) in
                chunk.iter().zip(answers)
            {
                let response = response.trim().to_owned();
                if short(output) {
                    scored += 1;
                    let (r, o) = (response.to_lowercase(), output.trim().to_lowercase());
                    exact += usize::from(r == o);
                    contains += usize::from(!o.is_empty() && r.contains(&o));
                }
                lines.push_str(&serde_json::to_string(&serde_json::json!({
                    "instruction": instruction, "input": input, "reference": output, "response": response, "prompt": prompt,
                }))?);
                lines.push('\n');
                done += 1;
            }
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

//! `eval.iterate`: iterative-generation traces, like the research notebook's
//! `print_iterative_generate`: for each text, at every prefix length, the greedy next token
//! next to the text's own next token (`iterative.jsonl`, one Markdown table per text in
//! `iterative.md`). Texts are given (`texts`) or are held-out records rendered by the training
//! template (`source`, `template`, `columns`, as `eval.generate` reads them); for records the
//! `answer_match` metric is the share of answer tokens the model predicts greedily from the
//! text before them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::instruct::{self, Conversation, Rendered, Template};
use kiln_model::burn::tensor::backend::Backend;
use serde_json::Value;

use super::path;
use crate::Lm;

/// The `eval.iterate` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalIterate;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "model",
        ParamType::Path,
        "model directory (with its tokenizer)",
    ),
    ParamSpec::optional("texts", ParamType::List, "texts to trace"),
    ParamSpec::optional(
        "source",
        ParamType::Path,
        "records to trace, rendered by the template (as eval.generate reads them)",
    ),
    ParamSpec::optional(
        "template",
        ParamType::Any,
        "the training template (default alpaca)",
    ),
    ParamSpec::optional(
        "columns",
        ParamType::Map,
        "kiln's name -> the source's column",
    ),
    ParamSpec::optional(
        "limit",
        ParamType::Int,
        "trace at most N records (default all)",
    )
    .at_least(1),
    super::DEVICE,
    super::PRECISION,
    kiln_data::stages::ADD_PREFIX_SPACE,
];

impl Stage for EvalIterate {
    fn kind(&self) -> &'static str {
        "eval.iterate"
    }
    fn version(&self) -> u32 {
        // 2: few-row products (decoding) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 3: a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        3
    }
    fn doc(&self) -> &'static str {
        "iterative-generation traces: at every prefix length, the greedy next token"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        // `source` may also come as a declared input, checked when the stage runs.
        if params.contains_key("texts") && params.contains_key("source") {
            return Err(vec![(
                "texts".into(),
                "give either texts or source (records rendered by the template), not both".into(),
            )]);
        }
        Ok(())
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

/// A text to trace and where its answer starts (characters), for records.
struct Item {
    text: String,
    answer_from: Option<usize>,
}

fn items<B: Backend>(
    ctx: &StageContext,
    lm: &Lm<B>,
    model: &std::path::Path,
) -> Result<Vec<Item>, kiln_core::StageError> {
    if let Some(texts) = ctx.p().strings("texts")? {
        if texts.is_empty() {
            return Err("`texts` is empty".into());
        }
        return Ok(texts
            .into_iter()
            .map(|text| Item {
                text,
                answer_from: None,
            })
            .collect());
    }
    let value = ctx
        .params
        .get("template")
        .cloned()
        .unwrap_or_else(|| Value::String("alpaca".into()));
    let template = Template::parse(&value, Some(model))?;
    let columns = ctx.p().string_map("columns")?.unwrap_or_default();
    let source = path(ctx, "source")
        .map_err(|_| "give `texts`, or `source` (with.source or inputs.source)")?;
    let (bos, eos) = instruct::bos_eos(&lm.tok)?;
    let limit = ctx.p().count("limit")?.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for (index, row) in instruct::read_rows(&source)?.iter().enumerate().take(limit) {
        let at = |e: kiln_data::Error| format!("{}: record {index}: {e}", source.display());
        let c = Conversation::of(row, &columns, &source, index)?;
        let (prompt, _) = instruct::prompt_and_reference(&template, &c, &bos, &eos).map_err(at)?;
        let text = match instruct::render(&template, &c, &bos, &eos).map_err(at)? {
            Rendered::Segments(s) => s.iter().map(|s| s.text.as_str()).collect(),
            Rendered::Marked(t) => t,
        };
        out.push(Item {
            answer_from: Some(prompt.len()),
            text,
        });
    }
    Ok(out)
}

impl super::OnDevice for EvalIterate {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let model = path(ctx, "model")?;
        let lm = Lm::<B>::load_with(&model, device, ctx.p().bool("add_prefix_space")?)?;
        let (mut lines, mut md) = (String::new(), String::new());
        let (mut matched, mut answer_tokens) = (0usize, 0usize);
        for (i, item) in items(ctx, &lm, &model)?.iter().enumerate() {
            let steps = lm.iterate(&item.text)?;
            // Tokens whose text starts at or after the answer are the answer's.
            let prompt_tokens = match item.answer_from {
                Some(chars) => Some(lm.tok.encode(&item.text[..chars])?.len()),
                None => None,
            };
            let _ = writeln!(
                md,
                "## Text {i}\n\n`{:?}`\n\n| position | token | greedy next | p | text's next | p |\n|---|---|---|---|---|---|",
                item.text
            );
            for s in &steps {
                let next = s.next.map(|n| lm.token_text(n)).unwrap_or_default();
                let _ = writeln!(
                    md,
                    "| {} | {:?} | {:?} | {:.3} | {next:?} | {} |",
                    s.position,
                    lm.token_text(s.token),
                    lm.token_text(s.greedy),
                    s.greedy_prob,
                    s.next_prob.map(|p| format!("{p:.3}")).unwrap_or_default()
                );
                if let (Some(from), Some(n)) = (prompt_tokens, s.next)
                    && s.position + 1 >= from
                {
                    answer_tokens += 1;
                    matched += usize::from(s.greedy == n);
                }
            }
            md.push('\n');
            let tokens: Vec<String> = steps.iter().map(|s| lm.token_text(s.token)).collect();
            let greedy: Vec<String> = steps.iter().map(|s| lm.token_text(s.greedy)).collect();
            lines.push_str(&serde_json::to_string(&serde_json::json!({
                "text": item.text, "tokens": tokens, "greedy": greedy, "steps": steps,
            }))?);
            lines.push('\n');
        }
        std::fs::write(ctx.out_dir.join("iterative.jsonl"), lines)?;
        std::fs::write(ctx.out_dir.join("iterative.md"), md)?;
        if answer_tokens > 0 {
            ctx.metrics
                .record("answer_match", 0, matched as f64 / answer_tokens as f64);
            ctx.metrics.record("answer_tokens", 0, answer_tokens as f64);
        }
        Ok(())
    }
}

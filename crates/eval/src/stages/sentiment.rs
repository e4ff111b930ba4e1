//! `eval.sentiment`: accuracy (argmax over the vocabulary is the label token), two-way
//! accuracy, label loss and confusion matrix of a model on a classification dataset split.
//! To score a labelled file (e.g. sentiment140's official test set), make it a dataset with
//! `data.sentiment140` (`val: 0`, `test: 0`) and evaluate its `train` split. With `prompt`,
//! the model reads each text followed by the prompt, as `train.internalize`'s teacher does.

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_model::burn::tensor::backend::Backend;

use super::{path, write_json};

/// The `eval.sentiment` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalSentiment;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required("model", ParamType::Path, "model directory"),
    ParamSpec::required("data", ParamType::Path, "classification dataset directory"),
    ParamSpec::optional("split", ParamType::String, "split to score (default val)"),
    ParamSpec::optional("batch_size", ParamType::Int, "rows per batch (default 32)").at_least(1),
    ParamSpec::optional(
        "max_length",
        ParamType::Int,
        "cut rows to N tokens, counted as rows_truncated (default: the model's context; more is an error)",
    )
    .at_least(1),
    ParamSpec::optional(
        "prompt",
        ParamType::String,
        "text the model reads after each row before it is scored, e.g. \" I feel\": a prompted teacher's accuracy (default: none)",
    ),
    super::DEVICE,
    super::PRECISION,
];

impl Stage for EvalSentiment {
    fn kind(&self) -> &'static str {
        "eval.sentiment"
    }
    fn version(&self) -> u32 {
        // 2: rows_truncated counted (metric and sentiment.json); 3: accurate softmax row sums (f64)
        // 4: fused RMSNorm and SwiGLU (last bits of Llama-family models), BOS from the tokenizer's configuration.
        // 5: few-row products (decoding, short texts) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 6: a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        6
    }
    fn doc(&self) -> &'static str {
        "sentiment accuracy, two-way accuracy, loss and confusion matrix on a dataset split"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

impl super::OnDevice for EvalSentiment {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let dir = path(ctx, "model")?;
        let model = kiln_model::load::<B>(&dir, device)?;
        let limit = kiln_model::CausalLm::max_positions(&model);
        let data = path(ctx, "data")?;
        let split = ctx.param_str("split").unwrap_or_else(|| "val".into());
        let tok = kiln_data::tokenizer::Tok::load(&data)?;
        let pad = kiln_model::config_token_id(&dir, "eos_token_id")
            .or_else(|| tok.eos_id())
            .unwrap_or(0);
        let prompt = match ctx.param_str("prompt") {
            Some(p) => {
                let ids = tok.encode(&p)?;
                if ids.is_empty() {
                    return Err("with.prompt: encodes to no tokens".into());
                }
                ids
            }
            None => Vec::new(),
        };
        let max_length = match (ctx.p().count("max_length")?, limit) {
            (Some(m), Some(n)) if m > n => {
                return Err(format!(
                    "with.max_length: {m} is longer than the model's context ({n} positions)"
                )
                .into());
            }
            (Some(m), _) => Some(m),
            (None, n) => n,
        };
        let report = crate::classify::evaluate(
            &model,
            &data,
            &split,
            ctx.p().count("batch_size")?.unwrap_or(32),
            max_length,
            pad,
            &prompt,
        )?;
        for (name, value) in [
            ("accuracy", report.accuracy),
            ("accuracy_2way", report.accuracy_2way),
            ("loss", report.loss),
            ("rows", report.rows as f64),
            ("rows_truncated", report.truncated as f64),
        ] {
            ctx.metrics.record(name, 0, value);
        }
        for (truth, row) in &report.confusion {
            for (predicted, count) in row {
                ctx.metrics.record(
                    &format!("confusion_{truth}_as_{predicted}"),
                    0,
                    *count as f64,
                );
            }
        }
        if let (true, Some(cut)) = (report.truncated > 0, max_length) {
            ctx.warn(&format!(
                "{} of {} rows were longer than {cut} tokens and were scored on their first {cut}",
                report.truncated, report.rows
            ));
        }
        write_json(ctx, "sentiment.json", &report)?;
        ctx.log(&format!(
            "{split}: {} rows, accuracy {:.4}, two-way {:.4}, loss {:.4}",
            report.rows, report.accuracy, report.accuracy_2way, report.loss
        ));
        Ok(())
    }
}

//! `eval.gap`: the internalization gap averaged over a dataset split: for each row, max, mean
//! and sum over the vocabulary of |p_teacher(text + prompt) − p_student(text)| at the last
//! position.

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::shard::ShardReader;
use kiln_model::CausalLm;
use kiln_model::burn::tensor::backend::Backend;

use super::{path, write_json};
use crate::score;

/// The `eval.gap` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalGap;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required("model", ParamType::Path, "the student's model directory"),
    ParamSpec::required("teacher", ParamType::Path, "the teacher's model directory"),
    ParamSpec::required("data", ParamType::Path, "dataset directory"),
    ParamSpec::required(
        "prompt",
        ParamType::String,
        "the prompt the teacher reads after each text",
    ),
    ParamSpec::optional("split", ParamType::String, "split (default val)"),
    ParamSpec::optional(
        "max_rows",
        ParamType::Int,
        "score at most N rows (default all)",
    )
    .at_least(1),
    super::DEVICE,
    super::PRECISION,
    kiln_data::stages::ADD_PREFIX_SPACE,
];

impl Stage for EvalGap {
    fn kind(&self) -> &'static str {
        "eval.gap"
    }
    fn version(&self) -> u32 {
        // 2: rows_truncated counted (metric and gap.json); 3: accurate softmax row sums (f64)
        // 4: fused RMSNorm and SwiGLU (last bits of Llama-family models), BOS from the tokenizer's configuration.
        // 5: few-row products (decoding, short texts) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 6: a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        6
    }
    fn doc(&self) -> &'static str {
        "internalization gap |p_teacher(text + prompt) − p_student(text)| averaged over a split"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

impl super::OnDevice for EvalGap {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let student = kiln_model::load::<B>(&path(ctx, "model")?, device)?;
        let teacher = kiln_model::load::<B>(&path(ctx, "teacher")?, device)?;
        let context = student.max_positions().unwrap_or(usize::MAX);
        let data = path(ctx, "data")?;
        let tok = kiln_data::stages::load_tokenizer(ctx, &data)?;
        let prompt = tok.encode(&ctx.param_str("prompt").unwrap_or_default())?;
        if prompt.is_empty() {
            return Err("`prompt` encodes to no tokens".into());
        }
        let split = ctx.param_str("split").unwrap_or_else(|| "val".into());
        let limit = ctx.p().count("max_rows")?.unwrap_or(usize::MAX);
        let keep = context.saturating_sub(prompt.len());
        let (mut n, mut cut, mut max, mut mean, mut sum) = (0usize, 0usize, 0.0, 0.0, 0.0);
        'rows: for batch in ShardReader::open(&data, &split, 64, None)? {
            for row in batch? {
                if n >= limit || ctx.cancel.is_cancelled() {
                    break 'rows;
                }
                // The teacher reads the row and the prompt: a longer row keeps its first tokens.
                cut += usize::from(row.input_ids.len() > keep);
                let ids = &row.input_ids[..row.input_ids.len().min(keep)];
                score::check_input(ids, context, student.vocab_size())?;
                let gap = score::internalization_gap(&student, &teacher, ids, &prompt);
                max += gap.max;
                mean += gap.mean;
                sum += gap.sum;
                n += 1;
            }
        }
        if n == 0 {
            return Err(format!("{}: split {split:?} has no rows", data.display()).into());
        }
        let k = n as f64;
        if cut > 0 {
            ctx.warn(&format!(
                "{cut} of {n} rows were longer than {keep} tokens (the context less the prompt) and were scored on their first {keep}"
            ));
        }
        ctx.metrics.record("rows_truncated", 0, cut as f64);
        let summary = serde_json::json!({"rows": n, "rows_truncated": cut, "gap_max": max / k, "gap_mean": mean / k, "gap_sum": sum / k});
        for key in ["gap_max", "gap_mean", "gap_sum"] {
            ctx.metrics
                .record(key, 0, summary[key].as_f64().unwrap_or(f64::NAN));
        }
        write_json(ctx, "gap.json", &summary)?;
        Ok(())
    }
}

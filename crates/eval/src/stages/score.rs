//! `eval.score`: batch NLL of a file of texts (one per line), optionally each given a common
//! prefix: `scores.csv` (line number, tokens, NLL, NLL per token, the text) and the mean NLL
//! (total and per token) as metrics.

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_model::burn::tensor::backend::Backend;

use super::{path, write_csv};
use crate::Lm;

/// The `eval.score` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct EvalScore;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "model",
        ParamType::Path,
        "model directory (with its tokenizer)",
    ),
    ParamSpec::required(
        "source",
        ParamType::Path,
        "a text file, one text per line (blank lines skipped)",
    ),
    ParamSpec::optional(
        "given",
        ParamType::String,
        "score each line as a continuation of this text",
    ),
    super::DEVICE,
    super::PRECISION,
    kiln_data::stages::ADD_PREFIX_SPACE,
];

impl Stage for EvalScore {
    fn kind(&self) -> &'static str {
        "eval.score"
    }
    fn version(&self) -> u32 {
        // 2: scores.csv through the csv crate, with a text column; 3: accurate softmax row sums (f64)
        // 4: fused RMSNorm and SwiGLU (last bits of Llama-family models), BOS from the tokenizer's configuration.
        // 5: few-row products (decoding, short texts) and GPT-2's tied LM head as parallel GEMVs on the CPU (last bits).
        // 6: a few-row product sums its weight in fixed slabs of 64 rows (last bits).
        6
    }
    fn doc(&self) -> &'static str {
        "negative log-likelihood of every line of a file (BOS prefixed; optionally given a prefix)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        super::on_device(ctx, *self)
    }
}

impl super::OnDevice for EvalScore {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult {
        let lm = Lm::<B>::load_with(
            &path(ctx, "model")?,
            device,
            ctx.p().bool("add_prefix_space")?,
        )?;
        let source = path(ctx, "source")?;
        let text = std::fs::read_to_string(&source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let given = ctx.param_str("given");
        let mut rows = Vec::new();
        let (mut total, mut tokens, mut n) = (0.0, 0usize, 0usize);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let nll = match &given {
                Some(g) => lm.conditional_nll(g, line),
                None => lm.nll(line),
            }
            .map_err(|e| format!("{}:{}: {e}", source.display(), i + 1))?;
            let count = lm.tok.encode(line)?.len().max(1);
            rows.push([
                (i + 1).to_string(),
                count.to_string(),
                nll.to_string(),
                (nll / count as f64).to_string(),
                line.to_owned(),
            ]);
            total += nll;
            tokens += count;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no texts to score", source.display()).into());
        }
        write_csv(
            &ctx.out_dir.join("scores.csv"),
            &["line", "tokens", "nll", "nll_per_token", "text"],
            rows,
        )?;
        ctx.metrics.record("mean_nll", 0, total / n as f64);
        ctx.metrics
            .record("nll_per_token", 0, total / tokens as f64);
        ctx.metrics.record("texts", 0, n as f64);
        Ok(())
    }
}

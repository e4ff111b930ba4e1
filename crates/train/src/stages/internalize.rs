//! `train.internalize`: prompt internalization. A frozen teacher reads each text plus the
//! prompt (e.g. `" I feel"`); the student, reading the text alone, learns
//! α·CE(label token) + (1−α)·T²·KL(teacher ‖ student) at the last attended token.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use serde_json::Value;

use super::{ObjectiveSpec, TRAIN_PARAMS, run_training, validate_common};

/// The `train.internalize` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct TrainInternalize;

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut p = vec![
        ParamSpec::optional(
            "teacher",
            ParamType::Path,
            "the frozen teacher's model directory (required unless alpha is 1)",
        ),
        ParamSpec::required(
            "prompt",
            ParamType::String,
            "text the teacher reads after each row, e.g. \" I feel\"",
        ),
        ParamSpec::optional(
            "alpha",
            ParamType::Float,
            "weight of the label cross-entropy, in [0, 1] (default 0.5)",
        )
        .range(0.0, 1.0),
        ParamSpec::optional(
            "temperature",
            ParamType::Float,
            "softmax temperature of the KL term (default 1)",
        )
        .positive(),
    ];
    p.extend_from_slice(TRAIN_PARAMS);
    p
});

impl Stage for TrainInternalize {
    fn kind(&self) -> &'static str {
        "train.internalize"
    }
    fn version(&self) -> u32 {
        // 2: the fused LM-head loss, GELU and attention kernels (last bits of every step);
        // rows_truncated recorded. 3: the loss in f64 and accurate softmax row sums.
        // 4: an embedding grown for added tokens is trained (before, it never moved).
        // 5: fused RMSNorm and SwiGLU (last bits of Llama-family steps).
        // 6: the model keeps its data's special-token files (special_tokens_map.json).
        // 7: GPT-2's LayerNorms as one fused op under autodiff (statistics in f64: last bits).
        // 8: LoRA's A drawn inside its seeded section (burn draws lazily: before, at the first
        // step, where another thread could reseed), and LoRA dropout masks seeded per step and
        // micro-batch (before: one stream from the start, which other threads and resuming
        // disturbed).
        8
    }
    fn doc(&self) -> &'static str {
        "prompt internalization: student(text) matches teacher(text + prompt) and the label, writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        validate_common(params, &mut problems);
        let alpha = params.get("alpha").and_then(Value::as_f64);
        if alpha.unwrap_or(0.5) < 1.0 && !params.contains_key("teacher") {
            problems.push((
                "teacher".into(),
                "a teacher model is needed when alpha < 1".into(),
            ));
        }
        if params.get("prompt").and_then(Value::as_str) == Some("") {
            problems.push(("prompt".into(), "must not be empty".into()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let p = ctx.p();
        let alpha = p.f64("alpha")?.unwrap_or(0.5);
        let spec = ObjectiveSpec::Internalize {
            // Only read when alpha < 1, where validation made it required.
            teacher: p.path("teacher")?.unwrap_or_default(),
            prompt: p.require("prompt", p.string("prompt"))?,
            alpha,
            temperature: p.f64("temperature")?.unwrap_or(1.0),
        };
        run_training(ctx, spec)
    }
}

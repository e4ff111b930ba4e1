//! `train.lm`: causal language modelling over a dataset's shards (pre-training from scratch,
//! or instruction tuning with full or completion-masked labels).

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, Stage, StageContext, StageResult};
use serde_json::Value;

use super::{ObjectiveSpec, TRAIN_PARAMS, run_training, validate_common};

/// The `train.lm` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct TrainLm;

impl Stage for TrainLm {
    fn kind(&self) -> &'static str {
        "train.lm"
    }
    fn version(&self) -> u32 {
        // 2: the fused LM-head loss, GELU and attention kernels (last bits of every step);
        // rows_truncated recorded. 3: accurate softmax row sums (attention, cross-entropy).
        // 4: an embedding grown for added tokens is trained (before, it never moved).
        // 5: fused RMSNorm and SwiGLU (last bits of Llama-family steps).
        // 6: the model keeps its data's special-token files (special_tokens_map.json).
        // 7: the LM-head loss in chunks of 320 rows of GPT-2's vocabulary, not 41 (the
        // weight's gradient summed in other groups: last bits, where a batch has more rows).
        // 8: GPT-2's LayerNorms as one fused op under autodiff (statistics in f64: last bits).
        // 9: LoRA's A drawn inside its seeded section (burn draws lazily: before, at the first
        // step, where another thread could reseed), and LoRA dropout masks seeded per step and
        // micro-batch (before: one stream from the start, which other threads and resuming
        // disturbed).
        9
    }
    fn doc(&self) -> &'static str {
        "causal LM training (next-token; labels −100 where masked), writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        TRAIN_PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        validate_common(params, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        run_training(ctx, ObjectiveSpec::Lm)
    }
}

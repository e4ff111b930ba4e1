//! Sentiment evaluation as the research code defines it: the model's next-token distribution
//! at each row's last attended token; accuracy is "argmax over the whole vocabulary is the
//! label token", two-way accuracy compares only the two label tokens, the loss is the label's
//! cross-entropy, and the confusion matrix counts (true label, two-way prediction).

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_data::collate;
use kiln_data::shard::{Manifest, ShardReader};
use kiln_model::CausalLm;

use crate::error::{Error, Result};

/// Results of [`evaluate`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SentimentReport {
    /// Rows scored.
    pub rows: usize,
    /// Rows longer than `max_length`, scored on their first `max_length` tokens.
    pub truncated: usize,
    /// Argmax over the vocabulary equals the label token.
    pub accuracy: f64,
    /// The label token beats the other label token.
    pub accuracy_2way: f64,
    /// Mean cross-entropy of the label token (nats).
    pub loss: f64,
    /// `confusion[true][predicted]` over label names, by the two-way prediction.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Scores split `split` of the classification dataset in `dir`, `batch` rows at a time, rows
/// cut to `max_length` tokens. With a `prompt` (token ids), the model reads each text
/// followed by the prompt (the text cut to leave it room) and is scored after the prompt:
/// a prompted teacher's accuracy, as `train.internalize`'s teacher reads.
///
/// # Errors
/// A dataset without a negative/positive label map, unreadable shards, ids outside the
/// model's vocabulary, or a prompt that leaves no room for text.
pub fn evaluate<B: Backend, M: CausalLm<B>>(
    model: &M,
    dir: &std::path::Path,
    split: &str,
    batch: usize,
    max_length: Option<usize>,
    pad: u32,
    prompt: &[u32],
) -> Result<SentimentReport> {
    let text_room = match max_length {
        Some(m) if m <= prompt.len() => {
            return Err(Error::Invalid(format!(
                "the prompt's {} tokens leave no room for text in {m} positions",
                prompt.len()
            )));
        }
        other => other.map(|m| m - prompt.len()),
    };
    let manifest = Manifest::load(dir)?;
    let (neg, pos) = match (
        manifest.label_map.get("negative"),
        manifest.label_map.get("positive"),
    ) {
        (Some(n), Some(p)) => (n.id, p.id),
        _ => {
            return Err(Error::Invalid(format!(
                "{}: not a sentiment dataset (its label map needs negative and positive)",
                dir.display()
            )));
        }
    };
    let vocab = model.vocab_size();
    for id in [neg, pos] {
        if id as usize >= vocab {
            return Err(Error::Invalid(format!(
                "label id {id} is outside the model's vocabulary ({vocab})"
            )));
        }
    }
    let name = |id: u32| if id == pos { "positive" } else { "negative" };
    let device = model.device();
    let mut report = SentimentReport {
        rows: 0,
        truncated: 0,
        accuracy: 0.0,
        accuracy_2way: 0.0,
        loss: 0.0,
        confusion: BTreeMap::new(),
    };
    let (mut correct, mut correct2, mut loss) = (0usize, 0usize, 0.0f64);
    for rows in ShardReader::open(dir, split, batch.max(1), None)? {
        let rows = rows?;
        report.truncated += rows
            .iter()
            .filter(|r| text_room.is_some_and(|m| r.input_ids.len() > m))
            .count();
        let ids: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let n = text_room.map_or(r.input_ids.len(), |m| m.min(r.input_ids.len()));
                [&r.input_ids[..n], prompt].concat()
            })
            .collect();
        let b = collate::collate(&ids, pad, max_length);
        if let Some(bad) = b.inputs.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the model's vocabulary ({vocab}); was the dataset made with another tokenizer?"
            )));
        }
        let at: Vec<usize> = b.lengths.iter().map(|n| n.saturating_sub(1)).collect();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(b.inputs.clone(), [b.rows, b.seq]),
            &device,
        );
        let logits = model.logits_at(input, None, &at);
        let logits = kiln_model::host::read_f32(logits);
        // In f64 on the host: an f32 sum over the vocabulary loses a peaked row's tail.
        let rows_lp = kiln_model::kernels::log_softmax_f64(&logits, vocab);
        for (i, r) in rows.iter().enumerate() {
            let label = r
                .label
                .ok_or_else(|| Error::Invalid("a row has no label".into()))?;
            let row = &rows_lp[i * vocab..(i + 1) * vocab];
            let argmax = row
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |acc, (j, &v)| {
                    if v > acc.1 { (j, v) } else { acc }
                })
                .0 as u32;
            correct += usize::from(argmax == label);
            let two = if row[pos as usize] > row[neg as usize] {
                pos
            } else {
                neg
            };
            correct2 += usize::from(two == label);
            loss -= f64::from(row[label as usize]);
            *report
                .confusion
                .entry(name(label).to_owned())
                .or_default()
                .entry(name(two).to_owned())
                .or_default() += 1;
            report.rows += 1;
        }
    }
    if report.rows == 0 {
        return Err(Error::Invalid(format!(
            "{}: split {split:?} has no rows",
            dir.display()
        )));
    }
    let n = report.rows as f64;
    report.accuracy = correct as f64 / n;
    report.accuracy_2way = correct2 as f64 / n;
    report.loss = loss / n;
    Ok(report)
}

//! The training objectives: what a batch of dataset rows costs, and how a model is judged on
//! the validation split.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use kiln_data::collate::{self, Batch};
use kiln_data::shard::Example;
use kiln_model::{CausalLm, Model};

use crate::error::{Error, Result};
use crate::loss;

/// A micro-batch's loss and the number of target tokens it trained on.
pub struct StepLoss<B: Backend> {
    /// Scalar loss, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Tokens it covered (for tokens/s).
    pub tokens: usize,
}

/// A training objective.
pub trait Objective<B: AutodiffBackend> {
    /// The loss of one micro-batch of rows.
    ///
    /// # Errors
    /// Rows that do not fit the objective (no label, a token outside the vocabulary).
    fn loss(&mut self, model: &Model<B>, rows: &[Example]) -> Result<StepLoss<B>>;

    /// Validation metrics (`loss` first) over `batches`, without autodiff. Names get a `val_`
    /// prefix from the trainer.
    ///
    /// # Errors
    /// As [`Objective::loss`], or an unreadable shard.
    fn evaluate(
        &mut self,
        model: &Model<B::InnerBackend>,
        batches: &mut dyn Iterator<Item = kiln_data::Result<Vec<Example>>>,
    ) -> Result<Vec<(String, f64)>>;
}

fn ids_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.inputs.clone(), [batch.rows, batch.seq]),
        device,
    )
}

fn check_vocab(batch: &Batch, vocab: usize) -> Result<()> {
    if let Some(&bad) = batch.inputs.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary ({vocab}); was the dataset made with another tokenizer?"
        )));
    }
    if let Some(&bad) = batch
        .targets
        .iter()
        .find(|&&t| t != loss::IGNORE && (t < 0 || t as usize >= vocab))
    {
        return Err(Error::Invalid(format!(
            "label id {bad} is outside the model's vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// Causal language modelling over rows with or without per-token labels: targets are the
/// next tokens (or the rows' labels shifted left), −100 where not trained.
#[derive(Debug, Clone)]
pub struct Lm {
    /// Padding id (GPT-2: EOS).
    pub pad: u32,
    /// Cut rows to this many tokens.
    pub max_length: Option<usize>,
}

impl Lm {
    fn collate(&self, rows: &[Example]) -> Batch {
        if rows.iter().all(|r| r.labels.is_some()) {
            let pairs: Vec<(Vec<u32>, Vec<i32>)> = rows
                .iter()
                .map(|r| (r.input_ids.clone(), r.labels.clone().unwrap_or_default()))
                .collect();
            collate::collate_labeled(&pairs, self.pad, self.max_length)
        } else {
            let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
            collate::collate(&ids, self.pad, self.max_length)
        }
    }

    /// The final hidden states of every position, `[rows·seq, d]`, their targets (−100 where
    /// not trained) and the count of trained targets.
    fn hidden<B: Backend>(
        &self,
        model: &Model<B>,
        rows: &[Example],
    ) -> Result<(Tensor<B, 2>, Vec<i64>, usize)> {
        let device = model.device();
        let batch = self.collate(rows);
        check_vocab(&batch, model.vocab_size())?;
        let tokens = batch.targets.iter().filter(|&&t| t != loss::IGNORE).count();
        // Right padding under a causal mask: no real position can see a pad, so the mask
        // would change only the (ignored) pad positions' logits.
        let h = model.hidden(ids_tensor::<B>(&batch, &device), None);
        let [b, s, d] = h.dims();
        Ok((h.reshape([b * s, d]), batch.targets, tokens))
    }
}

impl<B: AutodiffBackend> Objective<B> for Lm {
    fn loss(&mut self, model: &Model<B>, rows: &[Example]) -> Result<StepLoss<B>> {
        let (hidden, targets, tokens) = self.hidden(model, rows)?;
        let loss = match model.head_weight() {
            Some(head) => loss::linear_cross_entropy(hidden, head, &targets),
            None => plain_loss(model, hidden, &targets),
        };
        Ok(StepLoss { loss, tokens })
    }

    fn evaluate(
        &mut self,
        model: &Model<B::InnerBackend>,
        batches: &mut dyn Iterator<Item = kiln_data::Result<Vec<Example>>>,
    ) -> Result<Vec<(String, f64)>> {
        let (mut total, mut count) = (0.0, 0usize);
        for rows in batches {
            let (hidden, targets, tokens) = self.hidden(model, &rows?)?;
            let mean = match model.head_weight() {
                Some(head) => {
                    loss::linear_cross_entropy_parts(hidden, head, &targets, false, false).loss
                }
                None => plain_loss(model, hidden, &targets),
            };
            total += scalar(mean) * tokens as f64;
            count += tokens;
        }
        let loss = total / count.max(1) as f64;
        Ok(vec![
            ("loss".into(), loss),
            ("perplexity".into(), loss.exp()),
        ])
    }
}

/// The masked cross-entropy of the full logits, for a head the fused loss cannot take (one
/// with a bias, as Phi's).
fn plain_loss<B: Backend>(model: &Model<B>, hidden: Tensor<B, 2>, targets: &[i64]) -> Tensor<B, 1> {
    let device = hidden.device();
    let targets =
        Tensor::<B, 1, Int>::from_data(TensorData::new(targets.to_vec(), [targets.len()]), &device);
    loss::masked_cross_entropy(model.project(hidden), targets)
}

/// The value of a one-element tensor.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    kiln_model::host::read_scalar(t)
}

/// Prompt internalization: the student reads the text, the frozen teacher reads the text
/// plus `prompt` written right after each row's last attended token; see
/// [`loss::internalization`].
pub struct Internalize<B: AutodiffBackend> {
    /// The frozen teacher (none when α = 1).
    pub teacher: Option<Model<B::InnerBackend>>,
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Softmax temperature of the KL term.
    pub temperature: f64,
    /// Padding id.
    pub pad: u32,
    /// Cut texts to this many tokens.
    pub max_length: Option<usize>,
    /// The two label tokens (negative, positive) for the two-way accuracy, if known.
    pub label_pair: Option<(u32, u32)>,
}

/// A classification batch: padded inputs, last attended positions, labels.
struct Rows {
    batch: Batch,
    labels: Vec<i64>,
}

impl<B: AutodiffBackend> Internalize<B> {
    fn rows(&self, rows: &[Example], vocab: usize) -> Result<Rows> {
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
        let batch = collate::collate(&ids, self.pad, self.max_length);
        check_vocab(&batch, vocab)?;
        let mut labels = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let label = r.label.ok_or_else(|| {
                Error::Invalid(
                    "internalize needs a classification dataset (rows with a label token)".into(),
                )
            })?;
            if label as usize >= vocab {
                return Err(Error::Invalid(format!(
                    "label id {label} is outside the model's vocabulary ({vocab})"
                )));
            }
            if batch.lengths[i] == 0 {
                return Err(Error::Invalid("a row has no tokens".into()));
            }
            labels.push(i64::from(label));
        }
        Ok(Rows { batch, labels })
    }

    /// Teacher logits at the prompt's last token: `[batch, vocab]`.
    fn teacher_logits(&self, rows: &Rows) -> Option<Tensor<B::InnerBackend, 2>> {
        let teacher = self.teacher.as_ref().filter(|_| self.alpha < 1.0)?;
        let device = teacher.device();
        let b = &rows.batch;
        let width = b.seq + self.prompt.len();
        let pad = i64::from(self.pad);
        let mut ids = Vec::with_capacity(b.rows * width);
        let mut at = Vec::with_capacity(b.rows);
        for i in 0..b.rows {
            let n = b.lengths[i];
            ids.extend_from_slice(&b.input_row(i)[..n]);
            ids.extend(self.prompt.iter().map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(pad, width - n - self.prompt.len()));
            at.push(n + self.prompt.len() - 1);
        }
        let ids = Tensor::from_data(TensorData::new(ids, [b.rows, width]), &device);
        Some(teacher.logits_at(ids, None, &at))
    }

    fn student_logits<C: Backend>(model: &Model<C>, rows: &Rows) -> Tensor<C, 2> {
        let device = model.device();
        let at: Vec<usize> = rows.batch.lengths.iter().map(|n| n - 1).collect();
        model.logits_at(ids_tensor::<C>(&rows.batch, &device), None, &at)
    }

    fn label_tensor<C: Backend>(rows: &Rows, device: &C::Device) -> Tensor<C, 1, Int> {
        Tensor::from_data(
            TensorData::new(rows.labels.clone(), [rows.labels.len()]),
            device,
        )
    }
}

impl<B: AutodiffBackend> Objective<B> for Internalize<B> {
    fn loss(&mut self, model: &Model<B>, rows: &[Example]) -> Result<StepLoss<B>> {
        let rows = self.rows(rows, model.vocab_size())?;
        let device = model.device();
        let teacher = self.teacher_logits(&rows).map(Tensor::from_inner);
        let student = Self::student_logits(model, &rows);
        let labels = Self::label_tensor::<B>(&rows, &device);
        let loss = loss::internalization(student, teacher, labels, self.alpha, self.temperature);
        Ok(StepLoss {
            loss,
            tokens: rows.batch.lengths.iter().sum(),
        })
    }

    fn evaluate(
        &mut self,
        model: &Model<B::InnerBackend>,
        batches: &mut dyn Iterator<Item = kiln_data::Result<Vec<Example>>>,
    ) -> Result<Vec<(String, f64)>> {
        let device = model.device();
        let (mut loss_sum, mut n, mut correct, mut correct2) = (0.0, 0usize, 0usize, 0usize);
        for rows in batches {
            let rows = self.rows(&rows?, model.vocab_size())?;
            let count = rows.labels.len();
            let teacher = self.teacher_logits(&rows);
            let student = Self::student_logits(model, &rows);
            let labels = Self::label_tensor::<B::InnerBackend>(&rows, &device);
            let predicted = kiln_model::host::read_i64(student.clone().argmax(1));
            correct += predicted
                .iter()
                .zip(&rows.labels)
                .filter(|(p, l)| p == l)
                .count();
            if let Some((neg, pos)) = self.label_pair {
                let pair = Tensor::<B::InnerBackend, 1, Int>::from_data(
                    TensorData::new(vec![i64::from(neg), i64::from(pos)], [2]),
                    &device,
                );
                let two = kiln_model::host::read_i64(student.clone().select(1, pair).argmax(1));
                correct2 += two
                    .iter()
                    .zip(&rows.labels)
                    .filter(|&(&p, &l)| {
                        (if p == 0 {
                            i64::from(neg)
                        } else {
                            i64::from(pos)
                        }) == l
                    })
                    .count();
            }
            let loss =
                loss::internalization(student, teacher, labels, self.alpha, self.temperature);
            loss_sum += scalar(loss) * count as f64;
            n += count;
        }
        let n = n.max(1) as f64;
        let mut out = vec![
            ("loss".into(), loss_sum / n),
            ("accuracy".into(), correct as f64 / n),
        ];
        if self.label_pair.is_some() {
            out.push(("accuracy_2way".into(), correct2 as f64 / n));
        }
        Ok(out)
    }
}

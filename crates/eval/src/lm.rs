//! [`Lm`]: a model directory (weights + tokenizer) of any architecture kiln loads, with the
//! research code's text-level conventions: sequences are scored with the BOS token prefixed
//! (`bos_token_id`, else the end-of-text token: GPT-2's `<|endoftext|>`), and a continuation
//! is joined after its prefix with a space.

use std::path::Path;

use burn::prelude::*;
use kiln_data::tokenizer::Tok;
use kiln_model::{CausalLm, Model};

use crate::decode::{self, GenerateOptions, Generated};
use crate::error::{Error, Result};
use crate::score::{self, Gap, TracePoint};

/// A language model and its tokenizer.
pub struct Lm<B: Backend> {
    /// The model.
    pub model: Model<B>,
    /// The token prefixed when scoring: `config.json`'s `bos_token_id`, else the
    /// tokenizer's configured `bos_token`, else `config.json`'s `eos_token_id`.
    pub bos: Option<u32>,
    /// Its tokenizer.
    pub tok: Tok,
}

/// A row of a top-k table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopToken {
    /// Rank, from 1.
    pub rank: usize,
    /// Token id.
    pub id: u32,
    /// The token as text.
    pub token: String,
    /// Its probability.
    pub prob: f32,
}

impl<B: Backend> Lm<B> {
    /// Loads a Hugging Face model directory holding a tokenizer (`tokenizer.json`, or
    /// `vocab.json` + `merges.txt`), as kiln's model stages write them.
    ///
    /// # Errors
    /// A missing or invalid model or tokenizer.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_with(dir, device, None)
    }

    /// [`Lm::load`] with the tokenizer's `add_prefix_space` set (`None`: as its files say).
    ///
    /// # Errors
    /// As [`Lm::load`], or the option on a tokenizer it does not apply to.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        add_prefix_space: Option<bool>,
    ) -> Result<Self> {
        let model = kiln_model::load::<B>(dir, device)?;
        let tok = Tok::load_with(dir, add_prefix_space)?;
        let configured_bos = tok.specials().bos.as_deref().and_then(|t| tok.token_id(t));
        let bos = kiln_model::config_token_id(dir, "bos_token_id")
            .or(configured_bos)
            .or_else(|| kiln_model::config_token_id(dir, "eos_token_id"));
        if tok.vocab_size() > model.vocab_size() {
            return Err(Error::Invalid(format!(
                "{}: the tokenizer has {} tokens, the model only {}",
                dir.display(),
                tok.vocab_size(),
                model.vocab_size()
            )));
        }
        Ok(Self { model, bos, tok })
    }

    /// The BOS token prefixed when scoring ([`Lm::bos`](Self::bos), else the tokenizer's
    /// end-of-text token).
    ///
    /// # Errors
    /// When neither the config nor the tokenizer has one.
    pub fn bos(&self) -> Result<u32> {
        self.bos.or_else(|| self.tok.eos_id()).ok_or_else(|| {
            Error::Invalid("the model has no end-of-text token to use as BOS".into())
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::Invalid("the text is empty".into()));
        }
        Ok(self.tok.encode(text)?)
    }

    fn checked(&self, ids: &[u32]) -> Result<()> {
        let limit = self.model.max_positions().unwrap_or(usize::MAX);
        score::check_input(ids, limit, self.model.vocab_size())
    }

    /// The token as text (ids outside the tokenizer shown as `<id>`).
    pub fn token_text(&self, id: u32) -> String {
        self.tok.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The `k` most probable next tokens after `text`.
    ///
    /// # Errors
    /// Empty or too long text, a bad `k`.
    pub fn top_k(&self, text: &str, k: usize) -> Result<Vec<TopToken>> {
        let ids = self.encode(text)?;
        self.checked(&ids)?;
        let probs = score::next_token_probs(&self.model, &ids);
        Ok(score::top_k(&probs, k)?
            .into_iter()
            .enumerate()
            .map(|(i, (id, prob))| TopToken {
                rank: i + 1,
                id,
                token: self.token_text(id),
                prob,
            })
            .collect())
    }

    /// `−log p(text)` in nats, the BOS token prefixed.
    ///
    /// # Errors
    /// Empty or too long text.
    pub fn nll(&self, text: &str) -> Result<f64> {
        let mut ids = vec![self.bos()?];
        ids.extend(self.encode(text)?);
        self.checked(&ids)?;
        Ok(score::nll_from(&self.model, &ids, 1))
    }

    /// `−log p(text | given)` in nats: `text` joined after `given` with a space, BOS prefixed,
    /// only `text`'s tokens scored.
    ///
    /// # Errors
    /// Empty or too long texts.
    pub fn conditional_nll(&self, given: &str, text: &str) -> Result<f64> {
        let mut ids = vec![self.bos()?];
        ids.extend(self.encode(given)?);
        let from = ids.len();
        if text.is_empty() {
            return Err(Error::Invalid("the text is empty".into()));
        }
        ids.extend(self.tok.encode(&format!(" {text}"))?);
        self.checked(&ids)?;
        Ok(score::nll_from(&self.model, &ids, from))
    }

    /// Per-token label trace of `text` between the tokens `negative` and `positive` (vocabulary
    /// entries or one-token texts, as dataset labels).
    ///
    /// # Errors
    /// Empty or too long text, a label that is not one token.
    pub fn trace(&self, text: &str, negative: &str, positive: &str) -> Result<Vec<TracePoint>> {
        let ids = self.encode(text)?;
        self.checked(&ids)?;
        let neg = self.tok.label_id(negative)?;
        let pos = self.tok.label_id(positive)?;
        Ok(score::label_trace(&self.model, &ids, neg, pos))
    }

    /// The iterative-generation trace of `text` (see [`score::iterative`]): at every prefix
    /// length, the greedy next token. The text is read as written (no BOS is added).
    ///
    /// # Errors
    /// Empty or too long text.
    pub fn iterate(&self, text: &str) -> Result<Vec<score::NextStep>> {
        let ids = self.encode(text)?;
        self.checked(&ids)?;
        Ok(score::iterative(&self.model, &ids))
    }

    /// Generates after `prompt` (stopping at the end-of-text token).
    ///
    /// # Errors
    /// An empty or too long prompt, a bad top-k.
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<(Generated, String)> {
        self.generate_poe(&[prompt], opts)
    }

    /// Generates from each of `prompts` as one left-padded batch ([`decode::generate_batch`]):
    /// what [`Lm::generate`] gives for each, up to the last bits of the logits.
    ///
    /// # Errors
    /// As [`Lm::generate`].
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        opts: &GenerateOptions,
    ) -> Result<Vec<(Generated, String)>> {
        let ids = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>>>()?;
        let mut opts = opts.clone();
        if opts.stop.is_none() {
            opts.stop = self.tok.eos_id();
        }
        decode::generate_batch(&self.model, &ids, &opts)?
            .into_iter()
            .map(|out| {
                let text = self.shown_text(&out, opts.stop)?;
                Ok((out, text))
            })
            .collect()
    }

    /// The text of generated tokens, without the stop token.
    fn shown_text(&self, out: &Generated, stop: Option<u32>) -> Result<String> {
        let shown: Vec<u32> = out
            .tokens
            .iter()
            .copied()
            .filter(|&t| Some(t) != stop)
            .collect();
        Ok(self.tok.decode(&shown)?)
    }

    /// Product-of-experts generation from several contexts.
    ///
    /// # Errors
    /// As [`Lm::generate`].
    pub fn generate_poe(
        &self,
        contexts: &[&str],
        opts: &GenerateOptions,
    ) -> Result<(Generated, String)> {
        let ids = contexts
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>>>()?;
        let mut opts = opts.clone();
        if opts.stop.is_none() {
            opts.stop = self.tok.eos_id();
        }
        let out = decode::generate_poe(&self.model, &ids, &opts)?;
        let text = self.shown_text(&out, opts.stop)?;
        Ok((out, text))
    }

    /// The internalization gap between this model (the student, reading `text`) and `teacher`
    /// (reading `text` + `prompt`).
    ///
    /// # Errors
    /// Empty or too long text or prompt.
    pub fn gap<T: CausalLm<B>>(&self, teacher: &T, text: &str, prompt: &str) -> Result<Gap> {
        let ids = self.encode(text)?;
        let p = self.encode(prompt)?;
        self.checked(&[ids.clone(), p.clone()].concat())?;
        Ok(score::internalization_gap(&self.model, teacher, &ids, &p))
    }
}

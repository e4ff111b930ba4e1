//! Building tokenized datasets: read, clean, tokenize, split, shard, and write the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use crate::alpaca::{self, Labels, Record};
use crate::error::{Error, Result};
use crate::instruct::{self, Conversation, Rendered, Template};
use crate::prompted::{Compiled, PromptTemplate, Trained};
use crate::rng::SplitMix64;
use crate::sentiment::{self, Polarity, ReadOptions};
use crate::shard::{
    Example, Kind, LabelToken, Manifest, SCHEMA_VERSION, SourceInfo, SplitInfo, write_split,
};
use crate::source::file_hash;
use crate::tokenizer::Tok;

/// Split fractions; train gets the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fractions {
    /// Validation fraction.
    pub val: f64,
    /// Test fraction.
    pub test: f64,
}

impl Default for Fractions {
    fn default() -> Self {
        Self {
            val: 0.05,
            test: 0.05,
        }
    }
}

/// Options shared by dataset builders.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The source as the user gave it (path or URL), for the manifest.
    pub source_name: String,
    /// Split fractions.
    pub fractions: Fractions,
    /// Seed of the split.
    pub seed: u64,
    /// Rows per shard.
    pub rows_per_shard: usize,
    /// Cut rows to this many tokens (counted in the manifest).
    pub max_length: Option<usize>,
    /// Special tokens added to the tokenizer before tokenizing.
    pub special_tokens: Vec<String>,
    /// The params that made the dataset, for the manifest.
    pub params: serde_json::Value,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            source_name: String::new(),
            fractions: Fractions::default(),
            seed: 0,
            rows_per_shard: 10_000,
            max_length: None,
            special_tokens: Vec::new(),
            params: serde_json::Value::Null,
        }
    }
}

/// Seeded split of `n` row indices into (name, indices), in the order train, val, test;
/// splits with fraction 0 are left out.
///
/// # Errors
/// [`Error::EmptySplit`] when a split that should exist gets no rows.
pub fn split_indices(n: usize, f: Fractions, seed: u64) -> Result<Vec<(&'static str, Vec<usize>)>> {
    for (name, x) in [("val", f.val), ("test", f.test)] {
        if !(0.0..1.0).contains(&x) {
            return Err(Error::Config(format!(
                "{name} fraction {x} must be in [0, 1)"
            )));
        }
    }
    if f.val + f.test >= 1.0 {
        return Err(Error::Config(format!(
            "val + test fractions ({} + {}) leave nothing to train on",
            f.val, f.test
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut idx);
    let n_val = (n as f64 * f.val).round() as usize;
    let n_test = (n as f64 * f.test).round() as usize;
    let n_train = n.saturating_sub(n_val + n_test);
    let mut out = Vec::new();
    let mut rest = idx.as_slice();
    for (name, count, fraction) in [
        ("train", n_train, 1.0),
        ("val", n_val, f.val),
        ("test", n_test, f.test),
    ] {
        if fraction == 0.0 {
            continue;
        }
        if count == 0 {
            return Err(Error::EmptySplit {
                split: name.to_owned(),
                rows: n,
                train: 1.0 - f.val - f.test,
                val: f.val,
                test: f.test,
            });
        }
        let (head, tail) = rest.split_at(count.min(rest.len()));
        // Kept in shuffled order: sources are often sorted (sentiment140 lists every negative
        // tweet first), and readers shuffle only within a shard, so shards written in file
        // order would feed training long runs of one label.
        out.push((name, head.to_vec()));
        rest = tail;
    }
    Ok(out)
}

fn manifest_base(
    kind: Kind,
    tok: &Tok,
    added: usize,
    source: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let (blake3, bytes) = file_hash(source)?;
    Ok(Manifest {
        schema_version: SCHEMA_VERSION,
        kind,
        tokenizer_hash: String::new(), // set when tokenizer.json is written
        vocab_size: tok.vocab_size(),
        added_tokens: added,
        sources: vec![SourceInfo {
            source: opts.source_name.clone(),
            blake3,
            bytes,
        }],
        rows_read: 0,
        rejected: BTreeMap::new(),
        truncated: 0,
        label_map: BTreeMap::new(),
        splits: BTreeMap::new(),
        params: opts.params.clone(),
    })
}

/// Builds a classification dataset from a sentiment source into `out`.
///
/// `labels` maps each polarity kept to its label token (a vocabulary entry such as `good`, or
/// text that must be one token).
///
/// # Errors
/// Reading, label and split errors; writing failures.
pub fn build_sentiment(
    source: &Path,
    read: &ReadOptions,
    tok: Tok,
    labels: &BTreeMap<Polarity, String>,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    let rows = sentiment::read(source, read)?;
    build_sentiment_rows(source, rows, tok, labels, opts, out)
}

/// [`build_sentiment`] from rows already read from `source` (so a caller can read while it
/// loads the tokenizer).
///
/// # Errors
/// Label and split errors; writing failures.
pub fn build_sentiment_rows(
    source: &Path,
    rows: sentiment::Rows,
    tok: Tok,
    labels: &BTreeMap<Polarity, String>,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    build_sentiment_as(source, rows, tok, labels, None, opts, out)
}

/// How [`build_sentiment_as`] writes rows as language-modelling text.
#[derive(Debug, Clone, Copy)]
pub struct AsLm<'a> {
    /// The template, e.g. `"{text} I feel{label}"`.
    pub template: &'a PromptTemplate,
    /// What is trained.
    pub trained: Trained,
}

/// [`build_sentiment_rows`], or with `lm` a language-modelling dataset of the same rows in
/// the same splits (the split depends only on the rows kept and the seed, and a row is kept
/// exactly when its text has tokens), each rendered through the template.
///
/// # Errors
/// Label and split errors; a `max_length` that leaves no room for the text; writing failures.
pub fn build_sentiment_as(
    source: &Path,
    rows: sentiment::Rows,
    mut tok: Tok,
    labels: &BTreeMap<Polarity, String>,
    lm: Option<AsLm<'_>>,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    let added = tok.add_special_tokens(&opts.special_tokens);
    let mut label_ids = BTreeMap::new();
    let kind = if lm.is_some() {
        Kind::Lm
    } else {
        Kind::Classification
    };
    let mut manifest = manifest_base(kind, &tok, added, source, opts)?;
    let compiled = lm.map(|l| l.template.compile(&tok)).transpose()?;
    let fixed = compiled.as_ref().map_or(0, Compiled::fixed_len);
    let max_text = match opts.max_length {
        Some(max) if max <= fixed => {
            return Err(Error::Config(format!(
                "max_length {max} leaves no room for the text: the template's other tokens take {fixed}"
            )));
        }
        other => other.map(|m| m - fixed),
    };
    for polarity in rows
        .labels
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let token = labels.get(&polarity).ok_or_else(|| {
            Error::Config(format!(
                "no label token configured for {} rows (set labels.{})",
                polarity.name(),
                polarity.name()
            ))
        })?;
        let id = tok.label_id(token)?;
        label_ids.insert(polarity, id);
        manifest.label_map.insert(
            polarity.name().to_owned(),
            LabelToken {
                token: token.clone(),
                id,
            },
        );
    }
    // Writing tokenizer.json (50k entries for GPT-2) overlaps with tokenizing and writing the
    // shards, so the directory must exist before either starts.
    std::fs::create_dir_all(out).map_err(crate::error::io("cannot create", out))?;
    let started = std::time::Instant::now();
    let tok = &tok;
    let shape = Shape {
        label_ids: &label_ids,
        template: compiled.as_ref().zip(lm.map(|l| l.trained)),
        max_text,
    };
    let (saved, written) = std::thread::scope(|scope| {
        let saved = scope.spawn(|| tok.save(&out.join("tokenizer.json")));
        let written = encode_and_write(tok, &rows, &shape, opts, out, &mut manifest);
        (saved.join(), written)
    });
    written?;
    tracing::info!(elapsed = ?started.elapsed(), "shards and tokenizer written");
    manifest.tokenizer_hash =
        saved.map_err(|_| Error::Config("writing tokenizer.json panicked".into()))??;
    manifest.rows_read = rows.read;
    manifest.save(out)?;
    Ok(manifest)
}

/// How [`encode_and_write`] turns a sentiment row into an example.
struct Shape<'a> {
    label_ids: &'a BTreeMap<Polarity, u32>,
    /// The compiled prompt template and what it trains (a language-modelling dataset).
    template: Option<(&'a Compiled, Trained)>,
    /// Text tokens kept at most.
    max_text: Option<usize>,
}

/// Tokenizes `rows`, cuts texts to `shape.max_text`, rejects those without tokens, splits
/// the rest and writes each split's shards, counting into `manifest`.
fn encode_and_write(
    tok: &Tok,
    rows: &sentiment::Rows,
    shape: &Shape<'_>,
    opts: &BuildOptions,
    out: &Path,
    manifest: &mut Manifest,
) -> Result<()> {
    let texts: Vec<&str> = rows.texts.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let mut encoded = tok.encode_batch(&texts)?;
    tracing::info!(rows = texts.len(), elapsed = ?started.elapsed(), "tokenized");
    let mut rejected = rows.rejected.clone();
    for ids in &mut encoded {
        if let Some(max) = shape.max_text
            && ids.len() > max
        {
            ids.truncate(max);
            manifest.truncated += 1;
        }
    }
    let empty = encoded.iter().filter(|e| e.is_empty()).count();
    if empty > 0 {
        *rejected.entry("no tokens".into()).or_default() += empty;
    }
    manifest.rejected = rejected;
    let keep: Vec<usize> = (0..encoded.len())
        .filter(|&i| !encoded[i].is_empty())
        .collect();
    for (name, part) in split_indices(keep.len(), opts.fractions, opts.seed)? {
        let mut counts: BTreeMap<Polarity, usize> = BTreeMap::new();
        let examples: Vec<Example> = part
            .iter()
            .map(|&k| {
                let i = keep[k];
                let polarity = rows.labels[i];
                *counts.entry(polarity).or_default() += 1;
                let text = std::mem::take(&mut encoded[i]);
                let label = shape.label_ids[&polarity];
                match shape.template {
                    Some((c, trained)) => {
                        let (input_ids, labels) = c.render(&text, label, trained);
                        Example {
                            input_ids,
                            label: None,
                            labels: Some(labels),
                        }
                    }
                    None => Example {
                        input_ids: text,
                        label: Some(label),
                        labels: None,
                    },
                }
            })
            .collect();
        let mut info: SplitInfo =
            write_split(out, name, manifest.kind, opts.rows_per_shard, &examples)?;
        info.label_counts = counts
            .into_iter()
            .map(|(p, n)| (p.name().to_owned(), n))
            .collect();
        manifest.splits.insert(name.to_owned(), info);
    }
    Ok(())
}

/// Builds a language-modelling dataset from Alpaca-format records into `out`. With
/// `marker_tokens`, the template's markers are added as special tokens (one token each).
///
/// # Errors
/// Reading and split errors; writing failures.
pub fn build_alpaca(
    source: &Path,
    mut tok: Tok,
    labels: Labels,
    marker_tokens: bool,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    let mut specials = opts.special_tokens.clone();
    if marker_tokens {
        specials.extend([alpaca::INSTRUCTION, alpaca::INPUT, alpaca::RESPONSE].map(String::from));
    }
    let added = tok.add_special_tokens(&specials);
    let eos = alpaca::eos(&tok)?;
    let records: Vec<Record> = alpaca::read(source)?;
    let mut manifest = manifest_base(Kind::Lm, &tok, added, source, opts)?;
    manifest.rows_read = records.len();
    let mut rows = Vec::with_capacity(records.len());
    for r in &records {
        let t = alpaca::tokenize(&tok, &alpaca::segments(r, &eos), labels, opts.max_length)?;
        if t.truncated {
            manifest.truncated += 1;
        }
        rows.push(t);
    }
    finish_lm(rows, &tok, manifest, opts, out)
}

/// Splits tokenized LM rows, writes their shards, the tokenizer and the manifest.
fn finish_lm(
    mut rows: Vec<alpaca::Tokenized>,
    tok: &Tok,
    mut manifest: Manifest,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    for (name, part) in split_indices(rows.len(), opts.fractions, opts.seed)? {
        let examples: Vec<Example> = part
            .iter()
            .map(|&i| Example {
                input_ids: std::mem::take(&mut rows[i].input_ids),
                label: None,
                labels: Some(std::mem::take(&mut rows[i].labels)),
            })
            .collect();
        manifest.splits.insert(
            name.to_owned(),
            write_split(out, name, Kind::Lm, opts.rows_per_shard, &examples)?,
        );
    }
    manifest.tokenizer_hash = tok.save(&out.join("tokenizer.json"))?;
    manifest.save(out)?;
    Ok(manifest)
}

/// What to do with a raw-text record whose response marker is not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissingMarker {
    /// Fail, naming how many records and which.
    Error,
    /// Leave them out (counted in the manifest's `rejected`).
    Skip,
}

/// How [`build_instruct`] reads and renders records.
#[derive(Debug)]
pub struct InstructOptions {
    /// The template.
    pub template: Template,
    /// kiln's field name → the source's column.
    pub columns: BTreeMap<String, String>,
    /// Full or completion labels.
    pub labels: Labels,
    /// Raw text: the response marker and the optional instruction marker (as text, where
    /// `{bos}` and `{eos}` stand for the tokens records are rendered with; they are tokenized
    /// on their own and searched for in each record's ids). `None`: the template's own
    /// ([`Template::markers`]).
    pub markers: Option<(String, Option<String>)>,
    /// Records without the response marker.
    pub on_missing_marker: OnMissingMarker,
    /// BOS and EOS tokens to use instead of the tokenizer's (added when it lacks them).
    pub bos: Option<String>,
    /// See `bos`.
    pub eos: Option<String>,
}

/// The rejection reason of records whose response marker was not found.
pub const NO_RESPONSE_MARKER: &str = "no response marker";

/// Builds a language-modelling dataset from instruction or chat records (see
/// [`instruct`]) into `out`.
///
/// # Errors
/// Reading and rendering errors naming the record, records without their response marker
/// (unless skipped), split errors, writing failures.
pub fn build_instruct(
    source: &Path,
    mut tok: Tok,
    io: &InstructOptions,
    opts: &BuildOptions,
    out: &Path,
) -> Result<Manifest> {
    let mut added = tok.add_special_tokens(&opts.special_tokens);
    added += tok.set_bos_eos(io.bos.as_deref(), io.eos.as_deref());
    let (bos, eos) = instruct::bos_eos(&tok)?;
    let rows = instruct::read_rows(source)?;
    let mut manifest = manifest_base(Kind::Lm, &tok, added, source, opts)?;
    manifest.rows_read = rows.len();
    let fill = |m: &str| tok.encode(&m.replace("{bos}", &bos).replace("{eos}", &eos));
    let markers = match io.markers.clone().or_else(|| io.template.markers(&bos)) {
        Some((response, instruction)) => Some((
            fill(&response)?,
            instruction.as_deref().map(fill).transpose()?,
        )),
        None => None,
    };
    let mut kept = Vec::with_capacity(rows.len());
    let mut missing: Vec<usize> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let at = |e: Error| Error::BadRecord {
            path: source.to_owned(),
            index,
            message: e.to_string(),
        };
        let conversation = Conversation::of(row, &io.columns, source, index)?;
        let rendered = instruct::render(&io.template, &conversation, &bos, &eos).map_err(at)?;
        let t = match rendered {
            Rendered::Segments(segments) => {
                alpaca::tokenize(&tok, &segments, io.labels, opts.max_length)?
            }
            Rendered::Marked(text) => {
                match marked(&tok, &text, markers.as_ref(), io.labels, opts.max_length)
                    .map_err(at)?
                {
                    Some(t) => t,
                    None => {
                        missing.push(index);
                        continue;
                    }
                }
            }
        };
        if t.truncated {
            manifest.truncated += 1;
        }
        kept.push(t);
    }
    if !missing.is_empty() {
        if io.on_missing_marker == OnMissingMarker::Error {
            let shown: Vec<String> = missing.iter().take(10).map(ToString::to_string).collect();
            return Err(Error::Config(format!(
                "{}: {} of {} records have no response marker in their token ids (records {}{}); set on_missing_marker: skip to leave them out",
                source.display(),
                missing.len(),
                rows.len(),
                shown.join(", "),
                if missing.len() > 10 { ", …" } else { "" }
            )));
        }
        manifest
            .rejected
            .insert(NO_RESPONSE_MARKER.to_owned(), missing.len());
    }
    finish_lm(kept, &tok, manifest, opts, out)
}

/// Tokenizes raw text and labels it by marker search; `None` when completion labels were
/// asked for and the response marker is not there.
fn marked(
    tok: &Tok,
    text: &str,
    markers: Option<&(Vec<u32>, Option<Vec<u32>>)>,
    labels: Labels,
    max_length: Option<usize>,
) -> Result<Option<alpaca::Tokenized>> {
    let mut ids = tok.encode(text)?;
    let mut out: Vec<i32> = match labels {
        Labels::Full => ids
            .iter()
            .map(|&t| i32::try_from(t).unwrap_or(i32::MAX))
            .collect(),
        Labels::Completion => {
            let (response, instruction) = markers.ok_or_else(|| {
                Error::Config(
                    "completion labels on raw text need a response_marker (and optionally an instruction_marker)".into(),
                )
            })?;
            match crate::template::mask_by_markers(&ids, response, instruction.as_deref()) {
                Ok(l) => l,
                Err(_) => return Ok(None),
            }
        }
    };
    let truncated = max_length.is_some_and(|m| ids.len() > m);
    if let Some(m) = max_length {
        ids.truncate(m);
        out.truncate(m);
    }
    Ok(Some(alpaca::Tokenized {
        input_ids: ids,
        labels: out,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_every_row_once_and_are_seeded() {
        let s = split_indices(
            1000,
            Fractions {
                val: 0.1,
                test: 0.05,
            },
            3,
        )
        .expect("splits");
        let sizes: Vec<usize> = s.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(sizes, [850, 100, 50]);
        let mut all: Vec<usize> = s.iter().flat_map(|(_, v)| v.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            s,
            split_indices(
                1000,
                Fractions {
                    val: 0.1,
                    test: 0.05
                },
                3
            )
            .expect("same")
        );
        assert_ne!(
            s,
            split_indices(
                1000,
                Fractions {
                    val: 0.1,
                    test: 0.05
                },
                4
            )
            .expect("other seed")
        );
    }

    #[test]
    fn an_empty_split_is_an_error() {
        let err = split_indices(
            5,
            Fractions {
                val: 0.05,
                test: 0.0,
            },
            1,
        )
        .expect_err("val gets 0 rows");
        assert_eq!(
            err.to_string(),
            "split \"val\" is empty after filtering (5 rows in all; fractions train 0.95, val 0.05, test 0)"
        );
        let none = split_indices(
            5,
            Fractions {
                val: 0.0,
                test: 0.0,
            },
            1,
        )
        .expect("train only");
        assert_eq!(none.len(), 1);
    }
}

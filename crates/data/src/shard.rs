//! Tokenized datasets as Arrow IPC shards, with a manifest.
//!
//! A dataset directory holds `manifest.json`, `tokenizer.json`, and per split
//! `<split>-00000.arrow`, `<split>-00001.arrow`, …: Arrow IPC files (zstd-compressed), each
//! with at most `rows_per_shard` rows. Schemas ([`Kind`]):
//!
//! | kind | columns |
//! | --- | --- |
//! | classification | `input_ids: list<u32>`, `length: u32`, `label: u32` (the label's token id) |
//! | lm | `input_ids: list<u32>`, `labels: list<i32>` (−100 where not trained), `length: u32` |
//!
//! [`write_split`] writes a split's shards (in parallel); [`ShardReader`] streams a split batch by batch with seeded shuffling (shard order and row
//! order within a shard), memory-mapping one shard at a time, so a dataset never has to fit
//! in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder, UInt32Builder};
use arrow_array::{Array, ArrayRef, Int32Array, ListArray, RecordBatch, UInt32Array};
use arrow_buffer::Buffer;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result, io};
use crate::rng::SplitMix64;

/// The manifest's schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// What a dataset's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Text with one label token.
    Classification,
    /// Language modelling: tokens with per-token labels.
    Lm,
}

/// One example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Classification: the label's token id.
    pub label: Option<u32>,
    /// LM: per-token labels (−100: not trained).
    pub labels: Option<Vec<i32>>,
}

/// Row and token counts of one split.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitInfo {
    /// Rows.
    pub rows: usize,
    /// Tokens (sum of lengths).
    pub tokens: usize,
    /// Shard files, relative to the dataset directory.
    pub shards: Vec<String>,
    /// Rows per label name (classification sets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_counts: BTreeMap<String, usize>,
}

/// A source file a dataset was made from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// Where it was read from (path or URL as given).
    pub source: String,
    /// blake3 of its bytes.
    pub blake3: String,
    /// Its size.
    pub bytes: u64,
}

/// A label's token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelToken {
    /// The token as configured (vocabulary entry or text).
    pub token: String,
    /// Its id.
    pub id: u32,
}

/// `manifest.json`: what a dataset directory holds and how it was made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Row kind.
    pub kind: Kind,
    /// blake3 of `tokenizer.json`.
    pub tokenizer_hash: String,
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
    /// Special tokens added to the base tokenizer (the model must resize its embeddings).
    pub added_tokens: usize,
    /// Sources.
    pub sources: Vec<SourceInfo>,
    /// Rows read from the sources.
    pub rows_read: usize,
    /// Rejected rows by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Rows cut to `max_length`.
    pub truncated: usize,
    /// Label name → token (classification sets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_map: BTreeMap<String, LabelToken>,
    /// Splits by name.
    pub splits: BTreeMap<String, SplitInfo>,
    /// The params that made it.
    pub params: serde_json::Value,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    ///
    /// # Errors
    /// When it is missing or invalid.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Writes `dir/manifest.json`.
    ///
    /// # Errors
    /// When writing fails.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("manifest.json");
        let json = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        std::fs::write(&path, json).map_err(io("cannot write", &path))
    }
}

/// The Arrow schema of a kind.
pub fn schema(kind: Kind) -> SchemaRef {
    let ids = Field::new(
        "input_ids",
        DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
        false,
    );
    let length = Field::new("length", DataType::UInt32, false);
    Arc::new(match kind {
        Kind::Classification => Schema::new(vec![
            ids,
            length,
            Field::new("label", DataType::UInt32, false),
        ]),
        Kind::Lm => Schema::new(vec![
            ids,
            Field::new(
                "labels",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                false,
            ),
            length,
        ]),
    })
}

fn arrow_err(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> Error + '_ {
    move |e| Error::Arrow {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Writes one split's rows as shards of at most `rows_per_shard` rows, named
/// `<split>-00000.arrow`, … in row order. Shards are encoded and compressed in parallel.
///
/// # Errors
/// When a shard cannot be written.
pub fn write_split(
    dir: &Path,
    split: &str,
    kind: Kind,
    rows_per_shard: usize,
    rows: &[Example],
) -> Result<SplitInfo> {
    use rayon::prelude::*;
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let names: Vec<String> = rows
        .par_chunks(rows_per_shard.max(1))
        .enumerate()
        .map(|(k, chunk)| {
            let name = format!("{split}-{k:05}.arrow");
            write_shard(&dir.join(&name), kind, chunk)?;
            Ok(name)
        })
        .collect::<Result<_>>()?;
    Ok(SplitInfo {
        rows: rows.len(),
        tokens: rows.iter().map(|r| r.input_ids.len()).sum(),
        shards: names,
        label_counts: BTreeMap::new(),
    })
}

fn write_shard(path: &Path, kind: Kind, rows: &[Example]) -> Result<()> {
    let batch = to_batch(kind, rows).map_err(arrow_err(path))?;
    let file = File::create(path).map_err(io("cannot create", path))?;
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::ZSTD))
        .map_err(arrow_err(path))?;
    let mut writer = FileWriter::try_new_with_options(file, &batch.schema(), options)
        .map_err(arrow_err(path))?;
    writer.write(&batch).map_err(arrow_err(path))?;
    writer.finish().map_err(arrow_err(path))
}

fn to_batch(
    kind: Kind,
    rows: &[Example],
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let mut ids = ListBuilder::new(UInt32Builder::new());
    let mut lengths = UInt32Builder::with_capacity(rows.len());
    for r in rows {
        ids.values().append_slice(&r.input_ids);
        ids.append(true);
        lengths.append_value(u32::try_from(r.input_ids.len()).unwrap_or(u32::MAX));
    }
    let ids: ArrayRef = Arc::new(ids.finish());
    let lengths: ArrayRef = Arc::new(lengths.finish());
    let columns: Vec<ArrayRef> = match kind {
        Kind::Classification => {
            let labels: UInt32Array = rows.iter().map(|r| r.label.unwrap_or(0)).collect();
            vec![ids, lengths, Arc::new(labels)]
        }
        Kind::Lm => {
            let mut labels = ListBuilder::new(Int32Builder::new());
            for r in rows {
                labels
                    .values()
                    .append_slice(r.labels.as_deref().unwrap_or(&[]));
                labels.append(true);
            }
            vec![ids, Arc::new(labels.finish()), lengths]
        }
    };
    RecordBatch::try_new(schema(kind), columns)
}

/// Reads every record batch of one shard file through a memory map.
///
/// # Errors
/// When the file cannot be mapped or is not a valid Arrow IPC file.
pub fn read_shard(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(io("cannot open", path))?;
    // SAFETY: the shard is opened read-only and kiln never modifies a finished shard; the
    // map lives as long as the Buffer that owns it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io("cannot map", path))?;
    let len = mmap.len();
    let bad = |m: &str| Error::Arrow {
        path: path.to_owned(),
        message: m.to_owned(),
    };
    if len < 10 {
        return Err(bad("too short to be an Arrow IPC file"));
    }
    let ptr = NonNull::new(mmap.as_ptr().cast_mut()).ok_or_else(|| bad("empty map"))?;
    // SAFETY: ptr and len describe the mapped region, which the Arc keeps alive.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) };
    let trailer = buffer.len() - 10;
    let footer_len = arrow_ipc::reader::read_footer_length(
        buffer[trailer..]
            .try_into()
            .map_err(|_| bad("bad trailer"))?,
    )
    .map_err(arrow_err(path))?;
    let footer = arrow_ipc::root_as_footer(&buffer[trailer - footer_len..trailer])
        .map_err(|e| bad(&format!("bad footer: {e}")))?;
    let schema = arrow_ipc::convert::fb_to_schema(footer.schema().ok_or_else(|| bad("no schema"))?);
    let decoder = FileDecoder::new(Arc::new(schema), footer.version());
    let mut out = Vec::new();
    for block in footer.recordBatches().into_iter().flatten() {
        let block_len = block.bodyLength() as usize + block.metaDataLength() as usize;
        let data = buffer.slice_with_length(block.offset() as usize, block_len);
        if let Some(batch) = decoder
            .read_record_batch(block, &data)
            .map_err(arrow_err(path))?
        {
            out.push(batch);
        }
    }
    Ok(out)
}

/// The examples in a record batch.
///
/// # Errors
/// When the batch does not have a dataset schema.
pub fn examples(batch: &RecordBatch, path: &Path) -> Result<Vec<Example>> {
    let bad = |m: String| Error::Arrow {
        path: path.to_owned(),
        message: m,
    };
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| bad(format!("no column {name:?}")))
    };
    let ids = column("input_ids")?
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| bad("input_ids is not a list".into()))?;
    let label = batch
        .column_by_name("label")
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
    let labels = batch
        .column_by_name("labels")
        .and_then(|c| c.as_any().downcast_ref::<ListArray>());
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = ids.value(i);
        let row = row
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| bad("input_ids items are not u32".into()))?;
        out.push(Example {
            input_ids: row.values().to_vec(),
            label: label.map(|l| l.value(i)),
            labels: match labels {
                Some(l) => Some(
                    l.value(i)
                        .as_any()
                        .downcast_ref::<Int32Array>()
                        .ok_or_else(|| bad("labels items are not i32".into()))?
                        .values()
                        .to_vec(),
                ),
                None => None,
            },
        });
    }
    Ok(out)
}

/// Streams a split of a dataset directory in batches.
#[derive(Debug)]
pub struct ShardReader {
    dir: PathBuf,
    shards: Vec<String>,
    order: Vec<usize>,
    next_shard: usize,
    current: Vec<Example>,
    rng: Option<SplitMix64>,
    batch_size: usize,
}

impl ShardReader {
    /// Opens `split` of the dataset in `dir`. With `seed`, shard order and row order are
    /// shuffled (deterministically for the seed); without, rows come in file order.
    ///
    /// # Errors
    /// When the manifest is missing or has no such split.
    pub fn open(dir: &Path, split: &str, batch_size: usize, seed: Option<u64>) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let info = manifest.splits.get(split).ok_or_else(|| {
            Error::Config(format!(
                "{}: no split {split:?} (splits: {})",
                dir.display(),
                manifest
                    .splits
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let mut order: Vec<usize> = (0..info.shards.len()).collect();
        let mut rng = seed.map(SplitMix64::new);
        if let Some(r) = &mut rng {
            r.shuffle(&mut order);
        }
        Ok(Self {
            dir: dir.to_owned(),
            shards: info.shards.clone(),
            order,
            next_shard: 0,
            current: Vec::new(),
            rng,
            batch_size: batch_size.max(1),
        })
    }
}

impl Iterator for ShardReader {
    type Item = Result<Vec<Example>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.current.len() < self.batch_size && self.next_shard < self.order.len() {
            let path = self.dir.join(&self.shards[self.order[self.next_shard]]);
            self.next_shard += 1;
            let mut rows = Vec::new();
            let batches = match read_shard(&path) {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            for b in &batches {
                match examples(b, &path) {
                    Ok(mut e) => rows.append(&mut e),
                    Err(e) => return Some(Err(e)),
                }
            }
            if let Some(r) = &mut self.rng {
                r.shuffle(&mut rows);
            }
            // Rows left from the previous shard come first.
            self.current.extend(rows);
        }
        if self.current.is_empty() {
            return None;
        }
        let take = self.batch_size.min(self.current.len());
        Some(Ok(self.current.drain(..take).collect()))
    }
}

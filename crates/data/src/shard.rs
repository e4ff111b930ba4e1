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
    /// Reads `dir/manifest.json` and checks it: this kiln's schema version, shard names that
    /// are plain `.arrow` file names in `dir`, label ids within the vocabulary.
    ///
    /// # Errors
    /// When it is missing or invalid.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        let manifest: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        manifest
            .check()
            .map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
        Ok(manifest)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} (this kiln reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        for (name, split) in &self.splits {
            let bad = split
                .shards
                .iter()
                .find(|s| !s.ends_with(".arrow") || s.contains(['/', '\\']) || s.starts_with('.'));
            if let Some(shard) = bad {
                return Err(format!(
                    "split {name:?}: shard {shard:?} is not a file name"
                ));
            }
        }
        match self
            .label_map
            .iter()
            .find(|(_, l)| l.id as usize >= self.vocab_size)
        {
            Some((name, l)) => Err(format!(
                "label {name:?}: id {} is outside the vocabulary ({} entries)",
                l.id, self.vocab_size
            )),
            None => Ok(()),
        }
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
    let tokens = rows.iter().map(|r| r.input_ids.len()).sum();
    let mut ids = ListBuilder::with_capacity(UInt32Builder::with_capacity(tokens), rows.len());
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
            let mut labels =
                ListBuilder::with_capacity(Int32Builder::with_capacity(tokens), rows.len());
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
/// The file is checked before arrow decodes it (arrow's decoder trusts the file's offsets and
/// sizes): the footer's schema must be one of the dataset schemas ([`schema`]), and every
/// block, buffer, node and compressed size must lie within the file. A truncated or corrupted
/// shard is an error, never a panic.
///
/// # Errors
/// When the file cannot be mapped or is not a valid dataset shard.
pub fn read_shard(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(io("cannot open", path))?;
    // SAFETY: the shard is opened read-only and kiln never modifies a finished shard; the
    // map lives as long as the Buffer that owns it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io("cannot map", path))?;
    let bad = |m: String| Error::Arrow {
        path: path.to_owned(),
        message: m,
    };
    let len = mmap.len();
    // Magic and padding (8 bytes), footer length and magic (10 bytes).
    if len < 18 || mmap[..6] != *b"ARROW1" {
        return Err(bad(
            "not an Arrow IPC file (too short or no ARROW1 magic)".into()
        ));
    }
    let ptr = NonNull::new(mmap.as_ptr().cast_mut()).ok_or_else(|| bad("empty map".into()))?;
    // SAFETY: ptr and len describe the mapped region, which the Arc keeps alive.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) };
    let footer = read_footer(&buffer).map_err(bad)?;
    let kind = footer
        .schema()
        .and_then(|s| footer_kind(&s))
        .ok_or_else(|| bad("the schema is not a dataset schema".into()))?;
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err(bad("dataset shards have no dictionaries".into()));
    }
    let decoder = FileDecoder::new(schema(kind), footer.version());
    let mut out = Vec::new();
    for (i, block) in footer.recordBatches().into_iter().flatten().enumerate() {
        let (start, meta, body) =
            block_range(block, buffer.len()).map_err(|m| bad(format!("block {i}: {m}")))?;
        check_block(&buffer[start..start + meta + body], meta)
            .map_err(|m| bad(format!("block {i}: {m}")))?;
        let data = buffer.slice_with_length(start, meta + body);
        if let Some(batch) = decoder
            .read_record_batch(block, &data)
            .map_err(arrow_err(path))?
        {
            out.push(batch);
        }
    }
    Ok(out)
}

/// The footer of an Arrow IPC file at least 18 bytes long, its length checked against the file.
fn read_footer(buffer: &[u8]) -> std::result::Result<arrow_ipc::Footer<'_>, String> {
    let trailer = buffer.len() - 10;
    let last: [u8; 10] = buffer[trailer..]
        .try_into()
        .map_err(|_| "bad trailer".to_owned())?;
    let footer_len =
        arrow_ipc::reader::read_footer_length(last).map_err(|e| format!("bad trailer: {e}"))?;
    let start = trailer
        .checked_sub(footer_len)
        .filter(|&s| s >= 8)
        .ok_or_else(|| format!("footer length {footer_len} exceeds the file"))?;
    arrow_ipc::root_as_footer(&buffer[start..trailer]).map_err(|e| format!("bad footer: {e}"))
}

/// The kind whose schema the footer's schema is, field by field (names, types, nullability).
fn footer_kind(fb: &arrow_ipc::Schema<'_>) -> Option<Kind> {
    if fb.endianness() != arrow_ipc::Endianness::Little {
        return None;
    }
    let fields: Vec<arrow_ipc::Field<'_>> = fb.fields()?.iter().collect();
    [Kind::Classification, Kind::Lm].into_iter().find(|&kind| {
        let want = schema(kind);
        fields.len() == want.fields().len()
            && fields
                .iter()
                .zip(want.fields())
                .all(|(f, w)| same_field(f, w))
    })
}

/// Whether a flatbuffer field is `want`, for the types dataset schemas use.
fn same_field(fb: &arrow_ipc::Field<'_>, want: &Field) -> bool {
    let children: Vec<arrow_ipc::Field<'_>> = fb
        .children()
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let same_type = match want.data_type() {
        DataType::UInt32 | DataType::Int32 => {
            let signed = *want.data_type() == DataType::Int32;
            children.is_empty()
                && fb
                    .type_as_int()
                    .is_some_and(|t| t.bitWidth() == 32 && t.is_signed() == signed)
        }
        DataType::List(item) => {
            fb.type_as_list().is_some() && children.len() == 1 && same_field(&children[0], item)
        }
        _ => false,
    };
    same_type
        && fb.name() == Some(want.name().as_str())
        && fb.nullable() == want.is_nullable()
        && fb.dictionary().is_none()
}

/// A block's start, metadata length and body length, checked to lie within a file of `len`
/// bytes.
fn block_range(
    block: &arrow_ipc::Block,
    len: usize,
) -> std::result::Result<(usize, usize, usize), String> {
    let start = usize::try_from(block.offset()).map_err(|_| "negative offset")?;
    let meta = usize::try_from(block.metaDataLength()).map_err(|_| "negative metadata length")?;
    let body = usize::try_from(block.bodyLength()).map_err(|_| "negative body length")?;
    if meta < 8 {
        return Err(format!("metadata length {meta} is too short"));
    }
    match start.checked_add(meta).and_then(|e| e.checked_add(body)) {
        Some(end) if end <= len => Ok((start, meta, body)),
        _ => Err(format!(
            "offset {start} + {meta} + {body} bytes exceeds the file ({len} bytes)"
        )),
    }
}

/// Checks a record batch block (metadata, then `data.len() - meta` body bytes) before arrow
/// decodes it: the message parses as arrow parses it, node lengths are non-negative and fit
/// 32-bit offsets, no node has nulls, buffers lie within the body, and compressed buffers
/// declare the size their zstd frame declares.
fn check_block(data: &[u8], meta: usize) -> std::result::Result<(), String> {
    let body = &data[meta..];
    // As arrow's FileDecoder reads it: an optional continuation marker, the length, the message.
    let message = if data[..4] == [0xff; 4] {
        &data[8..]
    } else {
        &data[4..]
    };
    let message = arrow_ipc::root_as_message(message).map_err(|e| format!("bad message: {e}"))?;
    let Some(batch) = message.header_as_record_batch() else {
        // arrow reports any other message itself.
        return Ok(());
    };
    let fits = |n: i64| (0..=i64::from(i32::MAX)).contains(&n);
    if !fits(batch.length()) {
        return Err(format!("bad row count {}", batch.length()));
    }
    // kiln writes no nulls, so arrow never reads a validity bitmap (it trusts their sizes).
    for node in batch.nodes().into_iter().flatten() {
        if !fits(node.length()) || node.null_count() != 0 {
            return Err(format!(
                "bad node: length {}, nulls {}",
                node.length(),
                node.null_count()
            ));
        }
    }
    if batch.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
        return Err("unexpected variadic buffers".into());
    }
    let zstd = match batch.compression().map(|c| c.codec()) {
        None => false,
        Some(arrow_ipc::CompressionType::ZSTD) => true,
        Some(c) => return Err(format!("unexpected compression {c:?}")),
    };
    for b in batch.buffers().into_iter().flatten() {
        let range = usize::try_from(b.offset())
            .ok()
            .zip(usize::try_from(b.length()).ok())
            .and_then(|(o, l)| body.get(o..o.checked_add(l)?))
            .ok_or_else(|| {
                format!(
                    "buffer at {} of {} bytes exceeds the body ({} bytes)",
                    b.offset(),
                    b.length(),
                    body.len()
                )
            })?;
        let decoded = if zstd && !range.is_empty() {
            check_compressed(range)?
        } else {
            range.len() as u64
        };
        // Every column holds 32-bit values (arrow panics on a buffer of a partial value).
        if decoded % 4 != 0 {
            return Err(format!(
                "a buffer of {decoded} bytes holds no whole 32-bit values"
            ));
        }
    }
    Ok(())
}

/// Checks an arrow compressed buffer and returns its decoded size: an 8-byte uncompressed
/// length (−1: stored uncompressed), then a zstd frame that must declare the same content
/// size, which cannot exceed what zstd can expand its bytes to (so a corrupted length never
/// becomes a huge allocation).
fn check_compressed(buf: &[u8]) -> std::result::Result<u64, String> {
    let prefix: [u8; 8] = buf
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("compressed buffer of {} bytes", buf.len()))?;
    let frame = &buf[8..];
    let declared = match i64::from_le_bytes(prefix) {
        -1 => return Ok(frame.len() as u64),
        0 => return Ok(0),
        d => d,
    };
    // zstd blocks are at most 128 KiB and take at least 4 bytes (an RLE block).
    let most = u64::try_from(frame.len())
        .unwrap_or(u64::MAX)
        .saturating_mul(32_768);
    match (u64::try_from(declared), zstd_content_size(frame)) {
        (Ok(d), Some(c)) if d == c && d <= most => Ok(d),
        _ => Err(format!(
            "compressed buffer declares {declared} bytes, its zstd frame {:?}",
            zstd_content_size(frame)
        )),
    }
}

/// The content size a zstd frame's header declares (RFC 8878, 3.1.1.1), if it has one.
fn zstd_content_size(frame: &[u8]) -> Option<u64> {
    if frame.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let descriptor = *frame.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    let size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dictionary_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let start = 5 + usize::from(!single_segment) + dictionary_len;
    let bytes = frame
        .get(start..start + size_len)
        .filter(|b| !b.is_empty())?;
    let mut value = [0u8; 8];
    value[..size_len].copy_from_slice(bytes);
    let value = u64::from_le_bytes(value);
    Some(if size_len == 2 { value + 256 } else { value })
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

#[cfg(test)]
mod tests {
    use super::zstd_content_size;

    /// Frame headers laid out by hand from RFC 8878, 3.1.1.1: magic, descriptor (FCS flag in
    /// bits 7-6, single segment bit 5, dictionary id flag in bits 1-0), window descriptor
    /// unless single segment, dictionary id, content size.
    #[test]
    fn zstd_frame_content_sizes() {
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        let frame = |rest: &[u8]| [&magic[..], rest].concat();
        // Single segment, 1-byte size.
        assert_eq!(zstd_content_size(&frame(&[0x20, 200])), Some(200));
        // 2-byte size (+256), after a window descriptor.
        assert_eq!(
            zstd_content_size(&frame(&[0x40, 0x58, 0x10, 0x00])),
            Some(16 + 256)
        );
        // 4-byte size after a window descriptor and a 1-byte dictionary id.
        assert_eq!(
            zstd_content_size(&frame(&[0x81, 0x58, 7, 0x00, 0x00, 0x01, 0x00])),
            Some(65_536)
        );
        // 8-byte size, single segment.
        assert_eq!(
            zstd_content_size(&frame(&[0xe0, 1, 0, 0, 0, 0, 0, 0, 1])),
            Some((1 << 56) + 1)
        );
        // No size recorded, a truncated header, not a zstd frame.
        assert_eq!(zstd_content_size(&frame(&[0x00, 0x58])), None);
        assert_eq!(zstd_content_size(&frame(&[0x80, 0x58, 1])), None);
        assert_eq!(zstd_content_size(&[0, 1, 2, 3, 0x20, 5]), None);
    }
}

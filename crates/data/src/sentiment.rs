//! Reading labelled sentiment data into (text, polarity) rows.
//!
//! Layouts:
//! - [`Layout::Sentiment140`]: the original `trainingandtestdata.zip` files: no header, six
//!   quoted fields (polarity 0/2/4, id, date, query, user, text), latin-1 bytes.
//! - [`Layout::HfParquet`]: the Hugging Face parquet layout: columns `sentiment`
//!   (`positive`/`negative`/`neutral`) and `text`.
//! - [`Layout::Table`]: any CSV (with header), JSONL or parquet file with a column mapping.
//!
//! polars does the ingest (CSV, JSONL and parquet readers) and the cleaning (filters). For the
//! sentiment140 layout a first pass with the `csv` crate checks every record's shape, because
//! a malformed line must be reported with its line number (or skipped and counted with
//! `on_bad_row: skip`); only the records that pass are handed to polars.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use polars::prelude::*;

use crate::error::{Error, Result, io};

/// A row's polarity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Polarity {
    /// Negative (sentiment140: 0).
    Negative,
    /// Neutral (sentiment140: 2).
    Neutral,
    /// Positive (sentiment140: 4).
    Positive,
}

impl Polarity {
    /// Parses `negative`/`neutral`/`positive` (also `neg`, `pos`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "negative" | "neg" => Some(Self::Negative),
            "neutral" => Some(Self::Neutral),
            "positive" | "pos" => Some(Self::Positive),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Negative => "negative",
            Self::Neutral => "neutral",
            Self::Positive => "positive",
        }
    }
}

/// The file layout of a sentiment source.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Original sentiment140 CSV.
    Sentiment140,
    /// Hugging Face parquet: `sentiment` and `text` columns.
    HfParquet,
    /// A CSV (with header), JSONL or parquet file (by extension) with a column mapping.
    Table {
        /// The text column.
        text: String,
        /// The label column.
        label: String,
        /// Label values (as text) to polarities; empty: `negative`/`neutral`/`positive` names.
        values: BTreeMap<String, Polarity>,
    },
}

/// Bytes to text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Each byte is one character (sentiment140's training file).
    Latin1,
    /// UTF-8 (invalid bytes are an error).
    Utf8,
}

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRow {
    /// Stop with an error naming the line.
    Error,
    /// Skip it and count it in the manifest.
    Skip,
}

/// How to read a sentiment source.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The layout.
    pub layout: Layout,
    /// The text encoding (CSV layouts).
    pub encoding: Encoding,
    /// Turn `&quot;`, `&amp;`, … into characters.
    pub unescape_html: bool,
    /// Keep neutral rows (otherwise they are dropped and counted).
    pub keep_neutral: bool,
    /// Malformed rows.
    pub on_bad_row: OnBadRow,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            layout: Layout::Sentiment140,
            encoding: Encoding::Latin1,
            unescape_html: true,
            keep_neutral: false,
            on_bad_row: OnBadRow::Error,
        }
    }
}

/// Rows read, and what was rejected.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Texts.
    pub texts: Vec<String>,
    /// Their polarities.
    pub labels: Vec<Polarity>,
    /// Rows read from the file (before any rejection).
    pub read: usize,
    /// Rejected rows by reason.
    pub rejected: BTreeMap<String, usize>,
}

/// Decodes latin-1 bytes: every byte is the code point of the same value.
pub fn latin1_to_string(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        return String::from_utf8(bytes.to_vec()).expect("ASCII is UTF-8");
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        if b < 0x80 {
            out.push(b);
        } else {
            // U+0080..U+00FF in UTF-8: two bytes.
            out.extend_from_slice(&[0xC0 | (b >> 6), 0x80 | (b & 0x3F)]);
        }
    }
    String::from_utf8(out).expect("latin-1 code points always encode to valid UTF-8")
}

fn polars_err(path: &Path) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Reads a sentiment source.
///
/// # Errors
/// Unreadable files, malformed rows (with `on_bad_row: error`), unknown label values, missing
/// columns.
pub fn read(path: &Path, options: &ReadOptions) -> Result<Rows> {
    let mut rows = Rows::default();
    let (texts, labels): (Vec<Option<String>>, Vec<Option<String>>) = match &options.layout {
        Layout::Sentiment140 => {
            let bytes = std::fs::read(path).map_err(io("cannot read", path))?;
            let text = decode(path, &bytes, options.encoding)?;
            // The common case, every line six plainly quoted fields, is checked with a byte scan;
            // anything else goes through the csv crate for exact line numbers.
            let (good, bad) = if plainly_quoted(&text, 6) {
                (None, 0)
            } else {
                check_records(path, &text, 6, options.on_bad_row)?
            };
            if bad > 0 {
                rows.rejected.insert("malformed row (skipped)".into(), bad);
            }
            let good = good.unwrap_or(text);
            let schema: Schema = (1..=6)
                .map(|i| Field::new(format!("c{i}").into(), DataType::String))
                .collect();
            let df = CsvReadOptions::default()
                .with_has_header(false)
                .with_schema(Some(Arc::new(schema)))
                .with_projection(Some(Arc::new(vec![0, 5])))
                .map_parse_options(|p| p.with_quote_char(Some(b'"')))
                .into_reader_with_file_handle(Cursor::new(good.into_bytes()))
                .finish()
                .map_err(polars_err(path))?;
            (strings(path, &df, "c6")?, strings(path, &df, "c1")?)
        }
        Layout::HfParquet => {
            let df = read_table(path)?;
            (
                strings(path, &df, "text")?,
                strings(path, &df, "sentiment")?,
            )
        }
        Layout::Table { text, label, .. } => {
            let df = read_table(path)?;
            (strings(path, &df, text)?, strings(path, &df, label)?)
        }
    };
    rows.read = texts.len() + rows.rejected.values().sum::<usize>();
    let mut reject = |reason: &str| *rows.rejected.entry(reason.to_owned()).or_default() += 1;
    for (i, (text, label)) in texts.into_iter().zip(labels).enumerate() {
        let Some(raw_label) = label else {
            reject("missing label");
            continue;
        };
        let polarity = match &options.layout {
            Layout::Sentiment140 => match raw_label.trim() {
                "0" => Some(Polarity::Negative),
                "2" => Some(Polarity::Neutral),
                "4" => Some(Polarity::Positive),
                _ => None,
            },
            Layout::HfParquet => Polarity::parse(&raw_label),
            Layout::Table { values, .. } if values.is_empty() => Polarity::parse(&raw_label),
            Layout::Table { values, .. } => values.get(raw_label.trim()).copied(),
        };
        let Some(polarity) = polarity else {
            return Err(Error::BadRecord {
                path: path.to_owned(),
                index: i,
                message: format!("unknown label value {raw_label:?}"),
            });
        };
        if polarity == Polarity::Neutral && !options.keep_neutral {
            reject("neutral (dropped: keep_neutral is false)");
            continue;
        }
        let mut text = text.unwrap_or_default();
        if options.unescape_html {
            // Only texts that held an entity are copied.
            if let std::borrow::Cow::Owned(decoded) = html_escape::decode_html_entities(&text) {
                text = decoded;
            }
        }
        if text.trim().is_empty() {
            reject("empty text");
            continue;
        }
        rows.texts.push(text);
        rows.labels.push(polarity);
    }
    Ok(rows)
}

fn decode(path: &Path, bytes: &[u8], encoding: Encoding) -> Result<String> {
    match encoding {
        Encoding::Latin1 => Ok(latin1_to_string(bytes)),
        Encoding::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
            Error::BadRow {
                path: path.to_owned(),
                line: line as u64,
                message: "invalid UTF-8 (sentiment140 files are latin-1: set encoding: latin-1)"
                    .into(),
            }
        }),
    }
}

/// Whether every line of `text` is `fields` double-quoted fields without quotes inside them
/// (sentiment140's layout: `"0","1467810369","Mon Apr 06 …","NO_QUERY","user","text"`).
fn plainly_quoted(text: &str, fields: usize) -> bool {
    text.split_terminator('\n').all(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        line.len() >= 2
            && line[0] == b'"'
            && line[line.len() - 1] == b'"'
            && line.iter().filter(|&&b| b == b'"').count() == 2 * fields
            && line.windows(3).filter(|w| w == b"\",\"").count() == fields - 1
    })
}

/// Checks every record of a headerless CSV text: exactly `fields` fields, no field running
/// over a line end (an unterminated quote). Returns the text of the good records when some
/// were skipped (`None`: all are good, use `text` as it is) and the number skipped.
fn check_records(
    path: &Path,
    text: &str,
    fields: usize,
    on_bad: OnBadRow,
) -> Result<(Option<String>, usize)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    // The text of the good records, made only once a record is skipped.
    let mut good: Option<String> = None;
    let mut skipped = 0;
    let mut record = csv::ByteRecord::new();
    let mut start = 0usize;
    let mut line = 1u64;
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| Error::BadRow {
                path: path.to_owned(),
                line,
                message: e.to_string(),
            })?;
        if !more {
            break;
        }
        let end = reader.position().byte() as usize;
        let raw = &text[start..end.min(text.len())];
        let spans_lines = raw.trim_end_matches(['\n', '\r']).contains('\n');
        let problem = if spans_lines {
            Some(format!(
                "unterminated quote: the record runs over {} lines",
                raw.trim_end_matches(['\n', '\r']).matches('\n').count() + 1
            ))
        } else if record.len() != fields {
            Some(format!("expected {fields} fields, found {}", record.len()))
        } else {
            None
        };
        match (problem, on_bad) {
            (None, _) => {
                if let Some(good) = &mut good {
                    good.push_str(raw);
                    if !raw.ends_with('\n') {
                        good.push('\n');
                    }
                }
            }
            (Some(message), OnBadRow::Error) => {
                return Err(Error::BadRow {
                    path: path.to_owned(),
                    line,
                    message: format!("{message} (set on_bad_row: skip to skip such rows)"),
                });
            }
            (Some(_), OnBadRow::Skip) => {
                skipped += 1;
                good.get_or_insert_with(|| text[..start].to_owned());
            }
        }
        line += raw.matches('\n').count() as u64;
        start = end;
    }
    Ok((good, skipped))
}

/// Reads a CSV (with header), JSONL or parquet file by extension.
pub(crate) fn read_table(path: &Path) -> Result<DataFrame> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let file = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let df = match ext.as_str() {
        "parquet" => ParquetReader::new(file).finish(),
        "jsonl" | "ndjson" => JsonReader::new(file)
            .with_json_format(JsonFormat::JsonLines)
            .finish(),
        "json" => JsonReader::new(file).finish(),
        "csv" | "tsv" => CsvReadOptions::default()
            .with_has_header(true)
            .map_parse_options(|p| p.with_separator(if ext == "tsv" { b'\t' } else { b',' }))
            .into_reader_with_file_handle(file)
            .finish(),
        other => {
            return Err(Error::Config(format!(
                "{}: unknown file type {other:?} (use .csv, .tsv, .jsonl, .json or .parquet)",
                path.display()
            )));
        }
    };
    df.map_err(polars_err(path))
}

/// A column as optional strings (numbers are written as text).
fn strings(path: &Path, df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let column = df.column(name).map_err(|_| Error::Polars {
        path: path.to_owned(),
        message: format!(
            "no column {name:?} (columns: {})",
            df.get_column_names()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let column = column.cast(&DataType::String).map_err(polars_err(path))?;
    let ca = column.str().map_err(polars_err(path))?;
    Ok(ca.iter().map(|v| v.map(str::to_owned)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn reads_the_original_layout_with_latin1_and_entities() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut bytes = b"\"0\",\"1\",\"Mon Apr 06 22:19:45 PDT 2009\",\"NO_QUERY\",\"u\",\"caf\xe9 &quot;bad&quot; day\"\n".to_vec();
        bytes.extend_from_slice(b"\"4\",\"2\",\"d\",\"NO_QUERY\",\"u\",\"good &amp; fun\"\n");
        bytes.extend_from_slice(b"\"2\",\"3\",\"d\",\"NO_QUERY\",\"u\",\"meh\"\n");
        let p = write(dir.path(), "s.csv", &bytes);
        let rows = read(&p, &ReadOptions::default()).expect("reads");
        assert_eq!(rows.texts, ["café \"bad\" day", "good & fun"]);
        assert_eq!(rows.labels, [Polarity::Negative, Polarity::Positive]);
        assert_eq!(rows.read, 3);
        assert_eq!(
            rows.rejected
                .get("neutral (dropped: keep_neutral is false)"),
            Some(&1)
        );
        let kept = read(
            &p,
            &ReadOptions {
                keep_neutral: true,
                unescape_html: false,
                ..ReadOptions::default()
            },
        )
        .expect("reads");
        assert_eq!(kept.texts[0], "café &quot;bad&quot; day");
        assert_eq!(kept.labels.len(), 3);
    }

    #[test]
    fn malformed_rows_name_their_line_or_are_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = "\"0\",\"1\",\"d\",\"q\",\"u\",\"fine\"\n";
        let short = "\"4\",\"2\",\"d\",\"q\",\"only five\"\n";
        let open = "\"4\",\"3\",\"d\",\"q\",\"u\",\"never closed\n";
        let p = write(
            dir.path(),
            "a.csv",
            format!("{ok}{ok}{short}{ok}").as_bytes(),
        );
        let err = read(&p, &ReadOptions::default()).expect_err("wrong field count");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: expected 6 fields, found 5 (set on_bad_row: skip to skip such rows)",
                p.display()
            )
        );
        let skip = ReadOptions {
            on_bad_row: OnBadRow::Skip,
            ..ReadOptions::default()
        };
        let rows = read(&p, &skip).expect("skips");
        assert_eq!(rows.texts.len(), 3);
        assert_eq!(rows.read, 4);
        assert_eq!(rows.rejected.get("malformed row (skipped)"), Some(&1));

        let p = write(dir.path(), "b.csv", format!("{ok}{open}{ok}").as_bytes());
        let err = read(&p, &ReadOptions::default()).expect_err("unterminated quote");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: unterminated quote", p.display())),
            "{err}"
        );
    }

    #[test]
    fn table_layout_maps_columns_and_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(dir.path(), "t.csv", b"tweet,stars\nlovely,5\nawful,1\n");
        let layout = Layout::Table {
            text: "tweet".into(),
            label: "stars".into(),
            values: BTreeMap::from([
                ("5".into(), Polarity::Positive),
                ("1".into(), Polarity::Negative),
            ]),
        };
        let rows = read(
            &p,
            &ReadOptions {
                layout: layout.clone(),
                encoding: Encoding::Utf8,
                ..ReadOptions::default()
            },
        )
        .expect("reads");
        assert_eq!(rows.texts, ["lovely", "awful"]);
        assert_eq!(rows.labels, [Polarity::Positive, Polarity::Negative]);
        let p = write(
            dir.path(),
            "t.jsonl",
            b"{\"tweet\": \"nice\", \"stars\": 5}\n{\"tweet\": \"bad\", \"stars\": 3}\n",
        );
        let err = read(
            &p,
            &ReadOptions {
                layout,
                ..ReadOptions::default()
            },
        )
        .expect_err("3 is not mapped");
        assert_eq!(
            err.to_string(),
            format!("{}: record 1: unknown label value \"3\"", p.display())
        );
    }
}

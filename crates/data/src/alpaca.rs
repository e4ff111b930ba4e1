//! Alpaca-format instruction data: reading, the prompt template, and label masking.
//!
//! Records are either single-turn `{instruction, input, output}` (the Stanford Alpaca
//! format; `input` may be empty or missing) or multi-turn `{turns: [{role, content}, …]}`
//! with `role` alternating `human` / `assistant`. A file is a JSON list or JSONL; records are
//! read with serde_json, so an error names the record's index.
//!
//! The text is the Stanford template. Labels are computed from character spans: the text is
//! built from segments marked trained or not, tokenized once as a whole (with offsets), and a
//! token is trained when its span overlaps a trained segment. So a marker that BPE merges
//! with the preceding text (`?\n\n### Response:` tokenizes differently from `### Response:`
//! alone) needs no searching for token sequences: the boundary is known in characters.

use std::path::Path;

use crate::error::{Error, Result, io};
use crate::tokenizer::{GPT2_EOS, Tok};

/// The preamble and markers of the Stanford Alpaca template.
pub const PREAMBLE_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n";
/// The preamble without an input.
pub const PREAMBLE_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";
/// Instruction marker.
pub const INSTRUCTION: &str = "### Instruction:";
/// Input marker.
pub const INPUT: &str = "### Input:";
/// Response marker.
pub const RESPONSE: &str = "### Response:";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Turn {
    /// `human` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

/// A record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Stanford Alpaca.
    Single {
        /// The task.
        instruction: String,
        /// Extra context (may be empty).
        input: String,
        /// The answer.
        output: String,
    },
    /// Alternating human / assistant turns, starting with human.
    Multi(Vec<Turn>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    instruction: Option<String>,
    #[serde(default)]
    input: Option<String>,
    output: Option<String>,
    turns: Option<Vec<Turn>>,
}

fn record(path: &Path, index: usize, raw: Raw) -> Result<Record> {
    let bad = |message: String| Error::BadRecord {
        path: path.to_owned(),
        index,
        message,
    };
    if let Some(turns) = raw.turns {
        if raw.instruction.is_some() || raw.output.is_some() {
            return Err(bad("has both `turns` and `instruction`/`output`".into()));
        }
        if turns.is_empty() {
            return Err(bad("`turns` is empty".into()));
        }
        for (i, t) in turns.iter().enumerate() {
            let expected = if i % 2 == 0 { "human" } else { "assistant" };
            if t.role != expected {
                return Err(bad(format!(
                    "turn {i} has role {:?}; roles must alternate human, assistant, … starting with human",
                    t.role
                )));
            }
        }
        return Ok(Record::Multi(turns));
    }
    let instruction = raw
        .instruction
        .ok_or_else(|| bad("has no `instruction`".into()))?;
    let output = raw.output.ok_or_else(|| bad("has no `output`".into()))?;
    Ok(Record::Single {
        instruction,
        input: raw.input.unwrap_or_default(),
        output,
    })
}

/// Reads a JSON list (`.json`) or JSON lines (`.jsonl`, or any file whose first
/// non-blank character is not `[`).
///
/// # Errors
/// Unreadable files, invalid JSON (with the record index), records without `output`.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    let raws: Vec<(usize, std::result::Result<Raw, serde_json::Error>)> =
        if text.trim_start().starts_with('[') {
            let values: Vec<serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| Error::BadRecord {
                    path: path.to_owned(),
                    index: 0,
                    message: format!("not a JSON list of records: {e}"),
                })?;
            values
                .into_iter()
                .map(serde_json::from_value)
                .enumerate()
                .collect()
        } else {
            serde_json::Deserializer::from_str(&text)
                .into_iter::<Raw>()
                .enumerate()
                .collect()
        };
    raws.into_iter()
        .map(|(i, raw)| {
            let raw = raw.map_err(|e| Error::BadRecord {
                path: path.to_owned(),
                index: i,
                message: e.to_string(),
            })?;
            record(path, i, raw)
        })
        .collect()
}

/// A piece of text and whether its tokens are trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// Trained (label = token) or masked (−100).
    pub trained: bool,
}

/// The Alpaca prompt for an instruction (and input, when not empty), up to and including
/// `### Response:`, exactly as the training template writes it: what generation continues.
pub fn prompt(instruction: &str, input: &str) -> String {
    let record = Record::Single {
        instruction: instruction.to_owned(),
        input: input.to_owned(),
        output: String::new(),
    };
    segments(&record, "")
        .into_iter()
        .next()
        .map(|s| s.text)
        .unwrap_or_default()
}

/// The template's segments for a record. Prompts (preamble, instruction, input, markers, human
/// turns) are untrained; responses and the end-of-text token after each are trained.
pub fn segments(record: &Record, eos: &str) -> Vec<Segment> {
    let seg = |text: String, trained: bool| Segment { text, trained };
    match record {
        Record::Single {
            instruction,
            input,
            output,
        } => {
            let prompt = if input.trim().is_empty() {
                format!("{PREAMBLE_NO_INPUT}{INSTRUCTION}\n{instruction}\n\n{RESPONSE}")
            } else {
                format!(
                    "{PREAMBLE_INPUT}{INSTRUCTION}\n{instruction}\n\n{INPUT}\n{input}\n\n{RESPONSE}"
                )
            };
            vec![seg(prompt, false), seg(format!("{output}{eos}"), true)]
        }
        Record::Multi(turns) => {
            let mut out = Vec::new();
            for (i, t) in turns.iter().enumerate() {
                if t.role == "human" {
                    let lead = if i == 0 { PREAMBLE_NO_INPUT } else { "\n\n" };
                    out.push(seg(
                        format!("{lead}{INSTRUCTION}\n{}\n\n{RESPONSE}", t.content),
                        false,
                    ));
                } else {
                    out.push(seg(format!("{}{eos}", t.content), true));
                }
            }
            out
        }
    }
}

/// How labels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Every token is trained.
    Full,
    /// Only response tokens (and their end-of-text) are trained; prompts are −100.
    Completion,
}

/// Token ids and labels of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels: the token id where trained, −100 elsewhere.
    pub labels: Vec<i32>,
    /// Whether it was cut to the maximum length.
    pub truncated: bool,
}

/// Tokenizes segments as one text and labels each token by the segment its span overlaps.
///
/// # Errors
/// When the tokenizer fails.
pub fn tokenize(
    tok: &Tok,
    segments: &[Segment],
    labels: Labels,
    max_length: Option<usize>,
) -> Result<Tokenized> {
    let mut text = String::new();
    let mut trained: Vec<(usize, usize)> = Vec::new();
    for s in segments {
        let start = text.len();
        text.push_str(&s.text);
        if s.trained {
            trained.push((start, text.len()));
        }
    }
    let (mut ids, offsets) = tok.encode_with_offsets(&text)?;
    let mut out: Vec<i32> = ids
        .iter()
        .zip(&offsets)
        .map(|(&id, &(a, b))| {
            let on = labels == Labels::Full || trained.iter().any(|&(s, e)| a < e && b > s);
            if on {
                i32::try_from(id).unwrap_or(i32::MAX)
            } else {
                -100
            }
        })
        .collect();
    let mut truncated = false;
    if let Some(max) = max_length
        && ids.len() > max
    {
        ids.truncate(max);
        out.truncate(max);
        truncated = true;
    }
    Ok(Tokenized {
        input_ids: ids,
        labels: out,
        truncated,
    })
}

/// The end-of-text string of a tokenizer: the `eos_token` its configuration names, else
/// GPT-2's `<|endoftext|>`.
pub fn eos(tok: &Tok) -> Result<String> {
    tok.eos_token().map(str::to_owned).ok_or_else(|| {
        Error::Config(format!(
            "tokenizer {} names no eos_token (tokenizer_config.json) and has no {GPT2_EOS} token",
            tok.origin.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_with_their_index() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.json");
        std::fs::write(
            &p,
            r#"[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "d"}]"#,
        )
        .expect("write");
        let err = read(&p).expect_err("record 1 has no output");
        assert_eq!(
            err.to_string(),
            format!("{}: record 1: has no `output`", p.display())
        );
        let p = dir.path().join("b.jsonl");
        std::fs::write(
            &p,
            "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"turns\": [{\"role\": \"human\", \"content\": \"x\"}, {\"role\": \"human\", \"content\": \"y\"}]}\n",
        )
        .expect("write");
        let err = read(&p).expect_err("roles do not alternate");
        assert!(
            err.to_string()
                .contains("record 1: turn 1 has role \"human\""),
            "{err}"
        );
    }

    #[test]
    fn single_turn_template() {
        let r = Record::Single {
            instruction: "Add.".into(),
            input: "1 and 2".into(),
            output: "3".into(),
        };
        let s = segments(&r, "<E>");
        assert_eq!(
            s[0].text,
            format!(
                "{PREAMBLE_INPUT}### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:"
            )
        );
        assert_eq!(
            s[1],
            Segment {
                text: "3<E>".into(),
                trained: true
            }
        );
    }
}

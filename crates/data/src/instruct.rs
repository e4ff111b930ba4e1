//! Instruction and chat data as `data.instruct` reads it: records from JSON, JSONL, CSV or
//! parquet with a column mapping, rendered by a template into trained and untrained text.
//!
//! A record is one of (by the first of these columns it has, after mapping):
//! - `turns`: a conversation, a list of `{role, content}` (`human`/`user`, `assistant`,
//!   `system`), or that list as JSON text in a CSV cell;
//! - `text`: raw text with markers (the research notebook's `"\n\n### Human: …\n\n###
//!   Assistant: …"`), masked by searching for the markers' token ids;
//! - `instruction` (+ `input`, `system`) and `output`: one exchange.
//!
//! Templates ([`Template`]): presets `alpaca`, `human-assistant`, `chatml`, `chat_template`
//! (the model's Jinja template), `raw` (text as it is, with markers), or a custom template
//! written in YAML ([`Custom`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::alpaca::{self, Record, Segment, Turn};
use crate::chat_template::{ChatTemplate, Message};
use crate::error::{Error, Result, io};
use crate::template;

/// A source record: column name → value.
pub type Row = Map<String, Value>;

/// Reads records from `.json` (a list), `.jsonl`/`.ndjson`, `.csv`/`.tsv` (with a header) or
/// `.parquet`. Tables are read with polars and handed over as JSON rows, so nested parquet
/// columns (a list of turns) arrive as lists.
///
/// # Errors
/// Unreadable files, invalid JSON (with the record's index), non-object records.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let values: Vec<(usize, std::result::Result<Value, String>)> = match ext.as_str() {
        "csv" | "tsv" | "parquet" => table_rows(path)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i, Ok(v)))
            .collect(),
        _ => {
            let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
            if text.trim_start().starts_with('[') {
                let list: Vec<Value> =
                    serde_json::from_str(&text).map_err(|e| Error::BadRecord {
                        path: path.to_owned(),
                        index: 0,
                        message: format!("not a JSON list of records: {e}"),
                    })?;
                list.into_iter().map(Ok).enumerate().collect()
            } else {
                serde_json::Deserializer::from_str(&text)
                    .into_iter::<Value>()
                    .map(|r| r.map_err(|e| e.to_string()))
                    .enumerate()
                    .collect()
            }
        }
    };
    values
        .into_iter()
        .map(|(index, v)| match v {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(Error::BadRecord {
                path: path.to_owned(),
                index,
                message: format!("is not an object but {other}"),
            }),
            Err(message) => Err(Error::BadRecord {
                path: path.to_owned(),
                index,
                message,
            }),
        })
        .collect()
}

fn table_rows(path: &Path) -> Result<Vec<Value>> {
    use polars::prelude::{JsonFormat, JsonWriter, SerWriter};
    let mut df = crate::sentiment::read_table(path)?;
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf)
        .with_json_format(JsonFormat::JsonLines)
        .finish(&mut df)
        .map_err(|e| Error::Polars {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    serde_json::Deserializer::from_slice(&buf)
        .into_iter::<Value>()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Polars {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// A record as a template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// One exchange: `instruction`, `output` and any other fields (`input`, `system`, …)
    /// a custom template names.
    Fields(BTreeMap<String, String>),
    /// Turns, roles as written (`human`/`user`, `assistant`, `system`).
    Turns(Vec<Turn>),
    /// Raw text with markers.
    Text(String),
}

impl Conversation {
    /// Reads record `index` of `path` through `columns` (kiln's name → the source's column).
    ///
    /// # Errors
    /// [`Error::BadRecord`] when the record has none of `turns`, `text`, `output`, or a
    /// value of the wrong type.
    pub fn of(
        row: &Row,
        columns: &BTreeMap<String, String>,
        path: &Path,
        index: usize,
    ) -> Result<Self> {
        let bad = |message: String| Error::BadRecord {
            path: path.to_owned(),
            index,
            message,
        };
        let column = |name: &str| columns.get(name).map_or(name, String::as_str).to_owned();
        let get = |name: &str| row.get(&column(name)).filter(|v| !v.is_null());
        if let Some(turns) = get("turns") {
            return turns_of(turns)
                .map(Self::Turns)
                .map_err(|m| bad(format!("column {:?}: {m}", column("turns"))));
        }
        if let Some(text) = get("text") {
            return match text {
                Value::String(s) => Ok(Self::Text(s.clone())),
                other => Err(bad(format!(
                    "column {:?} is not text but {other}",
                    column("text")
                ))),
            };
        }
        if get("output").is_none() {
            let have: Vec<&String> = row.keys().collect();
            return Err(bad(format!(
                "has no {:?}, {:?} or {:?} column (it has {have:?}; map yours with `columns`)",
                column("turns"),
                column("text"),
                column("output")
            )));
        }
        // Every column, under kiln's names where mapped.
        let mut fields = BTreeMap::new();
        let renamed: BTreeMap<&str, &str> = columns
            .iter()
            .map(|(k, v)| (v.as_str(), k.as_str()))
            .collect();
        for (k, v) in row {
            let name = renamed.get(k.as_str()).copied().unwrap_or(k);
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                other => {
                    return Err(bad(format!("column {k:?} is not text but {other}")));
                }
            };
            fields.insert(name.to_owned(), text);
        }
        Ok(Self::Fields(fields))
    }

    /// The conversation as turns: one exchange is a user turn (instruction, then the input
    /// after a blank line when there is one; a `system` field first) and an assistant turn.
    fn turns(&self) -> Option<Vec<Turn>> {
        match self {
            Self::Turns(t) => Some(t.clone()),
            Self::Text(_) => None,
            Self::Fields(f) => {
                let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
                let mut user = field("instruction").to_owned();
                if !field("input").trim().is_empty() {
                    user = format!("{user}\n\n{}", field("input"));
                }
                let mut turns = Vec::new();
                if !field("system").is_empty() {
                    turns.push(turn("system", field("system")));
                }
                turns.push(turn("human", &user));
                turns.push(turn("assistant", field("output")));
                Some(turns)
            }
        }
    }
}

fn turn(role: &str, content: &str) -> Turn {
    Turn {
        role: role.to_owned(),
        content: content.to_owned(),
    }
}

fn turns_of(value: &Value) -> std::result::Result<Vec<Turn>, String> {
    let parsed;
    let value = match value {
        Value::String(s) => {
            parsed =
                serde_json::from_str::<Value>(s).map_err(|e| format!("not JSON turns: {e}"))?;
            &parsed
        }
        v => v,
    };
    let list = value
        .as_array()
        .ok_or_else(|| format!("is not a list of turns but {value}"))?;
    if list.is_empty() {
        return Err("has no turns".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
            let role = s("role").ok_or_else(|| format!("turn {i} has no text `role`"))?;
            let role = match role.as_str() {
                "human" | "user" => "human",
                "assistant" | "system" => role.as_str(),
                other => {
                    return Err(format!(
                        "turn {i} has role {other:?} (use human or user, assistant, system)"
                    ));
                }
            };
            let content = s("content").ok_or_else(|| format!("turn {i} has no text `content`"))?;
            Ok(turn(role, &content))
        })
        .collect()
}

/// One piece of a custom template: text with `{field}` placeholders (`{bos}` and `{eos}`
/// are the tokenizer's tokens; `{{` and `}}` are braces) and whether it is trained.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// The text.
    pub text: String,
    /// Whether its tokens are trained.
    #[serde(default)]
    pub trained: bool,
}

/// A template written in YAML:
///
/// ```yaml
/// template:
///   segments:                    # one exchange: fields by name
///     - {text: "{bos}Q: {instruction}\nA:"}
///     - {text: " {output}{eos}", trained: true}
///   turns:                       # conversations: pieces per role, `{content}` the turn
///     human: [{text: "User: {content}\n"}]
///     assistant: [{text: "Bot:"}, {text: " {content}{eos}", trained: true}]
///   prefix: "{bos}"              # before a conversation (untrained)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custom {
    /// For single exchanges.
    #[serde(default)]
    pub segments: Vec<Piece>,
    /// For conversations: role → pieces.
    #[serde(default)]
    pub turns: BTreeMap<String, Vec<Piece>>,
    /// Text before a conversation's first turn.
    #[serde(default)]
    pub prefix: String,
}

/// How records become text.
#[derive(Debug)]
pub enum Template {
    /// The Stanford Alpaca template.
    Alpaca,
    /// The research notebook's `### Human:` / `### Assistant:` format.
    HumanAssistant,
    /// `<|im_start|>role\n…<|im_end|>\n`.
    ChatMl,
    /// The model's own Jinja template.
    Chat(Box<ChatTemplate>),
    /// Raw text as it is; completion labels by marker search.
    Raw,
    /// Written in YAML.
    Custom(Custom),
}

/// The names a `template` param may take.
pub const PRESETS: &[&str] = &[
    "alpaca",
    "human-assistant",
    "chatml",
    "chat_template",
    "raw",
];

impl Template {
    /// Parses a `template` param: a preset name or a custom template. `chat_template` reads
    /// the Jinja template from `tokenizer_config` (a file or directory).
    ///
    /// # Errors
    /// An unknown name, a malformed custom template, or a missing chat template.
    pub fn parse(value: &Value, tokenizer_config: Option<&Path>) -> Result<Self> {
        match value {
            Value::String(name) => match name.as_str() {
                "alpaca" => Ok(Self::Alpaca),
                "human-assistant" => Ok(Self::HumanAssistant),
                "chatml" => Ok(Self::ChatMl),
                "raw" => Ok(Self::Raw),
                "chat_template" => {
                    let at = tokenizer_config.ok_or_else(|| {
                        Error::Config(
                            "template chat_template needs the tokenizer's directory".into(),
                        )
                    })?;
                    Ok(Self::Chat(Box::new(ChatTemplate::from_tokenizer_config(
                        at,
                    )?)))
                }
                other => Err(Error::Config(format!(
                    "template {other:?} is not one of {} (or a custom template: a map with segments and/or turns)",
                    PRESETS.join(", ")
                ))),
            },
            Value::Object(_) => {
                let custom: Custom = serde_json::from_value(value.clone())
                    .map_err(|e| Error::Config(format!("custom template: {e}")))?;
                if custom.segments.is_empty() && custom.turns.is_empty() {
                    return Err(Error::Config(
                        "custom template: give `segments` (single exchanges) and/or `turns` (conversations)".into(),
                    ));
                }
                Ok(Self::Custom(custom))
            }
            other => Err(Error::Config(format!(
                "template must be a preset name or a map, not {other}"
            ))),
        }
    }

    /// The markers raw `text` records are masked by: (response, instruction). `raw` takes
    /// them from params; `human-assistant` has its own (`### Assistant:` then BOS, and
    /// `\n\n### Human:`).
    #[must_use]
    pub fn markers(&self, bos: &str) -> Option<(String, Option<String>)> {
        match self {
            Self::HumanAssistant => Some((
                format!("{}{bos}", template::ASSISTANT),
                Some(template::HUMAN.to_owned()),
            )),
            _ => None,
        }
    }
}

/// The BOS and EOS text records are rendered with: the tokenizer's configured tokens (BOS
/// falling back to EOS, as GPT-2 uses `<|endoftext|>` for both).
///
/// # Errors
/// A tokenizer that names no EOS and has no `<|endoftext|>`.
pub fn bos_eos(tok: &crate::tokenizer::Tok) -> Result<(String, String)> {
    let eos = alpaca::eos(tok)?;
    let bos = tok.specials().bos.clone().unwrap_or_else(|| eos.clone());
    Ok((bos, eos))
}

/// A record rendered: segments (labels by character span) or raw text with markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Trained and untrained text.
    Segments(Vec<Segment>),
    /// Text whose labels come from a marker search.
    Marked(String),
}

/// Renders a record. `bos`/`eos` are the tokenizer's tokens as text.
///
/// # Errors
/// A record this template cannot render (a raw text for a segment template, a custom
/// template's unknown field, a role it has no pieces for, a template error).
pub fn render(t: &Template, c: &Conversation, bos: &str, eos: &str) -> Result<Rendered> {
    let need_turns = || {
        c.turns().ok_or_else(|| {
            Error::Config("a raw `text` record needs template human-assistant or raw".into())
        })
    };
    Ok(Rendered::Segments(match t {
        Template::Raw => match c {
            Conversation::Text(s) => return Ok(Rendered::Marked(s.clone())),
            _ => {
                return Err(Error::Config(
                    "template raw reads a `text` column; this record has none".into(),
                ));
            }
        },
        Template::HumanAssistant => match c {
            Conversation::Text(raw) => {
                return Ok(Rendered::Marked(template::notebook_text(raw, bos, eos)));
            }
            _ => {
                let turns = need_turns()?;
                if turns.iter().any(|t| t.role == "system") {
                    return Err(Error::Config(
                        "template human-assistant has no system turn".into(),
                    ));
                }
                template::human_assistant(&turns, bos, eos)
            }
        },
        Template::Alpaca => match c {
            Conversation::Fields(f) => {
                let field = |k: &str| f.get(k).cloned().unwrap_or_default();
                alpaca::segments(
                    &Record::Single {
                        instruction: field("instruction"),
                        input: field("input"),
                        output: field("output"),
                    },
                    eos,
                )
            }
            _ => alpaca::segments(&Record::Multi(need_turns()?), eos),
        },
        Template::ChatMl => template::chatml(&need_turns()?),
        Template::Chat(chat) => chat.segments(&messages(&need_turns()?), bos, eos)?,
        Template::Custom(custom) => custom_segments(custom, c, bos, eos)?,
    }))
}

/// The text a model answers from and the reference answer: the record rendered up to its
/// last assistant answer. Raw `text` records have no separate answer and are refused.
///
/// # Errors
/// As [`render`], and records without an assistant answer.
pub fn prompt_and_reference(
    t: &Template,
    c: &Conversation,
    bos: &str,
    eos: &str,
) -> Result<(String, String)> {
    if let (Template::HumanAssistant, Conversation::Text(raw)) = (t, c) {
        // The notebook's raw text: the answer is what follows the last assistant marker.
        let at = raw.rfind(template::ASSISTANT).ok_or_else(|| {
            Error::Config(format!("the text has no {:?} marker", template::ASSISTANT))
        })? + template::ASSISTANT.len();
        let prompt = template::notebook_text(&raw[..at], bos, eos);
        let prompt = prompt.strip_suffix(eos).unwrap_or(&prompt).to_owned();
        return Ok((prompt, raw[at..].trim().to_owned()));
    }
    let turns = c.turns().ok_or_else(|| {
        Error::Config(
            "a raw `text` record has no separate reference answer (except with template human-assistant)".into(),
        )
    })?;
    let last = turns
        .iter()
        .rposition(|t| t.role == "assistant")
        .ok_or_else(|| Error::Config("the record has no assistant answer".into()))?;
    let reference = turns[last].content.clone();
    let prompt = match t {
        Template::Chat(chat) => chat.render(&messages(&turns[..last]), true, bos, eos)?,
        _ => {
            let Rendered::Segments(segments) = render(t, c, bos, eos)? else {
                return Err(Error::Config("a raw record has no separate answer".into()));
            };
            let cut = segments
                .iter()
                .rposition(|s| s.trained)
                .ok_or_else(|| Error::Config("the template trains nothing".into()))?;
            segments[..cut].iter().map(|s| s.text.as_str()).collect()
        }
    };
    Ok((prompt, reference))
}

fn messages(turns: &[Turn]) -> Vec<Message> {
    turns
        .iter()
        .map(|t| Message {
            role: if t.role == "human" { "user" } else { &t.role }.to_owned(),
            content: t.content.clone(),
        })
        .collect()
}

fn custom_segments(
    custom: &Custom,
    c: &Conversation,
    bos: &str,
    eos: &str,
) -> Result<Vec<Segment>> {
    let mut vars: BTreeMap<String, String> =
        BTreeMap::from([("bos".into(), bos.into()), ("eos".into(), eos.into())]);
    let mut out = Vec::new();
    match c {
        Conversation::Fields(f) if !custom.segments.is_empty() => {
            vars.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
            for p in &custom.segments {
                out.push(Segment {
                    text: fill(&p.text, &vars)?,
                    trained: p.trained,
                });
            }
        }
        Conversation::Text(_) => {
            return Err(Error::Config(
                "a custom template renders fields or turns, not a raw `text` column".into(),
            ));
        }
        _ => {
            if custom.turns.is_empty() {
                return Err(Error::Config(
                    "the custom template has no `turns` for conversations".into(),
                ));
            }
            let turns = c.turns().unwrap_or_default();
            out.push(Segment {
                text: fill(&custom.prefix, &vars)?,
                trained: false,
            });
            for t in &turns {
                let pieces = custom
                    .turns
                    .get(&t.role)
                    .or_else(|| {
                        (t.role == "human")
                            .then(|| custom.turns.get("user"))
                            .flatten()
                    })
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "the custom template has no pieces for role {:?}",
                            t.role
                        ))
                    })?;
                vars.insert("content".into(), t.content.clone());
                for p in pieces {
                    out.push(Segment {
                        text: fill(&p.text, &vars)?,
                        trained: p.trained,
                    });
                }
            }
        }
    }
    out.retain(|s| !s.text.is_empty());
    Ok(out)
}

/// Fills `{name}` placeholders; `{{`/`}}` are literal braces.
fn fill(text: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            out.push_str(&tail[..1]);
            rest = after;
            continue;
        }
        if tail.starts_with('}') {
            return Err(Error::Config(format!(
                "template text {text:?}: a lone `}}` (write `}}}}` for a brace)"
            )));
        }
        let end = tail
            .find('}')
            .ok_or_else(|| Error::Config(format!("template text {text:?}: an unclosed `{{`")))?;
        let name = &tail[1..end];
        let value = vars.get(name).ok_or_else(|| {
            Error::Config(format!(
                "template text {text:?} names {{{name}}}, which this record does not have (it has {})",
                vars.keys().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
            ))
        })?;
        out.push_str(value);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Conversation {
        Conversation::Fields(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn joined(r: &Rendered) -> (String, Vec<String>) {
        match r {
            Rendered::Segments(s) => (
                s.iter().map(|s| s.text.as_str()).collect(),
                s.iter()
                    .filter(|s| s.trained)
                    .map(|s| s.text.clone())
                    .collect(),
            ),
            Rendered::Marked(t) => (t.clone(), Vec::new()),
        }
    }

    #[test]
    fn columns_are_mapped_and_the_record_kind_is_found() {
        let row: Row =
            serde_json::from_str(r#"{"q": "dog?", "a": "perro", "n": 3}"#).expect("json");
        let columns = BTreeMap::from([
            ("instruction".to_owned(), "q".to_owned()),
            ("output".to_owned(), "a".to_owned()),
        ]);
        let c = Conversation::of(&row, &columns, Path::new("f.json"), 0).expect("fields");
        assert_eq!(
            c,
            fields(&[("instruction", "dog?"), ("n", "3"), ("output", "perro")])
        );
        let err = Conversation::of(&row, &BTreeMap::new(), Path::new("f.json"), 4)
            .expect_err("no output column");
        assert!(
            err.to_string()
                .contains("record 4: has no \"turns\", \"text\" or \"output\""),
            "{err}"
        );
        let row: Row = serde_json::from_str(
            r#"{"conv": "[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]"}"#,
        )
        .expect("json");
        let columns = BTreeMap::from([("turns".to_owned(), "conv".to_owned())]);
        let c =
            Conversation::of(&row, &columns, Path::new("f.csv"), 0).expect("turns as JSON text");
        assert_eq!(
            c,
            Conversation::Turns(vec![turn("human", "hi"), turn("assistant", "yo")])
        );
    }

    #[test]
    fn presets_render_one_exchange() {
        let c = fields(&[
            ("instruction", "How do you say \"dog\" in Spanish?"),
            ("output", "perro"),
        ]);
        let (text, trained) =
            joined(&render(&Template::HumanAssistant, &c, "<s>", "</s>").expect("renders"));
        assert_eq!(
            text,
            "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant:<s> perro</s>"
        );
        assert_eq!(trained, [" perro</s>"]);
        let (text, trained) = joined(&render(&Template::ChatMl, &c, "", "").expect("renders"));
        assert!(
            text.starts_with("<|im_start|>user\nHow do you say"),
            "{text}"
        );
        assert_eq!(trained, ["perro<|im_end|>"]);
        let (prompt, reference) =
            prompt_and_reference(&Template::HumanAssistant, &c, "<s>", "</s>").expect("prompt");
        assert_eq!(
            prompt,
            "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant:<s>"
        );
        assert_eq!(reference, "perro");
        // The notebook's raw text gives the same prompt and reference.
        let raw = Conversation::Text(
            "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant: perro".into(),
        );
        assert_eq!(
            prompt_and_reference(&Template::HumanAssistant, &raw, "<s>", "</s>").expect("prompt"),
            (prompt, reference)
        );
    }

    #[test]
    fn custom_templates_fill_fields_and_turns() {
        let t = Template::parse(
            &serde_json::json!({
                "segments": [{"text": "{bos}Q: {instruction} {{x}}\nA:"}, {"text": " {output}{eos}", "trained": true}],
                "turns": {"human": [{"text": "U: {content}\n"}], "assistant": [{"text": "B:"}, {"text": " {content}{eos}", "trained": true}]},
                "prefix": "{bos}"
            }),
            None,
        )
        .expect("parses");
        let c = fields(&[("instruction", "hi"), ("output", "yo")]);
        let (text, trained) = joined(&render(&t, &c, "<s>", "</s>").expect("renders"));
        assert_eq!(text, "<s>Q: hi {x}\nA: yo</s>");
        assert_eq!(trained, [" yo</s>"]);
        let conv = Conversation::Turns(vec![
            turn("human", "a"),
            turn("assistant", "b"),
            turn("human", "c"),
            turn("assistant", "d"),
        ]);
        let (text, trained) = joined(&render(&t, &conv, "<s>", "</s>").expect("renders"));
        assert_eq!(text, "<s>U: a\nB: b</s>U: c\nB: d</s>");
        assert_eq!(trained, [" b</s>", " d</s>"]);
        let missing = fields(&[("output", "yo")]);
        let err = render(&t, &missing, "<s>", "</s>").expect_err("no instruction");
        assert!(err.to_string().contains("names {instruction}"), "{err}");
        for bad in [
            serde_json::json!("alpacca"),
            serde_json::json!({"segmentz": []}),
            serde_json::json!({}),
        ] {
            assert!(Template::parse(&bad, None).is_err(), "{bad}");
        }
    }
}

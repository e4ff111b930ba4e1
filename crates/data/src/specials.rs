//! What a model directory says about its tokenizer beyond `tokenizer.json`: the special
//! tokens `tokenizer_config.json` and `special_tokens_map.json` name (BOS, EOS, padding,
//! unknown), and the `add_prefix_space` option applied to the pre-tokenizer.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The special tokens a tokenizer's configuration names, as text (`"<s>"`, `"</s>"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Specials {
    /// Beginning of sequence (`bos_token`).
    pub bos: Option<String>,
    /// End of sequence (`eos_token`).
    pub eos: Option<String>,
    /// Padding (`pad_token`).
    pub pad: Option<String>,
    /// Unknown (`unk_token`).
    pub unk: Option<String>,
}

/// The files read, in order: a value in the first wins.
pub const FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// The file kiln writes beside a `tokenizer.json` when the tokenizer names special tokens.
pub const MAP_FILE: &str = "special_tokens_map.json";

impl Specials {
    /// Reads [`FILES`] in `dir` (those present). A token is a string or an object with a
    /// `content` string (`AddedToken`'s form); `null` means none.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file when one is not JSON or a token is neither form.
    pub fn read(dir: &Path) -> Result<Self> {
        let mut specials = Self::default();
        for name in FILES {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let bad = |message: String| Error::Tokenizer {
                path: path.clone(),
                message,
            };
            let text = std::fs::read(&path).map_err(crate::error::io("cannot read", &path))?;
            let json: Value =
                serde_json::from_slice(&text).map_err(|e| bad(format!("not a JSON file: {e}")))?;
            for (key, slot) in [
                ("bos_token", &mut specials.bos),
                ("eos_token", &mut specials.eos),
                ("pad_token", &mut specials.pad),
                ("unk_token", &mut specials.unk),
            ] {
                if slot.is_none() {
                    *slot = token_text(&json[key]).map_err(|m| bad(format!("{key}: {m}")))?;
                }
            }
        }
        Ok(specials)
    }

    /// Whether no token is named.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The `special_tokens_map.json` text naming these tokens.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (key, value) in [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
            ("unk_token", &self.unk),
        ] {
            if let Some(v) = value {
                map.insert(key.into(), Value::String(v.clone()));
            }
        }
        let mut text = serde_json::to_string_pretty(&Value::Object(map)).unwrap_or_default();
        text.push('\n');
        text
    }
}

fn token_text(v: &Value) -> std::result::Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err("an object without a \"content\" string".into()),
        },
        other => Err(format!("expected a string or an object, found {other}")),
    }
}

/// Sets `add_prefix_space` in a `tokenizer.json` value, as Hugging Face's tokenizers apply
/// the option: a `ByteLevel` pre-tokenizer's flag (GPT-2, BLOOM, Qwen2); a `Metaspace`
/// pre-tokenizer's and decoder's `prepend_scheme` (`first` or `never`, Llama-family
/// SentencePiece ones); a `Prepend("▁")` normalizer (older Llama ones) kept or dropped.
///
/// # Errors
/// When the tokenizer has none of these: the option would silently do nothing.
pub fn set_add_prefix_space(json: &mut Value, on: bool) -> std::result::Result<(), String> {
    let mut found = false;
    visit(json.get_mut("pre_tokenizer"), "pretokenizers", &mut |p| {
        match p["type"].as_str() {
            Some("ByteLevel") => p["add_prefix_space"] = on.into(),
            Some("Metaspace") => p["prepend_scheme"] = prepend(on),
            _ => return,
        }
        found = true;
    });
    visit(json.get_mut("decoder"), "decoders", &mut |d| {
        if d["type"] == "Metaspace" {
            d["prepend_scheme"] = prepend(on);
        }
    });
    // `get_mut`, not `[]`: indexing a null mutably turns it into an object.
    let is_prepend = |n: &Value| n["type"] == "Prepend" && n["prepend"] == "▁";
    let Some(normalizer) = json.get_mut("normalizer") else {
        return done(found);
    };
    if is_prepend(normalizer) {
        found = true;
        if !on {
            *normalizer = Value::Null;
        }
    } else if let Some(list) = normalizer
        .get_mut("normalizers")
        .and_then(Value::as_array_mut)
    {
        if list.iter().any(is_prepend) {
            found = true;
        }
        if !on {
            list.retain(|n| !is_prepend(n));
        }
    }
    done(found)
}

fn done(found: bool) -> std::result::Result<(), String> {
    if found {
        Ok(())
    } else {
        Err("add_prefix_space applies to a ByteLevel or Metaspace pre-tokenizer or a Prepend(\"▁\") normalizer, and this tokenizer has none".into())
    }
}

fn prepend(on: bool) -> Value {
    Value::String(if on { "first" } else { "never" }.into())
}

/// Calls `f` on `v` and, for a `Sequence`, on each member of `v[list]`.
fn visit(v: Option<&mut Value>, list: &str, f: &mut impl FnMut(&mut Value)) {
    let Some(v) = v.filter(|v| v.is_object()) else {
        return;
    };
    if v["type"] == "Sequence" {
        for member in v
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            f(member);
        }
    } else {
        f(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_are_strings_or_added_token_objects_and_the_first_file_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null}"#,
        )
        .expect("writes");
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"eos_token": "<other>", "pad_token": "<pad>"}"#,
        )
        .expect("writes");
        let s = Specials::read(dir.path()).expect("reads");
        assert_eq!(s.bos.as_deref(), Some("<s>"));
        assert_eq!(s.eos.as_deref(), Some("</s>"));
        assert_eq!(s.pad.as_deref(), Some("<pad>"));
        assert_eq!(s.unk, None);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": 7}"#,
        )
        .expect("writes");
        let err = Specials::read(dir.path())
            .expect_err("a bad token")
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("eos_token"),
            "{err}"
        );
    }

    #[test]
    fn add_prefix_space_sets_byte_level_and_metaspace_and_refuses_other_tokenizers() {
        let mut bl = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split"}, {"type": "ByteLevel", "add_prefix_space": false}]}});
        set_add_prefix_space(&mut bl, true).expect("byte-level");
        assert_eq!(
            bl["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"],
            true
        );
        let mut ms = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"},
                            "decoder": {"type": "Metaspace", "prepend_scheme": "first"}});
        set_add_prefix_space(&mut ms, false).expect("metaspace");
        assert_eq!(ms["pre_tokenizer"]["prepend_scheme"], "never");
        assert_eq!(ms["decoder"]["prepend_scheme"], "never");
        let mut old = json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace"}]}});
        set_add_prefix_space(&mut old, false).expect("prepend");
        assert_eq!(
            old["normalizer"]["normalizers"]
                .as_array()
                .expect("a list")
                .len(),
            1
        );
        let mut none = json!({"pre_tokenizer": {"type": "Whitespace"}});
        assert!(set_add_prefix_space(&mut none, true).is_err());
    }
}

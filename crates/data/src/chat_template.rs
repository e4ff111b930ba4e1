//! A model's own chat template: the Jinja `chat_template` of its `tokenizer_config.json`,
//! rendered with `minijinja` the way transformers' `apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`, the tokenizer's
//! special tokens as variables).
//!
//! Which text is trained: for every assistant turn, the conversation up to it is rendered with
//! `add_generation_prompt` (the prompt the model would answer) and the conversation through
//! it without; the difference is the answer as the template writes it (its end-of-turn token
//! included, trailing whitespace left untrained). A template that does not render an earlier
//! part of a conversation as a prefix of the whole cannot be masked this way and is refused.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};

use crate::alpaca::Segment;
use crate::error::{Error, Result, io};
use crate::template::push;

/// One message, with Hugging Face's role names (`system`, `user`, `assistant`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from, for errors.
    pub origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source` (Jinja text); `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Config`] on a syntax error.
    pub fn new(source: &str, origin: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| Error::Config(format!("{origin}: chat_template: {e:#}")))?;
        Ok(Self {
            env,
            origin: origin.to_owned(),
        })
    }

    /// Reads the `chat_template` of a `tokenizer_config.json` (a file, or a directory holding
    /// one). A list of named templates uses the one named `default`.
    ///
    /// # Errors
    /// An unreadable file, or one without a chat template.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer_config.json")
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file).map_err(io("cannot read", &file))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
        let source = match json.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{}: chat_template lists no template named \"default\"",
                        file.display()
                    ))
                })?,
            _ => {
                return Err(Error::Config(format!(
                    "{}: has no chat_template (the model ships no chat format: use a preset or a custom template)",
                    file.display()
                )));
            }
        };
        Self::new(&source, &file.display().to_string())
    }

    /// Renders `messages` as transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…)` does with these special tokens.
    ///
    /// # Errors
    /// A template error (including the template's own `raise_exception`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos: &str,
        eos: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Config(format!("{}: {e:#}", self.origin)))?;
        template
            .render(context! {
                messages => messages
                    .iter()
                    .map(|m| Value::from_pairs([
                        ("role", Value::from(m.role.as_str())),
                        ("content", Value::from(m.content.as_str())),
                    ]))
                    .collect::<Value>(),
                add_generation_prompt => add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            })
            .map_err(|e| Error::Config(format!("{}: chat_template: {e:#}", self.origin)))
    }

    /// The rendered conversation as segments: each assistant answer (as the template writes
    /// it) trained, everything else not.
    ///
    /// # Errors
    /// Template errors, or a template that rewrites earlier turns as the conversation grows.
    pub fn segments(&self, messages: &[Message], bos: &str, eos: &str) -> Result<Vec<Segment>> {
        let mut out: Vec<Segment> = Vec::new();
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..i], true, bos, eos)?;
            let through = self.render(&messages[..=i], false, bos, eos)?;
            let (Some(new_prompt), Some(answer)) = (
                prompt.strip_prefix(done.as_str()),
                through.strip_prefix(prompt.as_str()),
            ) else {
                return Err(self.not_incremental(i));
            };
            let kept = answer.trim_end();
            push(&mut out, new_prompt, false);
            push(&mut out, kept, true);
            push(&mut out, &answer[kept.len()..], false);
            done = through;
        }
        let all = self.render(messages, false, bos, eos)?;
        let rest = all
            .strip_prefix(done.as_str())
            .ok_or_else(|| self.not_incremental(messages.len()))?;
        push(&mut out, rest, false);
        Ok(out)
    }

    fn not_incremental(&self, turn: usize) -> Error {
        Error::Config(format!(
            "{}: the chat template does not render the conversation before turn {turn} as a prefix of the whole, so its answers cannot be located for masking (use labels: full or another template)",
            self.origin
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<Message> {
        pairs
            .iter()
            .map(|(r, c)| Message {
                role: (*r).into(),
                content: (*c).into(),
            })
            .collect()
    }

    #[test]
    fn trims_blocks_like_transformers_and_masks_answers() {
        // Whitespace after a block tag is dropped (trim_blocks), before it too (lstrip_blocks).
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.role == 'user' %}\nU: {{ m.content | trim }}\n  {% else %}\nA: {{ m.content }}{{ eos_token }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}",
            "test",
        )
        .expect("compiles");
        let m = msgs(&[("user", " hi "), ("assistant", "hello")]);
        assert_eq!(
            t.render(&m, false, "<s>", "</s>").expect("renders"),
            "U: hi\nA: hello</s>\n"
        );
        let s = t.segments(&m, "<s>", "</s>").expect("segments");
        let trained: Vec<&str> = s
            .iter()
            .filter(|s| s.trained)
            .map(|s| s.text.as_str())
            .collect();
        // With add_generation_prompt the prompt ends "A:"; the answer is " hello</s>".
        assert_eq!(trained, [" hello</s>"]);
        assert_eq!(
            s.iter().map(|s| s.text.as_str()).collect::<String>(),
            "U: hi\nA: hello</s>\n"
        );
    }

    #[test]
    fn raise_exception_and_python_methods_work() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}",
            "test",
        )
        .expect("compiles");
        assert_eq!(
            t.render(&msgs(&[("user", " x ")]), false, "", "")
                .expect("renders"),
            "X"
        );
        let err = t
            .render(&msgs(&[("assistant", "x")]), false, "", "")
            .expect_err("raises");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }
}

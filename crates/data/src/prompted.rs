//! A labelled row rendered as language-model text through a template such as
//! `"{text} I feel{label}"`, so that `train.lm` can teach a model the prompted task: after a
//! text and the prompt, the label token.
//!
//! The pieces are tokenized one by one and joined (the text's ids, then each literal's, then
//! the label token's id), which is exactly the sequence a teacher reads in
//! `train.internalize` and `eval.sentiment` with `prompt` (the text's ids followed by the
//! prompt's), ending in the label token the classifier is scored on.

use crate::error::{Error, Result};
use crate::tokenizer::Tok;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The row's text.
    Text,
    /// The row's label token.
    Label,
    /// Literal text between placeholders.
    Literal(String),
}

/// A parsed template: `{text}` once, `{label}` once after it, literals anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    /// The template as written.
    pub source: String,
    /// Its pieces in order.
    pub pieces: Vec<Piece>,
}

impl PromptTemplate {
    /// Parses `template`.
    ///
    /// # Errors
    /// [`Error::Config`] when `{text}` or `{label}` is missing or repeated, `{label}` comes
    /// before `{text}`, a placeholder is unknown, or the literal right before `{label}` ends
    /// in whitespace (label tokens such as `" good"` carry their own space).
    pub fn parse(template: &str) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("template {template:?}: {m}"));
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad("an unclosed `{`".into()))?;
            pieces.push(match &rest[open + 1..open + close] {
                "text" => Piece::Text,
                "label" => Piece::Label,
                other => {
                    return Err(bad(format!(
                        "unknown placeholder {{{other}}} (use {{text}} and {{label}})"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let at = |p: &Piece| pieces.iter().position(|q| q == p);
        let count = |p: &Piece| pieces.iter().filter(|&q| q == p).count();
        if count(&Piece::Text) != 1 || count(&Piece::Label) != 1 {
            return Err(bad("needs {text} once and {label} once".into()));
        }
        let label = at(&Piece::Label).unwrap_or(0);
        if label < at(&Piece::Text).unwrap_or(0) {
            return Err(bad("{label} must come after {text}".into()));
        }
        if let Some(Piece::Literal(before)) = label.checked_sub(1).map(|i| &pieces[i])
            && before.ends_with(char::is_whitespace)
        {
            return Err(bad(format!(
                "the text before {{label}} ends in whitespace ({before:?}); label tokens such as \" good\" carry their own space, so write e.g. \"{{text}}{}{{label}}\"",
                before.trim_end()
            )));
        }
        Ok(Self {
            source: template.to_owned(),
            pieces,
        })
    }

    /// The literal between `{text}` and `{label}`: the prompt a teacher reads after a text.
    #[must_use]
    pub fn prompt(&self) -> String {
        let text = self.pieces.iter().position(|p| *p == Piece::Text);
        let label = self.pieces.iter().position(|p| *p == Piece::Label);
        match (text, label) {
            (Some(t), Some(l)) => self.pieces[t + 1..l]
                .iter()
                .filter_map(|p| match p {
                    Piece::Literal(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => String::new(),
        }
    }

    /// Tokenizes the literals once: the renderer every row goes through.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn compile(&self, tok: &Tok) -> Result<Compiled> {
        let pieces = self
            .pieces
            .iter()
            .map(|p| {
                Ok(match p {
                    Piece::Text => Part::Text,
                    Piece::Label => Part::Label,
                    Piece::Literal(s) => Part::Ids(tok.encode(s)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Compiled { pieces })
    }
}

#[derive(Debug, Clone)]
enum Part {
    Text,
    Label,
    Ids(Vec<u32>),
}

/// A template with its literals tokenized.
#[derive(Debug, Clone)]
pub struct Compiled {
    pieces: Vec<Part>,
}

/// What labels a rendered row trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trained {
    /// Every token (the text is language-modelled too).
    Full,
    /// The label token and what follows it only.
    Label,
}

impl Compiled {
    /// Tokens every row has besides its text.
    #[must_use]
    pub fn fixed_len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Part::Text => 0,
                Part::Label => 1,
                Part::Ids(ids) => ids.len(),
            })
            .sum()
    }

    /// A row's ids and labels (−100 where not trained).
    #[must_use]
    pub fn render(&self, text: &[u32], label: u32, trained: Trained) -> (Vec<u32>, Vec<i32>) {
        let mut ids = Vec::with_capacity(text.len() + self.fixed_len());
        let mut on = trained == Trained::Full;
        let mut labels = Vec::with_capacity(ids.capacity());
        for p in &self.pieces {
            let part: &[u32] = match p {
                Part::Text => text,
                Part::Label => {
                    on = true;
                    std::slice::from_ref(&label)
                }
                Part::Ids(v) => v,
            };
            ids.extend_from_slice(part);
            labels.extend(part.iter().map(|&t| {
                if on {
                    i32::try_from(t).unwrap_or(i32::MAX)
                } else {
                    -100
                }
            }));
        }
        (ids, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_prompt() {
        let t = PromptTemplate::parse("{text} I feel{label}").expect("parses");
        assert_eq!(
            t.pieces,
            [Piece::Text, Piece::Literal(" I feel".into()), Piece::Label]
        );
        assert_eq!(t.prompt(), " I feel");
        let t = PromptTemplate::parse("Tweet: {text}\nSentiment:{label}\n").expect("parses");
        assert_eq!(t.prompt(), "\nSentiment:");
    }

    #[test]
    fn refuses_what_it_cannot_use_as_written() {
        for (template, says) in [
            ("{text} I feel {label}", "ends in whitespace"),
            ("{label} {text}", "must come after"),
            ("{text} {text}{label}", "once"),
            ("{text} I feel", "once"),
            ("{text} {mood}{label}", "unknown placeholder {mood}"),
            ("{text} {label", "unclosed"),
        ] {
            let err = PromptTemplate::parse(template).expect_err(template);
            assert!(err.to_string().contains(says), "{template}: {err}");
        }
    }

    #[test]
    fn renders_ids_and_trains_as_asked() {
        let compiled = Compiled {
            pieces: vec![Part::Text, Part::Ids(vec![7, 8]), Part::Label],
        };
        assert_eq!(compiled.fixed_len(), 3);
        let (ids, full) = compiled.render(&[1, 2], 42, Trained::Full);
        assert_eq!(ids, [1, 2, 7, 8, 42]);
        assert_eq!(full, [1, 2, 7, 8, 42]);
        let (_, label) = compiled.render(&[1, 2], 42, Trained::Label);
        assert_eq!(label, [-100, -100, -100, -100, 42]);
    }
}

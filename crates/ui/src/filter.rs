//! The runs page's filter expression: `alpha >= 0.5 and accuracy_2way > 0.8`.
//!
//! ```text
//! filter    := condition ("and" condition)*
//! condition := name op value
//! name      := [A-Za-z_][A-Za-z0-9_.\-/]*      a parameter, a metric or stage.metric
//! op        := < | <= | > | >= | = | == | !=
//! value     := number | 'text' | "text" | word  (a word or quoted text compares as text)
//! ```

use kiln_store::browse::{CmpOp, Condition, Operand};

use crate::Error;

/// Parses a filter expression; an empty one is no condition.
///
/// # Errors
/// [`Error::Filter`] naming the column where the expression stops making sense.
pub fn parse(text: &str) -> Result<Vec<Condition>, Error> {
    let mut lexer = Lexer { text, at: 0 };
    let mut out = Vec::new();
    lexer.skip_space();
    if lexer.done() {
        return Ok(out);
    }
    loop {
        out.push(lexer.condition()?);
        lexer.skip_space();
        if lexer.done() {
            return Ok(out);
        }
        let start = lexer.at;
        let word = lexer.word();
        if !word.eq_ignore_ascii_case("and") {
            lexer.at = start;
            return Err(lexer.error(&format!(
                "expected `and` between conditions, found {:?}",
                if word.is_empty() { lexer.rest() } else { word }
            )));
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn error(&self, message: &str) -> Error {
        Error::Filter(format!(
            "filter {:?}, column {}: {message}",
            self.text,
            self.text[..self.at].chars().count() + 1
        ))
    }

    /// The longest run of name characters at the cursor (possibly empty).
    fn word(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '+')))
            .unwrap_or(rest.len());
        self.at += end;
        &rest[..end]
    }

    fn condition(&mut self) -> Result<Condition, Error> {
        self.skip_space();
        let name = self.word();
        if name.is_empty() || !name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            return Err(self.error("expected a parameter or metric name"));
        }
        self.skip_space();
        let op = self.op()?;
        self.skip_space();
        let value = self.value()?;
        Ok(Condition::new(name, op, value))
    }

    fn op(&mut self) -> Result<CmpOp, Error> {
        let rest = self.rest();
        let (op, len) = [
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
            ("=", CmpOp::Eq),
        ]
        .into_iter()
        .find(|(s, _)| rest.starts_with(s))
        .map(|(s, op)| (op, s.len()))
        .ok_or_else(|| self.error("expected a comparison (<, <=, >, >=, =, !=)"))?;
        self.at += len;
        Ok(op)
    }

    fn value(&mut self) -> Result<Operand, Error> {
        let rest = self.rest();
        if let Some(quote) = rest.chars().next().filter(|c| matches!(c, '\'' | '"')) {
            let Some(end) = rest[1..].find(quote) else {
                return Err(self.error("unclosed quote"));
            };
            self.at += end + 2;
            return Ok(Operand::Text(rest[1..=end].to_owned()));
        }
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("expected a value"));
        }
        Ok(match word.parse::<f64>() {
            Ok(v) if v.is_finite() => Operand::Number(v),
            _ => Operand::Text(word.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_example_parses() {
        assert_eq!(
            parse("alpha >= 0.5 and accuracy_2way > 0.8").ok(),
            Some(vec![
                Condition::new("alpha", CmpOp::Ge, Operand::Number(0.5)),
                Condition::new("accuracy_2way", CmpOp::Gt, Operand::Number(0.8)),
            ])
        );
    }

    #[test]
    fn names_values_and_spacing() {
        assert_eq!(
            parse("  eval.loss<1e-2 AND optimizer=='adam' and model = gpt2 and t!=\"1\"").ok(),
            Some(vec![
                Condition::new("eval.loss", CmpOp::Lt, Operand::Number(0.01)),
                Condition::new("optimizer", CmpOp::Eq, Operand::Text("adam".into())),
                Condition::new("model", CmpOp::Eq, Operand::Text("gpt2".into())),
                Condition::new("t", CmpOp::Ne, Operand::Text("1".into())),
            ])
        );
        assert_eq!(parse("   ").ok(), Some(vec![]));
        assert_eq!(
            parse("lr = -3").ok(),
            Some(vec![Condition::new("lr", CmpOp::Eq, Operand::Number(-3.0))])
        );
    }

    #[test]
    fn bad_filters_name_the_column() {
        for (text, column, what) in [
            ("alpha 0.5", 7, "expected a comparison"),
            ("alpha >=", 9, "expected a value"),
            ("alpha >= 1 or t < 2", 12, "expected `and`"),
            (">= 1", 1, "expected a parameter"),
            ("name = 'open", 8, "unclosed quote"),
        ] {
            let err = parse(text).map(|_| ()).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(
                err.contains(&format!("column {column}:")),
                "{text:?}: {err}"
            );
            assert!(err.contains(what), "{text:?}: {err}");
        }
    }
}

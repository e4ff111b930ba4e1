//! What a stage kind's parameter accepts ([`ParamSpec`], [`Constraint`]) and how a stage reads
//! it back ([`Params`]).
//!
//! The rule: a value is used as written or refused. Constraints are checked by
//! `spec::validate` before anything runs (with the value's `file:line:col`, whether it was
//! written in place, came through `${param}` or `--set`), and the typed getters return an
//! error for a present value of the wrong shape instead of falling back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::value::{ParamType, describe, display};

/// What values of the right type a parameter still refuses.
#[derive(Debug, Clone, Copy)]
pub enum Constraint {
    /// Any value of the type.
    None,
    /// An integer at least this.
    AtLeast(i64),
    /// A number strictly above zero.
    Positive,
    /// A number in `[min, max]`, or `[min, max)` when `max_open`.
    Range {
        /// Lowest accepted value.
        min: f64,
        /// Highest (or first refused, when `max_open`).
        max: f64,
        /// Whether `max` itself is refused.
        max_open: bool,
    },
    /// One of these texts.
    OneOf(&'static [&'static str]),
    /// A text that `check` accepts (a grammar too open for a list, such as `cuda:N`);
    /// `rule` describes it for `kiln stages`.
    Parses {
        /// What the accepted texts look like.
        rule: &'static str,
        /// Accepts a text or says why not.
        check: fn(&str) -> Result<(), String>,
    },
}

impl Constraint {
    /// Checks a value that already has the parameter's type.
    ///
    /// # Errors
    /// A sentence naming the value and the rule it breaks.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let refuse = |rule: String| Err(format!("{} {rule}", display(value)));
        match *self {
            Self::None => Ok(()),
            Self::AtLeast(min) => match value.as_i64() {
                Some(v) if v >= min => Ok(()),
                Some(_) => refuse(format!("is below the minimum {min}")),
                // Integers beyond i64 are positive, so above any minimum.
                None if value.as_u64().is_some() => Ok(()),
                None => refuse("is not an integer".into()),
            },
            Self::Positive => match value.as_f64() {
                Some(v) if v > 0.0 && v.is_finite() => Ok(()),
                _ => refuse("must be a positive number".into()),
            },
            Self::Range { min, max, max_open } => match value.as_f64() {
                Some(v) if v >= min && (v < max || (!max_open && v == max)) => Ok(()),
                _ => refuse(format!("is outside {self}")),
            },
            Self::OneOf(allowed) => match value.as_str() {
                Some(v) if allowed.contains(&v) => Ok(()),
                _ => refuse(format!("is not one of {}", allowed.join(", "))),
            },
            Self::Parses { check, .. } => match value.as_str() {
                Some(v) => check(v),
                None => refuse("is not a text".into()),
            },
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::AtLeast(min) => write!(f, "≥ {min}"),
            Self::Positive => f.write_str("> 0"),
            Self::Range { min, max, max_open } => {
                write!(f, "[{min}, {max}{}", if *max_open { ")" } else { "]" })
            }
            Self::OneOf(allowed) => write!(f, "one of {}", allowed.join(", ")),
            Self::Parses { rule, .. } => f.write_str(rule),
        }
    }
}

/// One parameter a stage kind accepts under `with:`.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Its key.
    pub name: &'static str,
    /// Its type. A [`ParamType::Path`] that names an existing file or directory is
    /// content-hashed into the stage's fingerprint by the engine.
    pub ty: ParamType,
    /// Whether a stage must give it.
    pub required: bool,
    /// One line for `kiln stages`, including the default when there is one.
    pub doc: &'static str,
    /// What values of the type it still refuses.
    pub constraint: Constraint,
}

impl ParamSpec {
    /// A required parameter.
    pub const fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        Self {
            name,
            ty,
            required: true,
            doc,
            constraint: Constraint::None,
        }
    }

    /// An optional parameter.
    pub const fn optional(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        Self {
            name,
            ty,
            required: false,
            doc,
            constraint: Constraint::None,
        }
    }

    /// Only integers at least `min`.
    pub const fn at_least(self, min: i64) -> Self {
        self.with(Constraint::AtLeast(min))
    }

    /// Only numbers above zero.
    pub const fn positive(self) -> Self {
        self.with(Constraint::Positive)
    }

    /// Only numbers in `[min, max]`.
    pub const fn range(self, min: f64, max: f64) -> Self {
        self.with(Constraint::Range {
            min,
            max,
            max_open: false,
        })
    }

    /// Only numbers in `[min, max)`.
    pub const fn range_open(self, min: f64, max: f64) -> Self {
        self.with(Constraint::Range {
            min,
            max,
            max_open: true,
        })
    }

    /// Only one of these texts.
    pub const fn one_of(self, allowed: &'static [&'static str]) -> Self {
        self.with(Constraint::OneOf(allowed))
    }

    /// Only texts that `check` accepts; `rule` says which for `kiln stages`.
    pub const fn parses(self, rule: &'static str, check: fn(&str) -> Result<(), String>) -> Self {
        self.with(Constraint::Parses { rule, check })
    }

    const fn with(self, constraint: Constraint) -> Self {
        Self { constraint, ..self }
    }
}

/// A parameter present with a value a stage cannot use (validation normally refuses it first).
#[derive(Debug, thiserror::Error)]
#[error("with.{key}: {message}")]
pub struct ParamError {
    /// The parameter.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Result of a typed getter: `Ok(None)` when the parameter is absent.
pub type ParamResult<T> = Result<Option<T>, ParamError>;

/// A stage's resolved params with typed getters. Absent → `Ok(None)` (the caller picks the
/// default); present but wrong → an error, never a silent default.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    values: &'a BTreeMap<String, Value>,
    workdir: &'a Path,
}

impl<'a> Params<'a> {
    /// Getters over `values`, with relative paths resolved against `workdir`.
    pub fn new(values: &'a BTreeMap<String, Value>, workdir: &'a Path) -> Self {
        Self { values, workdir }
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        get: impl FnOnce(&Value) -> Option<T>,
    ) -> ParamResult<T> {
        match self.values.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| ParamError {
                key: key.to_owned(),
                message: format!("expected {expected}, found {} {}", describe(v), display(v)),
            }),
        }
    }

    /// A whole number ≥ 0.
    pub fn u64(&self, key: &str) -> ParamResult<u64> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// A whole number ≥ 0, as a count or size.
    pub fn usize(&self, key: &str) -> ParamResult<usize> {
        self.typed(key, "a non-negative integer", |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok())
        })
    }

    /// A whole number ≥ 1.
    pub fn count(&self, key: &str) -> ParamResult<usize> {
        self.typed(key, "an integer ≥ 1", |v| {
            v.as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| usize::try_from(n).ok())
        })
    }

    /// A number.
    pub fn f64(&self, key: &str) -> ParamResult<f64> {
        self.typed(key, "a number", |v| v.as_f64().filter(|f| f.is_finite()))
    }

    /// `true` or `false`.
    pub fn bool(&self, key: &str) -> ParamResult<bool> {
        self.typed(key, "true or false", Value::as_bool)
    }

    /// Text (numbers and booleans as written).
    pub fn string(&self, key: &str) -> ParamResult<String> {
        self.typed(key, "text", |v| match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(display(v)),
            _ => None,
        })
    }

    /// A path, resolved against the project root when relative.
    pub fn path(&self, key: &str) -> ParamResult<PathBuf> {
        Ok(self.string(key)?.map(|p| self.workdir.join(p)))
    }

    /// A list of texts.
    pub fn strings(&self, key: &str) -> ParamResult<Vec<String>> {
        self.typed(key, "a list of texts", |v| {
            v.as_array()
                .and_then(|a| a.iter().map(scalar_text).collect::<Option<Vec<_>>>())
        })
    }

    /// A map of texts.
    pub fn string_map(&self, key: &str) -> ParamResult<BTreeMap<String, String>> {
        self.typed(key, "a map of texts", |v| {
            v.as_object().and_then(|m| {
                m.iter()
                    .map(|(k, v)| scalar_text(v).map(|t| (k.clone(), t)))
                    .collect::<Option<BTreeMap<_, _>>>()
            })
        })
    }

    /// A parameter the stage cannot do without.
    ///
    /// # Errors
    /// When it is absent (validation refuses that first for required params) or wrong.
    pub fn require<T>(&self, key: &str, got: ParamResult<T>) -> Result<T, ParamError> {
        got?.ok_or_else(|| ParamError {
            key: key.to_owned(),
            message: "is required".into(),
        })
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(display(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constraints_refuse_and_say_why() {
        assert_eq!(
            Constraint::AtLeast(1).check(&json!(-4)),
            Err("-4 is below the minimum 1".into())
        );
        assert_eq!(Constraint::AtLeast(0).check(&json!(0)), Ok(()));
        assert_eq!(
            ParamSpec::optional("val", ParamType::Float, "")
                .range_open(0.0, 1.0)
                .constraint
                .check(&json!(1.5)),
            Err("1.5 is outside [0, 1)".into())
        );
        assert_eq!(
            Constraint::Range {
                min: 0.0,
                max: 1.0,
                max_open: false
            }
            .check(&json!(1.0)),
            Ok(())
        );
        assert_eq!(
            Constraint::Positive.check(&json!(0.0)),
            Err("0.0 must be a positive number".into())
        );
        assert_eq!(
            Constraint::OneOf(&["a", "b"]).check(&json!("c")),
            Err("c is not one of a, b".into())
        );
    }

    #[test]
    fn getters_never_replace_a_wrong_value_with_a_default() {
        let values = BTreeMap::from([
            ("bs".to_owned(), json!(-4)),
            ("lr".to_owned(), json!(0.5)),
            ("zero".to_owned(), json!(0)),
            ("list".to_owned(), json!(["a", 1])),
            ("nested".to_owned(), json!([["a"]])),
        ]);
        let p = Params::new(&values, Path::new("/root"));
        let err = p.usize("bs").expect_err("-4 is not a size");
        assert_eq!(
            err.to_string(),
            "with.bs: expected a non-negative integer, found integer -4"
        );
        assert!(p.count("zero").is_err());
        assert_eq!(p.usize("absent").ok(), Some(None));
        assert_eq!(p.f64("lr").ok(), Some(Some(0.5)));
        assert!(p.usize("lr").is_err());
        assert_eq!(
            p.strings("list").ok(),
            Some(Some(vec!["a".to_owned(), "1".to_owned()]))
        );
        assert!(p.strings("nested").is_err());
        assert_eq!(
            p.path("list").map_err(|e| e.key).err(),
            Some("list".to_owned())
        );
        assert!(p.require("absent", p.f64("absent")).is_err());
    }
}

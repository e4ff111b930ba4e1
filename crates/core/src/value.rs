//! Parameter types and typed values.
//!
//! Values are `serde_json::Value`s: they serialize canonically (maps are sorted) into
//! fingerprints and the store. A [`ParamType`] checks a value and coerces where a researcher
//! would expect it (`alpha: [0, 0.5, 1]` gives floats; `--set epochs=2` gives an integer).

use std::fmt;

use serde_json::Value;

/// The type of a pipeline parameter or of a stage kind's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A whole number.
    Int,
    /// A number (integers are accepted and become floats).
    Float,
    /// `true` or `false`.
    Bool,
    /// Text.
    #[serde(alias = "str")]
    String,
    /// A file or directory path (text).
    Path,
    /// A list of values.
    List,
    /// A mapping of names to values.
    Map,
    /// Anything.
    Any,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Path => "path",
            Self::List => "list",
            Self::Map => "map",
            Self::Any => "any",
        })
    }
}

impl ParamType {
    /// All type names, for error messages.
    pub const NAMES: &'static [&'static str] = &[
        "int", "float", "bool", "string", "path", "list", "map", "any",
    ];

    /// Parses a type name as written in a spec.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "int" | "integer" => Self::Int,
            "float" | "number" => Self::Float,
            "bool" | "boolean" => Self::Bool,
            "string" | "str" => Self::String,
            "path" => Self::Path,
            "list" => Self::List,
            "map" => Self::Map,
            "any" => Self::Any,
            _ => return None,
        })
    }

    /// The type a default value implies.
    pub fn infer(value: &Value) -> Self {
        match value {
            Value::Bool(_) => Self::Bool,
            Value::Number(n) if n.is_i64() || n.is_u64() => Self::Int,
            Value::Number(_) => Self::Float,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::List,
            Value::Object(_) => Self::Map,
            Value::Null => Self::Any,
        }
    }

    /// Checks `value` against this type, returning the (possibly coerced) value.
    ///
    /// # Errors
    /// A sentence saying what was expected and what was found.
    pub fn coerce(self, value: &Value) -> Result<Value, String> {
        let ok = match (self, value) {
            (Self::Any, v) => Some(v.clone()),
            (Self::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(value.clone()),
            (Self::Int, Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| Value::from(f as i64)),
            (Self::Float, Value::Number(n)) => n.as_f64().map(Value::from),
            (Self::Bool, Value::Bool(_)) => Some(value.clone()),
            (Self::String | Self::Path, Value::String(_)) => Some(value.clone()),
            // Numbers and booleans written where text is expected are plain text to a researcher.
            (Self::String, Value::Number(_) | Value::Bool(_)) => {
                Some(Value::String(display(value)))
            }
            (Self::List, Value::Array(_)) => Some(value.clone()),
            (Self::Map, Value::Object(_)) => Some(value.clone()),
            _ => None,
        };
        ok.ok_or_else(|| {
            format!(
                "expected {} {self}, found {} {}",
                article(self),
                describe(value),
                short(value)
            )
        })
    }
}

fn article(t: ParamType) -> &'static str {
    match t {
        ParamType::Int | ParamType::Any => "an",
        _ => "a",
    }
}

/// A short description of a value's type, for messages.
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn short(value: &Value) -> String {
    let s = value.to_string();
    if s.len() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A value as text: strings without quotes, everything else as JSON.
pub fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Converts a YAML value into the JSON value kiln works with.
///
/// # Errors
/// For YAML that has no JSON form (non-string map keys, tagged values).
pub fn from_yaml(value: serde_yaml::Value) -> Result<Value, String> {
    Ok(match value {
        serde_yaml::Value::Null => Value::Null,
        serde_yaml::Value::Bool(b) => Value::Bool(b),
        serde_yaml::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{f} is not a finite number"))?
            }
        }
        serde_yaml::Value::String(s) => Value::String(s),
        serde_yaml::Value::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(from_yaml)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        serde_yaml::Value::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    serde_yaml::Value::String(s) => s,
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    other => return Err(format!("map keys must be text, found {other:?}")),
                };
                out.insert(key, from_yaml(v)?);
            }
            Value::Object(out)
        }
        serde_yaml::Value::Tagged(t) => {
            return Err(format!("YAML tags are not supported ({})", t.tag));
        }
    })
}

/// Parses a value given on the command line (`--set key=VALUE`) as a YAML scalar or flow value.
///
/// # Errors
/// When the text is not valid YAML.
pub fn parse_cli_value(text: &str) -> Result<Value, String> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    from_yaml(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercion_follows_what_a_researcher_writes() {
        assert_eq!(ParamType::Float.coerce(&json!(1)), Ok(json!(1.0)));
        assert_eq!(ParamType::Int.coerce(&json!(2.0)), Ok(json!(2)));
        assert_eq!(ParamType::String.coerce(&json!(3)), Ok(json!("3")));
        let err = ParamType::Int
            .coerce(&json!("two"))
            .expect_err("text is not an int");
        assert_eq!(err, "expected an int, found string \"two\"");
        let err = ParamType::Float
            .coerce(&json!(true))
            .expect_err("bool is not a float");
        assert_eq!(err, "expected a float, found boolean true");
    }

    #[test]
    fn cli_values_are_yaml() {
        assert_eq!(parse_cli_value("0.5"), Ok(json!(0.5)));
        assert_eq!(parse_cli_value("abc"), Ok(json!("abc")));
        assert_eq!(parse_cli_value("[1, 2]"), Ok(json!([1, 2])));
    }
}

//! `${…}` interpolation in spec values.
//!
//! - `${name}`: the pipeline parameter `name`. A string that is exactly one reference takes
//!   the parameter's typed value (`alpha: ${alpha}` stays a float); inside longer text it is
//!   written as text.
//! - `${stages.X.outputs.Y}`: the path of output `Y` of stage `X`; `${stages.X.dir}`: X's
//!   whole output directory. Referencing a stage makes it a need.
//! - `$${` writes a literal `${`.
//!
//! Parameters are substituted when the plan is made, so they enter the fingerprint as
//! values. Stage references stay symbolic in the fingerprint (the need's own fingerprint
//! already covers them) and become real paths only when the stage executes.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::value::display;

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Lit(String),
    /// `${name}`.
    Param(String),
    /// `${stages.X.outputs.Y}` (output `Some(Y)`) or `${stages.X.dir}` (`None`).
    Stage {
        /// The stage.
        stage: String,
        /// The declared output, or the whole directory.
        output: Option<String>,
    },
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits `s` into pieces.
///
/// # Errors
/// A sentence for an unterminated or malformed reference.
pub fn parse(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            lit.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| {
                format!("unterminated reference in {s:?}: a `${{` has no closing `}}`")
            })?;
            let inner = tail[..end].trim();
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(reference(inner)?);
            rest = &tail[end + 1..];
        } else {
            lit.push('$');
            rest = &after[1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

fn reference(inner: &str) -> Result<Piece, String> {
    // Output names may contain dots (`corpus.txt`), so split off at most four parts.
    let parts: Vec<&str> = inner.splitn(4, '.').collect();
    match parts.as_slice() {
        [name] if is_ident(name) => Ok(Piece::Param((*name).to_owned())),
        ["stages", stage, "outputs", output] if is_ident(stage) && !output.is_empty() => {
            Ok(Piece::Stage {
                stage: (*stage).to_owned(),
                output: Some((*output).to_owned()),
            })
        }
        ["stages", stage, "dir"] if is_ident(stage) => Ok(Piece::Stage {
            stage: (*stage).to_owned(),
            output: None,
        }),
        _ => Err(format!(
            "bad reference `${{{inner}}}`: write `${{param}}`, `${{stages.NAME.outputs.OUTPUT}}` or `${{stages.NAME.dir}}`"
        )),
    }
}

/// Every reference in a value (strings inside lists and maps included).
pub fn references(value: &Value) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    visit(value, &mut |s| {
        out.extend(
            parse(s)?
                .into_iter()
                .filter(|p| !matches!(p, Piece::Lit(_))),
        );
        Ok(())
    })?;
    Ok(out)
}

fn visit(value: &Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().try_for_each(|v| visit(v, f)),
        Value::Object(map) => map.values().try_for_each(|v| visit(v, f)),
        _ => Ok(()),
    }
}

/// Substitutes parameters in `value`; stage references are kept as written.
///
/// # Errors
/// For a malformed or unknown reference.
pub fn substitute_params(value: &Value, params: &BTreeMap<String, Value>) -> Result<Value, String> {
    map_strings(value, &mut |s| {
        let pieces = parse(s)?;
        if let [Piece::Param(name)] = pieces.as_slice() {
            return lookup(params, name).cloned();
        }
        let mut out = String::new();
        for piece in &pieces {
            match piece {
                Piece::Lit(text) => out.push_str(&text.replace("${", "$${")),
                Piece::Param(name) => out.push_str(&display(lookup(params, name)?)),
                Piece::Stage { stage, output } => match output {
                    Some(o) => out.push_str(&format!("${{stages.{stage}.outputs.{o}}}")),
                    None => out.push_str(&format!("${{stages.{stage}.dir}}")),
                },
            }
        }
        Ok(Value::String(out))
    })
}

/// Substitutes stage references with paths: `dirs` holds each need's output directory and
/// `outputs` each stage's declared outputs (relative paths).
///
/// # Errors
/// For a reference to a stage or output that is not there.
pub fn substitute_stages(
    value: &Value,
    dirs: &BTreeMap<String, std::path::PathBuf>,
    outputs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Value, String> {
    map_strings(value, &mut |s| {
        let mut out = String::new();
        for piece in parse(s)? {
            match piece {
                Piece::Lit(text) => out.push_str(&text),
                Piece::Param(name) => {
                    return Err(format!("parameter `${{{name}}}` was not substituted"));
                }
                Piece::Stage { stage, output } => {
                    let dir = dirs
                        .get(&stage)
                        .ok_or_else(|| format!("stage {stage:?} is not a need of this stage"))?;
                    let path = match output {
                        None => dir.clone(),
                        Some(o) => {
                            let rel =
                                outputs.get(&stage).and_then(|m| m.get(&o)).ok_or_else(|| {
                                    format!("stage {stage:?} declares no output {o:?}")
                                })?;
                            dir.join(Path::new(rel))
                        }
                    };
                    out.push_str(&path.to_string_lossy());
                }
            }
        }
        Ok(Value::String(out))
    })
}

fn lookup<'a>(params: &'a BTreeMap<String, Value>, name: &str) -> Result<&'a Value, String> {
    params
        .get(name)
        .ok_or_else(|| format!("unknown parameter `${{{name}}}`"))
}

fn map_strings(
    value: &Value,
    f: &mut dyn FnMut(&str) -> Result<Value, String>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => f(s)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| map_strings(v, f))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), map_strings(v, f)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_reference_keeps_type_and_text_is_joined() {
        let params = BTreeMap::from([("alpha".to_owned(), json!(0.5)), ("n".to_owned(), json!(3))]);
        assert_eq!(
            substitute_params(&json!("${alpha}"), &params),
            Ok(json!(0.5))
        );
        assert_eq!(
            substitute_params(&json!("a=${alpha} n=${ n } $${x}"), &params),
            Ok(json!("a=0.5 n=3 $${x}"))
        );
        assert_eq!(
            substitute_params(&json!("${nope}"), &params),
            Err("unknown parameter `${nope}`".to_owned())
        );
    }

    #[test]
    fn stage_references_survive_params_and_become_paths() {
        let v = substitute_params(
            &json!("cat ${stages.a.outputs.out} ${stages.a.dir}"),
            &BTreeMap::new(),
        )
        .expect("no params needed");
        let dirs = BTreeMap::from([("a".to_owned(), std::path::PathBuf::from("/c/fp"))]);
        let outs = BTreeMap::from([(
            "a".to_owned(),
            BTreeMap::from([("out".to_owned(), "out.txt".to_owned())]),
        )]);
        assert_eq!(
            substitute_stages(&v, &dirs, &outs),
            Ok(json!("cat /c/fp/out.txt /c/fp"))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(parse("${a").is_err());
        assert!(parse("${stages.a}").is_err());
        assert_eq!(parse("$HOME"), Ok(vec![Piece::Lit("$HOME".into())]));
    }
}

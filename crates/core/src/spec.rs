//! Pipeline specs: what the user wrote, parsed and validated.
//!
//! A pipeline file has `name`, optional `description`, typed `params` with defaults, and
//! `stages` (name → `uses`, `needs`, `with`, `inputs`, `outputs`, `resources`). Reading one is
//! three passes over the same text:
//!
//! 1. yaml-rust2 builds a position-keeping tree ([`crate::yaml`]); every unknown key in the
//!    whole file is reported from it, with "did you mean".
//! 2. serde_yaml deserializes the typed structure (`deny_unknown_fields` as a backstop); its
//!    errors carry their own line and column.
//! 3. [`validate`] checks what needs the registry and the whole graph: stage kinds, `needs`
//!    targets, references, parameter types, cycles. It collects every error in the file.
//!
//! Every diagnostic renders as `file:line:col: stage "x": message`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Diagnostic, Error, SpecErrors};
use crate::interp::{self, Piece};
use crate::stage::Registry;
use crate::value::{self, ParamType};
use crate::yaml::{self, Node, NodeKind, Pos, Span};

/// A parsed pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `name:`.
    pub name: String,
    /// `description:`.
    pub description: Option<String>,
    /// The file it came from (as given).
    pub path: PathBuf,
    /// Declared parameters, in file order.
    pub params: Vec<ParamDecl>,
    /// Stages, in file order.
    pub stages: Vec<StageSpec>,
    /// blake3 of the file's bytes.
    pub source_hash: String,
}

/// A declared pipeline parameter.
#[derive(Debug, Clone)]
pub struct ParamDecl {
    /// Its name.
    pub name: String,
    /// Its type (declared, or inferred from the default).
    pub ty: ParamType,
    /// Its default; `None` means it must be given (`--set name=value`).
    pub default: Option<Value>,
    /// `doc:`.
    pub doc: Option<String>,
    /// Where it is declared.
    pub pos: Pos,
}

/// A stage as written.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Its name (the key under `stages:`).
    pub name: String,
    /// Where its key is.
    pub pos: Pos,
    /// `uses:` (the stage kind).
    pub uses: String,
    /// Where the `uses` value is.
    pub uses_pos: Pos,
    /// `needs:`, with positions.
    pub needs: Vec<(String, Pos)>,
    /// `with:` params, with positions of their values.
    pub with: BTreeMap<String, (Value, Pos)>,
    /// `inputs:`: name → path (may hold `${…}`), with positions.
    pub inputs: BTreeMap<String, (String, Pos)>,
    /// `outputs:`: name → path relative to the stage's output directory.
    pub outputs: BTreeMap<String, String>,
    /// `resources.gpu:`: GPUs the stage holds while it runs.
    pub gpu: u32,
}

impl Pipeline {
    /// The span of a position in this file.
    pub fn span(&self, pos: Pos) -> Span {
        Span {
            path: self.path.clone(),
            pos,
        }
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The declared parameter `name`.
    pub fn param(&self, name: &str) -> Option<&ParamDecl> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Every need of `stage`: declared `needs` plus stages its values reference.
    pub fn needs_of(&self, stage: &StageSpec) -> Vec<String> {
        let mut out: Vec<String> = stage.needs.iter().map(|(n, _)| n.clone()).collect();
        let values = stage
            .with
            .values()
            .map(|(v, _)| v.clone())
            .chain(stage.inputs.values().map(|(s, _)| Value::String(s.clone())));
        for v in values {
            for piece in interp::references(&v).unwrap_or_default() {
                if let Piece::Stage { stage, .. } = piece
                    && !out.contains(&stage)
                {
                    out.push(stage);
                }
            }
        }
        out
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    stages: BTreeMap<String, RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    uses: String,
    #[serde(default)]
    #[allow(dead_code)] // read for its positions from the tree
    description: Option<String>,
    #[serde(default)]
    needs: OneOrMany,
    #[serde(default)]
    with: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    outputs: Outputs,
    #[serde(default)]
    resources: RawResources,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Outputs {
    #[default]
    None,
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(default)]
    gpu: u32,
}

const TOP_KEYS: &[&str] = &["name", "description", "params", "stages"];
const STAGE_KEYS: &[&str] = &[
    "uses",
    "description",
    "needs",
    "with",
    "inputs",
    "outputs",
    "resources",
];
const PARAM_KEYS: &[&str] = &["type", "default", "doc"];
const RESOURCE_KEYS: &[&str] = &["gpu"];

/// The candidate closest to `name`, if it is close enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 1.max(c.len() / 3) && *d < c.len() && *d < name.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, candidates).map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"))
}

/// Reads and parses a pipeline file. Structural errors (YAML syntax, unknown keys, wrong
/// shapes) are reported here; [`validate`] does the rest.
///
/// # Errors
/// [`Error::Read`] when the file cannot be read; [`Error::Spec`] with every diagnostic.
pub fn load(path: &Path) -> Result<Pipeline, Error> {
    let source = yaml::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &source)
}

/// Parses pipeline text as if read from `path`.
///
/// # Errors
/// [`Error::Spec`] with every diagnostic found.
pub fn parse(path: &Path, source: &str) -> Result<Pipeline, Error> {
    let diag = |pos: Pos, stage: Option<&str>, message: String| Diagnostic {
        span: Span {
            path: path.to_owned(),
            pos,
        },
        stage: stage.map(str::to_owned),
        message,
    };
    let tree = yaml::parse(source).map_err(|e| {
        Error::Spec(SpecErrors(vec![diag(
            e.pos,
            None,
            format!("invalid YAML: {}", e.message),
        )]))
    })?;
    let mut diags = Vec::new();
    check_keys(&tree, &diag, &mut diags);
    if !diags.is_empty() {
        return Err(Error::Spec(SpecErrors(diags)));
    }

    let raw: RawPipeline = serde_yaml::from_str(source).map_err(|e| {
        let pos = e.location().map_or(Pos { line: 1, col: 1 }, |l| Pos {
            line: l.line(),
            col: l.column(),
        });
        let stage = stage_at(&tree, pos.line);
        // serde_yaml prefixes the message with the path and suffixes the location; keep the sentence.
        let message = e.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        Error::Spec(SpecErrors(vec![diag(pos, stage.as_deref(), message)]))
    })?;

    let mut params = Vec::new();
    let params_node = tree.get("params").map(|(_, n)| n);
    for (name, raw_value) in raw.params {
        let (pos, node) = params_node
            .and_then(|n| n.get(&name))
            .map_or((Pos::default(), None), |(p, n)| (*p, Some(n)));
        match param_decl(&name, raw_value, node) {
            Ok(decl) => params.push(ParamDecl { pos, ..decl }),
            Err(message) => diags.push(diag(pos, None, format!("param {name:?}: {message}"))),
        }
    }
    params.sort_by_key(|p| p.pos);

    let stages_node = tree.get("stages").map(|(_, n)| n);
    let mut stages = Vec::new();
    for (name, rs) in raw.stages {
        let (pos, node) = stages_node
            .and_then(|n| n.get(&name))
            .map_or((Pos::default(), None), |(p, n)| (*p, Some(n)));
        let at = |key: &[&str]| node.and_then(|n| n.at(key)).map_or(pos, |n| n.pos);
        let needs = match rs.needs {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(n) => vec![(n, at(&["needs"]))],
            OneOrMany::Many(list) => {
                let items = node
                    .and_then(|n| n.at(&["needs"]))
                    .map(Node::items)
                    .unwrap_or(&[]);
                list.into_iter()
                    .enumerate()
                    .map(|(i, n)| (n, items.get(i).map_or(pos, |x| x.pos)))
                    .collect()
            }
        };
        let mut with = BTreeMap::new();
        for (key, v) in rs.with {
            let vpos = at(&["with", &key]);
            match value::from_yaml(v) {
                Ok(v) => {
                    with.insert(key, (v, vpos));
                }
                Err(m) => diags.push(diag(vpos, Some(&name), format!("with.{key}: {m}"))),
            }
        }
        let inputs = rs
            .inputs
            .into_iter()
            .map(|(k, v)| {
                let p = at(&["inputs", &k]);
                (k, (v, p))
            })
            .collect();
        let outputs = match rs.outputs {
            Outputs::None => BTreeMap::new(),
            Outputs::List(list) => list.into_iter().map(|o| (o.clone(), o)).collect(),
            Outputs::Map(map) => map,
        };
        stages.push(StageSpec {
            name,
            pos,
            uses: rs.uses,
            uses_pos: at(&["uses"]),
            needs,
            with,
            inputs,
            outputs,
            gpu: rs.resources.gpu,
        });
    }
    stages.sort_by_key(|s| s.pos);
    if !diags.is_empty() {
        return Err(Error::Spec(SpecErrors(diags)));
    }
    Ok(Pipeline {
        name: raw.name,
        description: raw.description,
        path: path.to_owned(),
        params,
        stages,
        source_hash: blake3::hash(source.as_bytes()).to_hex().to_string(),
    })
}

/// The name of the stage whose block contains `line`, if any.
fn stage_at(tree: &Node, line: usize) -> Option<String> {
    let stages = tree.get("stages")?.1;
    stages
        .entries()
        .iter()
        .take_while(|(_, pos, _)| pos.line <= line)
        .last()
        .map(|(name, _, _)| name.clone())
}

fn check_keys(
    tree: &Node,
    diag: &dyn Fn(Pos, Option<&str>, String) -> Diagnostic,
    out: &mut Vec<Diagnostic>,
) {
    let unknown = |entries: &[(String, Pos, Node)],
                   allowed: &[&str],
                   what: &str,
                   stage: Option<&str>,
                   out: &mut Vec<Diagnostic>| {
        for (key, pos, _) in entries {
            if !allowed.contains(&key.as_str()) {
                out.push(diag(
                    *pos,
                    stage,
                    format!(
                        "unknown key {key:?} in {what}{} (allowed: {})",
                        did_you_mean(key, allowed.iter().copied()),
                        allowed.join(", ")
                    ),
                ));
            }
        }
    };
    if !matches!(tree.kind, NodeKind::Map(_)) {
        out.push(diag(
            tree.pos,
            None,
            "a pipeline file must be a mapping with `name` and `stages`".into(),
        ));
        return;
    }
    unknown(tree.entries(), TOP_KEYS, "the pipeline", None, out);
    if let Some((_, params)) = tree.get("params") {
        for (_, _, decl) in params.entries() {
            // The long form is a map with `type` or `default`; any other map is a map default.
            if decl.get("type").is_some() || decl.get("default").is_some() {
                unknown(decl.entries(), PARAM_KEYS, "a param declaration", None, out);
            }
        }
    }
    if let Some((_, stages)) = tree.get("stages") {
        for (name, _, stage) in stages.entries() {
            if !matches!(stage.kind, NodeKind::Map(_)) {
                out.push(diag(
                    stage.pos,
                    Some(name),
                    "a stage must be a mapping with at least `uses`".into(),
                ));
                continue;
            }
            unknown(stage.entries(), STAGE_KEYS, "a stage", Some(name), out);
            check_shapes(stage, name, diag, out);
            if let Some((_, res)) = stage.get("resources") {
                unknown(res.entries(), RESOURCE_KEYS, "resources", Some(name), out);
            }
        }
    }
}

/// Checks the shape of a stage's fields, so a wrong shape is reported where it is.
fn check_shapes(
    stage: &Node,
    name: &str,
    diag: &dyn Fn(Pos, Option<&str>, String) -> Diagnostic,
    out: &mut Vec<Diagnostic>,
) {
    let scalar = |n: &Node| matches!(n.kind, NodeKind::Scalar(..));
    let scalars = |n: &Node| n.items().iter().all(scalar) && matches!(n.kind, NodeKind::Seq(_));
    let map_of_scalars = |n: &Node| {
        matches!(n.kind, NodeKind::Map(_)) && n.entries().iter().all(|(_, _, v)| scalar(v))
    };
    type Check<'a> = (&'a str, &'a dyn Fn(&Node) -> bool, &'a str);
    let checks: [Check; 5] = [
        ("uses", &scalar, "a stage kind name"),
        (
            "needs",
            &|n| scalar(n) || scalars(n),
            "a stage name or a list of stage names",
        ),
        (
            "with",
            &|n| matches!(n.kind, NodeKind::Map(_)),
            "a mapping of parameters",
        ),
        (
            "inputs",
            &map_of_scalars,
            "a mapping of input names to paths",
        ),
        (
            "outputs",
            &|n| scalars(n) || map_of_scalars(n),
            "a list of output paths or a mapping of names to paths",
        ),
    ];
    for (key, ok, what) in checks {
        if let Some((_, node)) = stage.get(key)
            && !ok(node)
        {
            out.push(diag(
                node.pos,
                Some(name),
                format!("`{key}` must be {what}"),
            ));
        }
    }
}

fn param_decl(
    name: &str,
    raw: serde_yaml::Value,
    node: Option<&Node>,
) -> Result<ParamDecl, String> {
    let long_form = node.is_some_and(|n| n.get("type").is_some() || n.get("default").is_some());
    let (ty, default, doc) = if long_form {
        let map = match raw {
            serde_yaml::Value::Mapping(m) => m,
            _ => return Err("expected a mapping".into()),
        };
        let get = |k: &str| map.get(serde_yaml::Value::String(k.to_owned())).cloned();
        let default = get("default").map(value::from_yaml).transpose()?;
        let doc = match get("doc") {
            None => None,
            Some(serde_yaml::Value::String(s)) => Some(s),
            Some(_) => return Err("`doc` must be text".into()),
        };
        let ty = match get("type") {
            None => default.as_ref().map_or(ParamType::Any, ParamType::infer),
            Some(serde_yaml::Value::String(t)) => ParamType::parse(&t).ok_or_else(|| {
                format!(
                    "unknown type {t:?}{} (types: {})",
                    did_you_mean(&t, ParamType::NAMES.iter().copied()),
                    ParamType::NAMES.join(", ")
                )
            })?,
            Some(_) => return Err("`type` must be a type name".into()),
        };
        let default = match default {
            Some(Value::Null) | None => None,
            Some(d) => Some(ty.coerce(&d).map_err(|m| format!("default: {m}"))?),
        };
        (ty, default, doc)
    } else {
        let v = value::from_yaml(raw)?;
        let ty = ParamType::infer(&v);
        (ty, (!v.is_null()).then_some(v), None)
    };
    let _ = name;
    Ok(ParamDecl {
        name: name.to_owned(),
        ty,
        default,
        doc,
        pos: Pos::default(),
    })
}

/// A value of type `ty` for checking types when a parameter has no value yet.
fn sample(ty: ParamType) -> Value {
    match ty {
        ParamType::Int => Value::from(0),
        ParamType::Float => Value::from(0.0),
        ParamType::Bool => Value::Bool(false),
        ParamType::String | ParamType::Path | ParamType::Any => Value::String(String::new()),
        ParamType::List => Value::Array(Vec::new()),
        ParamType::Map => Value::Object(serde_json::Map::new()),
    }
}

/// Resolves parameter values: declared defaults, then `overrides`, each coerced to its type.
///
/// With `lenient`, parameters without a value get a sample of their type (for `kiln
/// validate`); otherwise a missing value is an error.
///
/// # Errors
/// Every unknown override, wrong type and missing value.
pub fn resolve_params(
    pipeline: &Pipeline,
    overrides: &BTreeMap<String, Value>,
    lenient: bool,
) -> Result<BTreeMap<String, Value>, SpecErrors> {
    let mut diags = Vec::new();
    let mut out = BTreeMap::new();
    for key in overrides.keys() {
        if pipeline.param(key).is_none() {
            diags.push(Diagnostic {
                span: pipeline.span(Pos { line: 1, col: 1 }),
                stage: None,
                message: format!(
                    "--set {key}: the pipeline {:?} has no parameter {key:?}{}",
                    pipeline.name,
                    did_you_mean(key, pipeline.params.iter().map(|p| p.name.as_str()))
                ),
            });
        }
    }
    for decl in &pipeline.params {
        let given = overrides.get(&decl.name).or(decl.default.as_ref());
        match given {
            Some(v) => match decl.ty.coerce(v) {
                Ok(v) => {
                    out.insert(decl.name.clone(), v);
                }
                Err(m) => diags.push(Diagnostic {
                    span: pipeline.span(decl.pos),
                    stage: None,
                    message: format!("param {:?}: {m}", decl.name),
                }),
            },
            None if lenient => {
                out.insert(decl.name.clone(), sample(decl.ty));
            }
            None => diags.push(Diagnostic {
                span: pipeline.span(decl.pos),
                stage: None,
                message: format!(
                    "param {:?} has no default: give it with --set {}=VALUE",
                    decl.name, decl.name
                ),
            }),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(SpecErrors(diags))
    }
}

/// Checks a parsed pipeline against the registry: kinds, needs, references, types, cycles.
/// `params` are the resolved parameter values (see [`resolve_params`]).
///
/// # Errors
/// Every problem found, each with its position and stage.
pub fn validate(
    pipeline: &Pipeline,
    registry: &Registry,
    params: &BTreeMap<String, Value>,
) -> Result<(), SpecErrors> {
    validate_with(pipeline, registry, params, &BTreeSet::new())
}

/// Validates without every parameter's value (`kiln validate`): parameters with no default
/// and no override get a sample of their type, and values built from them are type-checked
/// but not held to a stage parameter's constraint.
///
/// # Errors
/// Every problem found, each with its position and stage.
pub fn validate_lenient(
    pipeline: &Pipeline,
    registry: &Registry,
    overrides: &BTreeMap<String, Value>,
) -> Result<(), SpecErrors> {
    let params = resolve_params(pipeline, overrides, true)?;
    let unset = pipeline
        .params
        .iter()
        .filter(|p| p.default.is_none() && !overrides.contains_key(&p.name))
        .map(|p| p.name.clone())
        .collect();
    validate_with(pipeline, registry, &params, &unset)
}

/// Whether `with.key` of `stage` uses a parameter that has no value yet.
fn from_unset(stage: &StageSpec, key: &str, unset: &BTreeSet<String>) -> bool {
    stage.with.get(key).is_some_and(|(raw, _)| {
        interp::references(raw)
            .map(|r| {
                r.iter()
                    .any(|p| matches!(p, Piece::Param(n) if unset.contains(n)))
            })
            .unwrap_or(false)
    })
}

/// " (from ${a}, ${b})" when `with.key` was written with parameters, else "".
fn via_params(stage: &StageSpec, key: &str) -> String {
    let names: Vec<String> = stage
        .with
        .get(key)
        .and_then(|(raw, _)| interp::references(raw).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Piece::Param(n) => Some(format!("${{{n}}}")),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (from {})", names.join(", "))
    }
}

fn validate_with(
    pipeline: &Pipeline,
    registry: &Registry,
    params: &BTreeMap<String, Value>,
    unset: &BTreeSet<String>,
) -> Result<(), SpecErrors> {
    let mut diags = Vec::new();
    if pipeline.name.trim().is_empty() {
        diags.push(Diagnostic {
            span: pipeline.span(Pos { line: 1, col: 1 }),
            stage: None,
            message: "`name` must not be empty".into(),
        });
    }
    let mut push = |pos: Pos, stage: &str, message: String| {
        diags.push(Diagnostic {
            span: pipeline.span(pos),
            stage: Some(stage.to_owned()),
            message,
        });
    };
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    for stage in &pipeline.stages {
        if !stage
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            push(
                stage.pos,
                &stage.name,
                "stage names may use letters, digits, `_` and `-` only".into(),
            );
        }
        for (need, pos) in &stage.needs {
            if need == &stage.name {
                push(*pos, &stage.name, "a stage cannot need itself".into());
            } else if pipeline.stage(need).is_none() {
                push(
                    *pos,
                    &stage.name,
                    format!(
                        "needs {need:?}, which is not a stage of this pipeline{}",
                        did_you_mean(need, names.iter().copied())
                    ),
                );
            }
        }
        // References: parameters must be declared, stages and outputs must exist.
        let mut checked_values: BTreeMap<String, Value> = BTreeMap::new();
        let values = stage
            .with
            .iter()
            .map(|(k, (v, p))| (format!("with.{k}"), v.clone(), *p))
            .chain(
                stage
                    .inputs
                    .iter()
                    .map(|(k, (v, p))| (format!("inputs.{k}"), Value::String(v.clone()), *p)),
            );
        for (key, v, pos) in values {
            let refs = match interp::references(&v) {
                Ok(r) => r,
                Err(m) => {
                    push(pos, &stage.name, format!("{key}: {m}"));
                    continue;
                }
            };
            let mut ok = true;
            for piece in refs {
                match piece {
                    Piece::Param(p) if !params.contains_key(&p) => {
                        ok = false;
                        push(
                            pos,
                            &stage.name,
                            format!(
                                "{key}: unknown parameter `${{{p}}}`{}",
                                did_you_mean(&p, params.keys().map(String::as_str))
                            ),
                        );
                    }
                    Piece::Stage { stage: s, output } => match pipeline.stage(&s) {
                        None => {
                            ok = false;
                            push(
                                pos,
                                &stage.name,
                                format!(
                                    "{key}: references stage {s:?}, which is not a stage of this pipeline{}",
                                    did_you_mean(&s, names.iter().copied())
                                ),
                            );
                        }
                        Some(target) => {
                            if let Some(o) = output.filter(|o| !target.outputs.contains_key(o)) {
                                ok = false;
                                push(
                                    pos,
                                    &stage.name,
                                    format!(
                                        "{key}: stage {s:?} declares no output {o:?}{}",
                                        did_you_mean(&o, target.outputs.keys().map(String::as_str))
                                    ),
                                );
                            }
                        }
                    },
                    _ => {}
                }
            }
            if ok && let Some(k) = key.strip_prefix("with.") {
                match interp::substitute_params(&v, params) {
                    Ok(resolved) => {
                        checked_values.insert(k.to_owned(), resolved);
                    }
                    Err(m) => push(pos, &stage.name, format!("{key}: {m}")),
                }
            }
        }
        // The stage kind and its params.
        let Some(kind) = registry.get(&stage.uses) else {
            push(
                stage.uses_pos,
                &stage.name,
                format!(
                    "unknown stage kind {:?}{}",
                    stage.uses,
                    registry
                        .suggest(&stage.uses)
                        .map_or_else(String::new, |s| format!(" (did you mean {s:?}?)"))
                ),
            );
            continue;
        };
        let specs = kind.params();
        for (key, value) in &checked_values {
            let pos = stage.with.get(key).map_or(stage.pos, |(_, p)| *p);
            match specs.iter().find(|s| s.name == key) {
                None if kind.accepts_extra_params() => {}
                None => push(
                    pos,
                    &stage.name,
                    format!(
                        "with.{key}: {:?} has no parameter {key:?}{} (it takes: {})",
                        stage.uses,
                        did_you_mean(key, specs.iter().map(|s| s.name)),
                        specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(spec) => {
                    let holds_stage_ref = interp::references(value)
                        .map(|r| r.iter().any(|p| matches!(p, Piece::Stage { .. })))
                        .unwrap_or(false);
                    let text_ok = matches!(
                        spec.ty,
                        ParamType::String | ParamType::Path | ParamType::Any
                    );
                    if holds_stage_ref
                        && !text_ok
                        && !matches!(spec.ty, ParamType::List | ParamType::Map)
                    {
                        push(
                            pos,
                            &stage.name,
                            format!(
                                "with.{key}: expected {}, found a stage output path",
                                spec.ty
                            ),
                        );
                    } else {
                        match spec.ty.coerce(value) {
                            Err(m) => push(pos, &stage.name, format!("with.{key}: {m}")),
                            Ok(v) if !holds_stage_ref && !from_unset(stage, key, unset) => {
                                if let Err(m) = spec.constraint.check(&v) {
                                    let via = via_params(stage, key);
                                    push(pos, &stage.name, format!("with.{key}: {m}{via}"));
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
        for spec in specs.iter().filter(|s| s.required) {
            // A declared input of the same name gives a path param its value (hashed).
            if !stage.with.contains_key(spec.name) && !stage.inputs.contains_key(spec.name) {
                push(
                    stage.pos,
                    &stage.name,
                    format!("{:?} needs `with.{}` ({})", stage.uses, spec.name, spec.doc),
                );
            }
        }
        if let Err(problems) = kind.validate(&checked_values) {
            for (key, message) in problems {
                let pos = stage.with.get(&key).map_or(stage.pos, |(_, p)| *p);
                push(pos, &stage.name, format!("with.{key}: {message}"));
            }
        }
    }
    if let Some(cycle) = find_cycle(pipeline) {
        let first = pipeline.stage(&cycle[0]).map_or(Pos::default(), |s| s.pos);
        push(
            first,
            &cycle[0],
            format!("dependency cycle: {}", cycle.join(" → ")),
        );
    }
    if diags.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(diags))
    }
}

/// A cycle among the stages' needs, as stage names with the first repeated at the end.
pub fn find_cycle(pipeline: &Pipeline) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: BTreeMap<&str, usize> = pipeline
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = pipeline
        .stages
        .iter()
        .map(|s| {
            pipeline
                .needs_of(s)
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .filter(|&j| pipeline.stages[j].name != s.name)
                .collect()
        })
        .collect();
    let mut marks = vec![Mark::New; pipeline.stages.len()];
    let mut path: Vec<usize> = Vec::new();
    fn dfs(
        v: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[v] = Mark::Open;
        path.push(v);
        for &w in &edges[v] {
            match marks[w] {
                Mark::Open => {
                    let start = path.iter().position(|&x| x == w).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(w);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = dfs(w, edges, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[v] = Mark::Done;
        None
    }
    for v in 0..pipeline.stages.len() {
        if marks[v] == Mark::New
            && let Some(cycle) = dfs(v, &edges, &mut marks, &mut path)
        {
            // `a needs b` is drawn `a → b`; print in dependency order (b runs before a).
            let mut names: Vec<String> = cycle
                .iter()
                .map(|&i| pipeline.stages[i].name.clone())
                .collect();
            names.reverse();
            return Some(names);
        }
    }
    None
}

/// Stage names in an order where every stage comes after its needs; ties keep file order.
///
/// Call after [`validate`] (which rejects cycles); a stage left in a cycle is left out.
pub fn topological_order(pipeline: &Pipeline) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    loop {
        let next = pipeline.stages.iter().find(|s| {
            !done.contains(&s.name)
                && pipeline
                    .needs_of(s)
                    .iter()
                    .all(|n| done.contains(n) || pipeline.stage(n).is_none())
        });
        match next {
            Some(s) => {
                done.insert(s.name.clone());
                order.push(s.name.clone());
            }
            None => return order,
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.path.display())
    }
}

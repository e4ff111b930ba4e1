//! The plan: a validated pipeline with every parameter resolved and every stage fingerprinted,
//! in an order where each stage follows its needs. Nothing executes before a plan exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cache::HashMemo;
use crate::error::{Error, Result};
use crate::fingerprint::FingerprintInput;
use crate::interp::{self, Piece};
use crate::spec::{self, Pipeline};
use crate::stage::Registry;
use crate::value::ParamType;

/// A stage ready to execute.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Its name.
    pub name: String,
    /// Its kind (`uses`).
    pub kind: String,
    /// The kind's version.
    pub kind_version: u32,
    /// Every need (declared and referenced), in file order.
    pub needs: Vec<String>,
    /// `with:` params with `${param}` substituted (stage references still symbolic).
    pub params: BTreeMap<String, Value>,
    /// Declared inputs, resolved against the project root (stage references still symbolic).
    pub inputs: BTreeMap<String, String>,
    /// Declared outputs: name → path relative to its output directory.
    pub outputs: BTreeMap<String, String>,
    /// GPUs it holds while running.
    pub gpu: u32,
    /// What its fingerprint is computed from.
    pub fingerprint_input: FingerprintInput,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// A pipeline ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Resolved parameter values.
    pub params: BTreeMap<String, Value>,
    /// Stages in execution order.
    pub stages: Vec<PlannedStage>,
    /// The fully resolved configuration (params and every stage's fingerprint input).
    pub config: Value,
    /// blake3 of `config`.
    pub config_hash: String,
}

impl Plan {
    /// The planned stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stages that depend on `name`, directly or not.
    pub fn descendants(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![name.to_owned()];
        while let Some(current) = frontier.pop() {
            for s in &self.stages {
                if s.needs.contains(&current) && !out.contains(&s.name) {
                    out.push(s.name.clone());
                    frontier.push(s.name.clone());
                }
            }
        }
        out
    }
}

/// Validates `pipeline` with `overrides` and makes its plan. Relative input paths are
/// resolved against `workdir`; input hashes go through `memo` (save it to the store after).
///
/// Every declared input, and every `with:` param of type `path` that names an existing file
/// or directory, enters the stage's fingerprint by its content (a path inside a cache entry
/// by that entry's fingerprint); URLs and hub ids enter as written.
///
/// # Errors
/// [`Error::Spec`] with every validation problem; [`Error::Input`] for an unreadable input.
pub fn plan(
    pipeline: &Pipeline,
    registry: &Registry,
    overrides: &BTreeMap<String, Value>,
    workdir: &Path,
    memo: &mut HashMemo,
) -> Result<Plan> {
    let params = spec::resolve_params(pipeline, overrides, false).map_err(Error::Spec)?;
    spec::validate(pipeline, registry, &params).map_err(Error::Spec)?;

    let mut planned: BTreeMap<String, PlannedStage> = BTreeMap::new();
    let mut stages = Vec::new();
    for name in spec::topological_order(pipeline) {
        let s = pipeline
            .stage(&name)
            .expect("topological_order returns the pipeline's own stages");
        let kind = registry
            .get(&s.uses)
            .expect("validate checked every stage kind");
        let needs = pipeline.needs_of(s);
        let mut with = BTreeMap::new();
        let mut input_hashes = BTreeMap::new();
        for (key, (value, pos)) in &s.with {
            let v = interp::substitute_params(value, &params)
                .map_err(|m| spec_error(pipeline, *pos, &name, m))?;
            let spec = kind.params().iter().find(|p| p.name == key);
            let v = match spec {
                // Coerce to the declared type unless the value is a stage path (checked by validate).
                Some(p) if !holds_stage_ref(&v) => p
                    .ty
                    .coerce(&v)
                    .map_err(|m| spec_error(pipeline, *pos, &name, format!("with.{key}: {m}")))?,
                _ => v,
            };
            // A path param is read by the stage: what it holds enters the fingerprint.
            if spec.is_some_and(|p| p.ty == ParamType::Path)
                && !holds_stage_ref(&v)
                && let Value::String(text) = &v
                && !text.contains("://")
            {
                let path = workdir.join(text);
                let id = memo.identify(&path).map_err(|source| Error::Input {
                    span: pipeline.span(*pos),
                    stage: name.clone(),
                    name: format!("with.{key}"),
                    path: PathBuf::from(text),
                    source,
                })?;
                if let Some(id) = id {
                    input_hashes.insert(format!("with.{key}"), id);
                }
            }
            with.insert(key.clone(), v);
        }
        let mut inputs = BTreeMap::new();
        for (key, (raw, pos)) in &s.inputs {
            let v = interp::substitute_params(&Value::String(raw.clone()), &params)
                .map_err(|m| spec_error(pipeline, *pos, &name, m))?;
            let text = crate::value::display(&v);
            if holds_stage_ref(&v) {
                // A need's output: its fingerprint stands for the content.
                input_hashes.insert(key.clone(), format!("ref:{text}"));
            } else {
                let path = workdir.join(&text);
                let found = memo.identify(&path).and_then(|id| {
                    id.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
                });
                let hash = found.map_err(|source| Error::Input {
                    span: pipeline.span(*pos),
                    stage: name.clone(),
                    name: key.clone(),
                    path: PathBuf::from(&text),
                    source,
                })?;
                input_hashes.insert(key.clone(), hash);
            }
            inputs.insert(key.clone(), text);
        }
        let need_fps = needs
            .iter()
            .filter_map(|n| planned.get(n).map(|p| (n.clone(), p.fingerprint.clone())))
            .collect();
        let fingerprint_input = FingerprintInput {
            kind: s.uses.clone(),
            kind_version: kind.version(),
            params: with.clone(),
            needs: need_fps,
            inputs: input_hashes,
            outputs: s.outputs.clone(),
        };
        let stage = PlannedStage {
            name: name.clone(),
            kind: s.uses.clone(),
            kind_version: kind.version(),
            needs,
            params: with,
            inputs,
            outputs: s.outputs.clone(),
            gpu: s.gpu,
            fingerprint: fingerprint_input.fingerprint(),
            fingerprint_input,
        };
        planned.insert(name, stage.clone());
        stages.push(stage);
    }
    let config = serde_json::json!({
        "pipeline": pipeline.name,
        "params": params,
        "stages": stages
            .iter()
            .map(|s| (s.name.clone(), serde_json::to_value(&s.fingerprint_input).expect("serializable")))
            .collect::<serde_json::Map<_, _>>(),
    });
    let config_hash = blake3::hash(config.to_string().as_bytes())
        .to_hex()
        .to_string();
    Ok(Plan {
        pipeline: pipeline.clone(),
        params,
        stages,
        config,
        config_hash,
    })
}

fn holds_stage_ref(v: &Value) -> bool {
    interp::references(v)
        .map(|r| r.iter().any(|p| matches!(p, Piece::Stage { .. })))
        .unwrap_or(false)
}

fn spec_error(pipeline: &Pipeline, pos: crate::yaml::Pos, stage: &str, message: String) -> Error {
    Error::Spec(crate::error::SpecErrors(vec![crate::error::Diagnostic {
        span: pipeline.span(pos),
        stage: Some(stage.to_owned()),
        message,
    }]))
}

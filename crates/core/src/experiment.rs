//! Experiments: a pipeline plus fixed parameter overrides and a sweep, expanded into trials.
//!
//! ```yaml
//! name: quickstart
//! pipeline: pipelines/quickstart.yaml      # relative to the project root
//! params: {steps: 20}                      # fixed overrides for every trial
//! sweep:
//!   method: grid                           # or random
//!   params:
//!     alpha: [0.0, 0.5, 1.0]
//!     temperature: [1, 2]
//!     lr: {min: 0.0001, max: 0.001, log: true}   # a range: random sweeps only
//!   samples: 4                             # random: trials drawn
//!   seed: 0                                # random: the draw's seed
//!   seeds: [33, 34]                        # repeat every trial with these seeds
//!   seed_param: seed                       # the pipeline param the seeds go to (default seed)
//! lanes: 1                                 # trials running at once
//! ```
//!
//! Problems are reported like pipeline problems: `file:line:col: message`, every one found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Diagnostic, Error, SpecErrors};
use crate::spec::{Pipeline, closest};
use crate::yaml::{self, Node, NodeKind, Pos, Span};

/// How a sweep picks trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every combination of the listed values.
    Grid,
    /// `samples` draws.
    Random,
}

/// The values one swept parameter takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// These values.
    List(Vec<Value>),
    /// A range (random sweeps): uniform, or log-uniform with `log`; rounded with `int`.
    Range {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
        /// Log-uniform.
        log: bool,
        /// Whole numbers.
        int: bool,
    },
}

/// A parsed experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The pipeline file, relative to the project root.
    pub pipeline: PathBuf,
    /// Fixed overrides, with where each was written.
    pub params: Vec<(String, Value, Pos)>,
    /// Sweep method.
    pub method: Method,
    /// Swept parameters in file order, with where each was written.
    pub sweep: Vec<(String, Values, Pos)>,
    /// Random sweeps: how many trials.
    pub samples: usize,
    /// Random sweeps: the seed of the draw.
    pub seed: u64,
    /// Seeds every trial is repeated with (empty: no repeats).
    pub seeds: Vec<Value>,
    /// The param the seeds go to.
    pub seed_param: (String, Pos),
    /// Trials running at once.
    pub lanes: usize,
    /// The metric that ranks the trials and colours the report's heatmap (`stage.metric`;
    /// none: the report's default).
    pub metric: Option<String>,
    /// Where `kiln sweep` runs the trials (`executor:`; none: here, in lanes).
    pub executor: Option<ExecutorSpec>,
    /// blake3 of the file.
    pub spec_hash: String,
}

/// `executor:`: where a sweep's trials run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorSpec {
    /// Here, `lanes` at a time (the default).
    Local,
    /// On a Slurm cluster, as a job array.
    Slurm(crate::sweep::SlurmConfig),
}

/// Reads `executor:`: `local`, `slurm`, or a mapping with `kind: slurm` and job options.
fn parse_executor(node: &Node, say: &mut dyn FnMut(Pos, String)) -> Option<ExecutorSpec> {
    let kind = match &node.kind {
        NodeKind::Scalar(s, _) => s.clone(),
        NodeKind::Map(_) => node.get("kind").map_or_else(
            || "slurm".to_owned(),
            |(_, k)| crate::value::display(&to_value(k)),
        ),
        _ => {
            say(
                node.pos,
                "executor must be local, slurm, or a mapping with kind: slurm".into(),
            );
            return None;
        }
    };
    match kind.as_str() {
        "local" => return Some(ExecutorSpec::Local),
        "slurm" => {}
        other => {
            say(
                node.pos,
                format!("executor kind must be local or slurm, not {other:?}"),
            );
            return None;
        }
    }
    let mut config = crate::sweep::SlurmConfig::default();
    for (key, pos, value) in node.entries() {
        if !EXECUTOR.contains(&key.as_str()) {
            let hint = closest(key, EXECUTOR.iter().copied())
                .map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"));
            say(*pos, format!("unknown key {key:?} under executor{hint}"));
            continue;
        }
        let v = to_value(value);
        let text = || match &v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let count = || v.as_u64().and_then(|n| u32::try_from(n).ok());
        let list = || match &v {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect(),
            Value::String(s) => Some(vec![s.clone()]),
            _ => None,
        };
        let ok = match key.as_str() {
            "kind" => true,
            "partition" => text().map(|t| config.partition = Some(t)).is_some(),
            "mem" => text().map(|t| config.mem = Some(t)).is_some(),
            "time" => text().map(|t| config.time = Some(t)).is_some(),
            "account" => text().map(|t| config.account = Some(t)).is_some(),
            "gpus" => count().map(|n| config.gpus = n).is_some(),
            "cpus" => count()
                .filter(|n| *n >= 1)
                .map(|n| config.cpus = Some(n))
                .is_some(),
            "array_parallelism" => count()
                .filter(|n| *n >= 1)
                .map(|n| config.array_parallelism = Some(n))
                .is_some(),
            "sbatch_args" => list().map(|l| config.sbatch_args = l).is_some(),
            _ => list().map(|l| config.setup = l).is_some(),
        };
        if !ok {
            say(*pos, format!("executor.{key}: {} is not a valid value", v));
        }
    }
    Some(ExecutorSpec::Slurm(config))
}

/// One trial: the overrides its run gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Its number in the sweep, from 0.
    pub index: usize,
    /// Every override: the experiment's params, then the swept values.
    pub params: BTreeMap<String, Value>,
}

const TOP: &[&str] = &[
    "name",
    "description",
    "pipeline",
    "params",
    "sweep",
    "lanes",
    "metric",
    "executor",
];
const EXECUTOR: &[&str] = &[
    "kind",
    "partition",
    "gpus",
    "cpus",
    "mem",
    "time",
    "account",
    "array_parallelism",
    "sbatch_args",
    "setup",
];
const SWEEP: &[&str] = &["method", "params", "samples", "seed", "seeds", "seed_param"];
const RANGE: &[&str] = &["min", "max", "log", "int"];

/// A scalar's value as YAML would type it (quoted scalars are strings).
fn scalar(text: &str, quoted: bool) -> Value {
    if quoted {
        return Value::String(text.to_owned());
    }
    match text {
        "true" | "True" => return Value::Bool(true),
        "false" | "False" => return Value::Bool(false),
        "null" | "~" | "" => return Value::Null,
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

fn to_value(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Scalar(s, q) => scalar(s, *q),
        NodeKind::Seq(items) => Value::Array(items.iter().map(to_value).collect()),
        NodeKind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, _, v)| (k.clone(), to_value(v)))
                .collect(),
        ),
        NodeKind::Other => Value::Null,
    }
}

/// Reads and parses an experiment file.
///
/// # Errors
/// An unreadable file, or [`Error::Spec`] with every problem.
pub fn load(path: &Path) -> Result<Experiment, Error> {
    let source = yaml::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &source)
}

/// Parses experiment text as if read from `path`.
///
/// # Errors
/// [`Error::Spec`] with every problem found.
#[allow(clippy::too_many_lines)]
pub fn parse(path: &Path, source: &str) -> Result<Experiment, Error> {
    let mut diags = Vec::new();
    let mut say = |pos: Pos, message: String| {
        diags.push(Diagnostic {
            span: Span {
                path: path.to_owned(),
                pos,
            },
            stage: None,
            message,
        });
    };
    let tree = match yaml::parse(source) {
        Ok(t) => t,
        Err(e) => {
            say(e.pos, format!("invalid YAML: {}", e.message));
            return Err(Error::Spec(SpecErrors(diags)));
        }
    };
    let unknown = |node: &Node, allowed: &[&str], at: &str, say: &mut dyn FnMut(Pos, String)| {
        for (key, pos, _) in node.entries() {
            if !allowed.contains(&key.as_str()) {
                let hint = closest(key, allowed.iter().copied())
                    .map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"));
                say(*pos, format!("unknown key {key:?}{at}{hint}"));
            }
        }
    };
    if !matches!(tree.kind, NodeKind::Map(_)) {
        say(
            tree.pos,
            "an experiment is a mapping with name, pipeline and sweep".into(),
        );
        return Err(Error::Spec(SpecErrors(diags)));
    }
    unknown(&tree, TOP, "", &mut say);
    let text = |key: &str, say: &mut dyn FnMut(Pos, String)| -> Option<String> {
        match tree.get(key) {
            Some((
                _,
                Node {
                    kind: NodeKind::Scalar(s, _),
                    ..
                },
            )) if !s.is_empty() => Some(s.clone()),
            Some((pos, _)) => {
                say(*pos, format!("{key} must be text"));
                None
            }
            None => {
                say(Pos { line: 1, col: 1 }, format!("missing key {key:?}"));
                None
            }
        }
    };
    let name = text("name", &mut say).unwrap_or_default();
    let pipeline = text("pipeline", &mut say).unwrap_or_default();
    let mut params = Vec::new();
    if let Some((pos, node)) = tree.get("params") {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (k, p, v) in entries {
                    params.push((k.clone(), to_value(v), *p));
                }
            }
            _ => say(*pos, "params must be a mapping of param: value".into()),
        }
    }
    let metric = match tree.get("metric") {
        None => None,
        Some((_, _)) => text("metric", &mut say),
    };
    let lanes = match tree.get("lanes") {
        None => 1,
        Some((pos, node)) => match to_value(node).as_i64() {
            Some(n) if n >= 1 => n as usize,
            _ => {
                say(
                    *pos,
                    format!("lanes must be a whole number ≥ 1, not {}", to_value(node)),
                );
                1
            }
        },
    };
    let executor = tree
        .get("executor")
        .and_then(|(_, node)| parse_executor(node, &mut say));
    let mut method = Method::Grid;
    let mut sweep = Vec::new();
    let (mut samples, mut seed, mut seeds) = (0usize, 0u64, Vec::new());
    let mut seed_param = ("seed".to_owned(), Pos::default());
    match tree.get("sweep") {
        None => say(Pos { line: 1, col: 1 }, "missing key \"sweep\"".into()),
        Some((pos, node)) if !matches!(node.kind, NodeKind::Map(_)) => {
            say(*pos, "sweep must be a mapping (method, params, …)".into());
        }
        Some((_, node)) => {
            unknown(node, SWEEP, " under sweep", &mut say);
            if let Some((pos, m)) = node.get("method") {
                match to_value(m).as_str() {
                    Some("grid") => method = Method::Grid,
                    Some("random") => method = Method::Random,
                    _ => say(
                        *pos,
                        format!("sweep.method must be grid or random, not {}", to_value(m)),
                    ),
                }
            }
            if let Some((pos, n)) = node.get("samples") {
                match to_value(n).as_i64() {
                    Some(k) if k >= 1 => samples = k as usize,
                    _ => say(*pos, "sweep.samples must be a whole number ≥ 1".into()),
                }
            }
            if let Some((pos, n)) = node.get("seed") {
                match to_value(n).as_u64() {
                    Some(k) => seed = k,
                    None => say(*pos, "sweep.seed must be a whole number".into()),
                }
            }
            if let Some((pos, n)) = node.get("seeds") {
                match to_value(n) {
                    Value::Array(list) if !list.is_empty() => seeds = list,
                    _ => say(*pos, "sweep.seeds must be a non-empty list".into()),
                }
            }
            if let Some((pos, n)) = node.get("seed_param") {
                match to_value(n) {
                    Value::String(s) => seed_param = (s, *pos),
                    _ => say(*pos, "sweep.seed_param must be a param name".into()),
                }
            }
            match node.get("params") {
                None => say(node.pos, "sweep needs params: the values to sweep".into()),
                Some((pos, p)) => match &p.kind {
                    NodeKind::Map(entries) if !entries.is_empty() => {
                        for (k, kpos, v) in entries {
                            match &v.kind {
                                NodeKind::Seq(items) if items.is_empty() => {
                                    say(
                                        *kpos,
                                        format!("sweep param {k:?}: the value list is empty"),
                                    );
                                }
                                NodeKind::Seq(items) => {
                                    sweep.push((
                                        k.clone(),
                                        Values::List(items.iter().map(to_value).collect()),
                                        *kpos,
                                    ));
                                }
                                NodeKind::Map(_) => {
                                    unknown(v, RANGE, &format!(" in the range of {k:?}"), &mut say);
                                    let num = |key: &str| {
                                        v.get(key).and_then(|(_, n)| to_value(n).as_f64())
                                    };
                                    let flag = |key: &str| {
                                        v.get(key)
                                            .and_then(|(_, n)| to_value(n).as_bool())
                                            .unwrap_or(false)
                                    };
                                    match (num("min"), num("max")) {
                                        (Some(min), Some(max))
                                            if min <= max && (!flag("log") || min > 0.0) =>
                                        {
                                            sweep.push((
                                                k.clone(),
                                                Values::Range {
                                                    min,
                                                    max,
                                                    log: flag("log"),
                                                    int: flag("int"),
                                                },
                                                *kpos,
                                            ));
                                        }
                                        (Some(_), Some(_)) => say(
                                            *kpos,
                                            format!(
                                                "sweep param {k:?}: the range needs min ≤ max (and min > 0 with log)"
                                            ),
                                        ),
                                        _ => say(
                                            *kpos,
                                            format!(
                                                "sweep param {k:?}: a range needs numbers min and max"
                                            ),
                                        ),
                                    }
                                }
                                _ => say(
                                    *kpos,
                                    format!(
                                        "sweep param {k:?}: give a list of values or a range {{min, max}}"
                                    ),
                                ),
                            }
                        }
                    }
                    _ => say(
                        *pos,
                        "sweep.params must map each swept param to its values".into(),
                    ),
                },
            }
        }
    }
    if method == Method::Grid {
        for (k, v, pos) in &sweep {
            if matches!(v, Values::Range { .. }) {
                say(
                    *pos,
                    format!("sweep param {k:?}: a range needs method: random (a grid takes lists)"),
                );
            }
        }
    } else if samples == 0 {
        say(
            tree.get("sweep").map_or(Pos::default(), |(p, _)| *p),
            "sweep.samples is required with method: random".into(),
        );
    }
    if !diags.is_empty() {
        return Err(Error::Spec(SpecErrors(diags)));
    }
    Ok(Experiment {
        name,
        path: path.to_owned(),
        pipeline: PathBuf::from(pipeline),
        params,
        method,
        sweep,
        samples,
        seed,
        seeds,
        seed_param,
        lanes,
        metric,
        executor,
        spec_hash: blake3::hash(source.as_bytes()).to_hex().to_string(),
    })
}

impl Experiment {
    /// Checks the experiment against its pipeline: every overridden or swept param (and the
    /// seed param, with seeds) must be one the pipeline declares.
    ///
    /// # Errors
    /// [`Error::Spec`] naming each unknown param where it was written.
    pub fn check(&self, pipeline: &Pipeline) -> Result<(), Error> {
        let names: Vec<&str> = pipeline.params.iter().map(|p| p.name.as_str()).collect();
        let mut diags = Vec::new();
        let mut check = |name: &str, pos: Pos, what: &str| {
            if !names.contains(&name) {
                let hint = closest(name, names.iter().copied())
                    .map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"));
                diags.push(Diagnostic {
                    span: Span {
                        path: self.path.clone(),
                        pos,
                    },
                    stage: None,
                    message: format!(
                        "{what} {name:?} is not a param of pipeline {}{hint}",
                        pipeline.path.display()
                    ),
                });
            }
        };
        for (name, _, pos) in &self.params {
            check(name, *pos, "param");
        }
        for (name, _, pos) in &self.sweep {
            check(name, *pos, "sweep param");
        }
        if !self.seeds.is_empty() {
            check(&self.seed_param.0, self.seed_param.1, "seed_param");
        }
        if diags.is_empty() {
            Ok(())
        } else {
            Err(Error::Spec(SpecErrors(diags)))
        }
    }

    /// The trials, in order: grid combinations (the first param varying slowest) or random
    /// draws, each repeated for every seed.
    pub fn trials(&self) -> Vec<Trial> {
        let base: BTreeMap<String, Value> = self
            .params
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let mut combos: Vec<BTreeMap<String, Value>> = vec![base];
        match self.method {
            Method::Grid => {
                for (name, values, _) in &self.sweep {
                    let Values::List(list) = values else { continue };
                    combos = combos
                        .into_iter()
                        .flat_map(|c| {
                            list.iter().map(move |v| {
                                let mut c = c.clone();
                                c.insert(name.clone(), v.clone());
                                c
                            })
                        })
                        .collect();
                }
            }
            Method::Random => {
                let base = combos.pop().unwrap_or_default();
                let mut state = self.seed ^ 0x9E37_79B9_7F4A_7C15;
                let mut next = move || {
                    // SplitMix64.
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^ (z >> 31)
                };
                for _ in 0..self.samples {
                    let mut c = base.clone();
                    for (name, values, _) in &self.sweep {
                        let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                        let v = match values {
                            Values::List(list) => {
                                list[((u * list.len() as f64) as usize).min(list.len() - 1)].clone()
                            }
                            Values::Range { min, max, log, int } => {
                                let x = if *log {
                                    (min.ln() + u * (max.ln() - min.ln())).exp()
                                } else {
                                    min + u * (max - min)
                                };
                                if *int {
                                    Value::from(x.round() as i64)
                                } else {
                                    serde_json::Number::from_f64(x)
                                        .map_or(Value::Null, Value::Number)
                                }
                            }
                        };
                        c.insert(name.clone(), v);
                    }
                    combos.push(c);
                }
            }
        }
        let mut trials = Vec::new();
        for c in combos {
            if self.seeds.is_empty() {
                trials.push(c);
            } else {
                for s in &self.seeds {
                    let mut c = c.clone();
                    c.insert(self.seed_param.0.clone(), s.clone());
                    trials.push(c);
                }
            }
        }
        trials
            .into_iter()
            .enumerate()
            .map(|(index, params)| Trial { index, params })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Experiment, Error> {
        parse(Path::new("e.yaml"), text)
    }

    const BASE: &str = "name: e\npipeline: p.yaml\nsweep:\n  params:\n    a: [1, 2]\n";

    #[test]
    fn executor_takes_slurm_job_options() {
        let e = parse_text(&format!(
            "{BASE}executor:\n  kind: slurm\n  partition: gpu\n  gpus: 2\n  cpus: 8\n  mem: 32G\n  time: \"12:00:00\"\n  account: lab\n  array_parallelism: 4\n  sbatch_args: [--qos=normal]\n  setup: [module load cuda]\n"
        ))
        .expect("valid");
        let Some(ExecutorSpec::Slurm(c)) = e.executor else {
            panic!("not slurm: {:?}", e.executor)
        };
        assert_eq!(c.partition.as_deref(), Some("gpu"));
        assert_eq!((c.gpus, c.cpus, c.array_parallelism), (2, Some(8), Some(4)));
        assert_eq!(
            (c.mem.as_deref(), c.time.as_deref()),
            (Some("32G"), Some("12:00:00"))
        );
        assert_eq!(c.account.as_deref(), Some("lab"));
        assert_eq!(c.sbatch_args, ["--qos=normal"]);
        assert_eq!(c.setup, ["module load cuda"]);
        let e = parse_text(&format!("{BASE}executor: local\n")).expect("valid");
        assert_eq!(e.executor, Some(ExecutorSpec::Local));
        assert_eq!(parse_text(BASE).expect("valid").executor, None);
    }

    #[test]
    fn executor_mistakes_are_named_where_written() {
        let err = parse_text(&format!(
            "{BASE}executor:\n  kind: slurm\n  partiton: gpu\n  cpus: 0\n  gpus: two\n"
        ))
        .expect_err("invalid")
        .to_string();
        assert!(
            err.contains(
                "e.yaml:8:3: unknown key \"partiton\" under executor (did you mean \"partition\"?)"
            ),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:9:3: executor.cpus: 0 is not a valid value"),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:10:3: executor.gpus: \"two\" is not a valid value"),
            "{err}"
        );
        let err = parse_text(&format!("{BASE}executor: kubernetes\n"))
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("executor kind must be local or slurm"),
            "{err}"
        );
    }
}

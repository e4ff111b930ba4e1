//! Stage fingerprints: what makes a stage's outputs what they are.
//!
//! A fingerprint is the blake3 hash of the canonical JSON of a [`FingerprintInput`]:
//!
//! | enters the fingerprint | why |
//! | --- | --- |
//! | the stage kind and its version | a new version of a kind computes something else |
//! | the resolved `with:` params (`${param}` substituted) | they are what the stage computes from |
//! | the fingerprints of its needs, by name | a changed need means changed inputs downstream |
//! | blake3 of each declared input file or directory | the data itself, wherever it lives |
//! | the same for each `with:` param of type `path` naming an existing file or directory (as `with.<key>`) | a stage reads it, declared or not |
//! | the declared outputs | renaming an output changes the entry's layout |
//!
//! | never enters | why |
//! | --- | --- |
//! | file modification times | touching a file changes nothing it holds (mtimes only memoize hashes) |
//! | absolute paths, the project or cache location | a moved checkout keeps its cache |
//! | `${stages.X.outputs.Y}` paths | the need's fingerprint already stands for them |
//! | `--jobs`, `--gpus`, the store, the stage's name | they change how or where, not what |
//!
//! The input is stored with each cache entry and each stage execution in the store, so
//! `kiln status` can say *why* a stage is stale ([`StaleReason`]).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::value::display;

/// Everything a stage's fingerprint is computed from (see the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FingerprintInput {
    /// Stage kind (`uses`).
    pub kind: String,
    /// The kind's version.
    pub kind_version: u32,
    /// Resolved params.
    pub params: BTreeMap<String, Value>,
    /// Fingerprints of needs, by stage name.
    pub needs: BTreeMap<String, String>,
    /// Content hashes of declared inputs, by input name.
    pub inputs: BTreeMap<String, String>,
    /// Declared outputs: name → relative path.
    pub outputs: BTreeMap<String, String>,
}

impl FingerprintInput {
    /// The fingerprint: blake3 (hex) of the canonical JSON.
    pub fn fingerprint(&self) -> String {
        // serde_json writes BTreeMaps in key order, so the JSON is canonical.
        let json = serde_json::to_vec(self).expect("a FingerprintInput always serializes");
        blake3::hash(&json).to_hex().to_string()
    }
}

/// Why a stage will execute instead of coming from the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum StaleReason {
    /// No execution of this stage is recorded.
    NeverRun,
    /// `--force` named it or one of its needs.
    Forced,
    /// The same fingerprint was executed before but its cache entry is gone.
    EntryMissing,
    /// `uses:` changed.
    KindChanged {
        /// Before.
        old: String,
        /// Now.
        new: String,
    },
    /// The kind's version changed.
    KindVersion {
        /// Before.
        old: u32,
        /// Now.
        new: u32,
    },
    /// A param was added, removed or changed.
    ParamChanged {
        /// Its key.
        key: String,
        /// Before (none: added).
        old: Option<Value>,
        /// Now (none: removed).
        new: Option<Value>,
    },
    /// A declared input's or path param's content changed (or it was added or removed).
    InputChanged {
        /// The input's name (`with.<key>` for a path param).
        name: String,
        /// The path, for a path param.
        path: Option<String>,
        /// Its content hash before and now (none: absent).
        hashes: (Option<String>, Option<String>),
        /// For a directory, its files that changed (filled in by whoever has the manifests).
        files: Vec<String>,
    },
    /// A need will re-execute or was re-executed since.
    NeedRerun {
        /// The need.
        stage: String,
    },
    /// The declared outputs changed.
    OutputsChanged,
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or_else(|| "(unset)".to_owned(), display);
        let short = |v: &Option<Value>| {
            let text = show(v);
            text.len() <= 40 && !text.contains('\n')
        };
        match self {
            Self::NeverRun => f.write_str("never run"),
            Self::Forced => f.write_str("forced"),
            Self::EntryMissing => f.write_str("cache entry missing"),
            Self::KindChanged { old, new } => write!(f, "kind changed: {old} → {new}"),
            Self::KindVersion { old, new } => write!(f, "kind version changed: {old} → {new}"),
            Self::ParamChanged { key, old, new } if short(old) && short(new) => {
                write!(f, "param {key} changed: {} → {}", show(old), show(new))
            }
            Self::ParamChanged { key, .. } => write!(f, "param {key} changed"),
            Self::InputChanged {
                name, path, files, ..
            } => {
                let path = path.as_ref().map_or_else(String::new, |p| format!(" {p}"));
                let label = if name.starts_with("with.") {
                    name.clone()
                } else {
                    format!("input {name}")
                };
                write!(f, "{label}{path} changed")?;
                match files.len() {
                    0 => Ok(()),
                    1..=3 => write!(f, " ({})", files.join(", ")),
                    n => write!(f, " ({}, and {} more)", files[..3].join(", "), n - 3),
                }
            }
            Self::NeedRerun { stage } => write!(f, "need {stage} changed"),
            Self::OutputsChanged => f.write_str("declared outputs changed"),
        }
    }
}

/// The differences between a previous fingerprint input and the current one.
pub fn stale_reasons(old: &FingerprintInput, new: &FingerprintInput) -> Vec<StaleReason> {
    let mut out = Vec::new();
    if old.kind != new.kind {
        out.push(StaleReason::KindChanged {
            old: old.kind.clone(),
            new: new.kind.clone(),
        });
    } else if old.kind_version != new.kind_version {
        out.push(StaleReason::KindVersion {
            old: old.kind_version,
            new: new.kind_version,
        });
    }
    let keys: std::collections::BTreeSet<&String> =
        old.params.keys().chain(new.params.keys()).collect();
    for key in keys {
        let (o, n) = (old.params.get(key), new.params.get(key));
        if o != n {
            out.push(StaleReason::ParamChanged {
                key: key.clone(),
                old: o.cloned(),
                new: n.cloned(),
            });
        }
    }
    let names: std::collections::BTreeSet<&String> =
        old.inputs.keys().chain(new.inputs.keys()).collect();
    for name in names {
        let (o, n) = (old.inputs.get(name), new.inputs.get(name));
        if o != n {
            let path = name
                .strip_prefix("with.")
                .and_then(|key| new.params.get(key).or_else(|| old.params.get(key)))
                .map(display);
            out.push(StaleReason::InputChanged {
                name: name.clone(),
                path,
                hashes: (o.cloned(), n.cloned()),
                files: Vec::new(),
            });
        }
    }
    let needs: std::collections::BTreeSet<&String> =
        old.needs.keys().chain(new.needs.keys()).collect();
    for stage in needs {
        if old.needs.get(stage) != new.needs.get(stage) {
            out.push(StaleReason::NeedRerun {
                stage: stage.clone(),
            });
        }
    }
    if old.outputs != new.outputs {
        out.push(StaleReason::OutputsChanged);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> FingerprintInput {
        FingerprintInput {
            kind: "shell".into(),
            kind_version: 1,
            params: BTreeMap::from([
                ("run".into(), json!("echo hi")),
                ("alpha".into(), json!(0.5)),
            ]),
            needs: BTreeMap::from([("prep".into(), "abc".into())]),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    #[test]
    fn same_input_same_fingerprint_and_any_change_changes_it() {
        let a = input();
        assert_eq!(a.fingerprint(), input().fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let mut b = input();
        b.params.insert("alpha".into(), json!(1.0));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            stale_reasons(&a, &b),
            vec![StaleReason::ParamChanged {
                key: "alpha".into(),
                old: Some(json!(0.5)),
                new: Some(json!(1.0))
            }]
        );
        assert_eq!(
            stale_reasons(&a, &b)[0].to_string(),
            "param alpha changed: 0.5 → 1.0"
        );
        let mut c = input();
        c.needs.insert("prep".into(), "def".into());
        assert_eq!(
            stale_reasons(&a, &c),
            vec![StaleReason::NeedRerun {
                stage: "prep".into()
            }]
        );
    }
}

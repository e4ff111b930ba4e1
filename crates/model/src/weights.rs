//! Hugging Face weight files, read by tensor name: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists. float32, bfloat16 and float16 tensors are converted to
//! f32. Every failure names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The weight files of a model directory, opened (memory-mapped) once.
pub struct Weights {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl Weights {
    /// Opens `dir`'s `model.safetensors`, or its shards through `model.safetensors.index.json`.
    ///
    /// # Errors
    /// No safetensors file (a `pytorch_model.bin` alone gets the conversion to do), an
    /// unreadable file, a header that does not parse, or an index naming a missing shard.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shards: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            shard_files(&index_path)?
        } else if dir.join("pytorch_model.bin").is_file() {
            return Err(Error::Weights {
                path: dir.join("pytorch_model.bin"),
                message: "kiln reads safetensors only: convert it with `python -c \"from \
                          transformers import AutoModelForCausalLM as M; \
                          M.from_pretrained('DIR').save_pretrained('DIR')\"`"
                    .into(),
            });
        } else {
            return Err(Error::Io {
                what: "model weights not found (model.safetensors or model.safetensors.index.json):",
                path: single,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        };
        let mut files = Vec::with_capacity(shards.len());
        let mut index = HashMap::new();
        for path in shards {
            let file = std::fs::File::open(&path).map_err(|source| Error::Io {
                what: "cannot open",
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is only read; kiln never writes a weight file while reading it.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
                what: "cannot map",
                path: path.clone(),
                source,
            })?;
            let names: Vec<String> = SafeTensors::deserialize(&map)
                .map_err(|e| Error::Weights {
                    path: path.clone(),
                    message: format!("cannot read: {e}"),
                })?
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            for name in names {
                index.insert(name, files.len());
            }
            files.push((path, map));
        }
        Ok(Self { files, index })
    }

    /// Whether a tensor of this name is stored.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored tensor names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Tensor `name` as f32 values and its shape.
    ///
    /// # Errors
    /// A missing tensor, or a dtype other than f32, bf16 and f16.
    pub fn get(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let Some(&file) = self.index.get(name) else {
            return Err(Error::Weights {
                path: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
                message: format!("tensor {name} is missing"),
            });
        };
        let (path, map) = &self.files[file];
        let bad = |message: String| Error::Weights {
            path: path.clone(),
            message,
        };
        let st = SafeTensors::deserialize(map).map_err(|e| bad(format!("cannot read: {e}")))?;
        let view = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "{name} is stored as {other:?}; kiln reads float32, bfloat16 and float16"
                )));
            }
        };
        Ok((values, view.shape().to_vec()))
    }

    /// Tensor `name` on `device`, checked against the `shape` the configuration needs.
    /// `transpose` reads a 2-D `[out, in]` (`nn.Linear`) weight as burn's `[in, out]`.
    ///
    /// # Errors
    /// As [`Self::get`], or a shape that is not `shape` (naming both).
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        transpose: bool,
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let (values, stored) = self.get(name)?;
        let mut want = shape.to_vec();
        if transpose && D == 2 {
            want.reverse();
        }
        if stored != want {
            let file = self.index.get(name).map(|&f| self.files[f].0.clone());
            return Err(Error::Weights {
                path: file.unwrap_or_default(),
                message: format!(
                    "weights do not fit config.json: {name} has shape {stored:?}, the configuration needs {want:?}"
                ),
            });
        }
        let tensor = Tensor::<B, D>::from_data(TensorData::new(values, want), device);
        Ok(if transpose && D == 2 {
            tensor.transpose()
        } else {
            tensor
        })
    }
}

/// The shard files an index lists, in order, each once.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        what: "cannot read",
        path: index.to_owned(),
        source,
    })?;
    let bad = |message: String| Error::Weights {
        path: index.to_owned(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("no weight_map".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("{tensor}: the file is not a string")))?;
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(bad(format!("{tensor} is in {file}, which is missing")));
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

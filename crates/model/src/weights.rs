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
        if transpose && D == 2 {
            // Transposed here, on the host: a transposed view would make every matrix product
            // with it take another path (other rounding) than the same weights after training.
            let (rows, cols) = (want[0], want[1]);
            let mut t = vec![0f32; values.len()];
            for (r, row) in values.chunks_exact(cols).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    t[c * rows + r] = *v;
                }
            }
            return Ok(Tensor::from_data(
                TensorData::new(t, shape.to_vec()),
                device,
            ));
        }
        Ok(Tensor::<B, D>::from_data(
            TensorData::new(values, want),
            device,
        ))
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

/// Tensors to write as a Hugging Face `model.safetensors` (float32), by their names there.
#[derive(Default)]
pub struct WeightsWriter {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl WeightsWriter {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `t` as `name`; `transpose` writes a burn `[in, out]` weight as `nn.Linear`'s
    /// `[out, in]`.
    pub fn tensor<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        t: Tensor<B, D>,
        transpose: bool,
    ) {
        let t = if transpose && D == 2 {
            t.transpose()
        } else {
            t
        };
        let shape = t.dims().to_vec();
        let bytes = crate::host::read_f32(t)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        self.tensors.push((name.to_owned(), shape, bytes));
    }

    /// Adds a linear layer as `name.weight` (`[out, in]`) and `name.bias`.
    pub fn linear<B: Backend>(&mut self, layer: &burn::nn::Linear<B>, name: &str) {
        self.tensor(&format!("{name}.weight"), layer.weight.val(), true);
        if let Some(bias) = &layer.bias {
            self.tensor(&format!("{name}.bias"), bias.val(), false);
        }
    }

    /// Adds a LayerNorm as `name.weight` and `name.bias`.
    pub fn layer_norm<B: Backend>(&mut self, norm: &burn::nn::LayerNorm<B>, name: &str) {
        self.tensor(&format!("{name}.weight"), norm.gamma.val(), false);
        if let Some(beta) = &norm.beta {
            self.tensor(&format!("{name}.bias"), beta.val(), false);
        }
    }

    /// Adds an RMSNorm as `name.weight`.
    pub fn rms_norm<B: Backend>(&mut self, norm: &burn::nn::RmsNorm<B>, name: &str) {
        self.tensor(&format!("{name}.weight"), norm.gamma.val(), false);
    }

    /// Writes `dir/model.safetensors` and `dir/config.json` (`config`, marked float32), each
    /// through a temporary file renamed into place, so a failure leaves no file that looks
    /// complete.
    ///
    /// # Errors
    /// The directory or a file cannot be written.
    pub fn write(self, dir: &Path, config: &serde_json::Value) -> Result<()> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Weights {
                path: dir.join("model.safetensors"),
                message: e.to_string(),
            })?;
        let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Weights {
            path: dir.join("model.safetensors"),
            message: e.to_string(),
        })?;
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            for key in ["dtype", "torch_dtype"] {
                if map.contains_key(key) {
                    map.insert(key.into(), "float32".into());
                }
            }
        }
        let text = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
        for (name, data) in [
            ("model.safetensors", bytes),
            ("config.json", text.into_bytes()),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, data).map_err(io("cannot write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
        }
        Ok(())
    }
}

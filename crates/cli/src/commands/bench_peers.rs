//! The peers of `kiln bench suite --peers`: the tools a researcher would otherwise use, run in
//! the same rounds as kiln's benchmarks so that both see the same machine. Each is a script in
//! `benches/peers/` run with the pinned virtual environment `.venv-bench`
//! (`benches/peers/setup.sh` makes it), except `dvc repro`, which is timed as a whole process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The peer tools, found in the current directory (the repository's root).
pub struct Peers {
    python: PathBuf,
    scripts: PathBuf,
    dvc: Option<DvcProject>,
}

/// A 10-stage `dvc` pipeline equivalent to the no-op benchmark's, already reproduced once.
struct DvcProject {
    dir: tempfile::TempDir,
    dvc: PathBuf,
}

/// A training peer's figures.
pub struct TrainFigures {
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// The process's peak resident memory, MiB (`None` where the system does not say).
    pub peak_mib: Option<f64>,
}

impl Peers {
    /// The peers under `root`.
    ///
    /// # Errors
    /// When `.venv-bench` or the scripts are missing, saying how to make them.
    pub fn find(root: &Path) -> Result<Self> {
        let python = root.join(".venv-bench/bin/python");
        let scripts = root.join("benches/peers");
        ensure!(
            python.is_file() && scripts.join("torch_train.py").is_file(),
            "--peers needs {} and the scripts in {}: run benches/peers/setup.sh from the \
             repository's root (just bench-peers does both)",
            python.display(),
            scripts.display()
        );
        Ok(Self {
            python,
            scripts,
            dvc: None,
        })
    }

    /// Runs a peer script and parses the JSON line it prints last.
    fn json(&self, script: &str, args: &[String]) -> Result<Value> {
        let path = self.scripts.join(script);
        let out = Command::new(&self.python)
            .arg(&path)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {} {}", self.python.display(), path.display()))?;
        ensure!(
            out.status.success(),
            "peer {} {} failed ({})",
            path.display(),
            args.join(" "),
            out.status
        );
        last_json_line(&out.stdout, &format!("peer {}", path.display()))
    }

    fn number(value: &Value, key: &str, script: &str) -> Result<f64> {
        value[key]
            .as_f64()
            .with_context(|| format!("peer {script}: no number {key:?} in {value}"))
    }

    /// PyTorch eager training (transformers' model, AdamW) on the small config (`model`
    /// `None`) or a named one, `batch` × `seq` tokens a step.
    ///
    /// # Errors
    /// When the script fails or prints no figures.
    pub fn train(
        &self,
        model: Option<&str>,
        seq: usize,
        batch: usize,
        steps: usize,
        warmup: usize,
    ) -> Result<TrainFigures> {
        let mut args = vec![
            "--seq".to_owned(),
            seq.to_string(),
            "--batch".to_owned(),
            batch.to_string(),
            "--steps".to_owned(),
            steps.to_string(),
            "--warmup".to_owned(),
            warmup.to_string(),
        ];
        if let Some(m) = model {
            args.extend(["--model".to_owned(), m.to_owned()]);
        }
        let v = self.json("torch_train.py", &args)?;
        Ok(TrainFigures {
            tokens_per_s: Self::number(&v, "tokens_per_s", "torch_train.py")?,
            peak_mib: Some(Self::number(&v, "peak_rss_mib", "torch_train.py")?),
        })
    }

    /// transformers `generate`, greedy, on the DistilGPT-2 shape, the prompts and lengths of
    /// kiln's decoding benchmarks: tokens/s with or without the KV cache, of `batch` prompts
    /// at once (left-padded as kiln's).
    ///
    /// # Errors
    /// When the script fails or prints no figure.
    pub fn generate(&self, kv_cache: bool, batch: usize) -> Result<f64> {
        use super::bench::{GENERATE_NEW, GENERATE_PROMPT};
        let args = [
            format!("--prompt={GENERATE_PROMPT}"),
            format!("--new={GENERATE_NEW}"),
            format!("--cache={}", if kv_cache { 1 } else { 0 }),
            format!("--batch={batch}"),
        ];
        let v = self.json("hf_generate.py", &args)?;
        Self::number(&v, "tokens_per_s", "hf_generate.py")
    }

    /// The research code's data path (pandas, `datasets.map` with the fast GPT-2 tokenizer,
    /// `save_to_disk`) on the same CSV: rows/s of the whole process, timed from its start to
    /// its exit as kiln's own data figure is (the interpreter's start and imports included,
    /// as kiln's start is; the script also prints the figure without them).
    ///
    /// # Errors
    /// When the script fails or prints no figure.
    pub fn data(&self, csv: &Path, tokenizer: &Path) -> Result<f64> {
        let args = [
            csv.to_string_lossy().into_owned(),
            tokenizer.to_string_lossy().into_owned(),
        ];
        let started = std::time::Instant::now();
        let v = self.json("datasets_path.py", &args)?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(Self::number(&v, "rows", "datasets_path.py")? / seconds)
    }

    /// Median wall time (ms) of `dvc repro` as a whole process on an up-to-date 10-stage
    /// pipeline (made and reproduced once on first use), over `repeat` runs.
    ///
    /// # Errors
    /// When `dvc` is missing or fails.
    pub fn dvc_noop(&mut self, repeat: usize) -> Result<f64> {
        if self.dvc.is_none() {
            self.dvc = Some(DvcProject::new(&self.python)?);
        }
        let Some(project) = &self.dvc else {
            bail!("no dvc project");
        };
        let mut times = (0..repeat.max(1))
            .map(|_| project.repro())
            .collect::<Result<Vec<f64>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

impl DvcProject {
    /// `dvc init --no-scm` and a chain of 10 `echo` stages, as `super::bench::noop_run`'s
    /// pipeline, reproduced once.
    fn new(python: &Path) -> Result<Self> {
        let dvc = python.with_file_name("dvc");
        ensure!(
            dvc.is_file(),
            "{} is missing: run benches/peers/setup.sh",
            dvc.display()
        );
        let dir = tempfile::tempdir().context("creating a scratch directory for dvc")?;
        let mut yaml = String::from("stages:\n");
        for i in 0..10 {
            yaml.push_str(&format!(
                "  s{i}:\n    cmd: echo 1-{i} > out{i}.txt\n    outs: [out{i}.txt]\n"
            ));
            if i > 0 {
                yaml.push_str(&format!("    deps: [out{}.txt]\n", i - 1));
            }
        }
        std::fs::write(dir.path().join("dvc.yaml"), yaml)?;
        let project = Self { dir, dvc };
        project.command(&["init", "--no-scm", "-q"])?;
        project.command(&["repro", "-q"])?;
        Ok(project)
    }

    fn command(&self, args: &[&str]) -> Result<()> {
        let status = Command::new(&self.dvc)
            .args(args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("running {}", self.dvc.display()))?;
        ensure!(status.success(), "dvc {} failed ({status})", args.join(" "));
        Ok(())
    }

    /// One no-op `dvc repro`, ms.
    fn repro(&self) -> Result<f64> {
        let start = Instant::now();
        self.command(&["repro", "-q"])?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }
}

/// The last line of a child process's stdout that is a JSON object, parsed; `what` names the
/// child in the error.
pub(crate) fn last_json_line(stdout: &[u8], what: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line: {text}"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: {line}"))
}

//! Command-line arguments, exactly as the user typed them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// kiln: experiment pipelines for language-model research.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// The results store: a SQLite file path, a sqlite:// URL, or a postgres:// URL (a
    /// PostgreSQL database every machine of a cluster writes to).
    #[arg(long, global = true, env = "KILN_STORE", default_value = kiln_store::DEFAULT_STORE)]
    pub store: String,
    /// The results directory (stage cache, failed stages).
    #[arg(long, global = true, env = "KILN_RESULTS", default_value = "results")]
    pub results: PathBuf,
    /// Print one plain line per event, no live display.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print events (and results) as JSON lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// Format of diagnostic logs on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--store` as messages show it (a PostgreSQL URL without its password).
    pub fn store_label(&self) -> String {
        kiln_store::display_url(&self.store)
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON objects.
    Json,
}

/// Output formats for tables.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TableFormat {
    /// An aligned table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Where `kiln sweep` runs the trials.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Here, in lanes.
    Local,
    /// On a Slurm cluster, as a job array.
    Slurm,
}

/// Graph formats for `kiln dag`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    /// An indented tree.
    Text,
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz dot.
    Dot,
}

/// Parameter overrides shared by commands that plan a pipeline.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Override a pipeline parameter: `--set alpha=0.5` (the value is read as YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files without running anything.
    Validate {
        /// Pipeline or experiment files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        set: SetArgs,
    },
    /// Run a pipeline: cached stages are skipped, the rest execute in dependency order.
    Run {
        /// The pipeline file.
        file: PathBuf,
        #[command(flatten)]
        set: SetArgs,
        /// Most stages executing at once.
        #[arg(long, short, default_value_t = 1)]
        jobs: usize,
        /// GPUs the run may use (stages declaring `resources.gpu` share them).
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Execute this stage (and its descendants) even if cached. Repeatable.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Run an experiment's sweep: every trial is a run of its pipeline, linked to the
    /// experiment in the store; finished trials are not rerun.
    Sweep {
        /// The experiment file.
        file: PathBuf,
        #[command(flatten)]
        set: SetArgs,
        /// Print the trial table and exit.
        #[arg(long)]
        dry_run: bool,
        /// Trials running at once (default: the experiment's `lanes`).
        #[arg(long)]
        lanes: Option<usize>,
        /// Most stages executing at once within a trial.
        #[arg(long, short, default_value_t = 1)]
        jobs: usize,
        /// GPUs the sweep may use, shared by its lanes.
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Where the trials run (default: the experiment's `executor:`, else local). slurm
        /// submits them as a job array and returns; the store should then be a
        /// postgres:// URL every node reaches.
        #[arg(long, value_enum)]
        executor: Option<ExecutorKind>,
        /// Show each trial's state (the store's, merged with Slurm's) and exit.
        #[arg(long, conflicts_with_all = ["dry_run", "cancel"])]
        status: bool,
        /// Cancel the sweep's queued and running Slurm jobs and exit.
        #[arg(long, conflicts_with = "dry_run")]
        cancel: bool,
    },
    /// Run one trial of a registered experiment (what a Slurm task of `kiln sweep --executor
    /// slurm` runs). Done trials are not rerun; a killed one resumes from its checkpoints.
    Trial {
        /// The experiment's id in the store.
        experiment: i64,
        /// The trial's number.
        trial: usize,
        #[command(flatten)]
        set: SetArgs,
        /// Most stages executing at once.
        #[arg(long, short, default_value_t = 1)]
        jobs: usize,
    },
    /// Execute a recorded run again (every stage) and compare the metrics.
    Rerun {
        /// The run's id.
        run: i64,
        /// Most stages executing at once.
        #[arg(long, short, default_value_t = 1)]
        jobs: usize,
        /// Exit 1 when a metric value differs.
        #[arg(long)]
        expect_identical: bool,
        /// GPUs the rerun may hold at once.
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Rerun with today's configuration when it differs from the record (the pipeline
        /// file, a stage kind's version, an input or the commit changed).
        #[arg(long)]
        allow_changed: bool,
    },
    /// A sweep's report: one self-contained HTML file and a Markdown summary.
    Report {
        /// The experiment's id (`kiln sweep` prints it).
        experiment: i64,
        /// The metric that ranks trials and colours the heatmap (default: an accuracy).
        #[arg(long)]
        metric: Option<String>,
        /// Where to write (default: results/reports).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Two runs side by side: parameters and final metrics.
    Compare {
        /// The first run.
        a: i64,
        /// The second run.
        b: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Show, per stage, whether it is cached, stale (and why) or never run.
    Status {
        /// The pipeline file.
        file: PathBuf,
        #[command(flatten)]
        set: SetArgs,
    },
    /// Print a pipeline's stage graph.
    Dag {
        /// The pipeline file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
    },
    /// Run read-only SQL against the results store.
    Query {
        /// The SQL (SELECT, WITH, EXPLAIN …). Writes are refused.
        #[arg(allow_hyphen_values = true)]
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// A local web page over the results store: experiments and runs (filter, sort), a
    /// run's page (charts, stages, logs, artifacts), and compare (only the differences,
    /// overlaid curves, a sweep's parallel coordinates and heatmap). Read-only.
    Ui {
        /// The address to listen on. Anything but loopback serves the store, without
        /// authentication, to whoever can reach it.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// The port (0: any free port; the first line printed names it).
        #[arg(long, default_value_t = 8470)]
        port: u16,
        /// Open the page in a browser.
        #[arg(long)]
        open: bool,
    },
    /// List recent runs.
    Runs {
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Remove cache entries, state and failed stages' directories that no kept run needs,
    /// and say what that frees. Kept: every succeeded run and the latest run of each
    /// configuration (or the N latest runs per pipeline), and every run in progress.
    Gc {
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the entries of the N most recent runs of each pipeline and let older runs'
        /// go (succeeded or not).
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Only remove what was not used for this long: 90s, 30m, 12h, 7d, 2w. Downloads are
        /// only removed with this.
        #[arg(long, value_name = "AGE", value_parser = kiln_core::gc::parse_age)]
        older_than: Option<Duration>,
    },
    /// List the stage kinds and their parameters.
    Stages,
    /// List the devices this build and machine offer (`device:` values).
    Devices,
    /// Inspect datasets.
    Data {
        /// What to do.
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The most probable next tokens after a text.
    Topk {
        /// Model directory (Hugging Face layout with a tokenizer).
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// How many.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Negative log-likelihood of a text in nats (BOS prefixed), or of a text given another.
    Nll {
        /// Model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// Score the text as a continuation of this one (joined with a space).
        #[arg(long, allow_hyphen_values = true)]
        given: Option<String>,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Generate text: sampling with temperature and top-k, or product of experts.
    Generate {
        /// Model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The prompt.
        #[arg(long, allow_hyphen_values = true, required_unless_present = "poe")]
        prompt: Option<String>,
        /// A product-of-experts context (repeat: each keeps its own context; tokens come from
        /// the sum of their logits).
        #[arg(long, allow_hyphen_values = true, conflicts_with = "prompt")]
        poe: Vec<String>,
        /// Wrap the prompt in the Alpaca instruction template.
        #[arg(long)]
        instruction: bool,
        /// Temperature (0: greedy).
        #[arg(long, short, default_value_t = 1.0)]
        temperature: f64,
        /// Sample among the k most probable tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Most tokens to generate.
        #[arg(long, short = 'n', default_value_t = 50)]
        max_new_tokens: usize,
        /// Re-read the whole context for every token (no KV cache).
        #[arg(long)]
        no_cache: bool,
    },
    /// Iterative-generation trace: at every prefix length of the text, the greedy next token
    /// next to the text's own next token.
    Iterate {
        /// Model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The text (special tokens such as <s> are read as tokens).
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Per-token sentiment trace: p(positive) vs p(negative) label token at every position.
    Trace {
        /// Model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// The negative and positive label tokens.
        #[arg(long, num_args = 2, value_names = ["NEGATIVE", "POSITIVE"], default_values = [" bad", " good"])]
        labels: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
        /// Also draw the trace to this file (.svg or .png).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Sentiment accuracy, two-way accuracy, loss and confusion matrix on a dataset split.
    Sentiment {
        /// Model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// Classification dataset directory (a data.sentiment140 output).
        #[arg(long, short)]
        data: PathBuf,
        /// The split.
        #[arg(long, default_value = "val")]
        split: String,
        /// Text the model reads after each row before it is scored (e.g. " I feel").
        #[arg(long)]
        prompt: Option<String>,
    },
    /// The internalization gap for a text: teacher (text + prompt) against student (text).
    Gap {
        /// The student's model directory.
        #[arg(long, short)]
        model: PathBuf,
        /// Where the model runs.
        #[command(flatten)]
        on: DeviceArgs,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The teacher's model directory.
        #[arg(long)]
        teacher: PathBuf,
        /// The prompt the teacher reads after the text.
        #[arg(long, allow_hyphen_values = true)]
        prompt: String,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Show how a tokenizer splits text: ids and tokens.
    Tokenize {
        /// A tokenizer.json, or a directory with tokenizer.json or vocab.json + merges.txt.
        #[arg(long, short)]
        tokenizer: PathBuf,
        /// How the tokenizer reads the text.
        #[command(flatten)]
        tok: TokArgs,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure kiln's own overheads and record them in the store.
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = BenchKind::All)]
        which: BenchKind,
        /// Metric rows for the ingest and last-value benchmarks.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Repetitions of the no-op run.
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// Timed steps of the training benchmark.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Train this model instead of the small GPT-2: gpt2 (124M) or a named shape
        /// (smollm2-135m, qwen2-0.5b, bloom-560m, phi-2, …), randomly initialized.
        #[arg(long)]
        model: Option<String>,
        /// Tokens per row for --model.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Rows per batch for --model.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Where the training and decoding benchmarks run.
        #[command(flatten)]
        on: DeviceArgs,
        /// Run the ingest and last-value benchmarks against this store (e.g. a
        /// postgres:// URL) instead of a scratch SQLite file. Its rows stay there.
        #[arg(long, value_name = "URL")]
        ingest_into: Option<String>,
        /// suite: times each benchmark runs (the median and spread are recorded).
        #[arg(long, default_value_t = 3)]
        times: usize,
        /// suite: only these groups (noop, ingest, data, train, gpt2, smollm2, generate), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<SuiteGroup>,
        /// suite: the slowdown beyond noise that counts as a regression (exit 1).
        #[arg(long, default_value_t = 0.10)]
        threshold: f64,
        /// report: the directory for `bench.html` (default `results/reports`); ui: keep the
        /// generated store here (and reuse it when it is there).
        #[arg(long)]
        out: Option<PathBuf>,
        /// ui: runs in the generated store.
        #[arg(long, default_value_t = 10_000)]
        ui_runs: usize,
        /// train, ingest: print the figures (train: and the process's peak memory) as one JSON
        /// line, and record nothing (the suite runs these benchmarks this way, each in a
        /// process of its own).
        #[arg(long)]
        json: bool,
        /// suite: the shared data directory (the sentiment140 sample and the GPT-2 tokenizer)
        /// for the data benchmark; without it that benchmark is left out.
        #[arg(long, env = "KILN_SHARED_DATA", default_value = "../shared/data")]
        data: PathBuf,
        /// suite: also run each benchmark's peer in the same rounds (PyTorch eager, transformers
        /// `generate`, the `datasets.map` path, `dvc repro`; from `.venv-bench`, which
        /// `benches/peers/setup.sh` makes) and store kiln's ratio to it.
        #[arg(long)]
        peers: bool,
        /// suite: timed steps of the GPT-2 124M and SmolLM2-135M training benchmarks (batch 16 × seq 64;
        /// tokens/s at the median step).
        #[arg(long, default_value_t = 3)]
        gpt2_steps: usize,
    },
    /// Manage the results store itself.
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `kiln store …` commands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create the store if needed and apply any pending schema migrations (`--store`).
    Migrate,
    /// Copy every table of one store into a new, empty one (e.g. SQLite → PostgreSQL), ids
    /// preserved, verified by row counts and checksums before it commits.
    Copy {
        /// The store to read (path, sqlite:// or postgres:// URL).
        #[arg(long)]
        from: String,
        /// The store to write: created and migrated if needed; it must hold no rows.
        #[arg(long)]
        to: String,
    },
}

/// Where a command runs its model: the same texts as the stages' `device` and `precision`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// cpu, cpu:flex, cpu:ndarray, cuda[:N] or wgpu[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 (GPUs that support it) or bf16 (CUDA).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

impl DeviceArgs {
    /// The parsed device and precision.
    ///
    /// # Errors
    /// A text that is not a device or precision, naming the option.
    pub fn parse(
        &self,
    ) -> anyhow::Result<(kiln_model::device::Device, kiln_model::device::Precision)> {
        let device = self
            .device
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--device: {e}"))?;
        let precision = self
            .precision
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--precision: {e}"))?;
        Ok((device, precision))
    }
}

/// Tokenizer options of the commands that tokenize text.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TokArgs {
    /// Tokenize as if the text began with a space ("good" as " good"), as Hugging Face's
    /// `add_prefix_space`; `--add-prefix-space=false` turns a tokenizer's own off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub add_prefix_space: Option<bool>,
}

/// `kiln data …` commands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Summarize a dataset directory and decode a few rows, showing which tokens are masked.
    Inspect {
        /// The dataset directory (a data stage's output).
        dir: PathBuf,
        /// The split to show rows from.
        #[arg(long, default_value = "train")]
        split: String,
        /// How many rows to show.
        #[arg(long, short = 'n', default_value_t = 3)]
        rows: usize,
    },
}

/// kiln's own benchmarks.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchKind {
    /// All of them.
    All,
    /// A whole-process `kiln run` of an up-to-date 10-stage pipeline.
    Noop,
    /// Batched metric ingest (rows/s).
    Ingest,
    /// Last value per (run, metric) over many metric rows.
    LastMetric,
    /// Training tokens/s of a small GPT-2 (vocab 8192, 4 layers, 256 dims, seq 64, batch
    /// 32); not part of `all`.
    Train,
    /// Greedy decoding tokens/s of a DistilGPT-2-shaped model with and without the KV cache
    /// (32-token prompt, 64 new tokens); not part of `all`.
    Generate,
    /// Every benchmark above, `--times` times each, into the store's `bench_results` with
    /// the machine's fingerprint, each figure compared with that machine's history (exit 1
    /// when one is slower beyond noise and `--threshold`).
    Suite,
    /// An HTML page of every suite figure's history, per machine (`bench.html`).
    Report,
    /// `kiln ui` at scale: a generated store of `--ui-runs` runs × 20 params × 50 metrics ×
    /// 100 steps; the runs page, a filtered and sorted runs page, and a compare of 20 runs,
    /// each timed `--repeat` times over HTTP; not part of `all`.
    Ui,
}

/// The groups of `kiln bench suite --only`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SuiteGroup {
    /// The no-op `kiln run`.
    Noop,
    /// Metric ingest and the last-value query.
    Ingest,
    /// Data rows/s: the sentiment140 sample into tokenized shards, whole process.
    Data,
    /// Training tokens/s and peak memory of the small GPT-2.
    Train,
    /// Training tokens/s, achieved FLOP/s and peak memory of GPT-2 124M (batch 16 × seq 64).
    Gpt2,
    /// Training tokens/s and peak memory of SmolLM2-135M's shape (the Llama family), as GPT-2.
    Smollm2,
    /// Decoding tokens/s with and without the KV cache.
    Generate,
}

//! The Slurm executor: a sweep becomes two jobs. The first pending trial runs alone as one
//! job (it executes the stages every trial shares: preprocessing, the teacher); the other
//! pending trials are one `sbatch --array` job that starts once the first succeeded
//! (`--dependency=afterok`). Each task runs `kiln trial EXPERIMENT_ID TRIAL` against the
//! shared store and cache, so the submitting process may exit: nothing waits for it.
//!
//! Job ids go to the store (`executor_jobs`); [`status`] merges them with Slurm's own view
//! (`squeue`, then `sacct` where the cluster keeps accounting), and [`cancel`] hands them
//! to `scancel`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_store::Store;

use super::{Executor, Outcome, PlannedTrial, Sweep, TrialRunner};
use crate::error::{Error, Result};

/// What the experiment file's `executor:` says about the jobs (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// GPUs per task (`--gres=gpu:N`).
    pub gpus: u32,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem` (e.g. `16G`).
    pub mem: Option<String>,
    /// `--time` (e.g. `02:00:00`).
    pub time: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Tasks of the array running at once (`--array=…%N`).
    pub array_parallelism: Option<u32>,
    /// Further `sbatch` arguments, as written (e.g. `--qos=normal`).
    pub sbatch_args: Vec<String>,
    /// Shell lines run before kiln in each job (e.g. `module load cuda`).
    pub setup: Vec<String>,
}

/// How a job calls kiln: the same binary, project, store, results and overrides as the
/// `kiln sweep` that submitted it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The kiln binary (on a filesystem the nodes share).
    pub kiln: PathBuf,
    /// The project root.
    pub workdir: PathBuf,
    /// `--store`.
    pub store: String,
    /// `--results`.
    pub results: PathBuf,
    /// `--set` overrides, as given.
    pub sets: Vec<String>,
}

/// Submits a sweep to Slurm.
#[derive(Debug, Clone)]
pub struct SlurmExecutor {
    /// Job options.
    pub config: SlurmConfig,
    /// How jobs call kiln.
    pub invocation: Invocation,
    /// The experiment's name (job names, script names).
    pub name: String,
}

/// What was submitted.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The job of the first trial (it runs the shared stages).
    pub first: Option<String>,
    /// The array job of the other trials.
    pub array: Option<String>,
    /// Every trial's job id (`123` or `124_5`).
    pub jobs: Vec<(usize, String)>,
    /// Trials left alone because their job is still queued or running: (trial, job, state).
    pub live: Vec<(usize, String, String)>,
    /// The job scripts written.
    pub scripts: Vec<PathBuf>,
}

/// Slurm states in which a job may still run.
const LIVE: &[&str] = &[
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
];

impl Executor for SlurmExecutor {
    async fn execute(&self, sweep: &Sweep, runner: &TrialRunner) -> Result<Outcome> {
        let latest = latest_jobs(&runner.store, sweep.experiment_id).await?;
        let states = job_states(latest.values().map(String::as_str));
        let mut submission = Submission::default();
        let mut pending: Vec<&PlannedTrial> = Vec::new();
        for t in sweep.pending() {
            let job = latest.get(&t.trial.index);
            match job.and_then(|j| states.get(j)) {
                Some(state) if LIVE.contains(&state.as_str()) => submission.live.push((
                    t.trial.index,
                    job.cloned().unwrap_or_default(),
                    state.clone(),
                )),
                _ => pending.push(t),
            }
        }
        let Some((first, rest)) = pending.split_first() else {
            return Ok(Outcome::Submitted(submission));
        };
        let dir = self.scripts_dir(sweep.experiment_id);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
            what: "cannot create the job script directory",
            path: dir.clone(),
            source,
        })?;
        let script = self.write_script(
            &dir,
            sweep.experiment_id,
            &first.trial.index.to_string(),
            "first",
        )?;
        let first_job = sbatch(&[], &script)?;
        submission.scripts.push(script);
        submission.jobs.push((first.trial.index, first_job.clone()));
        // Recorded at once: whatever fails next, --status and --cancel find this job.
        runner
            .store
            .record_jobs(
                sweep.experiment_id,
                "slurm",
                &[(first.trial.index as i64, first_job.clone())],
            )
            .await?;
        if !rest.is_empty() {
            let indices: Vec<String> = rest.iter().map(|t| t.trial.index.to_string()).collect();
            let mut array = indices.join(",");
            if let Some(n) = self.config.array_parallelism {
                array.push_str(&format!("%{n}"));
            }
            let script = self.write_script(
                &dir,
                sweep.experiment_id,
                "\"$SLURM_ARRAY_TASK_ID\"",
                "array",
            )?;
            let array_job = sbatch(
                &[
                    format!("--array={array}"),
                    format!("--dependency=afterok:{first_job}"),
                    // The first trial failed: the array would wait forever; drop it.
                    "--kill-on-invalid-dep=yes".to_owned(),
                ],
                &script,
            )?;
            submission.scripts.push(script);
            let tasks: Vec<(i64, String)> = rest
                .iter()
                .map(|t| {
                    (
                        t.trial.index as i64,
                        format!("{array_job}_{}", t.trial.index),
                    )
                })
                .collect();
            runner
                .store
                .record_jobs(sweep.experiment_id, "slurm", &tasks)
                .await?;
            submission
                .jobs
                .extend(tasks.into_iter().map(|(t, j)| (t as usize, j)));
            submission.array = Some(array_job);
        }
        submission.first = Some(first_job);
        Ok(Outcome::Submitted(submission))
    }
}

impl SlurmExecutor {
    /// Where job scripts and job logs go: `results/slurm/<experiment>-<id>/`.
    pub fn scripts_dir(&self, experiment_id: i64) -> PathBuf {
        let results = if self.invocation.results.is_absolute() {
            self.invocation.results.clone()
        } else {
            self.invocation.workdir.join(&self.invocation.results)
        };
        results
            .join("slurm")
            .join(format!("{}-{experiment_id}", safe_name(&self.name)))
    }

    /// The batch script of one job; `trial` is a number or `"$SLURM_ARRAY_TASK_ID"`.
    pub fn script(&self, experiment_id: i64, trial: &str, log: &Path) -> String {
        let c = &self.config;
        let inv = &self.invocation;
        let mut s = String::from("#!/bin/bash\n");
        let mut opt = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
        opt(format!("--job-name=kiln-{}", safe_name(&self.name)));
        opt(format!("--output={}", log.display()));
        if let Some(p) = &c.partition {
            opt(format!("--partition={p}"));
        }
        if c.gpus > 0 {
            opt(format!("--gres=gpu:{}", c.gpus));
        }
        if let Some(n) = c.cpus {
            opt(format!("--cpus-per-task={n}"));
        }
        if let Some(m) = &c.mem {
            opt(format!("--mem={m}"));
        }
        if let Some(t) = &c.time {
            opt(format!("--time={t}"));
        }
        if let Some(a) = &c.account {
            opt(format!("--account={a}"));
        }
        for arg in &c.sbatch_args {
            opt(arg.clone());
        }
        s.push_str(&format!(
            "# kiln sweep --executor slurm: experiment {} (id {experiment_id}).\n\
             # A task may be killed and requeued: kiln trial resumes from the store and cache.\n\
             set -euo pipefail\ncd {}\n",
            self.name,
            quote(&inv.workdir.to_string_lossy())
        ));
        for line in &c.setup {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "exec {} --quiet --store {} --results {} trial {experiment_id} {trial}",
            quote(&inv.kiln.to_string_lossy()),
            quote(&inv.store),
            quote(&inv.results.to_string_lossy()),
        ));
        for set in &inv.sets {
            s.push_str(&format!(" --set {}", quote(set)));
        }
        s.push('\n');
        s
    }

    fn write_script(
        &self,
        dir: &Path,
        experiment_id: i64,
        trial: &str,
        which: &str,
    ) -> Result<PathBuf> {
        let log = dir.join(if which == "array" {
            "trial-%a-job-%A_%a.out".to_owned()
        } else {
            format!("trial-{trial}-job-%j.out")
        });
        let stamp = (kiln_store::unix_now() * 1000.0) as u64;
        let path = dir.join(format!("{which}-{stamp}.sbatch"));
        std::fs::write(&path, self.script(experiment_id, trial, &log)).map_err(|source| {
            Error::Write {
                what: "cannot write the job script",
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }
}

/// Submits `script`, returning the job id.
fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .map_err(|e| Error::Slurm {
            what: "sbatch".into(),
            message: format!("cannot run sbatch ({e}): is Slurm installed here, and on PATH?"),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    if !out.status.success() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Slurm {
            what: format!("sbatch {}", script.display()),
            message: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ),
        });
    }
    Ok(id)
}

/// Each trial's most recently submitted job.
async fn latest_jobs(store: &Store, experiment_id: i64) -> Result<BTreeMap<usize, String>> {
    Ok(store
        .executor_jobs(experiment_id)
        .await?
        .into_iter()
        .filter(|j| j.executor == "slurm")
        .map(|j| (j.trial as usize, j.job_id))
        .collect())
}

/// Slurm's state of each job it still knows: `squeue` (one line per array task), then
/// `sacct` for what squeue has forgotten (clusters with accounting). Unknown jobs are
/// left out.
pub fn job_states<'a>(jobs: impl Iterator<Item = &'a str>) -> BTreeMap<String, String> {
    let jobs: Vec<&str> = jobs.collect();
    let mut states = BTreeMap::new();
    if jobs.is_empty() {
        return states;
    }
    // squeue refuses the whole list when one id is unknown: ask per base job.
    let mut bases: Vec<&str> = jobs
        .iter()
        .map(|j| j.split('_').next().unwrap_or(j))
        .collect();
    bases.sort_unstable();
    bases.dedup();
    for base in &bases {
        if let Ok(out) = Command::new("squeue")
            .args(["-h", "-r", "-t", "all", "-o", "%i %T", "-j", base])
            .output()
        {
            parse_states(&String::from_utf8_lossy(&out.stdout), &mut states);
        }
    }
    let forgotten: Vec<&str> = jobs
        .iter()
        .copied()
        .filter(|j| !states.contains_key(*j))
        .collect();
    if !forgotten.is_empty()
        && let Ok(out) = Command::new("sacct")
            .args([
                "-n",
                "-P",
                "-X",
                "-o",
                "JobID,State",
                "-j",
                &forgotten.join(","),
            ])
            .output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout).replace('|', " ");
        parse_states(&text, &mut states);
    }
    states
}

/// `123_4 RUNNING` lines (`CANCELLED by 0` keeps its first word).
fn parse_states(text: &str, states: &mut BTreeMap<String, String>) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(id), Some(state)) = (words.next(), words.next()) {
            states.insert(id.to_owned(), state.to_owned());
        }
    }
}

/// One trial as `kiln sweep --status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialStatus {
    /// The trial.
    pub trial: usize,
    /// Its swept values.
    pub label: String,
    /// Its latest run and that run's status in the store.
    pub run: Option<(i64, String)>,
    /// Its latest job and Slurm's state for it (`unknown` once Slurm has forgotten it).
    pub job: Option<(String, String)>,
}

/// Every trial's state: the store's view merged with Slurm's.
///
/// # Errors
/// Store failures.
pub async fn status(
    store: &Store,
    experiment_id: i64,
    trials: &[PlannedTrial],
) -> Result<Vec<TrialStatus>> {
    let runs: BTreeMap<usize, (i64, String)> = store
        .trial_runs(experiment_id)
        .await?
        .into_iter()
        .map(|r| (r.trial as usize, (r.run_id, r.status)))
        .collect();
    let latest = latest_jobs(store, experiment_id).await?;
    let states = job_states(latest.values().map(String::as_str));
    Ok(trials
        .iter()
        .map(|t| TrialStatus {
            trial: t.trial.index,
            label: t.label.clone(),
            run: runs.get(&t.trial.index).cloned(),
            job: latest.get(&t.trial.index).map(|j| {
                (
                    j.clone(),
                    states
                        .get(j)
                        .cloned()
                        .unwrap_or_else(|| "unknown".to_owned()),
                )
            }),
        })
        .collect())
}

/// Cancels the experiment's jobs that Slurm may still run; returns their ids.
///
/// # Errors
/// Store failures, or `scancel` failing.
pub async fn cancel(store: &Store, experiment_id: i64) -> Result<Vec<String>> {
    let latest = latest_jobs(store, experiment_id).await?;
    let states = job_states(latest.values().map(String::as_str));
    let live: Vec<String> = latest
        .into_values()
        .filter(|j| states.get(j).is_some_and(|s| LIVE.contains(&s.as_str())))
        .collect();
    if live.is_empty() {
        return Ok(live);
    }
    let out = Command::new("scancel")
        .args(&live)
        .output()
        .map_err(|e| Error::Slurm {
            what: "scancel".into(),
            message: format!("cannot run scancel: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Slurm {
            what: format!("scancel {}", live.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(live)
}

/// The GPUs a Slurm task was given, as device indices from 0 (Slurm sets
/// `CUDA_VISIBLE_DEVICES` to them, so the task sees them as 0..n).
pub fn task_gpus() -> Vec<u32> {
    let var = |name: &str| std::env::var(name).ok();
    gpus_from(&[
        var("CUDA_VISIBLE_DEVICES"),
        var("SLURM_JOB_GPUS"),
        var("SLURM_STEP_GPUS"),
    ])
}

/// The first of these device lists that is set, as indices 0..n.
fn gpus_from(lists: &[Option<String>]) -> Vec<u32> {
    let n = lists.iter().flatten().next().map_or(0, |v| {
        v.split(',')
            .filter(|d| !d.trim().is_empty() && *d != "NoDevFiles")
            .count() as u32
    });
    (0..n).collect()
}

/// A word for job and file names.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor() -> SlurmExecutor {
        SlurmExecutor {
            config: SlurmConfig {
                partition: Some("gpu".into()),
                gpus: 1,
                cpus: Some(4),
                mem: Some("16G".into()),
                time: Some("02:00:00".into()),
                account: Some("lab".into()),
                array_parallelism: Some(2),
                sbatch_args: vec!["--qos=normal".into()],
                setup: vec!["module load cuda".into()],
            },
            invocation: Invocation {
                kiln: "/opt/kiln/bin/kiln".into(),
                workdir: "/home/me/my project".into(),
                store: "postgres://kiln@db/results".into(),
                results: "results".into(),
                sets: vec!["note=it's".into()],
            },
            name: "quick start".into(),
        }
    }

    #[test]
    fn scripts_carry_every_option_and_quote_what_they_must() {
        let s = executor().script(7, "\"$SLURM_ARRAY_TASK_ID\"", Path::new("/r/log-%A_%a.out"));
        let want = [
            "#!/bin/bash\n",
            "#SBATCH --job-name=kiln-quick_start\n",
            "#SBATCH --output=/r/log-%A_%a.out\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --mem=16G\n",
            "#SBATCH --time=02:00:00\n",
            "#SBATCH --account=lab\n",
            "#SBATCH --qos=normal\n",
            "cd '/home/me/my project'\n",
            "module load cuda\n",
            "exec /opt/kiln/bin/kiln --quiet --store postgres://kiln@db/results --results results trial 7 \"$SLURM_ARRAY_TASK_ID\" --set 'note=it'\\''s'\n",
        ];
        for line in want {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
    }

    #[test]
    fn squeue_and_sacct_lines_become_states() {
        let mut states = BTreeMap::new();
        parse_states("12 COMPLETED\n13_1 RUNNING\n13_2 PENDING\n", &mut states);
        parse_states("13_3 CANCELLED by 0\n", &mut states);
        assert_eq!(states.get("12").map(String::as_str), Some("COMPLETED"));
        assert_eq!(states.get("13_1").map(String::as_str), Some("RUNNING"));
        assert_eq!(states.get("13_3").map(String::as_str), Some("CANCELLED"));
        assert_eq!(states.len(), 4);
    }

    #[test]
    fn a_task_uses_the_gpus_slurm_gave_it() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(gpus_from(&[some("2,3"), some("2,3"), None]), vec![0, 1]);
        assert_eq!(gpus_from(&[None, some("5"), None]), vec![0]);
        assert_eq!(
            gpus_from(&[some(""), some("1,2")]),
            Vec::<u32>::new(),
            "hidden: none"
        );
        assert_eq!(gpus_from(&[some("NoDevFiles")]), Vec::<u32>::new());
        assert_eq!(gpus_from(&[None, None, None]), Vec::<u32>::new());
    }

    #[test]
    fn names_and_words_are_safe() {
        assert_eq!(safe_name("a b/c"), "a_b_c");
        assert_eq!(quote("plain/path-1.yaml"), "plain/path-1.yaml");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
    }
}

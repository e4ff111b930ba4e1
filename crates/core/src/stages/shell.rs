//! `shell`: runs a command with `sh -c`.
//!
//! - Working directory: the project root. Environment: `KILN_OUT` (the output directory),
//!   `KILN_STAGE`, `KILN_WORKDIR`, `KILN_INPUT_<NAME>` per declared input, `KILN_NEED_<STAGE>`
//!   per need's output directory, `KILN_PARAM_<KEY>` per extra `with:` key, and `with.env`;
//!   `CUDA_VISIBLE_DEVICES` lists the GPUs the stage holds when it declares `resources.gpu`.
//! - stdout and stderr go to the stage log. A stdout line that is a JSON object
//!   `{"metric": name, "value": x, "step": n}` is also recorded as a metric (`step` defaults
//!   to 0).
//! - Cancellation kills the command's whole process group.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::stage::{ParamSpec, Stage, StageContext, StageResult};
use crate::value::{ParamType, display};

/// The `shell` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Shell;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "run",
        ParamType::String,
        "the command, run with `sh -c` in the project root",
    ),
    ParamSpec::optional(
        "env",
        ParamType::Map,
        "extra environment variables (default none)",
    ),
];

/// Turns a name into an environment variable suffix: upper case, `_` for anything else.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A metric line on stdout.
#[derive(serde::Deserialize)]
struct MetricLine {
    metric: String,
    value: f64,
    #[serde(default)]
    step: i64,
}

impl Stage for Shell {
    fn kind(&self) -> &'static str {
        "shell"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "runs a shell command; JSON lines {\"metric\", \"value\", \"step\"} on stdout become metrics"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn accepts_extra_params(&self) -> bool {
        true
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        match params.get("run") {
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(vec![("run".to_owned(), "the command is empty".to_owned())])
            }
            _ => Ok(()),
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let script = ctx.param_str("run").ok_or("with.run is missing")?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&script)
            .current_dir(&ctx.workdir)
            .env("KILN_OUT", &ctx.out_dir)
            .env("KILN_STAGE", &ctx.stage)
            .env("KILN_WORKDIR", &ctx.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so cancellation reaches the command's children too.
            .process_group(0);
        if !ctx.gpus.is_empty() {
            // The GPUs this stage holds, and no others: two lanes never share one.
            let held: Vec<String> = ctx.gpus.iter().map(u32::to_string).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", held.join(","));
        }
        for (name, path) in &ctx.inputs {
            cmd.env(format!("KILN_INPUT_{}", env_name(name)), path);
        }
        for (name, dir) in &ctx.needs {
            cmd.env(format!("KILN_NEED_{}", env_name(name)), dir);
        }
        for (key, value) in &ctx.params {
            if key != "run" && key != "env" {
                cmd.env(format!("KILN_PARAM_{}", env_name(key)), display(value));
            }
        }
        if let Some(Value::Object(env)) = ctx.params.get("env") {
            for (k, v) in env {
                cmd.env(k, display(v));
            }
        }
        ctx.log(&format!("$ {script}"));
        let log = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&ctx.log_path)?,
        ));
        let mut child = cmd.spawn().map_err(|e| format!("cannot start sh: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let out_log = log.clone();
        let metrics = ctx.metrics.clone();
        let out_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim_start().starts_with('{')
                    && let Ok(m) = serde_json::from_str::<MetricLine>(&line)
                {
                    metrics.record(&m.metric, m.step, m.value);
                }
                let mut f = out_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = writeln!(f, "{line}");
            }
        });
        let err_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut f = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = writeln!(f, "{line}");
            }
        });
        let pid = child.id();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if ctx.cancel.is_cancelled() {
                kill_group(pid);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = out_thread.join();
        let _ = err_thread.join();
        match status {
            None => Err("cancelled: the command was killed".into()),
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(match s.code() {
                Some(code) => format!("command exited with status {code}"),
                None => "command was killed by a signal".to_owned(),
            }
            .into()),
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group we created above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::env_name;

    #[test]
    fn env_names_are_shell_safe() {
        assert_eq!(env_name("train-set.v2"), "TRAIN_SET_V2");
    }
}

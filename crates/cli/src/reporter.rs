//! Displays run events: a live indicatif display on a terminal, plain lines otherwise (or
//! with `--quiet`), JSON lines with `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_core::{Event, Reporter, RunSummary};
use kiln_store::StageStatus;

use crate::Cli;

/// The reporter the CLI uses.
pub struct CliReporter {
    mode: Mode,
}

enum Mode {
    Live {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
    Plain {
        started: Instant,
        last_progress: Mutex<HashMap<String, Instant>>,
    },
    Json,
}

/// Picks the display for the command line's flags and whether stderr is a terminal.
pub fn for_cli(cli: &Cli) -> Arc<CliReporter> {
    let mode = if cli.json {
        Mode::Json
    } else if cli.quiet || !std::io::stderr().is_terminal() {
        Mode::Plain {
            started: Instant::now(),
            last_progress: Mutex::default(),
        }
    } else {
        Mode::Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::default(),
        }
    };
    Arc::new(CliReporter { mode })
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:<20} {elapsed:>5} {wide_msg}")
        .expect("the template is valid")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix:<20} {elapsed:>5} [{bar:30}] {pos}/{len} eta {eta} {msg}",
    )
    .expect("the template is valid")
    .progress_chars("=> ")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl CliReporter {
    /// Clears the live display.
    pub fn finish(&self) {
        if let Mode::Live { multi, .. } = &self.mode {
            let _ = multi.clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.mode {
            Mode::Live { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Plain { started, .. } => {
                eprintln!("[{:>7.2}s] {text}", started.elapsed().as_secs_f64());
            }
            Mode::Json => {}
        }
    }
}

impl Reporter for CliReporter {
    fn event(&self, event: &Event) {
        if let Mode::Json = self.mode {
            if let Ok(line) = serde_json::to_string(event) {
                println!("{line}");
            }
            return;
        }
        match event {
            Event::RunStarted {
                run_id,
                pipeline,
                stages,
            } => {
                let id = run_id.map_or_else(String::new, |id| format!(" as run {id}"));
                self.line(&format!("running {pipeline} ({stages} stages){id}"));
            }
            Event::StageStarted { stage, kind, .. } => match &self.mode {
                Mode::Live { multi, bars } => {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(spinner_style());
                    bar.set_prefix(stage.clone());
                    bar.set_message(kind.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bars.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(stage.clone(), bar);
                }
                _ => self.line(&format!("started  {stage} ({kind})")),
            },
            Event::StageCached { stage, fingerprint } => {
                self.line(&format!(
                    "cached   {stage} ({})",
                    &fingerprint[..12.min(fingerprint.len())]
                ));
            }
            Event::StageProgress {
                stage,
                position,
                total,
                message,
            } => match &self.mode {
                Mode::Live { bars, .. } => {
                    let bars = bars
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(bar) = bars.get(stage) {
                        if let Some(total) = total
                            && bar.length() != Some(*total)
                        {
                            bar.set_style(bar_style());
                            bar.set_length(*total);
                        }
                        bar.set_position(*position);
                        if let Some(m) = message {
                            bar.set_message(m.clone());
                        }
                    }
                }
                Mode::Plain { last_progress, .. } => {
                    let mut last = last_progress
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let due = last
                        .get(stage)
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                    if due {
                        last.insert(stage.clone(), Instant::now());
                        drop(last);
                        let of = total.map_or_else(String::new, |t| format!("/{t}"));
                        let msg = message.as_deref().unwrap_or("");
                        self.line(&format!("progress {stage} {position}{of} {msg}"));
                    }
                }
                Mode::Json => {}
            },
            Event::StageSucceeded { stage, elapsed } => {
                self.remove_bar(stage);
                self.line(&format!("done     {stage} in {}", secs(*elapsed)));
            }
            Event::StageFailed {
                stage,
                error,
                log,
                elapsed,
            } => {
                self.remove_bar(stage);
                let log = log
                    .as_ref()
                    .map_or_else(String::new, |l| format!(" (log: {})", l.display()));
                self.line(&format!(
                    "FAILED   {stage} after {}: {error}{log}",
                    secs(*elapsed)
                ));
            }
            Event::StageWarning { stage, message } => {
                self.line(&format!("warning  {stage}: {message}"))
            }
            Event::StageSkipped { stage, reason } => {
                self.line(&format!("skipped  {stage}: {reason}"))
            }
            Event::RunFinished { .. } => {}
        }
    }
}

impl CliReporter {
    fn remove_bar(&self, stage: &str) {
        if let Mode::Live { multi, bars } = &self.mode {
            let bar = bars
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(stage);
            if let Some(bar) = bar {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
        }
    }
}

/// Prints the end-of-run summary to stderr: counts, then each failure with its log.
pub fn print_summary(summary: &RunSummary) {
    let executed = summary.count(StageStatus::Succeeded) + summary.count(StageStatus::Failed);
    let run = summary
        .run_id
        .map_or_else(String::new, |id| format!("run {id} "));
    eprintln!(
        "{run}{}: {} stage(s), {executed} executed, {} cached, {} failed, {} skipped in {}",
        summary.status.as_str(),
        summary.stages.len(),
        summary.count(StageStatus::Cached),
        summary.count(StageStatus::Failed) + summary.count(StageStatus::Interrupted),
        summary.count(StageStatus::Skipped),
        secs(summary.elapsed),
    );
    for s in &summary.stages {
        if matches!(s.status, StageStatus::Failed | StageStatus::Interrupted) {
            eprintln!(
                "  {} {}: {}",
                s.status.as_str(),
                s.name,
                s.error.as_deref().unwrap_or("")
            );
            if let Some(log) = &s.log {
                eprintln!("    log: {}", log.display());
            }
        }
    }
}

/// The sweep's own display: an overall bar over the trials and one line per lane saying which
/// trial it runs (live), or a line per trial start and end (plain).
pub struct SweepDisplay {
    reporter: Arc<CliReporter>,
    overall: Option<ProgressBar>,
    lanes: Vec<ProgressBar>,
    done: Mutex<usize>,
    total: usize,
}

impl CliReporter {
    /// A sweep display for `total` trials on `lanes` lanes.
    pub fn sweep_display(self: &Arc<Self>, total: usize, lanes: usize) -> SweepDisplay {
        let (overall, lane_bars) = match &self.mode {
            Mode::Live { multi, .. } => {
                let overall = multi.add(ProgressBar::new(total as u64));
                overall.set_style(
                    ProgressStyle::with_template(
                        "sweep {elapsed:>5} [{bar:30}] {pos}/{len} trials eta {eta}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                let lane_bars = (0..lanes)
                    .map(|i| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(spinner_style());
                        bar.set_prefix(format!("lane {}", i + 1));
                        bar.set_message("idle");
                        bar
                    })
                    .collect();
                (Some(overall), lane_bars)
            }
            _ => (None, Vec::new()),
        };
        SweepDisplay {
            reporter: self.clone(),
            overall,
            lanes: lane_bars,
            done: Mutex::new(0),
            total,
        }
    }
}

impl kiln_core::sweep::LaneDisplay for SweepDisplay {
    fn started(&self, lane: usize, trial: usize, label: &str) {
        match self.lanes.get(lane) {
            Some(bar) => {
                bar.set_message(format!("trial {trial}: {label}"));
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            None => self.reporter.line(&format!(
                "trial {trial} started on lane {}: {label}",
                lane + 1
            )),
        }
    }

    fn finished(&self, lane: usize, trial: usize, status: &str) {
        let done = {
            let mut d = self
                .done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *d += 1;
            *d
        };
        if let Some(bar) = &self.overall {
            bar.inc(1);
        }
        match self.lanes.get(lane) {
            Some(bar) => bar.set_message("idle"),
            None => self.reporter.line(&format!(
                "trial {trial} {status} ({done}/{} trials)",
                self.total
            )),
        }
    }
}

impl SweepDisplay {
    /// Removes the bars.
    pub fn finish(&self) {
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
        for bar in &self.lanes {
            bar.finish_and_clear();
        }
    }
}

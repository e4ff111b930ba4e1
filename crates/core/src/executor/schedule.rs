//! What may start now: a stage whose needs are done, within `--jobs` and the free GPUs, and
//! not while a stage with the same fingerprint executes. Pure bookkeeping: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::plan::PlannedStage;

/// What the scheduler needs to know of a stage.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub name: String,
    pub needs: Vec<String>,
    pub fingerprint: String,
    pub gpu: u32,
}

impl Shape {
    pub fn of(stage: &PlannedStage) -> Self {
        Self {
            name: stage.name.clone(),
            needs: stage.needs.clone(),
            fingerprint: stage.fingerprint.clone(),
            gpu: stage.gpu,
        }
    }
}

/// Where a stage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Waiting,
    Running,
    Done,
    Failed,
    Skipped,
}

/// A decision for one waiting stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Move {
    /// A need failed or was skipped: skip it, for this reason.
    Skip(usize, String),
    /// Every need is done: it may be served from the cache or, given a slot, launched.
    Ready(usize),
}

/// The run's stage states, slots and GPUs.
pub(super) struct Scheduler {
    stages: Vec<Shape>,
    state: Vec<State>,
    index: BTreeMap<String, usize>,
    jobs: usize,
    running: usize,
    gpus_free: BTreeSet<u32>,
    held: Vec<Vec<u32>>,
    /// Output directories of the stages done so far, by name.
    pub out_dirs: BTreeMap<String, PathBuf>,
}

impl Scheduler {
    pub fn new(stages: Vec<Shape>, jobs: usize, gpus: &[u32]) -> Self {
        let n = stages.len();
        Self {
            index: stages
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
            stages,
            state: vec![State::Waiting; n],
            jobs: jobs.max(1),
            running: 0,
            gpus_free: gpus.iter().copied().collect(),
            held: vec![Vec::new(); n],
            out_dirs: BTreeMap::new(),
        }
    }

    /// The waiting stages that can move now, in plan order. `cancelled`: nothing is ready
    /// any more (skips still are, so failures propagate).
    pub fn moves(&self, cancelled: bool) -> Vec<Move> {
        let mut out = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if self.state[i] != State::Waiting {
                continue;
            }
            let needs: Vec<State> = stage
                .needs
                .iter()
                .filter_map(|need| self.index.get(need.as_str()).map(|&j| self.state[j]))
                .collect();
            if let Some(bad) = stage.needs.iter().find(|need| {
                self.index
                    .get(need.as_str())
                    .is_some_and(|&j| matches!(self.state[j], State::Failed | State::Skipped))
            }) {
                out.push(Move::Skip(i, format!("need {bad:?} did not succeed")));
            } else if !cancelled && needs.iter().all(|s| *s == State::Done) {
                out.push(Move::Ready(i));
            }
        }
        out
    }

    /// Whether ready stage `i` may launch now: a free slot, enough free GPUs, and no running
    /// stage with the same fingerprint (it will take that one's cache entry instead).
    pub fn can_launch(&self, i: usize) -> bool {
        let stage = &self.stages[i];
        self.running < self.jobs
            && stage.gpu as usize <= self.gpus_free.len()
            && !(0..self.state.len()).any(|j| {
                self.state[j] == State::Running && self.stages[j].fingerprint == stage.fingerprint
            })
    }

    /// Marks `i` running and gives it the lowest free GPUs it asks for.
    pub fn launch(&mut self, i: usize) -> Vec<u32> {
        let want = self.stages[i].gpu as usize;
        let gpus: Vec<u32> = self.gpus_free.iter().take(want).copied().collect();
        for g in &gpus {
            self.gpus_free.remove(g);
        }
        self.held[i].clone_from(&gpus);
        self.state[i] = State::Running;
        self.running += 1;
        gpus
    }

    /// `i` ended: its slot and GPUs are free; `out_dir` when it succeeded.
    pub fn finished(&mut self, i: usize, out_dir: Option<PathBuf>) {
        self.running -= 1;
        self.gpus_free.extend(std::mem::take(&mut self.held[i]));
        self.state[i] = match out_dir {
            Some(dir) => {
                self.out_dirs.insert(self.stages[i].name.clone(), dir);
                State::Done
            }
            None => State::Failed,
        };
    }

    /// `i` was served from the cache, from `dir`.
    pub fn cached(&mut self, i: usize, dir: PathBuf) {
        self.out_dirs.insert(self.stages[i].name.clone(), dir);
        self.state[i] = State::Done;
    }

    /// `i` will not run.
    pub fn skipped(&mut self, i: usize) {
        self.state[i] = State::Skipped;
    }

    /// Stages executing now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Stages that never started (what cancellation cut off).
    pub fn unstarted(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| self.state[i] == State::Waiting)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, needs: &[&str], fingerprint: &str, gpu: u32) -> Shape {
        Shape {
            name: name.into(),
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
            fingerprint: fingerprint.into(),
            gpu,
        }
    }

    fn plan(stages: Vec<Shape>) -> Vec<Shape> {
        stages
    }

    #[test]
    fn needs_order_and_failures_skip_descendants() {
        let p = plan(vec![
            stage("a", &[], "fa", 0),
            stage("b", &["a"], "fb", 0),
            stage("c", &["b"], "fc", 0),
        ]);
        let mut s = Scheduler::new(p, 4, &[]);
        assert_eq!(s.moves(false), vec![Move::Ready(0)]);
        s.launch(0);
        assert_eq!(s.moves(false), vec![]);
        s.finished(0, None);
        assert_eq!(
            s.moves(false),
            vec![Move::Skip(1, "need \"a\" did not succeed".into())]
        );
        s.skipped(1);
        assert_eq!(
            s.moves(false),
            vec![Move::Skip(2, "need \"b\" did not succeed".into())]
        );
    }

    #[test]
    fn jobs_gpus_and_equal_fingerprints_limit_launches() {
        let p = plan(vec![
            stage("a", &[], "same", 1),
            stage("b", &[], "same", 1),
            stage("c", &[], "fc", 2),
            stage("d", &[], "fd", 0),
        ]);
        let mut s = Scheduler::new(p, 2, &[0, 1]);
        assert!(s.can_launch(0));
        assert_eq!(s.launch(0), vec![0]);
        assert!(!s.can_launch(1), "same fingerprint running");
        assert!(!s.can_launch(2), "one GPU free, two asked");
        assert!(s.can_launch(3));
        s.launch(3);
        assert!(!s.can_launch(2), "jobs full");
        s.finished(0, Some("/a".into()));
        s.finished(3, Some("/d".into()));
        assert!(s.can_launch(2));
        assert_eq!(s.launch(2), vec![0, 1]);
        assert_eq!(s.out_dirs.len(), 2);
        assert!(s.moves(true).is_empty(), "cancelled: nothing is ready");
    }
}

-- Sweeps: a run of an experiment is one trial; its number within the sweep.
ALTER TABLE runs ADD COLUMN trial INTEGER;
CREATE INDEX runs_by_experiment ON runs (experiment_id, trial);
-- Reproducibility: blake3 of the Cargo.lock the kiln that made the run was built from.
ALTER TABLE runs ADD COLUMN cargo_lock_hash TEXT;

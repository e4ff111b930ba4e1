-- Sweeps: a run of an experiment is one trial; its number within the sweep.
ALTER TABLE runs ADD COLUMN trial INTEGER;
CREATE INDEX runs_by_experiment ON runs (experiment_id, trial);

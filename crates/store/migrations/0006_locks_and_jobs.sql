-- Which run executes a stage fingerprint now, so that two runs (two Slurm array tasks, two
-- sweep lanes) never execute the same fingerprint at once: the loser waits and takes the
-- cache hit. A row whose holder died (a dead pid on the same host, or no heartbeat for a
-- while) is reclaimed by the next one to try.
CREATE TABLE stage_locks (
    fingerprint  TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,     -- unique per acquisition: host, pid, run
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    run_id       INTEGER,
    acquired_at  TEXT NOT NULL,
    heartbeat    REAL NOT NULL      -- seconds since the Unix epoch
);

-- The jobs an executor submitted for an experiment's trials (Slurm job ids such as
-- 1234_5), so `kiln sweep --status` and `--cancel` find them after the submitting process
-- has exited.
CREATE TABLE executor_jobs (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments (id),
    trial         INTEGER NOT NULL,
    executor      TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    submitted_at  TEXT NOT NULL
);
CREATE INDEX executor_jobs_by_experiment ON executor_jobs (experiment_id, trial);

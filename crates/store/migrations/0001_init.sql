-- kiln results store, schema version 1.
-- Portable SQL: the differences a Postgres backend would need are listed in the
-- README ("Results store"): INTEGER PRIMARY KEY -> BIGINT GENERATED ALWAYS AS IDENTITY,
-- REAL -> DOUBLE PRECISION, group_concat -> string_agg.

CREATE TABLE pipelines (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (name, path, spec_hash)
);

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (name, path, spec_hash)
);

-- One execution of a pipeline with one parameter assignment.
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    pipeline_id   INTEGER NOT NULL REFERENCES pipelines (id),
    experiment_id INTEGER REFERENCES experiments (id),
    config_hash   TEXT NOT NULL,
    config        TEXT NOT NULL,
    git_commit    TEXT,
    git_dirty     INTEGER,
    kiln_version  TEXT NOT NULL,
    seed          INTEGER,
    host          TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    status        TEXT NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted'))
);
CREATE INDEX runs_pipeline ON runs (pipeline_id);

-- One stage of one run: executed, served from the cache, failed or skipped.
CREATE TABLE stage_runs (
    id                INTEGER PRIMARY KEY,
    run_id            INTEGER NOT NULL REFERENCES runs (id),
    stage             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    kind_version      INTEGER NOT NULL,
    fingerprint       TEXT NOT NULL,
    fingerprint_input TEXT NOT NULL,
    cache_hit         INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'succeeded', 'cached', 'failed', 'skipped', 'interrupted')),
    started_at        TEXT,
    ended_at          TEXT,
    duration_ms       INTEGER,
    error             TEXT,
    log_path          TEXT,
    UNIQUE (run_id, stage)
);
CREATE INDEX stage_runs_fingerprint ON stage_runs (fingerprint);

-- Resolved parameters, one row each, so they can be filtered without JSON functions.
-- value_num holds the number when the value is numeric (or a boolean as 0/1).
CREATE TABLE params (
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    value_num REAL,
    PRIMARY KEY (run_id, key)
);

-- Every metric point. value is NULL for NaN (SQLite has no NaN).
CREATE TABLE metrics (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    stage   TEXT NOT NULL,
    step    INTEGER NOT NULL,
    name    TEXT NOT NULL,
    value   REAL,
    time    REAL NOT NULL
);
CREATE INDEX metrics_run_name ON metrics (run_id, name, step);

-- The last point of each (run, stage, metric), kept by the batched writer in the same
-- transaction as the points, so "final value" queries never scan all points.
CREATE TABLE metric_last (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    stage   TEXT NOT NULL,
    name    TEXT NOT NULL,
    step    INTEGER NOT NULL,
    value   REAL,
    time    REAL NOT NULL,
    PRIMARY KEY (run_id, stage, name)
);

CREATE TABLE artifacts (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    stage   TEXT NOT NULL,
    path    TEXT NOT NULL,
    bytes   INTEGER NOT NULL,
    hash    TEXT NOT NULL,
    UNIQUE (run_id, stage, path)
);

-- Last value of each metric per run and stage.
CREATE VIEW last_metrics AS
SELECT m.run_id, p.name AS pipeline, m.stage, m.name AS metric, m.step, m.value
FROM metric_last m
JOIN runs r ON r.id = m.run_id
JOIN pipelines p ON p.id = r.pipeline_id;

-- One row per run: status, timing, parameters and final metric values.
CREATE VIEW run_summary AS
SELECT
    r.id AS run_id,
    p.name AS pipeline,
    r.status,
    r.started_at,
    r.ended_at,
    (SELECT count(*) FROM stage_runs s WHERE s.run_id = r.id AND s.status = 'succeeded') AS executed,
    (SELECT count(*) FROM stage_runs s WHERE s.run_id = r.id AND s.status = 'cached') AS cached,
    (SELECT count(*) FROM stage_runs s WHERE s.run_id = r.id AND s.status = 'failed') AS failed,
    (SELECT group_concat(x.key || '=' || x.value, ' ')
       FROM (SELECT key, value FROM params WHERE run_id = r.id ORDER BY key) x) AS params,
    (SELECT group_concat(x.stage || '.' || x.name || '=' || coalesce(x.value, 'NaN'), ' ')
       FROM (SELECT stage, name, value FROM metric_last WHERE run_id = r.id ORDER BY stage, name) x)
        AS final_metrics
FROM runs r
JOIN pipelines p ON p.id = r.pipeline_id;

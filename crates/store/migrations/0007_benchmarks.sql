-- The machines `kiln bench suite` ran on: a figure is only ever compared with the history
-- of the same machine fingerprint.
CREATE TABLE machines (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,  -- blake3 of the fields below
    cpu_model   TEXT NOT NULL,
    cpu_flags   TEXT NOT NULL,         -- the SIMD flags kernels choose by (avx2, avx512f, fma, ...)
    cores       INTEGER NOT NULL,
    memory_gib  INTEGER NOT NULL,
    gpu         TEXT NOT NULL,         -- GPU names, or "none"
    created_at  TEXT NOT NULL
);

-- One figure of one `kiln bench suite` run: the median of its repeats and their spread.
CREATE TABLE bench_results (
    id               INTEGER PRIMARY KEY,
    suite            TEXT NOT NULL,    -- one value per suite run
    machine_id       INTEGER NOT NULL REFERENCES machines (id),
    name             TEXT NOT NULL,
    value            REAL NOT NULL,
    unit             TEXT NOT NULL,
    spread           REAL NOT NULL,    -- median absolute deviation of the repeats
    repeats          INTEGER NOT NULL,
    higher_is_better INTEGER NOT NULL,
    kiln_version     TEXT NOT NULL,
    git_commit       TEXT,
    at               TEXT NOT NULL
);
CREATE INDEX bench_results_by_name ON bench_results (machine_id, name, id);

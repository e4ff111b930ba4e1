//! The store's tables as `kiln store copy` moves them: names, key order, column types.
//! A test holds this list to the schema the migrations build, on both databases.

/// A column's type, as both databases store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    /// `INTEGER` (SQLite) / `BIGINT` (PostgreSQL).
    Int,
    /// `REAL` / `DOUBLE PRECISION`.
    Real,
    /// `TEXT`.
    Text,
}

/// One table.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    /// `ORDER BY` for a stable row order (the primary key).
    pub key: &'static str,
    /// Whether `id` is generated (a PostgreSQL sequence to move past copied ids).
    pub serial: bool,
    pub columns: &'static [(&'static str, Col)],
}

use Col::{Int, Real, Text};

/// Every table, parents before children (foreign keys hold at every insert).
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "pipelines",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("name", Text),
            ("path", Text),
            ("spec_hash", Text),
            ("created_at", Text),
        ],
    },
    Table {
        name: "experiments",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("name", Text),
            ("path", Text),
            ("spec_hash", Text),
            ("created_at", Text),
            ("metric", Text),
        ],
    },
    Table {
        name: "runs",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("pipeline_id", Int),
            ("experiment_id", Int),
            ("config_hash", Text),
            ("config", Text),
            ("git_commit", Text),
            ("git_dirty", Int),
            ("kiln_version", Text),
            ("seed", Int),
            ("host", Text),
            ("started_at", Text),
            ("ended_at", Text),
            ("status", Text),
            ("trial", Int),
            ("cargo_lock_hash", Text),
            ("pid", Int),
        ],
    },
    Table {
        name: "stage_runs",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("run_id", Int),
            ("stage", Text),
            ("kind", Text),
            ("kind_version", Int),
            ("fingerprint", Text),
            ("fingerprint_input", Text),
            ("cache_hit", Int),
            ("status", Text),
            ("started_at", Text),
            ("ended_at", Text),
            ("duration_ms", Int),
            ("error", Text),
            ("log_path", Text),
        ],
    },
    Table {
        name: "params",
        key: "run_id, key",
        serial: false,
        columns: &[
            ("run_id", Int),
            ("key", Text),
            ("value", Text),
            ("value_num", Real),
        ],
    },
    Table {
        name: "metrics",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("run_id", Int),
            ("stage", Text),
            ("step", Int),
            ("name", Text),
            ("value", Real),
            ("time", Real),
        ],
    },
    Table {
        name: "metric_last",
        key: "run_id, stage, name",
        serial: false,
        columns: &[
            ("run_id", Int),
            ("stage", Text),
            ("name", Text),
            ("step", Int),
            ("value", Real),
            ("time", Real),
        ],
    },
    Table {
        name: "artifacts",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("run_id", Int),
            ("stage", Text),
            ("path", Text),
            ("bytes", Int),
            ("hash", Text),
        ],
    },
    Table {
        name: "file_hashes",
        key: "path",
        serial: false,
        columns: &[
            ("path", Text),
            ("size", Int),
            ("mtime_ns", Int),
            ("inode", Int),
            ("hash", Text),
        ],
    },
    Table {
        name: "dir_manifests",
        key: "hash",
        serial: false,
        columns: &[("hash", Text), ("manifest", Text)],
    },
    Table {
        name: "stage_locks",
        key: "fingerprint",
        serial: false,
        columns: &[
            ("fingerprint", Text),
            ("holder", Text),
            ("host", Text),
            ("pid", Int),
            ("run_id", Int),
            ("acquired_at", Text),
            ("heartbeat", Real),
        ],
    },
    Table {
        name: "executor_jobs",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("experiment_id", Int),
            ("trial", Int),
            ("executor", Text),
            ("job_id", Text),
            ("submitted_at", Text),
        ],
    },
    Table {
        name: "machines",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("fingerprint", Text),
            ("cpu_model", Text),
            ("cpu_flags", Text),
            ("cores", Int),
            ("memory_gib", Int),
            ("gpu", Text),
            ("created_at", Text),
        ],
    },
    Table {
        name: "bench_results",
        key: "id",
        serial: true,
        columns: &[
            ("id", Int),
            ("suite", Text),
            ("machine_id", Int),
            ("name", Text),
            ("value", Real),
            ("unit", Text),
            ("spread", Real),
            ("repeats", Int),
            ("higher_is_better", Int),
            ("kiln_version", Text),
            ("git_commit", Text),
            ("at", Text),
            ("peer", Text),
            ("peer_value", Real),
            ("peer_spread", Real),
            ("ratio", Real),
        ],
    },
];

/// The column type a database reports, as [`Col`] (`None`: a type kiln does not write).
pub(crate) fn col_of(database_type: &str) -> Option<Col> {
    match database_type.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => Some(Int),
        "real" | "double precision" => Some(Real),
        "text" => Some(Text),
        _ => None,
    }
}

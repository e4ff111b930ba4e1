//! `echo`: a trivial stage for tests and demos. It writes its params to `params.json`, can
//! emit metrics, sleep (checking the cancel token) and fail on request.

use std::time::{Duration, Instant};

use crate::stage::{ParamSpec, Stage, StageContext, StageResult};
use crate::value::ParamType;

/// The `echo` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "message",
        ParamType::Any,
        "a value written to params.json (default: none)",
    ),
    ParamSpec::optional(
        "metrics",
        ParamType::Int,
        "emit this many points of metric `value` (default 0)",
    ),
    ParamSpec::optional(
        "sleep_ms",
        ParamType::Int,
        "sleep this long, checking for cancellation (default 0)",
    ),
    ParamSpec::optional(
        "fail",
        ParamType::Bool,
        "fail after sleeping (default false)",
    ),
];

impl Stage for Echo {
    fn kind(&self) -> &'static str {
        "echo"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "writes its params to params.json; can emit metrics, sleep and fail (for tests)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn accepts_extra_params(&self) -> bool {
        true
    }
    fn validate(
        &self,
        params: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<(), Vec<(String, String)>> {
        let negative = ["metrics", "sleep_ms"]
            .into_iter()
            .filter(|k| {
                params
                    .get(*k)
                    .and_then(serde_json::Value::as_i64)
                    .is_some_and(|v| v < 0)
            })
            .map(|k| (k.to_owned(), "must not be negative".to_owned()))
            .collect::<Vec<_>>();
        if negative.is_empty() {
            Ok(())
        } else {
            Err(negative)
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let int = |k: &str| {
            ctx.params
                .get(k)
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0)
        };
        let sleep = Duration::from_millis(u64::try_from(int("sleep_ms")).unwrap_or(0));
        let start = Instant::now();
        while start.elapsed() < sleep {
            if ctx.cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            std::thread::sleep(Duration::from_millis(10).min(sleep));
        }
        let n = int("metrics");
        for step in 0..n {
            ctx.metrics.record("value", step, step as f64 * 0.5);
        }
        if ctx.params.get("fail").and_then(serde_json::Value::as_bool) == Some(true) {
            ctx.log("echo: failing because fail: true");
            return Err("failed on request (fail: true)".into());
        }
        let json = serde_json::to_string_pretty(&ctx.params)?;
        std::fs::write(ctx.out_dir.join("params.json"), json)?;
        ctx.log("echo: wrote params.json");
        Ok(())
    }
}

//! `kiln bench suite`: figures recorded with the machine's fingerprint and compared with
//! that machine's history; an artificial slowdown is flagged with exit 1.

use crate::support::Project;

fn verdicts(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() >= 2 && !l.starts_with('('))
                .then(|| (words[0].to_owned(), words[words.len() - 1].to_owned()))
        })
        .collect()
}

#[test]
fn the_suite_compares_each_figure_with_this_machines_history() {
    let p = Project::new();
    // A lenient threshold: this test runs beside the others, which load the machine.
    let suite = |extra: &[(&str, &str)]| {
        let mut cmd = p.cmd(&[
            "bench",
            "suite",
            "--only",
            "noop,ingest",
            "--rows",
            "20000",
            "--threshold",
            "0.5",
        ]);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("kiln runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, first, err) = suite(&[]);
    assert_eq!(code, Some(0), "{first}{err}");
    let names: Vec<String> = verdicts(&first).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["noop_run_ms", "ingest_rows_per_s", "last_metric_query_ms"]
    );
    assert!(verdicts(&first).iter().all(|(_, v)| v == "new"), "{first}");
    let (code, second, err) = suite(&[]);
    assert_eq!(code, Some(0), "{second}{err}");
    assert!(
        verdicts(&second)
            .iter()
            .all(|(_, v)| v == "same" || v == "faster"),
        "{second}"
    );
    let (code, slow, err) = suite(&[("KILN_BENCH_SLOWDOWN", "20")]);
    assert_eq!(code, Some(1), "{slow}{err}");
    assert!(verdicts(&slow).iter().all(|(_, v)| v == "slower"), "{slow}");
    assert!(
        err.contains("slower than this machine's history: noop_run_ms, ingest_rows_per_s, last_metric_query_ms"),
        "{err}"
    );
    assert_eq!(p.scalar("SELECT count(*) FROM bench_results"), "9");
    assert_eq!(
        p.scalar("SELECT count(DISTINCT suite) FROM bench_results"),
        "3"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM machines WHERE cores >= 1 AND memory_gib >= 1"),
        "1"
    );
}

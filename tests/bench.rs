//! `kiln bench suite`: figures recorded with the machine's fingerprint and compared with
//! that machine's history; an artificial slowdown is flagged with exit 1.

use crate::support::Project;

/// (benchmark, verdict) of each row of the suite's table.
fn verdicts(stdout: &str) -> Vec<(String, String)> {
    let verdict = ["new", "same", "faster", "slower"];
    stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let v = words.iter().find(|w| verdict.contains(w))?;
            Some((words[0].to_owned(), (*v).to_owned()))
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
    // Slower only while first measured (as when something else ran for a while): the
    // groups are measured again, and that measurement is judged and kept.
    let (code, once, err) = suite(&[("KILN_BENCH_SLOWDOWN_ONCE", "20")]);
    assert_eq!(code, Some(0), "{once}{err}");
    assert!(
        err.contains("noop_run_ms, ingest_rows_per_s, last_metric_query_ms looked slower: measuring again to confirm"),
        "{err}"
    );
    assert!(
        verdicts(&once)
            .iter()
            .all(|(_, v)| v == "same" || v == "faster"),
        "{once}"
    );
    let noop: Vec<f64> = p
        .query("SELECT value FROM bench_results WHERE name = 'noop_run_ms' ORDER BY id")
        .iter()
        .map(|r| r[0].parse().expect("a number"))
        .collect();
    assert!(
        noop[2] < 5.0 * noop[0],
        "the slowed measurement was kept: {noop:?}"
    );
    // Slower every time it is measured: flagged, exit 1.
    let (code, slow, err) = suite(&[("KILN_BENCH_SLOWDOWN", "20")]);
    assert_eq!(code, Some(1), "{slow}{err}");
    assert!(verdicts(&slow).iter().all(|(_, v)| v == "slower"), "{slow}");
    assert!(err.contains("measuring again to confirm"), "{err}");
    assert!(
        err.contains("slower than this machine's history: noop_run_ms, ingest_rows_per_s, last_metric_query_ms"),
        "{err}"
    );
    assert_eq!(p.scalar("SELECT count(*) FROM bench_results"), "12");
    assert_eq!(
        p.scalar("SELECT count(DISTINCT suite) FROM bench_results"),
        "4"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM machines WHERE cores >= 1 AND memory_gib >= 1"),
        "1"
    );
}

/// `--peers` runs each benchmark's peer in the same rounds and stores it beside kiln's figure
/// with the ratio. A stand-in `.venv-bench/bin/python` answers as the PyTorch script would, so
/// the test needs no Python; the training benchmark itself is kiln's, in a process of its own
/// that reports its peak memory.
#[test]
fn peers_are_stored_beside_kilns_figures() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let python = p.write(
        ".venv-bench/bin/python",
        "#!/bin/sh\ncase \"$1\" in\n  *torch_train.py) echo 'torch says hi'; echo '{\"tokens_per_s\": 100.0, \"peak_rss_mib\": 8000.0}' ;;\n  *) exit 3 ;;\nesac\n",
    );
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p.write("benches/peers/torch_train.py", "# stand-in\n");
    let ran = p.kiln(&[
        "bench", "suite", "--peers", "--only", "train", "--steps", "1", "--times", "1",
    ]);
    assert_eq!(ran.status, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("pytorch-eager 100.0"), "{}", ran.stdout);
    let rows =
        p.query("SELECT name, value, peer, peer_value, ratio FROM bench_results ORDER BY name");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
            .clone()
    };
    let num = |s: &str| s.parse::<f64>().expect("a number");
    let tokens = row("train_small_tokens_per_s");
    assert_eq!(
        (tokens[2].as_str(), num(&tokens[3])),
        ("pytorch-eager", 100.0)
    );
    assert!(num(&tokens[1]) > 0.0);
    assert!((num(&tokens[4]) - num(&tokens[1]) / 100.0).abs() < 1e-6 * num(&tokens[4]));
    let memory = row("train_small_peak_mib");
    // The training process's own peak: more than a small model's weights, far below 8 GB.
    assert!((10.0..4000.0).contains(&num(&memory[1])), "{memory:?}");
    assert!((num(&memory[4]) - 8000.0 / num(&memory[1])).abs() < 1e-6 * num(&memory[4]));
}

/// The peers run on the CPU in f32, so they are refused with another device or precision
/// (whose figures have names of their own: `bench_rounds::figure_suffix`'s unit test), before
/// anything runs.
#[test]
fn peers_are_refused_on_another_device() {
    let p = Project::new();
    for on in [["--device", "cpu:ndarray"], ["--precision", "bf16"]] {
        let ran = p.kiln(&[&["bench", "suite", "--peers", "--only", "train"][..], &on].concat());
        assert_ne!(ran.status, 0);
        assert!(
            ran.stderr
                .contains("--peers runs PyTorch and transformers on the CPU in f32"),
            "{}",
            ran.stderr
        );
    }
    // Refused before anything ran: not even the results store was made.
    assert!(!p.path().join("results/kiln.sqlite").exists());
}

/// What the suite cannot run is refused with the reason, before anything runs.
#[test]
fn the_suite_says_what_is_missing() {
    let p = Project::new();
    let ran = p.kiln(&["bench", "suite", "--peers", "--only", "noop"]);
    assert_ne!(ran.status, 0);
    assert!(
        ran.stderr.contains("benches/peers/setup.sh"),
        "{}",
        ran.stderr
    );
    let ran = p.kiln(&["bench", "suite", "--only", "data", "--data", "no-such-dir"]);
    assert_ne!(ran.status, 0);
    assert!(
        ran.stderr
            .contains("no-such-dir/sentiment140/training.sample.csv"),
        "{}",
        ran.stderr
    );
}

/// Shared data: the data benchmark runs `kiln run` on the real sentiment140 sample as a whole
/// process and records rows read per second.
#[test]
fn the_data_benchmark_runs_on_the_real_sample() {
    let Some(data) = crate::data::shared_data() else {
        return;
    };
    let p = Project::new();
    let data = data.to_string_lossy().into_owned();
    let ran = p.kiln(&[
        "bench", "suite", "--only", "data", "--times", "1", "--data", &data,
    ]);
    assert_eq!(ran.status, 0, "{}{}", ran.stdout, ran.stderr);
    let rate: f64 = p
        .scalar(
            "SELECT value FROM bench_results WHERE name = 'data_rows_per_s' AND unit = 'rows/s'",
        )
        .parse()
        .expect("a number");
    // 53,820 rows in well under a minute, even in a debug build on a loaded machine.
    assert!(rate > 1000.0, "{rate}");
}

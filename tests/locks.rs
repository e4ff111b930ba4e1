//! Stage locks across processes: two runs never execute one stage fingerprint at once (the
//! second waits and takes the cache hit), and a lock whose holder was killed is reclaimed.
//! The SIGTERM that `scancel` sends interrupts a run like Ctrl-C.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::Project;

/// A stage that takes a while and counts its executions in a file outside the cache.
const SLOW: &str = "name: slow
stages:
  count:
    uses: shell
    with:
      run: echo x >> \"$KILN_WORKDIR/executions.txt\"; sleep 3; echo done > \"$KILN_OUT/out.txt\"
    outputs: [out.txt]
";

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_runs_execute_a_stage_once_and_the_second_takes_the_cache_hit() {
    let p = Project::new();
    p.write("slow.yaml", SLOW);
    // The store exists first, so both processes open the same one.
    p.write("noop.yaml", "name: noop\nstages:\n  a:\n    uses: echo\n");
    p.run("noop.yaml", &[]).ok();
    let first = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let executions = p.path().join("executions.txt");
    wait_until(Duration::from_secs(20), "the first run's stage", || {
        executions.exists()
    });
    let second = p.run("slow.yaml", &[]).ok();
    let first = first.wait_with_output().expect("first ends");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&executions).expect("count"),
        "x\n",
        "executed once"
    );
    assert!(
        second.stderr.contains("is executing the same stage"),
        "the second run says what it waits for: {}",
        second.stderr
    );
    assert_eq!(
        p.query("SELECT r.pipeline_id, s.status FROM stage_runs s JOIN runs r ON r.id = s.run_id WHERE s.stage = 'count' ORDER BY s.id"),
        vec![vec!["2".to_owned(), "succeeded".to_owned()], vec!["2".to_owned(), "cached".to_owned()]]
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_locks"),
        "0",
        "every lock released"
    );
}

#[test]
fn a_killed_holders_lock_is_reclaimed_and_sigterm_interrupts() {
    let p = Project::new();
    p.write("slow.yaml", SLOW);
    let executions = p.path().join("executions.txt");
    // kill -9 while the stage runs: the lock row stays, its holder's pid is gone.
    let mut killed = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln starts");
    wait_until(Duration::from_secs(20), "the stage to start", || {
        executions.exists()
    });
    killed.kill().expect("kill -9");
    killed.wait().expect("reaped");
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_locks"),
        "1",
        "the dead run's lock"
    );
    // SIGTERM (scancel's signal) ends the next run as interrupted, lock released...
    let terminated = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    wait_until(Duration::from_secs(20), "the second execution", || {
        std::fs::read_to_string(&executions).is_ok_and(|t| t.lines().count() == 2)
    });
    std::process::Command::new("kill")
        .args(["-TERM", &terminated.id().to_string()])
        .status()
        .expect("kill runs");
    let out = terminated.wait_with_output().expect("ends");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        p.scalar("SELECT status FROM runs ORDER BY id DESC LIMIT 1"),
        "interrupted"
    );
    assert_eq!(p.scalar("SELECT count(*) FROM stage_locks"), "0");
    // ...and a run after both executes the stage: it did not wait on the dead holder.
    let started = Instant::now();
    p.run("slow.yaml", &[]).ok();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        std::fs::read_to_string(&executions)
            .expect("count")
            .lines()
            .count(),
        3
    );
}

#[test]
fn a_run_waiting_for_another_runs_lock_stops_at_once_when_interrupted() {
    let p = Project::new();
    p.write("slow.yaml", &SLOW.replace("sleep 3", "sleep 20"));
    p.write("noop.yaml", "name: noop\nstages:\n  a:\n    uses: echo\n");
    p.run("noop.yaml", &[]).ok();
    let mut holder = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln starts");
    let executions = p.path().join("executions.txt");
    wait_until(Duration::from_secs(20), "the first run's stage", || {
        executions.exists()
    });
    let mut waiter = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    std::thread::sleep(Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-INT", &waiter.id().to_string()])
        .status()
        .expect("kill runs");
    let interrupted = Instant::now();
    while waiter.try_wait().expect("wait").is_none() {
        if interrupted.elapsed() > Duration::from_secs(10) {
            let _ = waiter.kill();
            let _ = holder.kill();
            panic!("a run waiting for a lock did not stop within 10 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("is executing the same stage"), "{stderr}");
    holder.kill().expect("kill");
    holder.wait().expect("reaped");
    assert_eq!(
        p.scalar("SELECT status FROM stage_runs WHERE run_id = 3 AND stage = 'count'"),
        "skipped"
    );
}

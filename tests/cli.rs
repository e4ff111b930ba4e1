//! The command line: query safety and formats, runs, dag, and the README's own examples.

use crate::support::{Project, repo_root};

fn demo_project() -> Project {
    let p = Project::new();
    let demo = std::fs::read_to_string(repo_root().join("pipelines/demo.yaml")).expect("demo");
    p.write("pipelines/demo.yaml", &demo);
    p.run("pipelines/demo.yaml", &[]).ok();
    p
}

#[test]
fn query_refuses_writes_and_changes_nothing() {
    let p = demo_project();
    for sql in [
        "DELETE FROM runs",
        "DROP TABLE runs",
        "delete from metrics where 1",
        "WITH x AS (SELECT 1) DELETE FROM runs",
    ] {
        let ran = p.kiln(&["query", sql]);
        assert_eq!(ran.status, 2, "{sql}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("kiln query is read-only"),
            "{sql}: {}",
            ran.stderr
        );
    }
    assert_eq!(p.scalar("SELECT count(*) FROM runs"), "1");
    assert_eq!(p.scalar("SELECT count(*) FROM stage_runs"), "4");
}

#[test]
fn query_formats() {
    let p = demo_project();
    let table = p
        .kiln(&[
            "query",
            "SELECT stage, status FROM stage_runs ORDER BY stage",
        ])
        .ok();
    assert_eq!(
        table
            .stdout
            .lines()
            .next()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>),
        Some(vec!["stage", "status"])
    );
    assert!(table.stdout.contains("(4 rows)"), "{}", table.stdout);
    let json = p
        .kiln(&["query", "--format", "json", "SELECT id, status FROM runs"])
        .ok();
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(
        parsed,
        serde_json::json!([{"id": 1, "status": "succeeded"}])
    );
    let bad = p.kiln(&["query", "SELECT nope FROM runs"]);
    assert_eq!(bad.status, 1);
    assert!(
        bad.stderr.contains("no such column: nope"),
        "{}",
        bad.stderr
    );
    let none = Project::new().kiln(&["query", "SELECT 1"]);
    assert_eq!(none.status, 1);
    assert!(
        none.stderr.contains("does not exist yet"),
        "{}",
        none.stderr
    );
}

#[test]
fn runs_lists_recent_runs() {
    let p = demo_project();
    p.run("pipelines/demo.yaml", &["--set", "scale=3"]).ok();
    let ran = p.kiln(&["runs", "--format", "csv"]).ok();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    assert!(lines[1].starts_with("2,demo,succeeded,"), "{}", lines[1]);
    assert!(
        lines[1].contains(",1,3,0,scale=3.0 words=200,"),
        "{}",
        lines[1]
    );
}

#[test]
fn dag_renders_text_mermaid_and_dot() {
    let p = Project::new();
    let demo = repo_root().join("pipelines/demo.yaml");
    let demo = demo.to_string_lossy();
    let text = p.kiln(&["dag", &demo]).ok().stdout;
    assert!(
        text.starts_with("demo\n└── corpus (shell)\n    ├── counts (shell)\n"),
        "{text}"
    );
    let mermaid = p.kiln(&["dag", "--format", "mermaid", &demo]).ok().stdout;
    assert!(
        mermaid.contains("corpus --> counts\n") && mermaid.contains("lengths --> score\n"),
        "{mermaid}"
    );
    let dot = p.kiln(&["dag", "--format", "dot", &demo]).ok().stdout;
    assert!(dot.contains("\"counts\" -> \"score\";"), "{dot}");
}

#[test]
fn json_output_is_one_event_per_line() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "name: p\nstages:\n  a:\n    uses: echo\n    with: {metrics: 3}\n",
    );
    let ran = p.kiln(&["--json", "run", "p.yaml"]).ok();
    let events: Vec<serde_json::Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "stage_started",
            "stage_succeeded",
            "run_finished"
        ]
    );
    assert_eq!(events[3]["status"], "succeeded");
}

#[test]
fn stages_lists_every_kind() {
    let ran = Project::new().kiln(&["stages"]).ok();
    assert!(
        ran.stdout.contains("shell (v1)") && ran.stdout.contains("echo (v1)"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("run          string  required"),
        "{}",
        ran.stdout
    );
}

/// Every ```sql block in the README runs against a store that ran the demo.
#[test]
fn readme_queries_run() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(sql), "```") => {
                blocks.push(std::mem::take(sql));
                current = None;
            }
            (Some(sql), _) => {
                sql.push_str(line);
                sql.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 3, "the README shows example queries");
    let p = demo_project();
    p.run("pipelines/demo.yaml", &["--set", "scale=4"]).ok();
    for sql in blocks {
        let ran = p.kiln(&["query", &sql]);
        assert_eq!(ran.status, 0, "README query failed:\n{sql}\n{}", ran.stderr);
        assert!(
            !ran.stdout.contains("(0 rows)"),
            "README query returned nothing:\n{sql}\n{}",
            ran.stdout
        );
    }
}

/// The README's two first commands (the quickstart and the tests) build with one cargo profile,
/// so that a new user's machine compiles the dependencies once, not once per profile.
#[test]
fn readme_quick_start_builds_dependencies_once() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let block = readme[start..]
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the Quick start");
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo "))
        .collect();
    assert_eq!(commands.len(), 2, "{block}");
    let profile = |c: &str| {
        let words: Vec<&str> = c.split_whitespace().take_while(|w| *w != "--").collect();
        if words.contains(&"--release") {
            "release".to_owned()
        } else {
            words
                .iter()
                .position(|w| *w == "--profile")
                .and_then(|i| words.get(i + 1))
                .map_or_else(|| "dev".to_owned(), |p| (*p).to_owned())
        }
    };
    assert_eq!(
        profile(commands[0]),
        profile(commands[1]),
        "the Quick start's commands build with different profiles: {commands:?}"
    );
}

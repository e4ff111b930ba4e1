//! Parsing and validation: every error names file, line, column and stage.

use kiln_core::{Registry, spec};

use crate::support::{Project, fixture, repo_root};

/// `kiln validate` on a fixture: exit 2 and exactly these diagnostic lines (paths relative to
/// the fixtures directory).
#[track_caller]
fn expect_errors(name: &str, expected: &[&str]) {
    let project = Project::new();
    let dir = fixture("pipelines");
    let mut cmd = project.cmd(&["validate", &format!("{name}.yaml")]);
    let out = cmd.current_dir(&dir).output().expect("kiln runs");
    assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(name)).collect();
    assert_eq!(lines, expected, "{name}: full stderr:\n{stderr}");
}

#[test]
fn demo_pipeline_is_valid() {
    let pipeline = spec::load(&repo_root().join("pipelines/demo.yaml")).expect("demo parses");
    let registry = Registry::with_builtins();
    let params =
        spec::resolve_params(&pipeline, &Default::default(), false).expect("defaults resolve");
    spec::validate(&pipeline, &registry, &params).expect("demo is valid");
    assert_eq!(pipeline.name, "demo");
    assert_eq!(
        pipeline
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["corpus", "counts", "lengths", "score"]
    );
    assert_eq!(params["words"], serde_json::json!(200));
    assert_eq!(params["scale"], serde_json::json!(2.0));
}

#[test]
fn cycle_names_the_cycle() {
    expect_errors(
        "cycle",
        &["cycle.yaml:3:3: stage \"a\": dependency cycle: a → b → a"],
    );
}

#[test]
fn unknown_stage_kind_suggests_the_closest() {
    expect_errors(
        "unknown_kind",
        &[
            "unknown_kind.yaml:6:11: stage \"train\": unknown stage kind \"shel\" (did you mean \"shell\"?)",
        ],
    );
}

#[test]
fn missing_need_target_points_at_the_need() {
    expect_errors(
        "missing_need",
        &[
            "missing_need.yaml:7:19: stage \"train\": needs \"perp\", which is not a stage of this pipeline (did you mean \"prep\"?)",
        ],
    );
}

#[test]
fn type_errors_point_at_the_value() {
    expect_errors(
        "bad_type",
        &[
            "bad_type.yaml:10:16: stage \"a\": with.metrics: expected an int, found string \"many\"",
            "bad_type.yaml:14:13: stage \"b\": with.fail: expected a bool, found string \"yes\"",
        ],
    );
}

#[test]
fn every_unknown_key_is_reported() {
    expect_errors(
        "unknown_key",
        &[
            "unknown_key.yaml:5:5: stage \"a\": unknown key \"neds\" in a stage (did you mean \"needs\"?) (allowed: uses, description, needs, with, inputs, outputs, resources)",
            "unknown_key.yaml:9:7: stage \"b\": unknown key \"gpus\" in resources (did you mean \"gpu\"?) (allowed: gpu)",
        ],
    );
}

#[test]
fn param_declarations_are_typed() {
    expect_errors(
        "bad_param_default",
        &[
            "bad_param_default.yaml:3:3: param \"alpha\": default: expected a float, found string \"high\"",
            "bad_param_default.yaml:6:3: param \"epochs\": unknown type \"integr\" (types: int, float, bool, string, path, list, map, any)",
        ],
    );
}

#[test]
fn references_must_resolve() {
    expect_errors(
        "unknown_reference",
        &[
            "unknown_reference.yaml:9:12: stage \"a\": with.run: unknown parameter `${alpa}` (did you mean \"alpha\"?)",
            "unknown_reference.yaml:13:12: stage \"b\": with.run: stage \"a\" declares no output \"result.txt\"",
            "unknown_reference.yaml:13:12: stage \"b\": with.run: references stage \"z\", which is not a stage of this pipeline",
        ],
    );
}

#[test]
fn required_stage_params_are_checked() {
    expect_errors(
        "missing_with",
        &[
            "missing_with.yaml:3:3: stage \"a\": \"shell\" needs `with.run` (the command, run with `sh -c` in the project root)",
        ],
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    expect_errors(
        "syntax",
        &["syntax.yaml:6:4: invalid YAML: invalid indentation"],
    );
}

#[test]
fn wrong_shapes_point_at_the_field() {
    expect_errors(
        "wrong_shape",
        &[
            "wrong_shape.yaml:7:12: stage \"b\": `needs` must be a stage name or a list of stage names",
        ],
    );
}

#[test]
fn unknown_override_and_missing_param_are_errors() {
    let project = Project::new();
    project.write(
        "p.yaml",
        "name: p\nparams:\n  data: {type: path}\nstages:\n  a:\n    uses: echo\n    with: {message: \"${data}\"}\n",
    );
    let ran = project.run("p.yaml", &[]);
    assert_eq!(ran.status, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("p.yaml:3:3: param \"data\" has no default: give it with --set data=VALUE"),
        "{}",
        ran.stderr
    );
    let ran = project.run("p.yaml", &["--set", "data=x", "--set", "dta=y"]);
    assert_eq!(ran.status, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(
            "--set dta: the pipeline \"p\" has no parameter \"dta\" (did you mean \"data\"?)"
        ),
        "{}",
        ran.stderr
    );
    assert!(
        !project.path().join("results/kiln.sqlite").exists(),
        "nothing may run before validation passes"
    );
}

#[test]
fn topological_order_puts_needs_first_and_keeps_file_order() {
    let text = "name: t\nstages:\n  d:\n    uses: echo\n    needs: [b, c]\n  c:\n    uses: echo\n    needs: [a]\n  b:\n    uses: echo\n    needs: [a]\n  a:\n    uses: echo\n  e:\n    uses: echo\n";
    let pipeline = spec::parse("t.yaml".as_ref(), text).expect("parses");
    assert_eq!(
        spec::topological_order(&pipeline),
        ["a", "c", "b", "d", "e"]
    );
    assert_eq!(spec::find_cycle(&pipeline), None);
}

#[test]
fn longer_cycles_are_named_in_order() {
    let text = "name: t\nstages:\n  a:\n    uses: echo\n    needs: [c]\n  b:\n    uses: echo\n    needs: [a]\n  c:\n    uses: echo\n    needs: [b]\n";
    let pipeline = spec::parse("t.yaml".as_ref(), text).expect("parses");
    let cycle = spec::find_cycle(&pipeline).expect("a cycle");
    assert_eq!(cycle.join(" → "), "a → b → c → a");
}

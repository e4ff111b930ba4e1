//! Task formats (issue 15): `data.instruct`'s templates against transformers and the research
//! notebook, marker-search masking against segment masking, the prompted sentiment dataset,
//! and the chat-masking experiment.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_data::alpaca::{self, Labels, Segment, Turn};
use kiln_data::chat_template::{ChatTemplate, Message};
use kiln_data::instruct::{self, Conversation, Rendered, Template};
use kiln_data::shard::ShardReader;
use kiln_data::template;
use kiln_data::tokenizer::Tok;
use serde_json::Value;

use crate::data::shared_data;
use crate::support::{Project, fixture, repo_root};

fn joined(segments: &[Segment]) -> String {
    segments.iter().map(|s| s.text.as_str()).collect()
}

/// The Jinja templates of real `tokenizer_config.json` files (SmolLM2, TinyLlama-Chat) and
/// plain ChatML render byte for byte as transformers' `apply_chat_template`; kiln's `chatml`
/// preset renders as the ChatML template.
#[test]
fn chat_templates_render_byte_identical_to_transformers() {
    let text = std::fs::read_to_string(fixture("numerics/chat-templates/expected.json"))
        .expect("expected.json is committed");
    let expected: BTreeMap<String, Vec<Value>> = serde_json::from_str(&text).expect("parses");
    assert_eq!(expected.len(), 3);
    for (name, renders) in &expected {
        let dir = fixture(&format!("numerics/chat-templates/{name}"));
        let t = ChatTemplate::from_tokenizer_config(&dir).expect("the template compiles");
        let tok_config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).expect("config"),
        )
        .expect("json");
        let (bos, eos) = (
            tok_config["bos_token"].as_str().expect("bos"),
            tok_config["eos_token"].as_str().expect("eos"),
        );
        for r in renders {
            let messages: Vec<Message> =
                serde_json::from_value(r["messages"].clone()).expect("messages");
            let generation = r["add_generation_prompt"].as_bool().expect("flag");
            let want = r["text"].as_str().expect("text");
            assert_eq!(
                t.render(&messages, generation, bos, eos).expect("renders"),
                want,
                "{name}, generation prompt {generation}"
            );
            if generation {
                continue;
            }
            // Masking by rendering prefixes: the segments rebuild the render exactly and
            // train exactly the answers the template writes.
            let segments = t.segments(&messages, bos, eos).expect("segments");
            assert_eq!(joined(&segments), want, "{name}");
            let answers: Vec<&str> = messages
                .iter()
                .filter(|m| m.role == "assistant")
                .map(|m| m.content.trim_end())
                .collect();
            let trained: Vec<&Segment> = segments.iter().filter(|s| s.trained).collect();
            assert_eq!(
                trained.len(),
                answers.len(),
                "{name}: one trained piece per answer"
            );
            for (s, a) in trained.iter().zip(&answers) {
                assert!(s.text.contains(a), "{name}: {:?} holds {a:?}", s.text);
                assert!(
                    s.text.ends_with(eos) || s.text.ends_with("<|im_end|>"),
                    "{name}: {:?}",
                    s.text
                );
            }
            if name == "chatml" {
                let turns: Vec<Turn> = messages
                    .iter()
                    .map(|m| Turn {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect();
                assert_eq!(joined(&template::chatml(&turns)), want, "the chatml preset");
            }
        }
    }
}

fn gpt2_with(bos: &str, eos: &str) -> Option<Tok> {
    let mut tok = Tok::load(&shared_data()?.join("gpt2-tokenizer")).expect("GPT-2 loads");
    tok.set_bos_eos(Some(bos), Some(eos));
    Some(tok)
}

/// The notebook's raw records and the same conversations as turns, from the repo's sample.
fn spanish_records() -> Vec<(String, Vec<Turn>)> {
    let path = repo_root().join("data/samples/spanish.sample.jsonl");
    let rows = instruct::read_rows(&path).expect("the sample reads");
    assert_eq!(rows.len(), 5);
    rows.iter()
        .map(|r| {
            let raw = r["text"].as_str().expect("text").to_owned();
            let (human, answer) = raw.split_once("\n\n### Assistant:").expect("one exchange");
            let question = human.strip_prefix("\n\n### Human: ").expect("human marker");
            let turns = vec![
                Turn {
                    role: "human".into(),
                    content: question.into(),
                },
                Turn {
                    role: "assistant".into(),
                    content: answer.trim().into(),
                },
            ];
            (raw, turns)
        })
        .collect()
}

/// The `human-assistant` preset writes the notebook's string and trains exactly ` perro</s>`;
/// searching the ids for the markers (`DataCollatorForCompletionOnlyLM`) on the notebook's
/// raw text gives the same ids and labels as the segment masking, on every sample record, with
/// BLOOM-style `<s>`/`</s>` and with GPT-2's `<|endoftext|>`.
#[test]
fn marker_search_equals_segment_masking_on_every_sample_record() {
    for (bos, eos) in [("<s>", "</s>"), ("<|endoftext|>", "<|endoftext|>")] {
        let Some(tok) = gpt2_with(bos, eos) else {
            return;
        };
        let (response, instruction) = Template::HumanAssistant.markers(bos).expect("markers");
        let response = tok.encode(&response).expect("encodes");
        let instruction = tok
            .encode(&instruction.expect("human marker"))
            .expect("encodes");
        for (raw, turns) in spanish_records() {
            let segments = template::human_assistant(&turns, bos, eos);
            let text = template::notebook_text(&raw, bos, eos);
            assert_eq!(joined(&segments), text);
            let by_segments =
                alpaca::tokenize(&tok, &segments, Labels::Completion, None).expect("tokenizes");
            let ids = tok.encode(&text).expect("encodes");
            assert_eq!(by_segments.input_ids, ids);
            let by_markers =
                template::mask_by_markers(&ids, &response, Some(&instruction)).expect("found");
            assert_eq!(by_markers, by_segments.labels, "{raw:?} with {eos}");
            if raw.contains("\"dog\"") {
                assert_eq!(
                    text,
                    format!(
                        "\n\n### Human: How do you say \"dog\" in Spanish?\n\n### Assistant:{bos} perro{eos}"
                    )
                );
                let trained: Vec<u32> = ids
                    .iter()
                    .zip(&by_markers)
                    .filter(|(_, l)| **l >= 0)
                    .map(|(&i, _)| i)
                    .collect();
                assert_eq!(
                    tok.decode(&trained).expect("decodes"),
                    format!(" perro{eos}")
                );
            }
        }
    }
}

fn write_pipeline(p: &Project, stages: &str) {
    p.write("pipeline.yaml", &format!("name: t\nstages:\n{stages}"));
}

fn lm_rows(dir: &Path) -> Vec<(Vec<u32>, Vec<i32>)> {
    ShardReader::open(dir, "train", 1000, None)
        .expect("opens")
        .flat_map(|b| b.expect("batch"))
        .map(|e| (e.input_ids, e.labels.expect("labels")))
        .collect()
}

/// `data.instruct` end to end: a CSV with mapped columns and conversations as JSON text; the
/// `alpaca` preset writes what `data.alpaca` writes; raw text without its marker is an error
/// that counts the records, or, with `on_missing_marker: skip`, left out and counted.
#[test]
fn data_instruct_reads_tables_maps_columns_and_counts_missing_markers() {
    let Some(data) = shared_data() else {
        return;
    };
    let tok = data.join("gpt2-tokenizer");
    let p = Project::new();
    p.write(
        "chats.csv",
        "question,answer,conv\nWhat is 2+2?,4,\n,,\"[{\"\"role\"\": \"\"user\"\", \"\"content\"\": \"\"hi\"\"}, {\"\"role\"\": \"\"assistant\"\", \"\"content\"\": \"\"hello\"\"}]\"\n",
    );
    std::fs::copy(
        repo_root().join("data/samples/alpaca.sample.json"),
        p.path().join("alpaca.json"),
    )
    .expect("copy");
    p.write(
        "raw.jsonl",
        "{\"text\": \"\\n\\n### Human: a?\\n\\n### Assistant: b\"}\n{\"text\": \"no markers here\"}\n{\"text\": \"### Human: c?\"}\n",
    );
    let t = tok.display();
    write_pipeline(
        &p,
        &format!(
            "  csv:\n    uses: data.instruct\n    inputs: {{source: chats.csv}}\n    with: {{tokenizer: {t}, template: chatml, columns: {{instruction: question, output: answer, turns: conv}}, val: 0}}\n  preset:\n    uses: data.instruct\n    inputs: {{source: alpaca.json}}\n    with: {{tokenizer: {t}, template: alpaca, val: 0.05}}\n  alpaca:\n    uses: data.alpaca\n    inputs: {{source: alpaca.json}}\n    with: {{tokenizer: {t}, val: 0.05}}\n  skipped:\n    uses: data.instruct\n    inputs: {{source: raw.jsonl}}\n    with: {{tokenizer: {t}, template: human-assistant, on_missing_marker: skip, val: 0}}\n"
        ),
    );
    p.run("pipeline.yaml", &[]).ok();
    let dir = |stage: &str| {
        let fp = p.scalar(&format!(
            "SELECT fingerprint FROM stage_runs WHERE stage = '{stage}'"
        ));
        p.path().join("results/cache").join(fp)
    };
    // The CSV: row 0 by mapped columns, row 1 a conversation in JSON text.
    let gpt2 = Tok::load(&tok).expect("loads");
    let mut texts: Vec<String> = lm_rows(&dir("csv"))
        .iter()
        .map(|(ids, _)| gpt2.decode(ids).expect("decodes"))
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n",
        ]
    );
    assert_eq!(lm_rows(&dir("preset")), lm_rows(&dir("alpaca")));
    assert_eq!(
        p.scalar("SELECT value FROM last_metrics WHERE stage = 'skipped' AND metric = 'rows_missing_marker'"),
        "2"
    );
    assert_eq!(lm_rows(&dir("skipped")).len(), 1);

    // Without skip: an error naming the file, the count and the records.
    write_pipeline(
        &p,
        &format!(
            "  strict:\n    uses: data.instruct\n    inputs: {{source: raw.jsonl}}\n    with: {{tokenizer: {t}, template: human-assistant, val: 0}}\n"
        ),
    );
    let failed = p.run("pipeline.yaml", &[]);
    assert_ne!(failed.status, 0);
    let all = format!("{}{}", failed.stdout, failed.stderr);
    assert!(
        all.contains(
            "raw.jsonl: 2 of 3 records have no response marker in their token ids (records 1, 2)"
        ) && all.contains("on_missing_marker: skip"),
        "{all}"
    );
    // A template kiln does not have is refused before anything runs, naming the stage.
    write_pipeline(
        &p,
        &format!(
            "  bad:\n    uses: data.instruct\n    inputs: {{source: raw.jsonl}}\n    with: {{tokenizer: {t}, template: alpacca}}\n"
        ),
    );
    let refused = p.run("pipeline.yaml", &[]);
    assert_ne!(refused.status, 0);
    let all = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        all.contains("bad") && all.contains("\"alpacca\" is not one of"),
        "{all}"
    );
}

/// `data.sentiment140` with a template writes the same rows in the same splits as the
/// classification dataset, each as text ids + prompt ids + the label token, and the prompt
/// as `eval.sentiment` and `train.internalize` append it.
#[test]
fn the_prompted_dataset_has_the_classification_rows_followed_by_prompt_and_label() {
    let p = Project::new();
    let csv = p.path().join("tweets.csv");
    std::fs::copy(
        repo_root().join("data/samples/sentiment140.sample.csv"),
        &csv,
    )
    .expect("copy");
    write_pipeline(
        &p,
        "  tokenizer:\n    uses: data.tokenizer\n    inputs: {train_on: tweets.csv}\n    with: {vocab_size: 500}\n  plain:\n    uses: data.sentiment140\n    inputs: {source: tweets.csv}\n    with: {tokenizer: \"${stages.tokenizer.dir}\", labels: {negative: \" bad\", positive: \" good\"}, seed: 3, max_length: 12}\n  prompted:\n    uses: data.sentiment140\n    inputs: {source: tweets.csv}\n    with: {tokenizer: \"${stages.tokenizer.dir}\", labels: {negative: \" bad\", positive: \" good\"}, seed: 3, max_length: 15, template: \"{text} I feel{label}\", template_labels: label}\n",
    );
    p.run("pipeline.yaml", &[]).ok();
    let dir = |stage: &str| {
        let fp = p.scalar(&format!(
            "SELECT fingerprint FROM stage_runs WHERE stage = '{stage}'"
        ));
        p.path().join("results/cache").join(fp)
    };
    let tok = Tok::load(&dir("plain")).expect("tokenizer");
    let prompt = tok.encode(" I feel").expect("encodes");
    for split in ["train", "val", "test"] {
        let plain: Vec<_> = ShardReader::open(&dir("plain"), split, 1000, None)
            .expect("opens")
            .flat_map(|b| b.expect("batch"))
            .collect();
        let prompted: Vec<_> = ShardReader::open(&dir("prompted"), split, 1000, None)
            .expect("opens")
            .flat_map(|b| b.expect("batch"))
            .collect();
        assert_eq!(plain.len(), prompted.len(), "{split}");
        for (c, l) in plain.iter().zip(&prompted) {
            let label = c.label.expect("a label");
            let want: Vec<u32> = [c.input_ids.as_slice(), &prompt, &[label]].concat();
            assert_eq!(
                l.input_ids, want,
                "{split}: text (cut to 12), prompt, label"
            );
            let labels = l.labels.as_ref().expect("labels");
            let trained: Vec<i32> = labels.iter().copied().filter(|&x| x >= 0).collect();
            assert_eq!(
                trained,
                [i32::try_from(label).expect("id")],
                "only the label is trained"
            );
        }
    }
}

/// The notebook's experiment at a tiny size: full against completion labels by epochs on the
/// five Spanish words; every trial answers, the iterative trace is written, and completion
/// labels answer all five words within the sweep.
#[test]
fn the_chat_masking_experiment_runs() {
    let Some(data) = shared_data() else {
        return;
    };
    let root = repo_root();
    let p = Project::new();
    for f in [
        "data/samples/spanish.sample.jsonl",
        "data/samples/spanish.heldout.jsonl",
        "pipelines/chat-masking.yaml",
        "experiments/chat-masking.yaml",
    ] {
        let to = p.path().join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(root.join(f), to).expect("copy");
    }
    let set = format!("data_dir={}", data.display());
    let ran = p
        .kiln(&[
            "--quiet",
            "sweep",
            "experiments/chat-masking.yaml",
            "--set",
            &set,
        ])
        .ok();
    assert!(ran.stdout.contains("8 trial(s) run now"), "{}", ran.stdout);
    let best = |labels: &str| -> f64 {
        p.scalar(&format!(
            "SELECT max(m.value) FROM last_metrics m JOIN params l ON l.run_id = m.run_id AND l.key = 'labels'
             WHERE m.stage = 'answers' AND m.metric = 'exact_match' AND l.value = '{labels}'"
        ))
        .parse()
        .expect("a number")
    };
    assert_eq!(
        best("completion"),
        1.0,
        "completion labels learn all five words"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM last_metrics WHERE stage = 'held_out' AND metric = 'generated' AND value = 3"),
        "8"
    );
    let fp = p.scalar("SELECT fingerprint FROM stage_runs WHERE stage = 'iterate' LIMIT 1");
    let md = std::fs::read_to_string(p.path().join("results/cache").join(fp).join("iterative.md"))
        .expect("iterative.md");
    assert!(
        md.contains("| position | token | greedy next |") && md.contains("\"</s>\""),
        "{md}"
    );
    let id = p.scalar("SELECT max(id) FROM experiments");
    let report = std::fs::read_to_string(
        p.path()
            .join(format!("results/reports/chat-masking-{id}.md")),
    )
    .expect("the sweep's report");
    assert!(
        report.contains("Ranked by `answers.exact_match`"),
        "{report}"
    );
}

/// What rendering a record gives, for the unit of the custom template reached through a stage.
#[test]
fn a_custom_template_in_yaml_renders_through_the_stage() {
    let Some(data) = shared_data() else {
        return;
    };
    let p = Project::new();
    p.write("qa.jsonl", "{\"q\": \"2+2?\", \"a\": \"4\"}\n");
    write_pipeline(
        &p,
        &format!(
            "  qa:\n    uses: data.instruct\n    inputs: {{source: qa.jsonl}}\n    with:\n      tokenizer: {}\n      columns: {{output: a}}\n      val: 0\n      template:\n        segments:\n          - {{text: \"Q: {{q}}\\nA:\"}}\n          - {{text: \" {{output}}{{eos}}\", trained: true}}\n",
            data.join("gpt2-tokenizer").display()
        ),
    );
    p.run("pipeline.yaml", &[]).ok();
    let fp = p.scalar("SELECT fingerprint FROM stage_runs WHERE stage = 'qa'");
    let rows = lm_rows(&p.path().join("results/cache").join(fp));
    let tok = Tok::load(&data.join("gpt2-tokenizer")).expect("loads");
    let (ids, labels) = &rows[0];
    assert_eq!(
        tok.decode(ids).expect("decodes"),
        "Q: 2+2?\nA: 4<|endoftext|>"
    );
    let trained: Vec<u32> = ids
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l >= 0)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(tok.decode(&trained).expect("decodes"), " 4<|endoftext|>");
    // The rendering the stage used, by the library.
    let c = Conversation::Fields(BTreeMap::from([
        ("q".to_owned(), "2+2?".to_owned()),
        ("output".to_owned(), "4".to_owned()),
    ]));
    let t = Template::parse(
        &serde_json::json!({"segments": [{"text": "Q: {q}\nA:"}, {"text": " {output}{eos}", "trained": true}]}),
        None,
    )
    .expect("parses");
    let Rendered::Segments(s) = instruct::render(&t, &c, "", "<|endoftext|>").expect("renders")
    else {
        panic!("segments");
    };
    assert_eq!(joined(&s), "Q: 2+2?\nA: 4<|endoftext|>");
}

//! Architectures beyond GPT-2 (issue 14) against transformers: the tiny random models and
//! expectations of tests/fixtures/numerics/generate_archs.py.

use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::{Flex, host, llama};
use serde_json::Value;

use crate::support::fixture;

fn expected() -> Value {
    let text =
        std::fs::read_to_string(fixture("numerics/archs/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn ids<B: Backend>(v: &Value, device: &B::Device) -> Tensor<B, 2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).expect("rows of ids");
    let shape = [rows.len(), rows[0].len()];
    Tensor::from_data(TensorData::new(rows.concat(), shape), device)
}

#[test]
fn llama_and_qwen2_logits_match_transformers() {
    let exp = expected();
    let device = Default::default();
    for case in [
        "llama-tied",
        "llama-untied",
        "qwen2",
        "llama-bf16",
        "qwen2-sharded",
    ] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let model = llama::load::<Flex>(&dir, &device).expect("loads");
        for input in ["single", "padded"] {
            let x = &exp["cases"][case]["logits"][input];
            let mask = (!x["mask"].is_null()).then(|| ids::<Flex>(&x["mask"], &device));
            let got = host::read_f32(model.forward(ids::<Flex>(&x["ids"], &device), mask));
            let want = crate::model::fixture_logits(x);
            assert_eq!(got.len(), want.len(), "{case} {input}");
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{case} {input}: max |kiln - transformers| = {worst}"
            );
            eprintln!("{case} {input}: max |kiln - transformers| = {worst:e}");
        }
    }
}

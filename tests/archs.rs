//! Architectures beyond GPT-2 (issue 14) against transformers: the tiny random models and
//! expectations of tests/fixtures/numerics/generate_archs.py.

use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::{Flex, bloom, host, llama, phi};
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

type Forward<'a> =
    dyn Fn(Tensor<Flex, 2, Int>, Option<Tensor<Flex, 2, Int>>) -> Tensor<Flex, 3> + 'a;

/// A case's logits for its single row and its padded batch against transformers'.
fn check_logits(case: &str, forward: &Forward<'_>) {
    let exp = expected();
    let device = Default::default();
    for input in ["single", "padded"] {
        let x = &exp["cases"][case]["logits"][input];
        let mask = (!x["mask"].is_null()).then(|| ids::<Flex>(&x["mask"], &device));
        let got = host::read_f32(forward(ids::<Flex>(&x["ids"], &device), mask));
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

#[test]
fn llama_and_qwen2_logits_match_transformers() {
    for case in [
        "llama-tied",
        "llama-untied",
        "qwen2",
        "llama-bf16",
        "qwen2-sharded",
    ] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let model = llama::load::<Flex>(&dir, &Default::default()).expect("loads");
        check_logits(case, &|ids, mask| model.forward(ids, mask));
    }
}

#[test]
fn bloom_logits_match_transformers_with_6_and_4_heads() {
    for case in ["bloom-6h", "bloom-4h"] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let model = bloom::load::<Flex>(&dir, &Default::default()).expect("loads");
        check_logits(case, &|ids, mask| model.forward(ids, mask));
    }
    let six =
        bloom::BloomConfig::load(&fixture("numerics/archs/bloom-6h/config.json")).expect("config");
    // transformers' build_alibi_tensor for 6 heads: 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3.
    let want = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125];
    assert_eq!(six.alibi_slopes(), want);
}

#[test]
fn phi_logits_match_transformers_with_partial_rotary() {
    let dir = fixture("numerics/archs/phi");
    let model = phi::load::<Flex>(&dir, &Default::default()).expect("loads");
    // partial_rotary_factor 0.4 of 16 dimensions: 6 rotate.
    assert_eq!(model.config.rotary_dim(), 6);
    check_logits("phi", &|ids, mask| model.forward(ids, mask));
}

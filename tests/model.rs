//! GPT-2 in burn against the transformers fixtures in tests/fixtures/numerics.

use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::{Distribution, TensorData};
use kiln_model::{Cpu, hf};
use serde_json::Value;

use crate::support::fixture;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("numerics/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn int_tensor(
    rows: &Value,
    device: &kiln_model::burn::backend::ndarray::NdArrayDevice,
) -> Tensor<Cpu, 2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(rows.clone()).expect("rows of ids");
    let (b, s) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}

/// A logits case's expected values (`[rows][positions][vocab]` in expected.json), flat.
pub(crate) fn fixture_logits(case: &Value) -> Vec<f32> {
    case["logits"]
        .as_array()
        .expect("nested")
        .iter()
        .flat_map(|row| row.as_array().expect("rows").iter())
        .flat_map(|pos| pos.as_array().expect("positions").iter())
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn logits_match_transformers() {
    let device = Default::default();
    let (config, model) = hf::load::<Cpu>(&fixture("numerics/tiny-gpt2"), &device).expect("loads");
    assert_eq!(
        (
            config.n_layer,
            config.n_head,
            config.n_embd,
            config.vocab_size
        ),
        (2, 4, 64, 512)
    );
    let exp = expected();
    for name in ["single", "short", "padded"] {
        let case = &exp["logits"][name];
        let ids = int_tensor(&case["ids"], &device);
        let mask = (!case["mask"].is_null()).then(|| int_tensor(&case["mask"], &device));
        let got: Vec<f32> = model
            .forward(ids, mask)
            .into_data()
            .to_vec()
            .expect("f32 logits");
        let want = fixture_logits(case);
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: max |kiln - transformers| = {worst}");
    }
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let device = Default::default();
    let dir = tempfile::tempdir().expect("tmp");
    let err = hf::load::<Cpu>(dir.path(), &device).expect_err("no config");
    assert!(err.to_string().contains("config.json"), "{err}");
    std::fs::copy(
        fixture("numerics/tiny-gpt2/config.json"),
        dir.path().join("config.json"),
    )
    .expect("copy");
    let err = hf::load::<Cpu>(dir.path(), &device).expect_err("no weights");
    assert!(
        err.to_string().starts_with("model weights not found:"),
        "{err}"
    );
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").expect("write");
    let err = hf::load::<Cpu>(dir.path(), &device).expect_err("corrupt");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // Weights of another shape than config.json says.
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("config.json")).expect("read"),
    )
    .expect("json");
    config["n_embd"] = Value::from(32);
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    std::fs::copy(
        fixture("numerics/tiny-gpt2/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy");
    let err = hf::load::<Cpu>(dir.path(), &device).expect_err("shape mismatch");
    assert!(err.to_string().contains("do not fit config.json"), "{err}");
}

/// Logits of a 512-token row (attention over up to 512 positions) at some positions for some
/// ids, against transformers in float64 (tests/fixtures/numerics/generate_peaked.py).
pub(crate) fn long_context_logits<B: Backend>(device: &B::Device) -> f32 {
    let device = device.clone();
    let (config, model) =
        hf::load::<B>(&fixture("numerics/tiny-gpt2-peaked"), &device).expect("loads");
    assert_eq!((config.n_positions, config.vocab_size), (512, 50257));
    let text = std::fs::read_to_string(fixture("numerics/expected_peaked.json")).expect("json");
    let exp: Value = serde_json::from_str(&text).expect("valid JSON");
    let long = &exp["long"];
    let ids: Vec<i64> = serde_json::from_value(long["ids"].clone()).expect("ids");
    let positions: Vec<usize> = serde_json::from_value(long["positions"].clone()).expect("at");
    let columns: Vec<usize> = serde_json::from_value(long["columns"].clone()).expect("ids");
    let want: Vec<Vec<f64>> = serde_json::from_value(long["logits"].clone()).expect("logits");
    let n = ids.len();
    assert!(n >= 512);
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let d = config.n_embd;
    let at: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
    let at = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [positions.len()]), &device);
    let hidden = model.hidden(input, None).reshape([n, d]).select(0, at);
    let got: Vec<f32> = model
        .project(hidden)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits");
    let vocab = config.vocab_size;
    let mut worst = 0f32;
    for (r, row) in want.iter().enumerate() {
        for (&c, &w) in columns.iter().zip(row) {
            worst = worst.max((got[r * vocab + c] - w as f32).abs());
        }
    }
    worst
}

#[test]
fn long_context_logits_match_transformers_in_float64() {
    for (backend, worst) in [
        ("ndarray", long_context_logits::<Cpu>(&Default::default())),
        (
            "flex",
            long_context_logits::<kiln_model::Flex>(&Default::default()),
        ),
    ] {
        assert!(
            worst < 1e-4,
            "{backend}: max |kiln − transformers (f64)| = {worst}"
        );
    }
}

/// Loading GPT-2 draws from burn's shared generator no more than building a fresh model does
/// (its biases; the weights stay lazy and are replaced unread). burn-store's `collect` read
/// every parameter, which drew the whole random initialization on each load, after the RNG
/// lock was released, where it moved another thread's seeded draws.
#[test]
fn loading_gpt2_draws_no_more_than_building_it() {
    type F = kiln_model::Flex;
    let device = Default::default();
    let dir = fixture("numerics/tiny-gpt2");
    let draw = || {
        Tensor::<F, 1>::random([8], Distribution::Default, &device)
            .into_data()
            .to_vec::<f32>()
            .expect("f32")
    };
    let (config, _) = hf::load::<F>(&dir, &device).expect("loads");
    let built = kiln_model::seeded::<F, _>(&device, 9, || {
        let _fresh = config.init::<F>(&device);
        draw()
    });
    let loaded = kiln_model::seeded::<F, _>(&device, 9, || {
        hf::load::<F>(&dir, &device).expect("loads");
        draw()
    });
    assert_eq!(loaded, built, "loading drew more random numbers");
    // The comparison can fail: reading the fresh model's weights draws them.
    let drawn = kiln_model::seeded::<F, _>(&device, 9, || {
        let _fresh = kiln_model::drawn(config.init::<F>(&device));
        draw()
    });
    assert_ne!(drawn, built);
}

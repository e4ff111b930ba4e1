//! The Llama family's fused kernels: SwiGLU (`silu(gate) ⊙ up`) and RMSNorm, each one op with
//! a hand-written backward pass under autodiff over burn-flex, and one parallel pass without
//! autodiff. Elsewhere (and for other dtypes), the composed burn ops.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, binary};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorMetadata, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{
    CHUNK, back, cast, exp_approx, flex_f32, flex_new, mul_into, owned_f32, record, zeroed,
};
use crate::Flex;

/// `silu(a)·b`, `b·silu'(a)` and `silu(a)` of one element.
#[inline(always)]
fn swiglu_one(a: f32, b: f32) -> (f32, f32, f32) {
    let s = 1.0 / (1.0 + exp_approx(-a));
    let act = a * s;
    // d/da a·σ(a) = σ(a)·(1 + a·(1 − σ(a)))
    (act * b, b * s * (1.0 + a * (1.0 - s)), act)
}

/// Writes `y` and, when given, `d_gate` and `act` (the backward pass's factors).
#[inline(always)]
fn swiglu_chunk(a: &[f32], b: &[f32], y: &mut [f32], grad: Option<(&mut [f32], &mut [f32])>) {
    match grad {
        Some((dg, act)) => {
            for i in 0..a.len() {
                (y[i], dg[i], act[i]) = swiglu_one(a[i], b[i]);
            }
        }
        None => {
            for i in 0..a.len() {
                y[i] = swiglu_one(a[i], b[i]).0;
            }
        }
    }
}

super::multiversion! {
    fn swiglu_chunk_dispatch(
        a: &[f32],
        b: &[f32],
        y: &mut [f32],
        grad: Option<(&mut [f32], &mut [f32])>,
    ) => swiglu_chunk;
}

/// SwiGLU of two f32 flex tensors of one shape: the value and, when `grad`, the factors of
/// the backward pass (`b·silu'(a)`, `silu(a)`). `None` for another dtype or shape.
fn swiglu_flex(
    a: &FlexTensor,
    b: &FlexTensor,
    grad: bool,
) -> Option<(FlexTensor, Option<(FlexTensor, FlexTensor)>)> {
    let shape = a.shape();
    if shape != b.shape() {
        return None;
    }
    let (a, b) = (flex_f32(a)?, flex_f32(b)?);
    let (xa, xb) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
    let n = xa.len();
    let mut y = zeroed(n);
    let mut dg = zeroed(if grad { n } else { 0 });
    let mut act = zeroed(if grad { n } else { 0 });
    let inputs = xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK));
    if grad {
        inputs
            .zip(y.par_chunks_mut(CHUNK))
            .zip(dg.par_chunks_mut(CHUNK).zip(act.par_chunks_mut(CHUNK)))
            .for_each(|(((a, b), y), (dg, act))| swiglu_chunk_dispatch(a, b, y, Some((dg, act))));
    } else {
        inputs
            .zip(y.par_chunks_mut(CHUNK))
            .for_each(|((a, b), y)| swiglu_chunk_dispatch(a, b, y, None));
    }
    let make = |v: Vec<f32>| flex_of(v, shape.clone());
    let factors = grad.then(|| (make(dg), make(act)));
    Some((make(y), factors))
}

/// A flex tensor of `shape` holding `values`.
fn flex_of(values: Vec<f32>, shape: Shape) -> FlexTensor {
    Flex::float_from_data(TensorData::new(values, shape), &Default::default())
}

fn swiglu_autodiff_flex(
    a: &FloatTensor<Autodiff<Flex>>,
    b: &FloatTensor<Autodiff<Flex>>,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct SwigluBackward;

    impl Backward<Flex, 2> for SwigluBackward {
        type State = (FlexTensor, FlexTensor);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let (d_gate, act) = ops.state;
            let times = |factor: FlexTensor| {
                move |grad: FlexTensor| {
                    let mut g = owned_f32(grad).expect("an f32 op gets f32 gradients");
                    mul_into(
                        g.storage_mut::<f32>(),
                        factor.as_slice::<f32>().expect("f32 factors"),
                    );
                    g
                }
            };
            binary::<Flex, _, _>(ops.parents, ops.node, grads, times(d_gate), times(act));
        }
    }

    let (y, factors) = swiglu_flex(&a.primitive, &b.primitive, true)?;
    Some(record(SwigluBackward, [a, b], factors?, y))
}

/// SwiGLU, the Llama family's MLP activation: `silu(gate) ⊙ up`. On burn-flex one parallel
/// pass; under autodiff over burn-flex one op whose forward pass also writes the factors of
/// its backward pass (two parallel products), where the composed form is three ops and
/// their backward passes. Elsewhere, [`swiglu_ops`].
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    let gate = match cast::<B, Autodiff<Flex>, D>(gate) {
        Ok(gate) => {
            let up = cast::<B, Autodiff<Flex>, D>(up).unwrap_or_else(|_| unreachable!("one B"));
            let (pg, pu) = (
                gate.clone().into_primitive().tensor(),
                up.clone().into_primitive().tensor(),
            );
            return back(match swiglu_autodiff_flex(&pg, &pu) {
                Some(y) => Tensor::<Autodiff<Flex>, D>::from_primitive(TensorPrimitive::Float(y)),
                None => swiglu_ops(gate, up),
            });
        }
        Err(gate) => gate,
    };
    match cast::<B, Flex, D>(gate) {
        Ok(gate) => {
            let up = cast::<B, Flex, D>(up).unwrap_or_else(|_| unreachable!("one B"));
            let (pg, pu) = (
                gate.clone().into_primitive().tensor(),
                up.clone().into_primitive().tensor(),
            );
            back(match swiglu_flex(&pg, &pu, false) {
                Some((y, _)) => Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(y)),
                None => swiglu_ops(gate, up),
            })
        }
        Err(gate) => swiglu_ops(gate, up),
    }
}

/// [`swiglu`] composed of burn ops (any backend).
pub fn swiglu_ops<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    silu(gate) * up
}

/// RMSNorm of the rows of `x` (`[rows, d]` as a flat slice): writes `y = x·r·w` and returns
/// each row's `r = 1/√(mean(x²) + eps)` (the sum of squares in f64).
fn rms_forward(x: &[f32], w: &[f32], eps: f64, y: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    let mut r = vec![0f32; x.len() / d];
    let rows_per_task = (CHUNK / d).max(1);
    x.par_chunks(d * rows_per_task)
        .zip(y.par_chunks_mut(d * rows_per_task))
        .zip(r.par_chunks_mut(rows_per_task))
        .for_each(|((x, y), r)| {
            for ((x, y), r) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(r) {
                let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                *r = (1.0 / (ss / d as f64 + eps).sqrt()) as f32;
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * *r * w;
                }
            }
        });
    r
}

/// The gradient of RMSNorm's input: `dx = r·(g⊙w) − x·(r³/d)·Σ(g⊙w⊙x)` per row.
fn rms_grad_x(x: &[f32], w: &[f32], r: &[f32], g: &mut [f32]) {
    let d = w.len();
    let rows_per_task = (CHUNK / d).max(1);
    g.par_chunks_mut(d * rows_per_task)
        .zip(x.par_chunks(d * rows_per_task))
        .zip(r.par_chunks(rows_per_task))
        .for_each(|((g, x), r)| {
            for ((g, x), &r) in g.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(r) {
                let dot: f64 = g
                    .iter()
                    .zip(x)
                    .zip(w)
                    .map(|((&g, &x), &w)| f64::from(g * w) * f64::from(x))
                    .sum();
                let c = (f64::from(r).powi(3) * dot / d as f64) as f32;
                for ((g, &x), &w) in g.iter_mut().zip(x).zip(w) {
                    *g = r * (*g * w) - x * c;
                }
            }
        });
}

/// The gradient of RMSNorm's scale: `dw = Σ_rows g⊙x·r` (partial sums per task in f64).
fn rms_grad_w(x: &[f32], r: &[f32], g: &[f32], d: usize) -> Vec<f32> {
    let rows_per_task = (CHUNK / d).max(1);
    let partials: Vec<Vec<f64>> = g
        .par_chunks(d * rows_per_task)
        .zip(x.par_chunks(d * rows_per_task))
        .zip(r.par_chunks(rows_per_task))
        .map(|((g, x), r)| {
            let mut acc = vec![0f64; d];
            for ((g, x), &r) in g.chunks_exact(d).zip(x.chunks_exact(d)).zip(r) {
                for ((a, &g), &x) in acc.iter_mut().zip(g).zip(x) {
                    *a += f64::from(g * x * r);
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0f64; d];
    for p in partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// What RMSNorm's backward pass keeps: its input, scale and per-row `r`.
#[derive(Debug, Clone)]
struct RmsState {
    x: FlexTensor,
    w: FlexTensor,
    r: Vec<f32>,
}

/// RMSNorm over burn-flex f32 tensors, `x` of any rank with `w.len()` as its last dim; the
/// output and what a backward pass needs. `None` for another dtype or shape.
fn rms_flex(x: &FlexTensor, w: &FlexTensor, eps: f64) -> Option<(FlexTensor, RmsState)> {
    let (x, w) = (flex_f32(x)?, flex_f32(w)?);
    let (xs, ws) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?);
    let d = ws.len();
    let shape = x.shape();
    if d == 0 || shape.as_slice().last() != Some(&d) {
        return None;
    }
    let mut y = zeroed(xs.len());
    let r = rms_forward(xs, ws, eps, &mut y);
    Some((flex_of(y, shape), RmsState { x, w, r }))
}

fn rms_autodiff_flex(
    x: &FloatTensor<Autodiff<Flex>>,
    w: &FloatTensor<Autodiff<Flex>>,
    eps: f64,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct RmsBackward;

    impl Backward<Flex, 2> for RmsBackward {
        type State = RmsState;

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let RmsState { x, w, r } = ops.state;
            let xs = x.as_slice::<f32>().expect("f32 input");
            let ws = w.as_slice::<f32>().expect("f32 scale");
            let d = ws.len();
            binary::<Flex, _, _>(
                ops.parents,
                ops.node,
                grads,
                |grad| {
                    let mut g = owned_f32(grad).expect("an f32 op gets f32 gradients");
                    rms_grad_x(xs, ws, &r, g.storage_mut::<f32>());
                    g
                },
                |grad| {
                    let g = flex_f32(&grad).expect("an f32 op gets f32 gradients");
                    let gs = g.as_slice::<f32>().expect("f32");
                    let dw = rms_grad_w(xs, &r, gs, d);
                    flex_new([d], |out| out.copy_from_slice(&dw))
                },
            );
        }
    }

    let (y, state) = rms_flex(&x.primitive, &w.primitive, eps)?;
    Some(record(RmsBackward, [x, w], state, y))
}

/// RMSNorm over the last dim, as Hugging Face's `LlamaRMSNorm`:
/// `x / √(mean(x²) + eps) · weight`. On burn-flex one parallel pass per row (the sum of
/// squares in f64); under autodiff over burn-flex one op with a hand-written backward pass
/// (the composed form is six ops). Elsewhere, [`rms_norm_ops`].
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let x = match cast::<B, Autodiff<Flex>, D>(x) {
        Ok(x) => {
            let w = cast::<B, Autodiff<Flex>, 1>(weight).unwrap_or_else(|_| unreachable!("one B"));
            let (px, pw) = (
                x.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
            );
            return back(match rms_autodiff_flex(&px, &pw, eps) {
                Some(y) => Tensor::<Autodiff<Flex>, D>::from_primitive(TensorPrimitive::Float(y)),
                None => rms_norm_ops(x, w, eps),
            });
        }
        Err(x) => x,
    };
    match cast::<B, Flex, D>(x) {
        Ok(x) => {
            let w = cast::<B, Flex, 1>(weight).unwrap_or_else(|_| unreachable!("one B"));
            let (px, pw) = (
                x.clone().into_primitive().tensor(),
                w.clone().into_primitive().tensor(),
            );
            back(match rms_flex(&px, &pw, eps) {
                Some((y, _)) => Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(y)),
                None => rms_norm_ops(x, w, eps),
            })
        }
        Err(x) => rms_norm_ops(x, weight, eps),
    }
}

/// [`rms_norm`] composed of burn ops (any backend): burn's `RmsNorm::forward`.
pub fn rms_norm_ops<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let rms = (x
        .clone()
        .cast(burn::tensor::DType::F32)
        .square()
        .mean_dim(D - 1)
        + eps)
        .sqrt();
    (x / rms.cast(dtype)) * weight.unsqueeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::tensor::backend::AutodiffBackend;

    /// `f(x, w)` and the gradients of `Σ f(x, w)⊙c` with respect to both inputs.
    fn value_and_grads<B: AutodiffBackend, const D: usize, const E: usize>(
        x: (Vec<f32>, [usize; D]),
        w: (Vec<f32>, [usize; E]),
        f: impl Fn(Tensor<B, D>, Tensor<B, E>) -> Tensor<B, D>,
    ) -> [Vec<f32>; 3] {
        let device = Default::default();
        let n = x.0.len();
        let c: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 / 3.0 - 1.0).collect();
        let xt = Tensor::<B, D>::from_data(TensorData::new(x.0, x.1), &device).require_grad();
        let wt = Tensor::<B, E>::from_data(TensorData::new(w.0, w.1), &device).require_grad();
        let y = f(xt.clone(), wt.clone());
        let loss = (y.clone() * Tensor::<B, D>::from_data(TensorData::new(c, x.1), &device)).sum();
        let grads = loss.backward();
        let vec = |t: Option<Tensor<B::InnerBackend, D>>| {
            t.map(|t| t.into_data().to_vec::<f32>().unwrap_or_default())
                .unwrap_or_default()
        };
        let gw = wt
            .grad(&grads)
            .map(|t| t.into_data().to_vec::<f32>().unwrap_or_default())
            .unwrap_or_default();
        [
            y.into_data().to_vec::<f32>().unwrap_or_default(),
            vec(xt.grad(&grads)),
            gw,
        ]
    }

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        assert!(!got.is_empty(), "{what}: empty");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// SwiGLU's inputs: gate over [−12, 12), up a pattern in [−2, 2].
    fn swiglu_inputs() -> (Vec<f32>, Vec<f32>) {
        let gate = (0..4800).map(|i| (i as f32 - 2400.0) / 200.0).collect();
        let up = (0..4800)
            .map(|i| ((i * 31) % 17) as f32 / 4.0 - 2.0)
            .collect();
        (gate, up)
    }

    fn swiglu_case<B: AutodiffBackend>() -> [Vec<f32>; 3] {
        let (gate, up) = swiglu_inputs();
        value_and_grads::<B, 3, 3>((gate, [2, 24, 100]), (up, [2, 24, 100]), swiglu)
    }

    #[test]
    fn swiglu_on_flex_matches_the_composed_form_and_its_gradients() {
        let [y, gx, gw] = swiglu_case::<Autodiff<Flex>>();
        let [y_ops, gx_ops, gw_ops] = swiglu_case::<Autodiff<Cpu>>();
        close(&y, &y_ops, 1e-6, "value");
        close(&gx, &gx_ops, 1e-5, "d gate");
        close(&gw, &gw_ops, 1e-6, "d up");
        let device = Default::default();
        let (gate, up) = swiglu_inputs();
        let plain = swiglu(
            Tensor::<Flex, 3>::from_data(TensorData::new(gate, [2, 24, 100]), &device),
            Tensor::<Flex, 3>::from_data(TensorData::new(up, [2, 24, 100]), &device),
        );
        assert_eq!(plain.into_data().to_vec::<f32>().unwrap_or_default(), y);
        // The flex results above came from the fused kernel, not the fallback.
        let t = Tensor::<Flex, 2>::ones([3, 4], &device)
            .into_primitive()
            .tensor();
        assert!(swiglu_flex(&t, &t, true).is_some_and(|(_, f)| f.is_some()));
    }

    /// RMSNorm's inputs: x `[3, 5, 96]` in [−2.5, 2.5], a scale in [0.5, 1.5].
    fn rms_inputs() -> (Vec<f32>, Vec<f32>) {
        let x = (0..3 * 5 * 96)
            .map(|i| ((i * 37) % 101) as f32 / 20.0 - 2.5)
            .collect();
        let w = (0..96).map(|i| 0.5 + (i % 9) as f32 / 8.0).collect();
        (x, w)
    }

    fn rms_case<B: AutodiffBackend>() -> [Vec<f32>; 3] {
        let (x, w) = rms_inputs();
        value_and_grads::<B, 3, 1>((x, [3, 5, 96]), (w, [96]), |x, w| rms_norm(x, w, 1e-6))
    }

    #[test]
    fn rms_norm_on_flex_matches_the_composed_form_and_its_gradients() {
        let [y, gx, gw] = rms_case::<Autodiff<Flex>>();
        let [y_ops, gx_ops, gw_ops] = rms_case::<Autodiff<Cpu>>();
        close(&y, &y_ops, 1e-6, "value");
        close(&gx, &gx_ops, 2e-5, "d x");
        close(&gw, &gw_ops, 2e-5, "d weight");
        let device = Default::default();
        let (x, w) = rms_inputs();
        let plain = rms_norm(
            Tensor::<Flex, 3>::from_data(TensorData::new(x, [3, 5, 96]), &device),
            Tensor::<Flex, 1>::from_data(TensorData::new(w, [96]), &device),
            1e-6,
        );
        assert_eq!(plain.into_data().to_vec::<f32>().unwrap_or_default(), y);
        let t = Tensor::<Flex, 2>::ones([3, 4], &device)
            .into_primitive()
            .tensor();
        let w = Tensor::<Flex, 1>::ones([4], &device)
            .into_primitive()
            .tensor();
        assert!(rms_flex(&t, &w, 1e-6).is_some());
    }
}

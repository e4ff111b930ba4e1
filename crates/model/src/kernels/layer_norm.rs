//! LayerNorm as one autodiff op over burn-flex: the forward pass writes the output and the
//! normalized input `x̂` in one parallel sweep of the rows, and the backward pass writes the
//! input's gradient and the scale's and shift's in one more. burn 0.21's autodiff backend
//! runs LayerNorm as its default decomposition instead (a mean, a subtraction, a square, a
//! mean, a square root, a division, a scale and a shift, each a single-threaded op with its
//! own backward step).
//!
//! Row statistics are summed in f64 over [`LANES`] lanes, so a row's mean and variance do
//! not depend on the threads or the instruction set.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::nn::LayerNorm;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{CHUNK, back, cast, flex_f32, flex_new, owned_f32, record, zeroed};
use crate::Flex;

/// f64 lanes of the row sums.
const LANES: usize = 8;

/// `Σ f(i)` over `0..d` in [`LANES`] f64 lanes, the lanes then added in order.
#[inline(always)]
fn lane_sum(d: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let full = d / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let rest: f64 = (full..d).map(&f).sum();
    acc.iter().sum::<f64>() + rest
}

/// Rows of `d` elements per rayon task: about [`CHUNK`] elements.
fn rows_per_task(d: usize) -> usize {
    (CHUNK / d).max(1)
}

/// One task of the forward pass: for each row of `x`, `x̂ = (x − mean)/√(var + eps)` into
/// `xhat` and `y = x̂·γ + β`; each row's `1/√(var + eps)` into `rstd`.
#[inline(always)]
fn forward_rows(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let d = gamma.len();
    let rows = x.chunks_exact(d).zip(y.chunks_exact_mut(d));
    for (((x, y), xhat), rstd) in rows.zip(xhat.chunks_exact_mut(d)).zip(rstd) {
        let mean = lane_sum(d, |i| f64::from(x[i])) / d as f64;
        let var = lane_sum(d, |i| (f64::from(x[i]) - mean).powi(2)) / d as f64;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            let h = ((f64::from(x[i]) - mean) * r) as f32;
            xhat[i] = h;
            y[i] = h * gamma[i] + beta[i];
        }
        *rstd = r as f32;
    }
}

super::multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn forward_rows_dispatch(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
        y: &mut [f32],
        xhat: &mut [f32],
        rstd: &mut [f32],
    ) => forward_rows;
}

/// One task of the backward pass. `g` holds the output's gradient and is overwritten with
/// the input's, `rstd·(g·γ − mean(g·γ) − x̂·mean(g·γ·x̂))` per row; `dgamma += Σ g·x̂` and
/// `dbeta += Σ g` over the task's rows (f64).
#[inline(always)]
fn backward_rows(
    g: &mut [f32],
    xhat: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
) {
    let d = gamma.len();
    for ((g, xhat), &r) in g.chunks_exact_mut(d).zip(xhat.chunks_exact(d)).zip(rstd) {
        let gg = |i: usize| f64::from(g[i] * gamma[i]);
        let a = lane_sum(d, gg) / d as f64;
        let b = lane_sum(d, |i| gg(i) * f64::from(xhat[i])) / d as f64;
        for i in 0..d {
            dgamma[i] += f64::from(g[i]) * f64::from(xhat[i]);
            dbeta[i] += f64::from(g[i]);
        }
        let r = f64::from(r);
        for i in 0..d {
            g[i] = (r * (f64::from(g[i] * gamma[i]) - a - f64::from(xhat[i]) * b)) as f32;
        }
    }
}

super::multiversion! {
    fn backward_rows_dispatch(
        g: &mut [f32],
        xhat: &[f32],
        rstd: &[f32],
        gamma: &[f32],
        dgamma: &mut [f64],
        dbeta: &mut [f64],
    ) => backward_rows;
}

/// What the backward pass keeps: `x̂`, each row's `1/√(var + eps)`, and `γ`.
#[derive(Clone, Debug)]
struct LnState {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    gamma: FlexTensor,
}

/// LayerNorm over burn-flex f32 tensors (`x` of any rank with `γ.len()` as its last dim): the
/// output and what a backward pass needs. `None` for another dtype or shape.
fn forward_flex<const D: usize>(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> Option<(FlexTensor, LnState)> {
    let (x, gamma, beta) = (flex_f32(x)?, flex_f32(gamma)?, flex_f32(beta)?);
    let (xs, gs, bs) = (
        x.as_slice::<f32>()?,
        gamma.as_slice::<f32>()?,
        beta.as_slice::<f32>()?,
    );
    let d = gs.len();
    let dims = x.layout().shape();
    if d == 0 || bs.len() != d || dims.num_dims() != D || dims[D - 1] != d {
        return None;
    }
    let shape: [usize; D] = std::array::from_fn(|i| dims[i]);
    let per_task = rows_per_task(d);
    let mut xhat = zeroed(xs.len());
    let mut rstd = vec![0f32; xs.len() / d];
    let y = flex_new(shape, |y| {
        xs.par_chunks(d * per_task)
            .zip(y.par_chunks_mut(d * per_task))
            .zip(xhat.par_chunks_mut(d * per_task))
            .zip(rstd.par_chunks_mut(per_task))
            .for_each(|(((x, y), xhat), rstd)| {
                forward_rows_dispatch(x, gs, bs, eps, y, xhat, rstd);
            });
    });
    Some((y, LnState { xhat, rstd, gamma }))
}

/// The backward pass of [`forward_flex`]: the input's gradient in place of `grad`, and `γ`'s
/// and `β`'s (partial sums per task in f64, added in task order).
fn backward_flex(state: &LnState, grad: FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let gamma = state.gamma.as_slice::<f32>().expect("f32 scale");
    let d = gamma.len();
    let per_task = rows_per_task(d);
    let mut g = owned_f32(grad).expect("an f32 op gets f32 gradients");
    let partials: Vec<[Vec<f64>; 2]> = g
        .storage_mut::<f32>()
        .par_chunks_mut(d * per_task)
        .zip(state.xhat.par_chunks(d * per_task))
        .zip(state.rstd.par_chunks(per_task))
        .map(|((g, xhat), rstd)| {
            let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
            backward_rows_dispatch(g, xhat, rstd, gamma, &mut dgamma, &mut dbeta);
            [dgamma, dbeta]
        })
        .collect();
    let total = |which: usize| {
        flex_new([d], |out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = partials.iter().map(|p| p[which][i]).sum::<f64>() as f32;
            }
        })
    };
    (g, total(0), total(1))
}

/// LayerNorm under autodiff over burn-flex, as one op (see the module's doc); `None` for
/// another dtype or shape.
fn autodiff_flex<const D: usize>(
    x: &FloatTensor<Autodiff<Flex>>,
    gamma: &FloatTensor<Autodiff<Flex>>,
    beta: &FloatTensor<Autodiff<Flex>>,
    eps: f64,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct LayerNormBackward;

    impl Backward<Flex, 3> for LayerNormBackward {
        type State = LnState;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node);
            let (dx, dgamma, dbeta) = backward_flex(&ops.state, grad);
            let [px, pgamma, pbeta] = ops.parents;
            for (parent, g) in [(px, dx), (pgamma, dgamma), (pbeta, dbeta)] {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, g);
                }
            }
        }
    }

    let (y, state) = forward_flex::<D>(&x.primitive, &gamma.primitive, &beta.primitive, eps)?;
    Some(record(LayerNormBackward, [x, gamma, beta], state, y))
}

/// `norm.forward(x)`, LayerNorm over the last dimension with epsilon `eps` (the one `norm`
/// was built with: burn keeps it private). Under autodiff over burn-flex, one op with a fused
/// backward pass (statistics in f64; equal to burn's decomposition to about 1e-6); elsewhere,
/// and without a shift, burn's own.
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    eps: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let Some(beta) = &norm.beta else {
        return norm.forward(x);
    };
    let x = match cast::<B, Autodiff<Flex>, D>(x) {
        Ok(x) => x,
        Err(x) => return norm.forward(x),
    };
    let param = |p: Tensor<B, 1>| {
        cast::<B, Autodiff<Flex>, 1>(p)
            .unwrap_or_else(|_| unreachable!("one backend"))
            .into_primitive()
            .tensor()
    };
    let (gamma, beta) = (param(norm.gamma.val()), param(beta.val()));
    match autodiff_flex::<D>(&x.clone().into_primitive().tensor(), &gamma, &beta, eps) {
        Some(y) => back(Tensor::<Autodiff<Flex>, D>::from_primitive(
            TensorPrimitive::Float(y),
        )),
        None => norm.forward(back(x)),
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::Distribution;

    use super::*;

    type Ad = Autodiff<Flex>;

    fn values<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}, element {i}: {x} vs {y}"
            );
        }
    }

    /// A LayerNorm with a scale and shift that are not 1 and 0.
    fn norm<B: Backend>(d: usize, eps: f64, device: &B::Device) -> LayerNorm<B> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init::<B>(device);
        let random = |m| Tensor::<B, 1>::random([d], Distribution::Normal(m, 0.5), device);
        norm.gamma = Param::from_tensor(random(1.0));
        norm.beta = Some(Param::from_tensor(random(0.0)));
        norm
    }

    /// The fused op against burn's own LayerNorm (its default decomposition, run by the same
    /// autodiff backend): the output and the gradients of the input, the scale and the shift,
    /// over rows that span several tasks and a width that is not a multiple of the lanes.
    #[test]
    fn equals_burns_layer_norm_and_its_gradients() {
        let device = Default::default();
        let (rows, d, eps) = (1000, 37, 1e-5);
        let (norm, x, weights) = crate::seeded::<Ad, _>(&device, 7, || {
            let norm = norm::<Ad>(d, eps, &device);
            let x = Tensor::<Ad, 2>::random([rows, d], Distribution::Normal(0.3, 2.0), &device);
            let w = Tensor::<Ad, 2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device);
            (norm, x, w)
        });
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fused {
                layer_norm(&norm, eps, x.clone())
            } else {
                norm.forward(x.clone())
            };
            let grads = (y.clone() * weights.clone()).sum().backward();
            let grad_of = |t: Option<Tensor<Flex, 1>>| values(t.expect("a gradient"));
            (
                values(y),
                values(x.grad(&grads).expect("the input's gradient")),
                grad_of(norm.gamma.grad(&grads)),
                grad_of(norm.beta.as_ref().and_then(|b| b.grad(&grads))),
            )
        };
        let (fused, burn) = (run(true), run(false));
        close("output", &fused.0, &burn.0, 1e-5);
        close("input gradient", &fused.1, &burn.1, 1e-4);
        close("scale gradient", &fused.2, &burn.2, 1e-4);
        close("shift gradient", &fused.3, &burn.3, 1e-4);
    }

    /// Off autodiff-over-flex the function is burn's LayerNorm, bit for bit.
    #[test]
    fn other_backends_run_burns_layer_norm() {
        type Nd = burn::backend::NdArray<f32>;
        let device = Default::default();
        let (norm, x) = crate::unseeded(|| {
            let norm = crate::drawn(norm::<Nd>(8, 1e-5, &device));
            (
                norm,
                Tensor::<Nd, 2>::random([3, 8], Distribution::Default, &device),
            )
        });
        assert_eq!(
            values(layer_norm(&norm, 1e-5, x.clone())),
            values(norm.forward(x))
        );
    }
}

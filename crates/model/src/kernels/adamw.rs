//! AdamW with burn's arithmetic, as one pass over each parameter on burn-flex.
//!
//! burn's `AdamW` runs about ten tensor ops per parameter (`m·β₁`, `g·(1−β₁)`, their sum,
//! `g²`, …), each a pass over the whole tensor on one thread and most of them a fresh
//! allocation: on GPT-2 124M that was seconds per step. [`AdamW`] does the same f32
//! operations in the same order per element, in place and over rayon's threads, so a step
//! gives bit-identical parameters and moments; on other backends, or a tensor the fast path
//! cannot take, it runs burn's own `AdamW`. Its state is burn's `AdamWState`: checkpoints
//! written by either read back into the other.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{back, cast, flex_new};
use crate::Flex;

/// AdamW (decoupled weight decay, no AMSGrad), PyTorch's conventions given explicitly.
#[derive(Clone)]
pub struct AdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same settings: the path for other backends.
    burn: burn::optim::AdamW,
}

impl AdamW {
    /// AdamW with these moments' decay rates, ε and decoupled weight decay.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn,
        }
    }

    /// The optimizer for module `M` (burn's adaptor: it walks the module's parameters).
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// Moves `tensor` one step along `grad` on burn-flex, or gives the inputs back.
    #[allow(clippy::type_complexity)]
    fn step_flex<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> Result<
        (Tensor<B, D>, AdamWState<B, D>),
        (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>),
    > {
        let usable = |t: &Tensor<B, D>| {
            cast::<B, Flex, D>(t.clone()).is_ok_and(|t| plain_f32(&t.into_primitive().tensor()))
        };
        let moments_usable = state.as_ref().is_none_or(|s| {
            s.momentum.max_moment_2.is_none()
                && usable(&s.momentum.moment_1)
                && usable(&s.momentum.moment_2)
        });
        if !(usable(&tensor) && usable(&grad) && moments_usable) {
            return Err((tensor, grad, state));
        }
        let flex = |t: Tensor<B, D>| -> FlexTensor {
            match cast::<B, Flex, D>(t) {
                Ok(t) => t.into_primitive().tensor(),
                Err(_) => unreachable!("checked above"),
            }
        };
        let dims = tensor.dims();
        let (time, first, mut m, mut v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                false,
                flex(s.momentum.moment_1),
                flex(s.momentum.moment_2),
            ),
            // Written over, not read, on the first step.
            None => (1, true, flex_new(dims, |_| ()), flex_new(dims, |_| ())),
        };
        let mut param = flex(tensor);
        let grad = flex(grad);
        let step = Step {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            // burn: `1 − β^t` in f32.
            correction_1: 1f32 - self.beta_1.powi(time as i32),
            correction_2: 1f32 - self.beta_2.powi(time as i32),
            // burn: the rate `lr·wd` in f64, `1 − rate` cast to f32, the learning rate too.
            keep: {
                let rate = lr * f64::from(self.weight_decay);
                (rate != 0.0).then_some((1.0 - rate) as f32)
            },
            lr: lr as f32,
            first,
        };
        step.run(
            param.storage_mut(),
            grad.storage(),
            m.storage_mut(),
            v.storage_mut(),
        );
        let tensor =
            |t: FlexTensor| back::<B, Flex, D>(Tensor::from_primitive(TensorPrimitive::Float(t)));
        let state = AdamWState::new(AdaptiveMomentumState::new(time, tensor(m), tensor(v)));
        Ok((tensor(param), state))
    }
}

/// A contiguous f32 tensor whose storage is exactly its elements.
fn plain_f32(t: &FlexTensor) -> bool {
    let n = t.layout().num_elements();
    t.dtype() == DType::F32
        && t.layout().contiguous_offsets() == Some((0, n))
        && t.storage::<f32>().len() == n
}

/// One step's scalars.
struct Step {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    correction_1: f32,
    correction_2: f32,
    /// `1 − lr·wd` when weight decay applies.
    keep: Option<f32>,
    lr: f32,
    /// The first step: the moments are written, not read.
    first: bool,
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

impl Step {
    /// Updates `param` and the moments in place, over rayon's threads.
    fn run(&self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| self.chunk(p, g, m, v));
    }

    /// burn's `AdaptiveMomentumW::transform` and `AdamW::step`, element by element: each
    /// product and sum rounded to f32 where burn's tensor op rounds it.
    #[inline(always)]
    fn chunk(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (f1, f2) = (1.0 - self.beta_1, 1.0 - self.beta_2);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            if self.first {
                *m = g * f1;
                *v = (g * g) * f2;
            } else {
                *m = *m * self.beta_1 + g * f1;
                *v = *v * self.beta_2 + (g * g) * f2;
            }
            let m_hat = *m / self.correction_1;
            let v_hat = *v / self.correction_2;
            let delta = m_hat / (v_hat.sqrt() + self.epsilon);
            let decayed = match self.keep {
                Some(keep) => *p * keep,
                None => *p,
            };
            *p = decayed - delta * self.lr;
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        match self.step_flex(lr, tensor, grad, state) {
            Ok((tensor, state)) => (tensor, Some(state)),
            Err((tensor, grad, state)) => {
                SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state)
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <burn::optim::AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    /// Parameters after each of `steps` AdamW steps on a linear layer (its weight spans
    /// several rayon chunks) against a fixed squared loss, with `optim`.
    fn train<B: AutodiffBackend>(
        mut optim: impl Optimizer<Linear<B>, B>,
        steps: usize,
    ) -> Vec<Vec<f32>> {
        let device = Default::default();
        let mut layer = linear::<B>(7);
        let x = crate::seeded::<B, _>(&device, 8, || {
            Tensor::<B, 2>::random([4, 300], burn::tensor::Distribution::Default, &device)
        });
        let mut seen = Vec::new();
        for i in 0..steps {
            let loss = layer.forward(x.clone()).powf_scalar(2.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(1e-2 / (i + 1) as f64, layer, grads);
            let mut values = layer.weight.val().into_data().to_vec::<f32>().expect("f32");
            let bias = layer.bias.as_ref().expect("a bias").val();
            values.extend(bias.into_data().to_vec::<f32>().expect("f32"));
            seen.push(values);
        }
        seen
    }

    /// A 300 → 100 linear layer drawn from `seed`.
    fn linear<B: AutodiffBackend>(seed: u64) -> Linear<B> {
        let device = Default::default();
        crate::seeded::<B, _>(&device, seed, || {
            crate::drawn(LinearConfig::new(300, 100).init::<B>(&device))
        })
    }

    fn burns<B: AutodiffBackend>(weight_decay: f32) -> impl Optimizer<Linear<B>, B> {
        AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(weight_decay)
            .init::<B, Linear<B>>()
    }

    #[test]
    fn fused_steps_on_flex_equal_burns_adamw_bit_for_bit() {
        type B = Autodiff<Flex>;
        for wd in [0.0, 0.1] {
            let ours = train::<B>(AdamW::new(0.9, 0.999, 1e-8, wd).init(), 5);
            let theirs = train::<B>(burns::<B>(wd), 5);
            assert_eq!(ours.len(), 5);
            // The parameters move: a step that did nothing would also be "equal".
            assert_ne!(ours[0], ours[4]);
            for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                let differ = a
                    .iter()
                    .zip(b)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "weight decay {wd}, step {step}: {differ} values differ"
                );
            }
        }
    }

    #[test]
    fn other_backends_take_burns_adamw() {
        type B = Autodiff<Cpu>;
        assert_eq!(
            train::<B>(AdamW::new(0.9, 0.999, 1e-8, 0.1).init(), 3),
            train::<B>(burns::<B>(0.1), 3)
        );
    }

    #[test]
    fn its_state_is_burns_record() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let layer = linear::<B>(9);
        let x = Tensor::<B, 2>::ones([2, 300], &device);
        let mut ours = AdamW::new(0.9, 0.999, 1e-8, 0.0).init::<B, Linear<B>>();
        let grads = GradientsParams::from_grads(layer.forward(x.clone()).sum().backward(), &layer);
        let layer = ours.step(1e-3, layer, grads);
        // Two more steps each way from the same saved record: burn's reading ours (as a
        // checkpoint written before kiln had its own AdamW is read now), and ours.
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(ours.to_record(), ()).expect("records");
        let theirs = burns::<B>(0.0).load_record(recorder.load(bytes, &device).expect("loads"));
        let a = two_steps(ours, layer.clone(), &x);
        let b = two_steps(theirs, layer, &x);
        assert_eq!(a, b);
    }

    fn two_steps<B: AutodiffBackend>(
        mut optim: impl Optimizer<Linear<B>, B>,
        mut layer: Linear<B>,
        x: &Tensor<B, 2>,
    ) -> Vec<f32> {
        for _ in 0..2 {
            let loss = layer.forward(x.clone()).powf_scalar(2.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(1e-3, layer, grads);
        }
        layer.weight.val().into_data().to_vec::<f32>().expect("f32")
    }
}

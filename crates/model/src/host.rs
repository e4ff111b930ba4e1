//! Reads from a device to the host, counted.
//!
//! On a GPU every read waits for the device and copies over the bus, so kiln's training step
//! reads once (one small tensor: the step's losses and the gradients' squared norms) and
//! nothing else. Every read in kiln's model, training and evaluation code goes through
//! [`read`], which counts it per thread; a test trains on wgpu and checks the count per step,
//! and another checks that no other read call appears in that code.

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Copies `t` to the host (counted in [`reads`]).
pub fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    READS.with(|n| n.set(n.get() + 1));
    t.into_data()
}

/// `t`'s values as `f32` on the host (counted in [`reads`]); empty if they do not convert.
pub fn read_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    read(t).convert::<f32>().to_vec().unwrap_or_default()
}

/// `t`'s values as `i64` on the host (counted in [`reads`]); empty if they do not convert.
pub fn read_i64<B: Backend, const D: usize, K>(t: Tensor<B, D, K>) -> Vec<i64>
where
    K: burn::tensor::BasicOps<B>,
{
    READS.with(|n| n.set(n.get() + 1));
    t.into_data().convert::<i64>().to_vec().unwrap_or_default()
}

/// The value of a one-element tensor as `f64` (counted in [`reads`]); NaN if it has none.
pub fn read_scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    read_f32(t).first().map_or(f64::NAN, |&v| f64::from(v))
}

/// How many reads this thread has made through this module.
#[must_use]
pub fn reads() -> u64 {
    READS.with(Cell::get)
}

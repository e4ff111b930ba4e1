//! An embedding lookup whose backward pass is one parallel scatter on burn-flex.
//!
//! burn's `embedding_backward` on burn-flex builds the table's gradient on the calling
//! thread: a zeroed `[vocab, d]` tensor (154 MB for GPT-2), a copy of it in `select_add`,
//! then the rows added one by one. Here the zeros are written over rayon's threads and each
//! thread adds the rows of its own block of the vocabulary, taking the ids in order, so every
//! row gets the same additions in the same order as in `select_add` (bit for bit; a test
//! compares them). The forward pass is a parallel gather.

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::nn::Embedding;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{back, cast, owned_f32, record, zeroed};
use crate::Flex;

/// A burn-flex integer tensor's values as row indices below `rows`, in row-major order;
/// `None` on another backend, for another dtype, or for an index out of range.
fn flex_ids<B: Backend, const D: usize>(
    ids: &Tensor<B, D, Int>,
    rows: usize,
) -> Option<Vec<usize>> {
    let primitive: Box<dyn Any> = Box::new(ids.clone().into_primitive());
    let t = primitive.downcast::<FlexTensor>().ok()?.to_contiguous();
    let (start, end) = t.layout().contiguous_offsets()?;
    let ids: Vec<i64> = match t.dtype() {
        DType::I32 => t.storage::<i32>()[start..end]
            .iter()
            .map(|&i| i64::from(i))
            .collect(),
        DType::I64 => t.storage::<i64>()[start..end].to_vec(),
        _ => return None,
    };
    ids.into_iter()
        .map(|i| usize::try_from(i).ok().filter(|&i| i < rows))
        .collect()
}

/// Rows `ids` of the `[rows, d]` table, in order, over rayon's threads.
fn gather(table: &[f32], ids: &[usize], d: usize) -> Vec<f32> {
    let mut out = zeroed(ids.len() * d);
    out.par_chunks_mut(d.max(1))
        .zip(ids.par_iter())
        .for_each(|(row, &id)| row.copy_from_slice(&table[id * d..(id + 1) * d]));
    out
}

/// The table's gradient `[rows, d]`: row `ids[i]` of zeros plus row `i` of `g`, for every
/// `i` in order (as `select_add` adds them), each block of rows on one of rayon's threads.
fn scatter(g: &[f32], ids: &[usize], rows: usize, d: usize) -> Vec<f32> {
    let mut out = zeroed(rows * d);
    let block = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
    out.par_chunks_mut((block * d).max(1))
        .enumerate()
        .for_each(|(b, part)| {
            let first = b * block;
            for (i, &id) in ids.iter().enumerate() {
                if (first..first + block).contains(&id) {
                    let dst = &mut part[(id - first) * d..(id - first + 1) * d];
                    for (o, &v) in dst.iter_mut().zip(&g[i * d..(i + 1) * d]) {
                        *o += v;
                    }
                }
            }
        });
    out
}

/// The lookup under autodiff over burn-flex; `None` when the table is not plain f32.
fn autodiff_flex(
    table: &FloatTensor<Autodiff<Flex>>,
    ids: Vec<usize>,
    shape: [usize; 3],
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct EmbeddingBackward;

    impl Backward<Flex, 1> for EmbeddingBackward {
        type State = (Vec<usize>, [usize; 2]);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let (ids, [rows, d]) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let g = owned_f32(grad).expect("an f32 table gets f32 gradients");
                let gs = g.as_slice::<f32>().expect("contiguous f32");
                FlexTensor::from_data(TensorData::new(scatter(gs, &ids, rows, d), [rows, d]))
            });
        }
    }

    let t = &table.primitive;
    let (xs, dims) = (t.as_slice::<f32>()?, t.layout().shape());
    let [rows, d] = [dims[0], dims[1]];
    let y = FlexTensor::from_data(TensorData::new(gather(xs, &ids, d), shape));
    Some(record(EmbeddingBackward, [table], (ids, [rows, d]), y))
}

/// `table.forward(ids)` (`ids`: `[batch, seq]`; out: `[batch, seq, d]`): on burn-flex a
/// parallel gather, under autodiff with the one-pass backward of the module's doc; burn's
/// op elsewhere, and for ids it would refuse.
pub fn embedding<B: Backend>(table: &Embedding<B>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let weight = table.weight.val();
    let [rows, d] = weight.dims();
    let [batch, seq] = ids.dims();
    let shape = [batch, seq, d];
    let Some(list) = flex_ids(&ids, rows) else {
        return table.forward(ids);
    };
    match cast::<B, Autodiff<Flex>, 2>(weight) {
        Ok(w) => {
            let p = w.into_primitive().tensor();
            match autodiff_flex(&p, list, shape) {
                Some(y) => back(Tensor::<Autodiff<Flex>, 3>::from_primitive(
                    TensorPrimitive::Float(y),
                )),
                None => table.forward(ids),
            }
        }
        Err(w) => match cast::<B, Flex, 2>(w) {
            Ok(w) => {
                let p = w.into_primitive().tensor();
                match p.as_slice::<f32>() {
                    Some(xs) => back(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(
                        FlexTensor::from_data(TensorData::new(gather(xs, &list, d), shape)),
                    ))),
                    None => table.forward(ids),
                }
            }
            Err(_) => table.forward(ids),
        },
    }
}

#[cfg(test)]
mod tests {
    use burn::module::AutodiffModule;
    use burn::nn::EmbeddingConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::tensor_bits as bits;

    type Ad = Autodiff<Flex>;

    /// Against burn's `Embedding::forward` under autodiff: the output and the table's
    /// gradient bit for bit, with repeated ids (the additions' order), a vocabulary that
    /// does not split evenly into blocks, and without autodiff on burn-flex.
    #[test]
    fn equals_burns_embedding_and_its_gradient_bit_for_bit() {
        let device = Default::default();
        let (rows, d) = (37, 5);
        let table =
            crate::unseeded(|| crate::drawn(EmbeddingConfig::new(rows, d).init::<Ad>(&device)));
        // Every id twice, spread over the vocabulary's blocks.
        let ids: Vec<i64> = (0..24).map(|i| ((i % 12) * 13) % rows as i64).collect();
        let ids = Tensor::<Ad, 2, Int>::from_data(TensorData::new(ids, [4, 6]), &device);
        let up = crate::unseeded(|| {
            Tensor::<Ad, 3>::random([4, 6, d], Distribution::Normal(0.0, 1.0), &device)
        });
        let run = |fused: bool| {
            let y = if fused {
                embedding(&table, ids.clone())
            } else {
                table.forward(ids.clone())
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            let g = table
                .weight
                .val()
                .grad(&grads)
                .expect("the table's gradient");
            (bits(y.inner()), bits(g))
        };
        let (fused, burns) = (run(true), run(false));
        assert_eq!(fused.0, burns.0, "output");
        assert_eq!(fused.1, burns.1, "gradient");
        assert!(fused.1.iter().any(|&b| f32::from_bits(b) != 0.0));
        let plain = table.valid();
        let ids = ids.inner();
        assert_eq!(
            bits(embedding(&plain, ids.clone())),
            bits(plain.forward(ids)),
            "burn-flex"
        );
    }
}

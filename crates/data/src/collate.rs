//! Collation: rows of token ids into padded training batches.
//!
//! The research code's rule for plain token rows ([`collate`]): inputs are padded with the pad
//! id (GPT-2: EOS, 50256); targets are the inputs shifted left, where the first pad after a
//! row's text is kept as a target (the model learns to end) and later pads are −100:
//!
//! ```text
//! inputs  [[a, b, c], [d, e]]  →  inputs  [[a, b, c], [d, e, 50256]]
//!                                  targets [[b, c, 50256], [e, 50256, −100]]
//! ```
//!
//! Rows that carry their own labels ([`collate_labeled`], e.g. completion-masked Alpaca rows,
//! whose labels already end with EOS) shift their labels left and pad targets with −100.
//!
//! `lengths` are the attended lengths: the last attended token of row `i` is at
//! `lengths[i] - 1`.

/// Ignored target.
pub const IGNORE: i64 = -100;

/// A padded batch, row-major `[rows, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// Sequence length (the longest row, after cutting).
    pub seq: usize,
    /// Input ids, padded.
    pub inputs: Vec<i64>,
    /// Targets (−100: ignored).
    pub targets: Vec<i64>,
    /// Attended length of each row.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Row `i` of the inputs.
    pub fn input_row(&self, i: usize) -> &[i64] {
        &self.inputs[i * self.seq..(i + 1) * self.seq]
    }

    /// Row `i` of the targets.
    pub fn target_row(&self, i: usize) -> &[i64] {
        &self.targets[i * self.seq..(i + 1) * self.seq]
    }
}

/// Pads plain token rows; see the module docs. With `max_length`, longer rows are cut and the
/// target of the last kept token is the next token of the original row.
pub fn collate(rows: &[Vec<u32>], pad: u32, max_length: Option<usize>) -> Batch {
    pad_rows(
        rows.iter().map(|r| (r.as_slice(), None)),
        rows.len(),
        pad,
        max_length,
    )
}

/// Pads rows that carry labels (−100 where not trained): targets are the labels shifted left,
/// −100 past the text.
pub fn collate_labeled(
    rows: &[(Vec<u32>, Vec<i32>)],
    pad: u32,
    max_length: Option<usize>,
) -> Batch {
    pad_rows(
        rows.iter()
            .map(|(ids, labels)| (ids.as_slice(), Some(labels.as_slice()))),
        rows.len(),
        pad,
        max_length,
    )
}

/// The shared rule: a row's target at `i` is its label (or, without labels, its token) at
/// `i + 1`, including one past a cut; the position right after the text targets the pad
/// token for rows without labels; everything else is −100.
fn pad_rows<'a>(
    rows: impl Iterator<Item = (&'a [u32], Option<&'a [i32]>)> + Clone,
    count: usize,
    pad: u32,
    max_length: Option<usize>,
) -> Batch {
    let pad = i64::from(pad);
    let cut = |ids: &[u32]| max_length.map_or(ids.len(), |m| ids.len().min(m));
    let seq = rows.clone().map(|(ids, _)| cut(ids)).max().unwrap_or(0);
    let mut batch = Batch {
        rows: count,
        seq,
        inputs: Vec::with_capacity(count * seq),
        targets: Vec::with_capacity(count * seq),
        lengths: Vec::with_capacity(count),
    };
    for (ids, labels) in rows {
        let n = cut(ids);
        batch.lengths.push(n);
        for i in 0..seq {
            batch
                .inputs
                .push(if i < n { i64::from(ids[i]) } else { pad });
            let next_exists = i + 1 < n || (i + 1 == n && n < ids.len());
            let target = match (next_exists, labels) {
                (true, None) => i64::from(ids[i + 1]),
                (true, Some(l)) => l.get(i + 1).map_or(IGNORE, |&x| i64::from(x)),
                (false, None) if i + 1 == n => pad, // the first pad after the text is a target
                (false, _) => IGNORE,
            };
            batch.targets.push(target);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example() {
        let (a, b, c, d, e) = (1, 2, 3, 4, 5);
        let batch = collate(&[vec![a, b, c], vec![d, e]], 50256, None);
        assert_eq!(batch.seq, 3);
        assert_eq!(batch.input_row(0), [1, 2, 3]);
        assert_eq!(batch.input_row(1), [4, 5, 50256]);
        assert_eq!(batch.target_row(0), [2, 3, 50256]);
        assert_eq!(batch.target_row(1), [5, 50256, -100]);
        assert_eq!(batch.lengths, [3, 2]);
    }

    #[test]
    fn cutting_keeps_the_true_next_token() {
        let batch = collate(&[vec![1, 2, 3, 4], vec![5]], 0, Some(2));
        assert_eq!(batch.input_row(0), [1, 2]);
        assert_eq!(batch.target_row(0), [2, 3]);
        assert_eq!(batch.input_row(1), [5, 0]);
        assert_eq!(batch.target_row(1), [0, -100]);
        assert_eq!(batch.lengths, [2, 1]);
    }

    #[test]
    fn labeled_rows_shift_their_labels() {
        let rows = vec![
            (vec![10, 11, 12, 9], vec![-100, -100, 12, 9]),
            (vec![20, 21], vec![-100, 21]),
        ];
        let batch = collate_labeled(&rows, 9, None);
        assert_eq!(batch.target_row(0), [-100, 12, 9, -100]);
        assert_eq!(batch.input_row(1), [20, 21, 9, 9]);
        assert_eq!(batch.target_row(1), [21, -100, -100, -100]);
    }
}

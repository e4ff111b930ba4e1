//! Which way a metric improves, decided from its name: the one rule behind the trainer's best
//! checkpoint and the sweep report's ranking.
//!
//! A name is split into words at every character that is not a letter or digit (`val_loss` →
//! `val`, `loss`); a `stage.` prefix is dropped first. The last word that names a direction
//! decides, as the last word of an English compound does (`accuracy_gap` is a gap):
//!
//! - **lower is better** for a word in [`LOWER_IS_BETTER`] (`loss`, `nll`, `perplexity`,
//!   `gap`, `error`, …) or one containing `loss` (`NLLLoss`);
//! - **higher is better** for a word in [`HIGHER_IS_BETTER`] (`accuracy`, `f1`, `contains`,
//!   `match` as in `exact_match`, …) or one containing `accuracy` (`top1accuracy`).
//!
//! A name without such a word is higher-is-better (scores, rates, throughput).

use std::cmp::Ordering;

/// Words that make a metric lower-is-better.
pub const LOWER_IS_BETTER: &[&str] = &[
    "loss",
    "nll",
    "perplexity",
    "ppl",
    "gap",
    "error",
    "err",
    "mse",
    "mae",
    "rmse",
    "wer",
    "cer",
    "seconds",
];

/// Words that make a metric higher-is-better.
pub const HIGHER_IS_BETTER: &[&str] = &[
    "accuracy",
    "acc",
    "match",
    "em",
    "contains",
    "f1",
    "precision",
    "recall",
    "auc",
    "bleu",
    "rouge",
];

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricDirection {
    /// Larger values are better (accuracies, F1, exact match).
    Higher,
    /// Smaller values are better (losses, NLL, perplexity, gaps).
    Lower,
}

impl MetricDirection {
    /// The direction of the metric `name` (`val_loss`, `eval.accuracy`; see the module docs).
    pub fn of(name: &str) -> Self {
        let name = name.rsplit('.').next().unwrap_or(name).to_lowercase();
        name.split(|c: char| !c.is_alphanumeric())
            .rev()
            .find_map(Self::of_word)
            .unwrap_or(Self::Higher)
    }

    /// The direction one word names, if any.
    fn of_word(word: &str) -> Option<Self> {
        if LOWER_IS_BETTER.contains(&word) || word.contains("loss") {
            Some(Self::Lower)
        } else if HIGHER_IS_BETTER.contains(&word) || word.contains("accuracy") {
            Some(Self::Higher)
        } else {
            None
        }
    }

    /// Whether `candidate` is strictly better than `current` (never when either is NaN).
    pub fn is_better(self, candidate: f64, current: f64) -> bool {
        match self {
            Self::Higher => candidate > current,
            Self::Lower => candidate < current,
        }
    }

    /// Orders values best first; a missing value (`None` or NaN) comes after every present
    /// one. For `sort_by`.
    pub fn best_first(self, a: Option<f64>, b: Option<f64>) -> Ordering {
        let present = |v: Option<f64>| v.filter(|x| !x.is_nan());
        match (present(a), present(b)) {
            (Some(x), Some(y)) => match self {
                Self::Higher => y.total_cmp(&x),
                Self::Lower => x.total_cmp(&y),
            },
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MetricDirection::{self, Higher, Lower};

    #[test]
    fn direction_follows_the_name() {
        for name in [
            "loss",
            "val_loss",
            "train.val_loss",
            "nll_per_token",
            "mean_nll",
            "perplexity",
            "val_perplexity",
            "gap_mean",
            "gap_max",
            "error_rate",
            "train_seconds",
            "NLLLoss",
            "accuracy_gap",
            "f1_loss",
        ] {
            assert_eq!(MetricDirection::of(name), Lower, "{name}");
        }
        for name in [
            "accuracy",
            "val_accuracy",
            "accuracy_2way",
            "eval.accuracy_2way",
            "exact_match",
            "contains",
            "f1",
            "macro_f1",
            "top1accuracy",
            "loss_reduction_accuracy",
            "score",
            "tokens_per_s",
        ] {
            assert_eq!(MetricDirection::of(name), Higher, "{name}");
        }
        // The stage's name never decides.
        assert_eq!(MetricDirection::of("loss_probe.accuracy"), Higher);
    }

    #[test]
    fn better_is_strict_and_never_nan() {
        assert!(Higher.is_better(0.9, 0.8));
        assert!(!Higher.is_better(0.8, 0.8));
        assert!(Lower.is_better(0.1, 0.2));
        assert!(!Lower.is_better(0.3, 0.2));
        assert!(!Lower.is_better(f64::NAN, 0.2));
        assert!(!Higher.is_better(f64::NAN, 0.2));
    }

    #[test]
    fn missing_values_sort_last_either_way() {
        let values = [Some(0.5), None, Some(0.9), Some(f64::NAN), Some(0.1)];
        let order = |dir: MetricDirection| {
            let mut idx: Vec<usize> = (0..values.len()).collect();
            idx.sort_by(|&a, &b| dir.best_first(values[a], values[b]));
            idx
        };
        assert_eq!(order(Higher), vec![2, 0, 4, 1, 3]);
        assert_eq!(order(Lower), vec![4, 0, 2, 1, 3]);
    }
}

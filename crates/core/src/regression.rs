//! Whether a benchmark figure got worse: the figure against the median of the same
//! machine's last nights, with a tolerance that grows with the noise.
//!
//! - **Baseline**: the median of the last [`WINDOW`] figures.
//! - **Noise**, relative: the largest of tonight's spread (over tonight's figure), the
//!   history's typical spread (the median of each night's spread over its figure) and how
//!   much the history's figures themselves wander (their median absolute deviation over the
//!   baseline). One or two nights cannot show how much nights differ, so until the history
//!   has [`MIN_NIGHTS`] the noise is at least [`SHORT_HISTORY_NOISE`].
//! - **Ratio**: how much better tonight is, > 1 better whichever way the figure goes
//!   (`now / baseline` for rates, `baseline / now` for times).
//! - **Verdict**: `slower` below `1 − threshold − noise`, `faster` above `1 + threshold +
//!   noise`, `same` between, `new` without history.

/// Nights the baseline is the median of.
pub const WINDOW: usize = 5;

/// Nights of history from which the wander between nights is measured rather than assumed.
pub const MIN_NIGHTS: usize = 3;

/// The relative noise assumed while the history has fewer than [`MIN_NIGHTS`] nights: a
/// machine's speed drifts from night to night by more than one night's spread between its
/// rounds shows. Over six suites on the 2-core development machine each speed figure's median
/// absolute deviation between nights was 1.0–4.3% (median 2.0%), and the last-value query was
/// 13.6% slower on one night than the six nights' median, with a spread under 2% that night.
pub const SHORT_HISTORY_NOISE: f64 = 0.05;

/// A measured figure: the median of its repeats and their spread (median absolute
/// deviation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    /// The median.
    pub value: f64,
    /// The spread, in the figure's unit.
    pub spread: f64,
}

/// How a figure compares with its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No history on this machine yet.
    New,
    /// Within the noise and the threshold.
    Same,
    /// Better beyond them.
    Faster,
    /// Worse beyond them: a regression.
    Slower,
}

impl Verdict {
    /// `new`, `same`, `faster`, `slower`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Same => "same",
            Self::Faster => "faster",
            Self::Slower => "slower",
        }
    }
}

/// The comparison of one figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The baseline (none without history).
    pub baseline: Option<f64>,
    /// How much better than the baseline (> 1: better).
    pub ratio: Option<f64>,
    /// The relative noise the tolerance allowed.
    pub noise: f64,
    /// The verdict.
    pub verdict: Verdict,
}

/// Compares `now` with `history` (oldest first; only the last [`WINDOW`] count).
/// `threshold` is the slowdown tolerated beyond the noise (0.10: 10%).
pub fn compare(
    now: Figure,
    history: &[Figure],
    higher_is_better: bool,
    threshold: f64,
) -> Comparison {
    let recent = &history[history.len().saturating_sub(WINDOW)..];
    let values: Vec<f64> = recent.iter().map(|f| f.value).collect();
    let Some(baseline) = median(&values).filter(|b| *b > 0.0 && now.value > 0.0) else {
        return Comparison {
            baseline: None,
            ratio: None,
            noise: 0.0,
            verdict: Verdict::New,
        };
    };
    // Each spread relative to its own figure: a slower night's spread grows with it.
    let spreads: Vec<f64> = recent
        .iter()
        .filter(|f| f.value > 0.0)
        .map(|f| f.spread / f.value)
        .collect();
    let wander: Vec<f64> = values
        .iter()
        .map(|v| (v - baseline).abs() / baseline)
        .collect();
    let assumed = if recent.len() < MIN_NIGHTS {
        SHORT_HISTORY_NOISE
    } else {
        0.0
    };
    let noise = [
        now.spread / now.value,
        median(&spreads).unwrap_or(0.0),
        median(&wander).unwrap_or(0.0),
        assumed,
    ]
    .into_iter()
    .fold(0.0_f64, f64::max);
    let ratio = if higher_is_better {
        now.value / baseline
    } else {
        baseline / now.value
    };
    let verdict = if ratio < 1.0 - threshold - noise {
        Verdict::Slower
    } else if ratio > 1.0 + threshold + noise {
        Verdict::Faster
    } else {
        Verdict::Same
    };
    Comparison {
        baseline: Some(baseline),
        ratio: Some(ratio),
        noise,
        verdict,
    }
}

/// The median and the median absolute deviation of `samples` (none when empty).
pub fn summarize(samples: &[f64]) -> Option<Figure> {
    let value = median(samples)?;
    let deviations: Vec<f64> = samples.iter().map(|s| (s - value).abs()).collect();
    Some(Figure {
        value,
        spread: median(&deviations).unwrap_or(0.0),
    })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(value: f64, spread: f64) -> Figure {
        Figure { value, spread }
    }

    #[test]
    fn summaries_are_median_and_mad() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0, 10.0]), Some(fig(2.5, 1.0)));
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn a_rate_within_noise_is_the_same_and_beyond_it_is_flagged() {
        let history = [
            fig(100.0, 2.0),
            fig(104.0, 2.0),
            fig(98.0, 2.0),
            fig(102.0, 2.0),
        ];
        // Baseline 101; noise max(2, 2, 2)/101 ≈ 2%; tolerance ≈ 12%.
        let same = compare(fig(92.0, 2.0), &history, true, 0.10);
        assert_eq!(same.verdict, Verdict::Same);
        assert!((same.baseline.unwrap_or_default() - 101.0).abs() < 1e-9);
        assert_eq!(
            compare(fig(85.0, 2.0), &history, true, 0.10).verdict,
            Verdict::Slower
        );
        assert_eq!(
            compare(fig(120.0, 2.0), &history, true, 0.10).verdict,
            Verdict::Faster
        );
        // A noisy night widens the tolerance.
        assert_eq!(
            compare(fig(85.0, 10.0), &history, true, 0.10).verdict,
            Verdict::Same
        );
    }

    #[test]
    fn times_are_better_when_smaller() {
        let history = [fig(50.0, 0.5); 3];
        let c = compare(fig(100.0, 0.5), &history, false, 0.10);
        assert_eq!(c.verdict, Verdict::Slower);
        assert!((c.ratio.unwrap_or_default() - 0.5).abs() < 1e-12);
        assert_eq!(
            compare(fig(40.0, 0.5), &history, false, 0.10).verdict,
            Verdict::Faster
        );
    }

    #[test]
    fn a_short_history_assumes_the_drift_between_nights_it_cannot_show() {
        // One night: steady within itself (spread 0), so only the assumed 5% widens the
        // tolerance to 15%. The last-value query on the development machine: 2.28 ms the first
        // night, 2.0 the second.
        let one = [fig(2.28, 0.0)];
        let c = compare(fig(2.0, 0.0), &one, false, 0.10);
        assert_eq!(c.verdict, Verdict::Same);
        assert!((c.noise - SHORT_HISTORY_NOISE).abs() < 1e-12);
        assert_eq!(
            compare(fig(2.8, 0.0), &one, false, 0.10).verdict,
            Verdict::Slower
        );
        // Three steady nights: the wander is measured (0 here), nothing is assumed.
        let three = [fig(2.0, 0.0); MIN_NIGHTS];
        let c = compare(fig(2.28, 0.0), &three, false, 0.10);
        assert_eq!((c.verdict, c.noise), (Verdict::Slower, 0.0));
    }

    #[test]
    fn only_the_last_nights_count_and_no_history_is_new() {
        let mut history = vec![fig(10.0, 0.0); 20];
        history.extend([fig(100.0, 1.0); WINDOW]);
        assert_eq!(
            compare(fig(100.0, 1.0), &history, true, 0.10).verdict,
            Verdict::Same
        );
        assert_eq!(
            compare(fig(100.0, 1.0), &[], true, 0.10).verdict,
            Verdict::New
        );
    }
}

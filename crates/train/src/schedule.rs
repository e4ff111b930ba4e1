//! Learning-rate schedules, as Hugging Face's `get_*_schedule_with_warmup` compute them.

/// The shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// The base rate throughout.
    Constant,
    /// Linear to 0 at the last step.
    Linear,
    /// Half a cosine to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for Decay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!("{s:?} is not one of constant, linear, cosine")),
        }
    }
}

/// A learning-rate schedule: linear warm-up from 0, then [`Decay`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// The peak (base) learning rate.
    pub lr: f64,
    /// Warm-up steps (0: none).
    pub warmup: usize,
    /// Total optimizer steps.
    pub total: usize,
    /// After warm-up.
    pub decay: Decay,
}

impl Schedule {
    /// The rate for optimizer step `step` (0-based). As Hugging Face's schedulers, warm-up
    /// starts at 0: step `s < warmup` gets `lr · s / warmup`.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = (step - self.warmup) as f64 / span;
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => (1.0 - progress).max(0.0),
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
        };
        self.lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = |decay| Schedule {
            lr: 1.0,
            warmup: 4,
            total: 14,
            decay,
        };
        assert_eq!(s(Decay::Constant).at(0), 0.0);
        assert_eq!(s(Decay::Constant).at(2), 0.5);
        assert_eq!(s(Decay::Constant).at(13), 1.0);
        assert_eq!(s(Decay::Linear).at(4), 1.0);
        assert!((s(Decay::Linear).at(9) - 0.5).abs() < 1e-12);
        assert!((s(Decay::Cosine).at(9) - 0.5).abs() < 1e-12);
        assert!(s(Decay::Cosine).at(14).abs() < 1e-12);
        assert_eq!("cosine".parse::<Decay>(), Ok(Decay::Cosine));
        assert!("warm".parse::<Decay>().is_err());
    }
}

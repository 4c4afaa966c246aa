//! Choosing the next token from a row of logits: greedy (temperature 0), or a draw from the
//! softmax at a temperature restricted to the smallest set of most likely tokens whose mass
//! reaches `top_p` (nucleus sampling), seeded so a run can be repeated exactly.

use crate::error::ComputeError;
use crate::reference::model::SplitMix;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus mass in `(0, 1]`: only the most likely tokens whose probabilities add up to at
    /// least this are drawn from.
    pub top_p: f64,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
        }
    }

    /// Fails on a negative or non-finite temperature, or a `top_p` outside `(0, 1]`.
    pub fn validate(&self) -> Result<(), ComputeError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ComputeError::Shape(format!(
                "temperature {} must be finite and at least 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ComputeError::Shape(format!(
                "top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// The most likely token (the lowest id among equal logits).
pub fn argmax(logits: &[f32]) -> Result<u32, ComputeError> {
    finite(logits)?;
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// The next token under `s`, drawing from `rng` unless greedy.
pub fn pick(logits: &[f32], s: Sampling, rng: &mut SplitMix) -> Result<u32, ComputeError> {
    s.validate()?;
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    finite(logits)?;
    let top = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - top) / s.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut mass = 0.0;
    let mut keep = probs.len();
    for (n, p) in probs.iter().enumerate() {
        mass += p.1 / total;
        if mass >= s.top_p {
            keep = n + 1;
            break;
        }
    }
    let kept = &probs[..keep];
    let kept_total: f64 = kept.iter().map(|p| p.1).sum();
    // `uniform()` is in [-1, 1): map it to [0, kept_total).
    let mut u = (rng.uniform() + 1.0) / 2.0 * kept_total;
    for &(i, p) in kept {
        if u < p {
            return Ok(i as u32);
        }
        u -= p;
    }
    Ok(kept[keep - 1].0 as u32)
}

fn finite(logits: &[f32]) -> Result<(), ComputeError> {
    if logits.is_empty() {
        return Err(ComputeError::Shape("no logits to choose from".into()));
    }
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(ComputeError::Shape(format!(
            "logit {i} is {}: the model's output is not finite",
            logits[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]).unwrap(), 1);
        let mut r = SplitMix(1);
        assert_eq!(
            pick(&[0.5, 2.0, 3.0], Sampling::greedy(), &mut r).unwrap(),
            2
        );
    }

    #[test]
    fn refuses_non_finite_logits_and_bad_settings() {
        let mut r = SplitMix(1);
        assert!(argmax(&[0.0, f32::NAN]).is_err());
        assert!(argmax(&[]).is_err());
        for s in [(-1.0, 1.0), (f64::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
            let s = Sampling {
                temperature: s.0,
                top_p: s.1,
            };
            assert!(pick(&[0.0, 1.0], s, &mut r).is_err(), "{s:?}");
        }
    }

    #[test]
    fn a_small_nucleus_is_greedy_and_a_seed_repeats() {
        let logits = [0.1, 1.0, 0.3, 0.9, -2.0];
        let narrow = Sampling {
            temperature: 1.0,
            top_p: 0.01,
        };
        let mut r = SplitMix(7);
        for _ in 0..20 {
            assert_eq!(pick(&logits, narrow, &mut r).unwrap(), 1);
        }
        let wide = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        let draw = |seed| {
            let mut r = SplitMix(seed);
            (0..50)
                .map(|_| pick(&logits, wide, &mut r).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn draws_follow_the_softmax() {
        // Two tokens with logits 0 and ln 3 at temperature 1: probabilities 1/4 and 3/4.
        let logits = [0.0, 3f32.ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        let mut r = SplitMix(11);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| pick(&logits, s, &mut r).unwrap() == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "share {share}");
        // At a high temperature the two come closer to even.
        let hot = Sampling {
            temperature: 100.0,
            top_p: 1.0,
        };
        let ones = (0..n)
            .filter(|_| pick(&logits, hot, &mut r).unwrap() == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.02, "share {share}");
    }
}

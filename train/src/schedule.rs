//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

use serde::{Deserialize, Serialize};

/// Warmup then cosine.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warmup from 0.
    pub warmup: u64,
    /// Total steps; the cosine reaches its floor here and stays.
    pub total: u64,
    /// Floor as a fraction of the peak.
    pub floor: f64,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant(lr: f64) -> Self {
        Schedule {
            peak: lr,
            warmup: 0,
            total: 0,
            floor: 1.0,
        }
    }

    /// Learning rate at 1-based `step`.
    pub fn at(&self, step: u64) -> f64 {
        if step <= self.warmup && self.warmup > 0 {
            return self.peak * step as f64 / self.warmup as f64;
        }
        if self.total <= self.warmup {
            return self.peak;
        }
        let t = ((step - self.warmup) as f64 / (self.total - self.warmup) as f64).min(1.0);
        self.peak
            * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

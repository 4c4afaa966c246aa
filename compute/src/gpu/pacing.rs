//! Keeping each command buffer short: the device learns how many dispatches fit in the
//! submission budget (50 ms by default) from how long its submissions take to complete, halving
//! the batch when one overran and growing it slowly while they stay well under. A desktop's GPU
//! watchdog never sees a long job, and a browser's page keeps rendering between our submissions.

use std::sync::{Arc, Mutex};

/// Fewest and most dispatches per command buffer.
const MIN: u32 = 1;
const MAX: u32 = 256;
/// Where a fresh device starts.
pub(crate) const START: u32 = 64;

/// Milliseconds on a monotonic clock.
pub(crate) fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static T0: OnceLock<Instant> = OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
    }
}

/// The adaptive batch size of a device.
#[derive(Debug)]
pub(crate) struct Pacing {
    /// Target duration of one submission, ms.
    pub(crate) budget_ms: f64,
    /// Dispatches per submission now.
    pub(crate) batch: u32,
    /// The longest a submission took, ms (for reports).
    pub(crate) longest_ms: f64,
}

impl Pacing {
    pub(crate) fn new(budget_ms: f64) -> Arc<Mutex<Pacing>> {
        Arc::new(Mutex::new(Pacing {
            budget_ms,
            batch: START,
            longest_ms: 0.0,
        }))
    }

    /// A submission of `dispatches` took `ms` from submit to completion.
    pub(crate) fn observe(&mut self, dispatches: u32, ms: f64) {
        self.longest_ms = self.longest_ms.max(ms);
        if ms > self.budget_ms {
            // Aim under the budget at the observed rate.
            let rate = ms / f64::from(dispatches.max(1));
            let fit = (self.budget_ms / rate).floor() as u32;
            self.batch = fit.min(self.batch / 2).clamp(MIN, MAX);
        } else if ms < self.budget_ms * 0.4 && dispatches >= self.batch {
            self.batch = (self.batch + self.batch / 4 + 1).clamp(MIN, MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overruns_halve_the_batch_and_quick_submissions_grow_it() {
        let p = Pacing::new(50.0);
        let mut p = p.lock().unwrap();
        p.observe(64, 200.0);
        assert_eq!(p.batch, 16, "64 dispatches took 200 ms: 16 fit in 50 ms");
        p.observe(16, 60.0);
        assert_eq!(p.batch, 8);
        p.observe(8, 1.0);
        assert_eq!(p.batch, 11);
        p.observe(4, 1.0);
        assert_eq!(p.batch, 11, "a short batch says nothing about a full one");
        for _ in 0..100 {
            p.observe(1000, 0.1);
        }
        assert_eq!(p.batch, MAX);
        p.observe(1, 10_000.0);
        assert_eq!(p.batch, MIN);
        assert_eq!(p.longest_ms, 10_000.0);
    }
}

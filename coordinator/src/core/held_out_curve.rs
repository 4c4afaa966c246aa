//! The held-out loss of the run's weights, version by version, as the held-out check measures
//! it (whole-model runs whose checks measure held-out sequences): what the status, the
//! dashboard and the metrics show beside the training loss. Kept in memory from this
//! process's start; a restarted coordinator starts the curve again.

/// Points kept at most (the latest).
const KEPT: usize = 4096;

/// The held-out loss at each measured version, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldOutCurve {
    points: Vec<(u64, f64)>,
}

impl HeldOutCurve {
    /// Records the held-out loss of version `version`; a version already recorded, an older one
    /// (an answer that came late) or a loss that is not finite changes nothing.
    pub(super) fn record(&mut self, version: u64, loss: f64) {
        if !loss.is_finite() || self.points.last().is_some_and(|&(v, _)| v >= version) {
            return;
        }
        if self.points.len() == KEPT {
            self.points.remove(0);
        }
        self.points.push((version, loss));
    }

    /// (version, held-out loss), oldest first.
    pub fn points(&self) -> &[(u64, f64)] {
        &self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_move_forward_and_the_curve_is_bounded() {
        let mut c = HeldOutCurve::default();
        c.record(0, 5.5);
        c.record(0, 5.4);
        c.record(2, 4.0);
        c.record(1, 4.5);
        c.record(3, f64::NAN);
        assert_eq!(c.points(), &[(0, 5.5), (2, 4.0)]);
        for v in 3..(KEPT as u64 + 10) {
            c.record(v, 1.0);
        }
        assert_eq!(c.points().len(), KEPT);
        assert_eq!(c.points().last(), Some(&(KEPT as u64 + 9, 1.0)));
        assert_eq!(c.points()[0].0, 10);
    }
}

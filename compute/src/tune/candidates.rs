//! The autotuner's pure parts: which matmul tilings are tried, and which of the measured ones
//! wins. Every candidate accumulates each output element over the reduction from its first
//! term to its last (the kernels differ in how they stage operands and how many products they
//! group per addition, the same kinds of difference that separate one adapter from another
//! today), so a tuned contributor stays within the tolerance `tessera calibrate` measures
//! between adapters.

use serde::{Deserialize, Serialize};

use crate::tiles::{MatmulKernel, MatmulTiles};

/// Every tiling the tuner may try; those an adapter's limits refuse are left out when tuning.
pub fn candidates() -> Vec<MatmulTiles> {
    let t = |kernel, bm, bn, bk, tm, tn| MatmulTiles {
        kernel,
        bm,
        bn,
        bk,
        tm,
        tn,
    };
    use MatmulKernel::{Direct, Shared, Vec4};
    vec![
        MatmulTiles::VEC4,
        t(Vec4, 16, 16, 1, 4, 4),
        t(Vec4, 64, 64, 1, 4, 4),
        t(Vec4, 64, 32, 1, 4, 4),
        MatmulTiles::DIRECT,
        t(Direct, 16, 16, 1, 2, 2),
        t(Direct, 64, 64, 1, 4, 4),
        MatmulTiles::SHARED,
        t(Shared, 64, 64, 8, 4, 4),
        t(Shared, 32, 32, 8, 4, 4),
        t(Shared, 32, 32, 16, 2, 2),
        t(Shared, 128, 64, 8, 8, 4),
    ]
}

/// One candidate as measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The tiling.
    pub tiles: MatmulTiles,
    /// Seconds each case took (one run, the best of those timed), in the cases' order; shorter
    /// when the candidate was dropped early.
    pub secs: Vec<f64>,
    /// Why it cannot be chosen: refused by the adapter's limits, a result beyond the reference's
    /// tolerance, a GPU error, or dropped as far slower than the best.
    pub excluded: Option<String>,
    /// For the fastest few: seconds over every case when timed again, in turns with the
    /// others (the least of those turns), which decides between them.
    #[serde(default)]
    pub confirmed: Option<f64>,
}

/// The rows timed again in turns: the `n` not excluded and measured on every case with the
/// least total time, fastest first.
pub fn finalists(rows: &[Measured], cases: usize, n: usize) -> Vec<usize> {
    let mut eligible: Vec<(usize, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.excluded.is_none() && r.secs.len() == cases)
        .map(|(i, r)| (i, r.secs.iter().sum::<f64>()))
        .collect();
    eligible.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    eligible.into_iter().take(n).map(|(i, _)| i).collect()
}

/// The winner among `rows` over `cases` cases: among the rows timed again in turns (when any
/// were), the least confirmed time; otherwise the one measured on every case and not excluded
/// with the least total time (the highest GFLOP/s over the cases); the earlier on a tie; `None`
/// when nothing qualifies.
pub fn choose(rows: &[Measured], cases: usize) -> Option<usize> {
    let eligible = |r: &Measured| r.excluded.is_none() && r.secs.len() == cases;
    let confirmed = rows.iter().any(|r| eligible(r) && r.confirmed.is_some());
    rows.iter()
        .enumerate()
        .filter(|(_, r)| eligible(r) && (!confirmed || r.confirmed.is_some()))
        .map(|(i, r)| (i, r.confirmed.unwrap_or_else(|| r.secs.iter().sum::<f64>())))
        .fold(None, |best: Option<(usize, f64)>, (i, t)| match best {
            Some((_, b)) if b <= t => best,
            _ => Some((i, t)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(secs: &[f64], excluded: Option<&str>) -> Measured {
        Measured {
            tiles: MatmulTiles::VEC4,
            secs: secs.to_vec(),
            excluded: excluded.map(str::to_string),
            confirmed: None,
        }
    }

    #[test]
    fn the_confirmed_times_decide_between_the_finalists() {
        let mut rows = vec![
            row(&[0.5, 0.5], None),
            row(&[0.4, 0.4], None),
            row(&[0.1, 0.1], Some("wrong")),
            row(&[0.6, 0.6], None),
            row(&[0.2], None),
        ];
        assert_eq!(finalists(&rows, 2, 2), vec![1, 0]);
        assert_eq!(finalists(&rows, 2, 9), vec![1, 0, 3]);
        rows[0].confirmed = Some(0.7);
        rows[1].confirmed = Some(0.9);
        // Row 3 was not a finalist: a faster first timing does not bring it back.
        assert_eq!(choose(&rows, 2), Some(0));
    }

    #[test]
    fn the_least_total_time_among_complete_eligible_rows_wins() {
        let rows = [
            row(&[1.0, 1.0], None),
            row(&[0.1, 0.1], Some("wrong")),
            row(&[0.5], None),
            row(&[0.6, 0.9], None),
            row(&[0.9, 0.6], None),
        ];
        assert_eq!(choose(&rows, 2), Some(3), "ties go to the earlier row");
        assert_eq!(choose(&rows[..3], 2), Some(0));
        assert_eq!(choose(&rows[1..3], 2), None);
    }

    #[test]
    fn every_candidate_is_distinct_and_well_formed() {
        let all = candidates();
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b != a), "{a:?} twice");
            assert!(a.bm % a.tm == 0 && a.bn % a.tn == 0, "{a:?}");
        }
        assert!(all.contains(&MatmulTiles::VEC4) && all.contains(&MatmulTiles::SHARED));
    }
}

//! The outer step of a round: each replica's pseudo-gradient clipped to the median norm across
//! replicas (optional), averaged per index, and applied by outer SGD, `theta -= lr * mean`.

/// Global L2 norm of one replica's update (all tensors), in f64.
pub fn norm(update: &[Vec<f32>]) -> f64 {
    update
        .iter()
        .flatten()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt()
}

/// The median of the norms (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Mean of the replicas' updates, each first scaled down to the median norm when
/// `clip_to_median` (never scaled up). Returns the mean and the scale applied to each replica.
pub fn aggregate(updates: &[Vec<Vec<f32>>], clip_to_median: bool) -> (Vec<Vec<f32>>, Vec<f64>) {
    let Some(first) = updates.first() else {
        return (Vec::new(), Vec::new());
    };
    let norms: Vec<f64> = updates.iter().map(|u| norm(u)).collect();
    let med = median(&norms);
    let scales: Vec<f64> = norms
        .iter()
        .map(|&n| {
            if clip_to_median && n > med && n > 0.0 {
                med / n
            } else {
                1.0
            }
        })
        .collect();
    let mut mean = Mean::new(first.iter().map(Vec::len));
    for (u, &s) in updates.iter().zip(&scales) {
        mean.add(u, s);
    }
    (mean.finish(), scales)
}

/// A weighted mean built one update at a time, `sum_r scale_r * update_r / count`, in f64 in
/// the order added: the coordinator's outer step and a replica reading the published parts
/// ([`tessera_protocol::messages::SparseMean`]) get the same bits.
pub struct Mean {
    sum: Vec<Vec<f64>>,
    count: usize,
}

impl Mean {
    /// A zero sum over tensors of these lengths.
    pub fn new(lens: impl IntoIterator<Item = usize>) -> Self {
        Mean {
            sum: lens.into_iter().map(|n| vec![0.0; n]).collect(),
            count: 0,
        }
    }

    /// Adds `scale * update`.
    pub fn add(&mut self, update: &[Vec<f32>], scale: f64) {
        for (m, t) in self.sum.iter_mut().zip(update) {
            for (a, &b) in m.iter_mut().zip(t) {
                *a += scale * b as f64;
            }
        }
        self.count += 1;
    }

    /// The mean, as f32.
    pub fn finish(self) -> Vec<Vec<f32>> {
        let r = self.count as f64;
        self.sum
            .into_iter()
            .map(|t| t.into_iter().map(|x| (x / r) as f32).collect())
            .collect()
    }
}

/// Outer SGD: `theta -= lr * update`, tensor by tensor.
pub fn apply(theta: &mut [Vec<f32>], update: &[Vec<f32>], lr: f32) {
    for (p, u) in theta.iter_mut().zip(update) {
        for (a, &b) in p.iter_mut().zip(u) {
            *a -= lr * b;
        }
    }
}

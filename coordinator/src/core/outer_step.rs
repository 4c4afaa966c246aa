//! The wire form of a round's outer step: the smallest of the forms every replica reads to the
//! same f32 mean. Dense runs publish the dense mean. SparseLoCo runs publish the replicas'
//! compressed updates with their clip scales (each replica sums them as the coordinator did:
//! a few kilobytes a replica), the mean's nonzero entries, or the dense mean, whichever encodes
//! smallest: with many replicas the union of their top-k positions nears every entry.

use tessera_protocol::messages::{NamedTensor, SparseMean, SparseUpdate, Update};
use tessera_protocol::TensorPayload;
use tessera_train::update::to_indexed;

/// The outer step `mean` of tensors `shapes` as published: `parts` are the round's updates as
/// sent (`None` when one was not compressed, or the run is dense), weighed by `scales`.
pub(super) fn publish(
    shapes: &[(String, Vec<usize>)],
    mean: &[Vec<f32>],
    sparse_run: bool,
    parts: Option<Vec<SparseUpdate>>,
    scales: &[f64],
) -> Update {
    let dense = Update::Dense(
        shapes
            .iter()
            .zip(mean)
            .map(|((name, shape), v)| NamedTensor {
                name: name.clone(),
                tensor: TensorPayload::from_f32(shape, v),
            })
            .collect(),
    );
    if !sparse_run {
        return dense;
    }
    let mut forms = vec![
        dense,
        Update::Indexed(
            shapes
                .iter()
                .zip(mean)
                .map(|((name, shape), v)| to_indexed(name, shape, v))
                .collect(),
        ),
    ];
    if let Some(parts) = parts.filter(|p| !p.is_empty() && p.len() == scales.len()) {
        forms.push(Update::SparseMean(Box::new(SparseMean {
            scales: scales.to_vec(),
            parts,
        })));
    }
    let size = |u: &Update| tessera_protocol::encoded_len(u).unwrap_or(usize::MAX);
    // The last of equal sizes: the parts, then the entries, over the dense form.
    forms
        .into_iter()
        .rev()
        .min_by_key(size)
        .expect("two forms at least")
}

#[cfg(test)]
mod tests {
    use tessera_compute::reference::model::SplitMix;
    use tessera_train::outer::aggregate;
    use tessera_train::sparse_wire::pack;
    use tessera_train::sparseloco::{compress, SparseConfig};
    use tessera_train::update::to_dense;

    use super::*;

    fn parts(replicas: u64, cfg: &SparseConfig) -> Vec<SparseUpdate> {
        (0..replicas)
            .map(|r| {
                let v: Vec<f32> = SplitMix(r + 1).vec(64 * 64, 1.0);
                pack(&[compress(&v, [64, 64], cfg)], cfg)
            })
            .collect()
    }

    #[test]
    fn the_smallest_form_is_published_and_reads_as_the_mean() {
        let cfg = SparseConfig::default();
        let shapes = vec![("w".to_string(), vec![64, 64])];
        for (replicas, want) in [(3, "parts"), (200, "dense")] {
            let ps = parts(replicas, &cfg);
            let dense: Vec<Vec<Vec<f32>>> = ps
                .iter()
                .map(|p| {
                    to_dense(&Update::Sparse(Box::new(p.clone())), &shapes, Some(&cfg)).unwrap()
                })
                .collect();
            let (mean, scales) = aggregate(&dense, true);
            let u = publish(&shapes, &mean, true, Some(ps), &scales);
            let got = match &u {
                Update::SparseMean(_) => "parts",
                Update::Indexed(_) => "entries",
                Update::Dense(_) => "dense",
                Update::Sparse(_) => "sparse",
            };
            assert_eq!(got, want, "{replicas} replicas");
            assert_eq!(to_dense(&u, &shapes, Some(&cfg)).unwrap(), mean);
            // Without the parts (an uncompressed update among them), entries or dense.
            let u = publish(&shapes, &mean, true, None, &scales);
            assert!(!matches!(u, Update::SparseMean(_)));
            assert_eq!(to_dense(&u, &shapes, Some(&cfg)).unwrap(), mean);
        }
        // A dense run publishes the dense mean.
        let mean = vec![vec![0.5; 64 * 64]];
        assert!(matches!(
            publish(&shapes, &mean, false, None, &[1.0]),
            Update::Dense(_)
        ));
    }
}

//! SparseLoCo compression, error feedback, outer aggregation, schedules and data assignment.

use tessera_compute::reference::model::{self, SplitMix};
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::ModelConfig;
use tessera_train::data::{draw_index, Sampler};
use tessera_train::outer::{aggregate, apply, median};
use tessera_train::schedule::Schedule;
use tessera_train::sparse_wire::{pack, packed_bytes};
use tessera_train::sparseloco::{compress, Compressed, ErrorFeedback, SparseConfig};
use tessera_train::update::two_d;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    SplitMix(seed).vec(n, 1.0)
}

#[test]
fn schedule_warms_up_then_decays_to_floor() {
    let s = Schedule {
        peak: 1e-3,
        warmup: 10,
        total: 110,
        floor: 0.1,
    };
    assert!((s.at(1) - 1e-4).abs() < 1e-12);
    assert!((s.at(10) - 1e-3).abs() < 1e-12);
    assert!(
        (s.at(60) - 1e-3 * 0.55).abs() < 1e-12,
        "half way down the cosine"
    );
    assert!((s.at(110) - 1e-4).abs() < 1e-12);
    assert!((s.at(500) - 1e-4).abs() < 1e-12);
    assert_eq!(Schedule::constant(0.5).at(77), 0.5);
}

#[test]
fn top_k_per_chunk_with_two_bit_values() {
    let cfg = SparseConfig::default();
    let shape = [130, 70]; // partial chunks on both edges
    let e = rand(shape[0] * shape[1], 1);
    let c = compress(&e, shape, &cfg);
    // 3 x 2 chunks: four full ones keep 64, the edge ones keep 64 too (each has >= 64 entries
    // except the 2 x 6 corner, which keeps its 12).
    assert_eq!(c.levels.len(), 6);
    assert_eq!(c.indices.len(), 64 * 5 + 12);
    let d = c.to_dense();
    assert_eq!(d.iter().filter(|&&x| x != 0.0).count(), c.indices.len());
    // Within the first chunk, every kept entry is at least as large as every dropped one, and
    // keeps its sign.
    let kept: Vec<(usize, usize)> = (0..64)
        .flat_map(|r| (0..64).map(move |col| (r, col)))
        .filter(|&(r, col)| d[r * 70 + col] != 0.0)
        .collect();
    let min_kept = kept
        .iter()
        .map(|&(r, col)| e[r * 70 + col].abs())
        .fold(f32::INFINITY, f32::min);
    for r in 0..64 {
        for col in 0..64 {
            let i = r * 70 + col;
            if d[i] == 0.0 {
                assert!(e[i].abs() <= min_kept);
            } else {
                assert_eq!(d[i].signum(), e[i].signum());
                let [lo, hi] = c.levels[0];
                assert!(d[i].abs() == lo || d[i].abs() == hi);
            }
        }
    }
    // Big tensors compress about 150x against dense f32 (positions Rice-coded, ~8 bits each).
    let big = [1024, 512];
    let cb = compress(&rand(big[0] * big[1], 2), big, &cfg);
    let ratio = (big[0] * big[1] * 4) as f64 / packed_bytes(&pack(&[cb], &cfg)) as f64;
    println!("compression ratio at 64x64, k=64: {ratio:.1}x");
    assert!(ratio > 145.0, "{ratio:.1}x");
}

#[test]
fn error_feedback_keeps_what_was_not_sent() {
    let shape = [40, 90];
    let n = shape[0] * shape[1];
    // beta = 1: nothing is forgotten, so sent + residual == sum of deltas.
    let cfg = SparseConfig {
        beta: 1.0,
        ..SparseConfig::default()
    };
    let mut ef = ErrorFeedback::new(shape);
    let mut sent = vec![0.0f64; n];
    let mut total = vec![0.0f64; n];
    for t in 0..20 {
        let delta = rand(n, 100 + t);
        let c = ef.step(&delta, &cfg);
        for (s, v) in sent.iter_mut().zip(c.to_dense()) {
            *s += v as f64;
        }
        for (a, &d) in total.iter_mut().zip(&delta) {
            *a += d as f64;
        }
    }
    let worst = (0..n)
        .map(|i| (sent[i] + ef.residual()[i] as f64 - total[i]).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-4,
        "sent + residual differs from the sum of deltas by {worst}"
    );
    // beta < 1 decays the residual: e_t = beta e_{t-1} + delta - sent.
    let cfg = SparseConfig::default();
    let mut ef = ErrorFeedback::new(shape);
    let d1 = rand(n, 7);
    let c1 = ef.step(&d1, &cfg);
    let e1 = ef.residual().to_vec();
    let d2 = rand(n, 8);
    let c2 = ef.step(&d2, &cfg);
    let s2 = c2.to_dense();
    for i in 0..n {
        let want = cfg.beta * e1[i] + d2[i] - s2[i];
        assert!((ef.residual()[i] - want).abs() < 1e-6);
    }
    assert_ne!(c1, c2);
}

#[test]
fn median_clip_and_mean() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    let ups = vec![
        vec![vec![3.0f32, 4.0]],
        vec![vec![0.0, 1.0]],
        vec![vec![30.0, 40.0]],
    ];
    let (mean, scales) = aggregate(&ups, true);
    // Norms 5, 1, 50: median 5; the third is scaled to norm 5, the others untouched.
    assert_eq!(scales[0], 1.0);
    assert_eq!(scales[1], 1.0);
    assert!((scales[2] - 0.1).abs() < 1e-12);
    assert!((mean[0][0] - 2.0).abs() < 1e-6 && (mean[0][1] - 3.0).abs() < 1e-6);
    let (plain, _) = aggregate(&ups, false);
    assert!((plain[0][0] - 11.0).abs() < 1e-5);
}

/// The algebra behind the exactness check: with plain SGD, one inner step, equal tokens per
/// replica, dense sync, no clipping and outer lr 1, the outer step equals SGD on the union.
#[test]
fn dense_outer_step_of_sgd_replicas_equals_sgd_on_the_union() {
    let cfg = ModelConfig::tiny();
    let p: ModelParams<f64> = ModelParams::random(&cfg, 5);
    let lr = 0.1;
    let mut r = SplitMix(6);
    let seqs: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..8)
                .map(|_| (r.next_u64() % cfg.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    let flat = |m: &ModelParams<f64>| -> Vec<Vec<f32>> {
        m.named()
            .into_iter()
            .map(|(_, v)| v.iter().map(|&x| x as f32).collect())
            .collect()
    };
    // Each replica: delta = theta_start - theta_after_one_sgd_step = lr * grad.
    let deltas: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|s| {
            let (_, g) = model::loss_and_grads(&cfg, &p, &Batch::from_sequences(s, 8));
            flat(&g.map(|v| v.iter().map(|x| lr * x).collect()))
        })
        .collect();
    let (mean, _) = aggregate(&deltas, false);
    let mut theta = flat(&p);
    apply(&mut theta, &mean, 1.0);
    let union: Vec<u32> = seqs.concat();
    let (_, g) = model::loss_and_grads(&cfg, &p, &Batch::from_sequences(&union, 8));
    let mut want = flat(&p);
    apply(&mut want, &flat(&g), lr as f32);
    for (a, b) in theta.iter().zip(&want) {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        assert!((num / den).sqrt() < 1e-6);
    }
}

#[test]
fn sampler_is_deterministic_and_visits_every_sample_each_epoch() {
    let mut s = Sampler::new(42, 1001, 10);
    assert_eq!(s.len(), 100);
    let epoch0: Vec<usize> = (0..100).map(|n| s.sample(n)).collect();
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    let epoch1: Vec<usize> = (100..200).map(|n| s.sample(n)).collect();
    assert_ne!(epoch0, epoch1, "each epoch has its own order");
    let mut again = Sampler::new(42, 1001, 10);
    assert_eq!(
        (0..100).map(|n| again.sample(n)).collect::<Vec<_>>(),
        epoch0
    );
    assert_ne!(
        (0..100)
            .map(|n| Sampler::new(43, 1001, 10).sample(n))
            .collect::<Vec<_>>(),
        epoch0
    );
    assert_eq!(s.span(99), 990..1001);
    // One round of 3 replicas x 4 steps x 2 micro-batches draws 24 distinct samples.
    let draws: std::collections::BTreeSet<usize> = (0..3)
        .flat_map(|rep| {
            (0..4).flat_map(move |st| (0..2).map(move |b| draw_index(5, rep, 3, st, 4, b, 2)))
        })
        .map(|n| s.sample(n))
        .collect();
    assert_eq!(draws.len(), 24);
}

#[test]
fn indexed_updates_round_trip_and_are_checked() {
    use tessera_protocol::messages::Update;
    use tessera_train::update::{to_dense, to_indexed};
    let shapes = vec![("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])];
    let a = vec![0.0, 1.5, 0.0, 0.0, -2.0, 0.0];
    let b = vec![0.0; 4];
    let u = Update::Indexed(vec![
        to_indexed("a", &[2, 3], &a),
        to_indexed("b", &[4], &b),
    ]);
    assert_eq!(
        to_dense(&u, &shapes, None).unwrap(),
        vec![a.clone(), b.clone()]
    );
    let mut bad = to_indexed("a", &[2, 3], &a);
    bad.indices = tessera_protocol::TensorPayload::from_u32(&[2], &[4, 1]);
    assert!(
        to_dense(
            &Update::Indexed(vec![bad, to_indexed("b", &[4], &b)]),
            &shapes,
            None
        )
        .is_err(),
        "positions out of order"
    );
    let mut far = to_indexed("a", &[2, 3], &a);
    far.indices = tessera_protocol::TensorPayload::from_u32(&[2], &[1, 6]);
    assert!(
        to_dense(
            &Update::Indexed(vec![far, to_indexed("b", &[4], &b)]),
            &shapes,
            None
        )
        .is_err(),
        "position outside the tensor"
    );
    let nan = to_indexed("a", &[2, 3], &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]);
    assert!(
        to_dense(
            &Update::Indexed(vec![nan, to_indexed("b", &[4], &b)]),
            &shapes,
            None
        )
        .is_err(),
        "NaN value"
    );
    let wrong = to_indexed("a", &[3, 2], &a);
    assert!(
        to_dense(
            &Update::Indexed(vec![wrong, to_indexed("b", &[4], &b)]),
            &shapes,
            None
        )
        .is_err(),
        "shape"
    );
}

#[test]
fn a_mean_of_parts_reads_as_the_coordinators_mean_bit_for_bit() {
    use tessera_protocol::messages::{SparseMean, Update};
    use tessera_train::update::{from_contributor, to_dense};
    let cfg = SparseConfig::default();
    let shapes = vec![
        ("w".to_string(), vec![70, 130]),
        ("norm".to_string(), vec![64]),
    ];
    // Three replicas' compressed updates, one much larger (so the median clip scales it).
    let parts: Vec<_> = (0..3u64)
        .map(|r| {
            let ts: Vec<Compressed> = shapes
                .iter()
                .enumerate()
                .map(|(i, (_, s))| {
                    let n = s.iter().product();
                    let big = if r == 2 { 10.0 } else { 1.0 };
                    let v: Vec<f32> = rand(n, 40 + 7 * r + i as u64)
                        .iter()
                        .map(|x| x * big)
                        .collect();
                    compress(&v, two_d(s), &cfg)
                })
                .collect();
            pack(&ts, &cfg)
        })
        .collect();
    let dense: Vec<Vec<Vec<f32>>> = parts
        .iter()
        .map(|p| to_dense(&Update::Sparse(Box::new(p.clone())), &shapes, Some(&cfg)).unwrap())
        .collect();
    let (mean, scales) = aggregate(&dense, true);
    assert!(scales[2] < 1.0 && scales[0] == 1.0);
    let published = Update::SparseMean(Box::new(SparseMean {
        scales: scales.clone(),
        parts: parts.clone(),
    }));
    let read = to_dense(&published, &shapes, Some(&cfg)).unwrap();
    let bits = |t: &[Vec<f32>]| -> Vec<u32> { t.iter().flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&read), bits(&mean));
    // Malformed means are refused: scales that do not match the parts or fall outside (0, 1],
    // no parts, a dense run.
    for (scales, parts) in [
        (scales[..2].to_vec(), parts.clone()),
        (vec![1.0, 0.0, 1.0], parts.clone()),
        (vec![1.0, 1.5, 1.0], parts.clone()),
        (vec![1.0, f64::NAN, 1.0], parts.clone()),
        (vec![], vec![]),
    ] {
        let m = Update::SparseMean(Box::new(SparseMean { scales, parts }));
        assert!(to_dense(&m, &shapes, Some(&cfg)).is_err());
    }
    assert!(to_dense(&published, &shapes, None).is_err());
    // From a contributor, the coordinator's forms are refused outright.
    let e = from_contributor(&published, &shapes, Some(&cfg)).unwrap_err();
    assert!(e.to_string().contains("not a contributor's"), "{e}");
    let indexed = Update::Indexed(
        shapes
            .iter()
            .zip(&mean)
            .map(|((n, s), v)| tessera_train::update::to_indexed(n, s, v))
            .collect(),
    );
    assert!(from_contributor(&indexed, &shapes, Some(&cfg)).is_err());
    assert!(from_contributor(
        &Update::Sparse(Box::new(parts[0].clone())),
        &shapes,
        Some(&cfg)
    )
    .is_ok());
}

#[test]
fn a_compressed_update_is_checked_against_a_replay_up_to_drift_only() {
    use tessera_train::sparseloco::matches_compression;
    let cfg = SparseConfig {
        chunk: [8, 8],
        k: 6,
        beta: 0.95,
    };
    let shape = [16, 24];
    let mut dense = rand(16 * 24, 5);
    // Chunk 0 (rows 0..8, columns 0..8): five clear winners, then a near-tie for the sixth
    // place, which of the two is sent depending on drift.
    let at = |i: usize| (i / 8) * 24 + i % 8;
    for i in 0..64 {
        dense[at(i)] *= 0.1;
    }
    for (j, v) in [1.5f32, -1.6, 1.7, -1.8, 1.9].into_iter().enumerate() {
        dense[at(10 + j)] = v;
    }
    dense[at(3)] = 0.9;
    dense[at(4)] = -0.9 * (1.0 + 2e-6);
    let sent = compress(&dense, shape, &cfg);
    assert!(sent.indices[..6].contains(&4) && !sent.indices[..6].contains(&3));
    assert_eq!(matches_compression(&sent, &dense, 1e-3), Ok(()));
    // Another GPU's replay: every value drifts by up to 1e-5 relative, and the tie goes the
    // other way there.
    let mut r = SplitMix(8);
    let mut replay: Vec<f32> = dense
        .iter()
        .map(|x| x * (1.0 + 1e-5 * (r.uniform() as f32 - 0.5)))
        .collect();
    replay[at(3)] = 0.9 * (1.0 + 4e-6);
    assert!(!compress(&replay, shape, &cfg).indices[..6].contains(&4));
    assert_eq!(
        matches_compression(&sent, &replay, 1e-3),
        Ok(()),
        "honest drift passes"
    );
    // Scaled by 1.5: the levels are off.
    let scaled = compress(
        &dense.iter().map(|x| 1.5 * x).collect::<Vec<_>>(),
        shape,
        &cfg,
    );
    let e = matches_compression(&scaled, &dense, 1e-3).unwrap_err();
    assert!(e.contains("level"), "{e}");
    // A small entry sent instead of a large one.
    let mut swapped = sent.clone();
    let small = (0..64)
        .find(|i| !swapped.indices[..6].contains(&(*i as u16)))
        .unwrap();
    let mags: Vec<f32> = (0..64).map(|i| dense[(i / 8) * 24 + i % 8].abs()).collect();
    let smallest = (0..64)
        .filter(|i| !swapped.indices[..6].contains(&(*i as u16)))
        .min_by(|&a, &b| mags[a].total_cmp(&mags[b]))
        .unwrap_or(small);
    swapped.indices[0] = smallest as u16;
    let e = matches_compression(&swapped, &dense, 1e-3).unwrap_err();
    assert!(e.contains("largest"), "{e}");
    // A sign flipped.
    let mut flipped = sent.clone();
    flipped.codes[0] ^= 1;
    let e = matches_compression(&flipped, &dense, 1e-3).unwrap_err();
    assert!(e.contains("sign"), "{e}");
    // Every level raised by 1%: beyond the tolerance.
    let mut raised = sent.clone();
    for l in &mut raised.levels {
        l[0] *= 1.01;
        l[1] *= 1.01;
    }
    assert!(matches_compression(&raised, &dense, 1e-3).is_err());
}

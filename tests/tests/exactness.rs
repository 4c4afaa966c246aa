//! Exactness of the training algorithm end to end through the real coordinator state machine
//! and real GPU replicas (in process, no network):
//! (a) R replicas with plain SGD, one inner step, equal tokens, dense sync, no clipping and outer
//!     lr 1 give the same weights as single-device SGD on the union of their data;
//! (b) one replica with inner AdamW, H inner steps, dense sync and outer lr 1 gives the same
//!     weights as single-device AdamW over the same steps (its Adam state persists across
//!     rounds). Per tensor ‖a−b‖/‖b‖ ≤ 1e-5 over 3 rounds.

use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ops::AdamW;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::shard::Optimizer;
use tessera_compute::{Gpu, ModelConfig};
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::{compare, gpu};
use tessera_protocol::messages::{InnerOptimizer, Work};
use tessera_protocol::{Identity, ToContributor};
use tessera_train::schedule::Schedule;
use tessera_worker::contributor::Contributor;

fn model() -> ModelConfig {
    ModelConfig {
        vocab_size: 32,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 8,
        tie_word_embeddings: false,
    }
}

fn spec(replicas: u64, inner_steps: u64, optimizer: InnerOptimizer, lr: Schedule) -> RunSpec {
    let mut r = SplitMix(5);
    let tokens: Vec<u32> = (0..3000).map(|_| (r.next_u64() % 32) as u32).collect();
    RunSpec::new("exact", model(), tokens)
        .with_seed(11)
        .with_rounds(3)
        .with_replicas(replicas)
        .with_units(inner_steps, 2, 8)
        .with_optimizer(optimizer, lr, None)
        .with_weights_frame(100)
}

/// Runs the whole run in process; returns the coordinator, the contributors and every unit
/// handed out.
fn run(
    gpu: &Gpu,
    spec: RunSpec,
    contributors: usize,
    init: &ModelParams<f32>,
) -> (Core, Vec<Contributor>, Vec<Work>) {
    let mut core = Core::new(spec, Identity::from_seed([9; 32]), init.clone());
    let mut clients = tessera_e2e::contributors(gpu, contributors);
    let mut works = Vec::new();
    tessera_e2e::run(gpu, &mut core, &mut clients, |m| {
        if let tessera_e2e::Message::Down(ToContributor::Work(w)) = m {
            works.push(w.clone());
        }
    })
    .expect("contributors handle every message");
    assert_eq!(core.phase(), Phase::Finished, "the run finished");
    (core, clients, works)
}

fn batch_of(works: &[&Work]) -> Batch {
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for w in works {
        let t = w.tokens.to_u32().unwrap();
        let row = w.tokens.shape[2] as usize;
        for r in t.chunks(row) {
            ids.extend_from_slice(&r[..row - 1]);
            targets.extend_from_slice(&r[1..]);
        }
    }
    Batch {
        ids,
        targets,
        seq: 8,
    }
}

#[test]
fn sgd_replicas_with_dense_sync_equal_sgd_on_the_union() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 21);
    let (core, clients, works) = run(
        &g,
        spec(3, 1, InnerOptimizer::Sgd, Schedule::constant(0.2)),
        3,
        &init,
    );
    assert_eq!(works.len(), 9, "3 rounds x 3 slots, nothing re-run");
    let mut reference = GpuModel::new(&g, &cfg, &init, Slicing::whole(), 64).unwrap();
    for round in 0..3 {
        let mut units: Vec<&Work> = works.iter().filter(|w| w.round == round).collect();
        units.sort_by_key(|w| w.slot);
        reference.zero_grads(&g).unwrap();
        pollster::block_on(reference.loss_and_grads(&g, &batch_of(&units))).unwrap();
        pollster::block_on(reference.optimizer_step(
            &g,
            Optimizer::Sgd { lr: 0.2 },
            round as u32 + 1,
            None,
        ))
        .unwrap();
    }
    let want = pollster::block_on(reference.read_params(&g)).unwrap();
    compare("3 SGD replicas vs SGD on the union", core.weights(), &want);
    for c in &clients {
        assert_eq!(
            c.replica().unwrap().weights(),
            core.weights(),
            "every replica applied the same outer steps"
        );
    }
    println!("round losses: {:?}", core.losses());
}

#[test]
fn one_adamw_replica_with_dense_sync_equals_adamw() {
    let g = gpu();
    let cfg = model();
    let init: ModelParams<f32> = ModelParams::random(&cfg, 22);
    let opt = InnerOptimizer::AdamW {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let lr = Schedule {
        peak: 1e-2,
        warmup: 3,
        total: 9,
        floor: 0.1,
    };
    let (core, _, works) = run(&g, spec(1, 3, opt, lr), 1, &init);
    assert_eq!(works.len(), 3);
    let mut reference = GpuModel::new(&g, &cfg, &init, Slicing::whole(), 64).unwrap();
    let mut step = 0;
    for w in &works {
        let rows = w.tokens.to_u32().unwrap();
        let (batch, row) = (w.tokens.shape[1] as usize, w.tokens.shape[2] as usize);
        for (h, &lr) in w.lrs.iter().enumerate() {
            let one = Work {
                tokens: tessera_protocol::TensorPayload::from_u32(
                    &[1, batch, row],
                    &rows[h * batch * row..(h + 1) * batch * row],
                ),
                ..w.clone()
            };
            step += 1;
            reference.zero_grads(&g).unwrap();
            pollster::block_on(reference.loss_and_grads(&g, &batch_of(&[&one]))).unwrap();
            let h = AdamW {
                lr: lr as f64,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
            };
            pollster::block_on(reference.optimizer_step(&g, Optimizer::AdamW(h), step, None))
                .unwrap();
        }
    }
    assert_eq!(step, 9);
    let want = pollster::block_on(reference.read_params(&g)).unwrap();
    compare("1 AdamW replica, H=3, vs AdamW", core.weights(), &want);
}

//! A tiny run for the coordinator's tests, and a scripted contributor that speaks the protocol
//! (handshake, signed messages) without a GPU.

#![allow(dead_code)]

pub mod harness;

use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;
use tessera_coordinator::core::{Core, RunSpec};
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{
    Capabilities, ContributorKind, LogHead, NamedTensor, SessionMessage, Submission, SyncMode,
    Update, Work,
};
use tessera_protocol::pipeline::{HeadSlice, PipeResult, PipeWork};
use tessera_protocol::{Identity, PublicKey, Signed, TensorPayload, ToCoordinator};
use tessera_train::shards::from_wire;

/// A 1-layer model small enough to simulate a thousand contributors.
pub fn tiny_model() -> ModelConfig {
    ModelConfig {
        vocab_size: 16,
        hidden_size: 8,
        intermediate_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 8,
        tie_word_embeddings: false,
    }
}

/// A run on the tiny model.
pub fn spec(replicas: u64, rounds: u64, sync: SyncMode) -> RunSpec {
    let mut r = SplitMix(99);
    let tokens: Vec<u32> = (0..4000).map(|_| (r.next_u64() % 16) as u32).collect();
    RunSpec::new("sim", tiny_model(), tokens)
        .with_seed(7)
        .with_rounds(rounds)
        .with_replicas(replicas)
        .with_units(2, 2, 8)
        .with_outer(1.0, true, sync)
        .with_deadlines(3_000, 10_000)
        .with_weights_frame(50)
}

/// A coordinator for `spec` with random initial weights.
pub fn core(spec: RunSpec) -> Core {
    let w = ModelParams::random(&spec.model, 3);
    Core::new(spec, Identity::from_seed([200; 32]), w)
}

/// A scripted contributor: its identity, session nonce and next sequence number.
#[derive(Debug)]
pub struct Client {
    pub id: Identity,
    pub nonce: Option<[u8; 32]>,
    pub seq: u64,
}

impl Client {
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        s[8] = 1;
        Client {
            id: Identity::from_seed(s),
            nonce: None,
            seq: 0,
        }
    }

    pub fn key(&self) -> PublicKey {
        self.id.public()
    }

    pub fn hello(&self, budget: u64) -> ToCoordinator {
        ToCoordinator::Hello {
            key: self.id.public(),
            kind: ContributorKind::Native,
            software: "sim".into(),
            capabilities: Capabilities {
                adapter: "sim".into(),
                backend: "none".into(),
                max_binding_bytes: 1 << 27,
                memory_budget_bytes: budget,
            },
        }
    }

    /// Answers a challenge.
    pub fn proof(&mut self, nonce: [u8; 32], coordinator: &PublicKey) -> ToCoordinator {
        self.nonce = Some(nonce);
        self.seq = 0;
        ToCoordinator::Proof {
            signature: self.id.sign(
                HANDSHAKE,
                &handshake_message(&nonce, coordinator, &self.id.public()),
            ),
        }
    }

    /// Signs a session message.
    pub fn signed(&mut self, body: SessionMessage) -> ToCoordinator {
        self.seq += 1;
        ToCoordinator::Session(
            Signed::new(
                &self.id,
                &self.nonce.expect("handshake done"),
                self.seq,
                body,
            )
            .expect("sign"),
        )
    }

    /// A well-formed dense submission for `work` whose update is `value` everywhere.
    pub fn submission(&self, cfg: &ModelConfig, work: &Work, value: f32) -> Submission {
        let [h, b, s1] = [
            work.tokens.shape[0],
            work.tokens.shape[1],
            work.tokens.shape[2],
        ];
        let tokens = h * b * (s1 - 1);
        let result = Update::Dense(
            tensor_shapes(cfg)
                .into_iter()
                .map(|(name, shape)| {
                    let n: usize = shape.iter().product();
                    NamedTensor {
                        name,
                        tensor: TensorPayload::from_f32(&shape, &vec![value; n]),
                    }
                })
                .collect(),
        );
        Submission {
            unit: work.unit,
            lease: work.lease,
            weights: work.weights,
            tokens,
            loss_sum: tokens as f64 * 2.5,
            result,
            log_head: LogHead::default(),
        }
    }
}

/// What a scripted contributor over the worker's real session declares: no GPU, and a memory
/// budget of `budget` bytes.
pub fn scripted_caps(budget: u64) -> Capabilities {
    Capabilities {
        adapter: "scripted".into(),
        backend: "none".into(),
        max_binding_bytes: 1 << 27,
        memory_budget_bytes: budget,
    }
}

/// A head-stage forward's result for the scripted pipeline contributors: for each of `w`'s
/// head slices and each target token, the statistics `[max, columns, 0]` (a log-sum-exp of
/// zero) and whether the slice holds the target's column.
pub fn head_stats(w: &PipeWork, seq: usize, max: f32) -> PipeResult {
    let targets = w.tokens.as_ref().unwrap().to_u32().unwrap();
    PipeResult::HeadStats(
        w.shards
            .iter()
            .map(|sh| {
                let MicroShard::Head { cols } = from_wire(sh, &tiny_model()).unwrap() else {
                    panic!("head stage")
                };
                let mut stats = Vec::new();
                let mut owned = Vec::new();
                for &t in &targets {
                    stats.extend([max, cols.len() as f32, 0.0]);
                    owned.push(u8::from(cols.contains(&(t as usize))));
                }
                HeadSlice {
                    shard: sh.clone(),
                    stats: TensorPayload::from_f32(&[seq, 3], &stats),
                    owned: TensorPayload::from_u8(&[seq], owned),
                }
            })
            .collect(),
    )
}

/// A backward unit's id and the micro-shards it ran on (what its lease then owes sums for).
pub fn backward_shards(w: &PipeWork) -> (u64, Vec<MicroShard>) {
    let cfg = tiny_model();
    let shards = w.shards.iter().map(|x| from_wire(x, &cfg).unwrap());
    (w.unit, shards.collect())
}

/// The environment variable that reruns one seed of a simulation alone.
pub const SEED_VAR: &str = "TESSERA_SIM_SEED";
/// The environment variable that sets how many seeds a simulation sweeps.
pub const SEEDS_VAR: &str = "TESSERA_SIM_SEEDS";

/// The seeds a simulation sweeps: `count` seeds from `first` (`TESSERA_SIM_SEEDS=N` sweeps N
/// instead), or only the one `TESSERA_SIM_SEED` names.
pub fn sim_seeds(first: u64, count: u64) -> Vec<u64> {
    let number = |var: &str| {
        std::env::var(var).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a whole number"))
        })
    };
    match (number(SEED_VAR), number(SEEDS_VAR)) {
        (Some(seed), _) => vec![seed],
        (None, n) => (first..first + n.unwrap_or(count)).collect(),
    }
}

/// Runs `sim` once per seed of [`sim_seeds`]; a failing seed is named with the command line
/// that reruns it alone.
pub fn sweep(first: u64, count: u64, sim: impl Fn(u64)) {
    for seed in sim_seeds(first, count) {
        println!("seed {seed}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim(seed)));
        if let Err(e) = r {
            eprintln!("seed {seed} failed: rerun it alone with {SEED_VAR}={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

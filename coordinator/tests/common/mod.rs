//! A tiny run for the coordinator's tests, and a scripted contributor that speaks the protocol
//! (handshake, signed messages) without a GPU.

#![allow(dead_code)]

use std::sync::Arc;

use tessera_compute::hf::tensor_shapes;
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::MicroShard;
use tessera_compute::ModelConfig;
use tessera_coordinator::core::{Core, RunSpec};
use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{
    Capabilities, ContributorKind, InnerOptimizer, LogHead, NamedTensor, SessionMessage,
    Submission, SyncMode, Update, Work,
};
use tessera_protocol::{Identity, PublicKey, Signed, TensorPayload, ToContributor, ToCoordinator};
use tessera_train::schedule::Schedule;

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
    }
}

/// A run on the tiny model.
pub fn spec(replicas: u64, rounds: u64, sync: SyncMode) -> RunSpec {
    let mut r = SplitMix(99);
    let tokens: Vec<u32> = (0..4000).map(|_| (r.next_u64() % 16) as u32).collect();
    RunSpec {
        name: "sim".into(),
        model: tiny_model(),
        tokens: Arc::from(tokens),
        seed: 7,
        rounds,
        replicas,
        inner_steps: 2,
        batch: 2,
        seq: 8,
        optimizer: InnerOptimizer::Sgd,
        inner_lr: Schedule::constant(0.1),
        inner_clip: None,
        outer_lr: 1.0,
        clip_to_median: true,
        sync,
        unit_deadline_ms: 3_000,
        silence_ms: 10_000,
        weights_frame_elems: 50,
        checks: None,
        pipeline: None,
    }
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

/// A scripted pipeline contributor's handshake and lease download: the proof for a challenge,
/// and `Ready` once a lease's weight frames are in (frames after a step's new weights do not
/// re-send it). `None` for any other message.
pub fn lease_download(
    client: &mut Client,
    lease: &mut Option<(u64, Vec<MicroShard>)>,
    frames: &mut u32,
    msg: &ToContributor,
) -> Option<Vec<ToCoordinator>> {
    let ready = |client: &mut Client, lease| {
        vec![client.signed(SessionMessage::Ready {
            lease,
            log_head: LogHead::default(),
        })]
    };
    Some(match msg {
        ToContributor::Challenge {
            nonce, coordinator, ..
        } => vec![client.proof(*nonce, coordinator)],
        ToContributor::Lease(l) => {
            let cfg = tiny_model();
            let shards = l
                .shards
                .iter()
                .map(|x| tessera_train::shards::from_wire(x, &cfg).unwrap())
                .collect();
            *lease = Some((l.lease, shards));
            *frames = l.frames;
            if l.frames == 0 {
                ready(client, l.lease)
            } else {
                vec![]
            }
        }
        ToContributor::Weights { lease: l, .. } => {
            *frames = frames.saturating_sub(1);
            if *frames == 0 && lease.as_ref().map(|x| x.0) == Some(*l) {
                ready(client, *l)
            } else {
                vec![]
            }
        }
        ToContributor::StepWeights { frames: n, .. } => {
            // The frames that follow must not re-send Ready: count them down separately.
            *frames = n + u32::MAX / 2;
            vec![]
        }
        _ => return None,
    })
}

//! The simulated contributors of the pipeline checks: what each role computes, as a
//! [`Backend`] behind the worker's real protocol session, and the contributor itself.

use tessera_compute::reference::model::SplitMix;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_coordinator::core::spec::ChecksSpec;
use tessera_coordinator::core::ConnId;
use tessera_protocol::messages::Update;
use tessera_protocol::pipeline::{AuditWork, Pass, PipeResult, PipeWork};
use tessera_protocol::{Activation, TensorPayload};
use tessera_train::shards::grads_to_wire;
use tessera_worker::backend::{Backend, Done, Job};
use tessera_worker::session::Session;
use tessera_worker::WorkerError;

use super::{HEAD, SEQ};
use crate::common::tiny_model;

/// What a contributor does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Honest,
    RandomGrads,
    ScaledGrads,
    NaN,
    Copier,
    WrongActivations,
    Stale,
    /// Honest for its first two steps, then sends wrong activations.
    Turncoat,
    /// Scales its gradient sums by 1 + tolerance / 2: under the tolerance.
    Subtle,
    /// Honest until step [`PATIENT_FROM`], when its checks are rare, then scales its gradient
    /// sums by 3 for [`PATIENT_FOR`] steps, then honest again.
    Patient,
    /// One of a group of sybils: triples its gradient sums in its own work and in every
    /// audit it runs, so its fellows agree with it (colluding when they audit one another,
    /// framing when they audit honest leases).
    Sybil,
}

/// The step a patient attacker starts attacking at.
pub const PATIENT_FROM: u64 = 20;
/// Steps a patient attacker attacks.
pub const PATIENT_FOR: u64 = 6;

/// A contributor's compute as its role makes it: a [`Backend`] behind the worker's real
/// protocol session, which signs and numbers what it sends.
pub struct RoleCompute {
    pub role: Role,
    /// This contributor's "adapter": a relative offset of its results.
    pub drift: f32,
    /// Its lease's micro-shards.
    pub held: Vec<MicroShard>,
    /// Backward units since the last gradient sums, with their micro-shards.
    pub owed: Vec<(u64, Vec<MicroShard>)>,
    /// Steps whose weights it received.
    pub steps_seen: u64,
    /// Its first result, which a copier sends again and again.
    pub copy: Option<PipeResult>,
    pub rng: SplitMix,
    /// Units run for the step's work, and for checks.
    pub work_units: u64,
    pub audit_units: u64,
    /// The step of its latest unit.
    pub step: u64,
    /// Steps whose gradient sums it sent altered.
    pub attacked: std::collections::BTreeSet<u64>,
}

impl RoleCompute {
    fn attacking(&self) -> bool {
        match self.role {
            Role::Honest | Role::Subtle => false,
            Role::Sybil => true,
            Role::Turncoat => self.steps_seen >= 2,
            Role::Patient => (PATIENT_FROM..PATIENT_FROM + PATIENT_FOR).contains(&self.step),
            _ => true,
        }
    }

    fn unit(&mut self, w: &PipeWork) -> PipeResult {
        self.work_units += 1;
        self.step = w.step;
        let mut r = result(self, w);
        if self.role == Role::Copier {
            match &self.copy {
                Some(c) if std::mem::discriminant(c) == std::mem::discriminant(&r) => r = c.clone(),
                _ => self.copy = Some(r.clone()),
            }
        }
        if w.pass == Pass::Backward {
            self.owed.push(crate::common::backward_shards(w));
        }
        r
    }

    fn audit(&mut self, a: &AuditWork) -> Done {
        self.audit_units += a.units.len() as u64;
        let outputs = a.units.iter().map(|w| result(self, w)).collect();
        let owed: Vec<(u64, Vec<MicroShard>)> = a
            .units
            .iter()
            .filter(|w| w.pass == Pass::Backward)
            .map(crate::common::backward_shards)
            .collect();
        let grads = sums(self, &owed);
        Done::Audited(outputs, grads)
    }

    fn collect(&mut self) -> Done {
        if self.role == Role::Patient && self.attacking() {
            self.attacked.insert(self.step);
        }
        let units = self.owed.iter().map(|o| o.0).collect();
        let mut shards = sums(self, &self.owed.clone());
        if self.role == Role::NaN {
            if let Update::Dense(ts) = &mut shards[0].tensors {
                let mut v = ts[0].tensor.to_f32().unwrap();
                v[0] = f32::NAN;
                let shape: Vec<usize> = ts[0].tensor.shape.iter().map(|&x| x as usize).collect();
                ts[0].tensor = TensorPayload::from_f32(&shape, &v);
            }
        }
        self.owed.clear();
        Done::Collected(units, shards)
    }
}

impl Backend for RoleCompute {
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError> {
        Ok(match job {
            Job::LoadShards { shards, .. } => {
                self.held = shards.into_iter().map(|t| t.shard).collect();
                self.owed.clear();
                Done::Loaded
            }
            Job::StepWeights { .. } => {
                self.steps_seen += 1;
                Done::Loaded
            }
            Job::Unit(w) => Done::Unit(self.unit(&w)),
            Job::Audit(a) => self.audit(&a),
            Job::Collect => self.collect(),
            other => panic!("a pipeline run asked for {other:?}"),
        })
    }
}

pub struct Sim {
    pub role: Role,
    pub session: Session,
    pub compute: RoleCompute,
    pub conn: Option<ConnId>,
    /// Results computed, sent at the next tick (work takes time).
    pub outbox: Vec<tessera_protocol::ToCoordinator>,
}

/// The values a correct computation of `w` gives on weights `version` (the simulation's
/// stand-in for a forward or backward: a fixed function of the inputs and the weights).
fn values(w: &PipeWork, version: u64) -> Vec<f32> {
    let d = tiny_model().hidden_size;
    let shift = 0.01 * version as f32 + 0.001 * w.shards.len() as f32;
    if let Some(g) = &w.grad {
        return g
            .decode()
            .unwrap()
            .iter()
            .map(|x| 0.5 * x + 0.25 + shift)
            .collect();
    }
    if let Some(x) = &w.input {
        return x
            .decode()
            .unwrap()
            .iter()
            .map(|x| 0.5 * x + 1.0 + shift)
            .collect();
    }
    let ids = w.tokens.as_ref().unwrap().to_u32().unwrap();
    (0..SEQ * d)
        .map(|k| ids[k / d] as f32 / 64.0 + (k % d) as f32 / 100.0 + shift)
        .collect()
}

/// A unit's result as `s` computes it.
fn result(s: &mut RoleCompute, w: &PipeWork) -> PipeResult {
    let cfg = tiny_model();
    let d = cfg.hidden_size;
    let attack = s.attacking();
    let version = if attack && s.role == Role::Stale {
        w.weights.saturating_sub(1) + 7
    } else {
        w.weights
    };
    match (w.stages[0], w.pass) {
        (0, Pass::Backward) => PipeResult::Accumulated,
        (HEAD, Pass::Forward) => {
            let mut max = (1.0 + 0.01 * version as f32) * (1.0 + s.drift);
            if attack && matches!(s.role, Role::WrongActivations | Role::Turncoat) {
                max += 0.05;
            }
            crate::common::head_stats(w, SEQ, max)
        }
        _ => {
            let mut v: Vec<f32> = values(w, version)
                .iter()
                .map(|x| x * (1.0 + s.drift))
                .collect();
            if attack {
                match s.role {
                    Role::WrongActivations | Role::Turncoat if w.pass == Pass::Forward => {
                        v.iter_mut().for_each(|x| *x += 0.05 * (1.0 + x.abs()));
                    }
                    Role::NaN => v[3] = f32::NAN,
                    Role::RandomGrads if w.pass == Pass::Backward => {
                        v.iter_mut()
                            .for_each(|x| *x = (s.rng.next_u64() % 1000) as f32 / 100.0 - 5.0);
                    }
                    _ => {}
                }
            }
            PipeResult::Activation(Activation::encode(&[SEQ, d], &v, w.output))
        }
    }
}

/// Gradient sums as `s` reports them for backward units over `owed` of the micro-shards it
/// holds.
fn sums(
    s: &mut RoleCompute,
    owed: &[(u64, Vec<MicroShard>)],
) -> Vec<tessera_protocol::pipeline::ShardGrads> {
    let cfg = tiny_model();
    let tol = ChecksSpec::default().tolerance as f32;
    let attacking = s.attacking();
    s.held
        .clone()
        .iter()
        .map(|h| {
            let n = owed.iter().filter(|o| o.1.contains(h)).count() as f32;
            let mut t = ShardTensors::zeros(&cfg, h).unwrap();
            for x in t.tensors.iter_mut().flat_map(|t| t.data.iter_mut()) {
                *x = n * (1.0 + s.drift);
                if attacking {
                    match s.role {
                        Role::RandomGrads => *x = (s.rng.next_u64() % 1000) as f32 / 100.0 - 5.0,
                        Role::ScaledGrads | Role::Patient | Role::Sybil => *x *= 3.0,
                        _ => {}
                    }
                }
                if s.role == Role::Subtle {
                    *x *= 1.0 + tol / 2.0;
                }
            }
            grads_to_wire(&t)
        })
        .collect()
}

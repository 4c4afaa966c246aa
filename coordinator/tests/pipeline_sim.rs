//! Deterministic simulation of a pipeline run with scripted contributors (no GPU) that join,
//! crash, rejoin, miss deadlines and send every kind of malformed or hostile result. Each
//! contributor reports, as its gradient sum for a micro-shard, the number of backward units it
//! ran on it; with SGD at learning rate 1 the run's weights then move by exactly
//! steps x micro-batches per element (times the slices sharing a replicated norm weight) if and
//! only if every backward unit's gradient was counted once: nothing dropped by a crash,
//! nothing double-counted by a re-run, nothing taken from a rejected result.

mod common;

use std::collections::BTreeMap;

use common::{tiny_model, Client};
use tessera_compute::model::{shards, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_coordinator::core::spec::PipelineSpec;
use tessera_coordinator::core::{Action, ConnId, Core, Input, Phase, RunSpec};
use tessera_coordinator::status::{status_of, StatusRows};
use tessera_protocol::messages::{LogHead, SessionMessage, Update, Verdict};
use tessera_protocol::pipeline::{HeadSlice, Pass, PipeResult, PipeWork, StepGrads, UnitOutput};
use tessera_protocol::{ActEncoding, Activation, Code, Identity, TensorPayload, ToContributor};
use tessera_train::schedule::Schedule;
use tessera_train::shards::{from_wire, grads_to_wire};

const STEPS: u64 = 5;
const MICRO: u64 = 4;
/// The head's stage: embed, attention, MLP, head.
const HEAD: u64 = 3;

fn slicing() -> Slicing {
    Slicing {
        embed: 2,
        attn: 1,
        mlp: 2,
        head: 2,
    }
}

fn spec() -> RunSpec {
    let mut sp = common::spec(1, STEPS, tessera_protocol::messages::SyncMode::Dense);
    let cfg = tiny_model();
    let stages = shards(&cfg, slicing()).unwrap();
    sp.pipeline = Some(PipelineSpec {
        state_bytes: stages.iter().map(|s| vec![1000; s.len()]).collect(),
        work_bytes: stages.iter().map(|s| vec![0; s.len()]).collect(),
        stages,
        micro_batches: MICRO,
        activations: ActEncoding::Bf16,
        grads: tessera_protocol::messages::SyncMode::Dense,
        max_activation: tessera_coordinator::core::spec::DEFAULT_MAX_ACTIVATION,
    });
    sp.inner_lr = Schedule::constant(1.0);
    sp.unit_deadline_ms = 2_000;
    sp.silence_ms = 60_000;
    sp
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Trick {
    WrongShape,
    NotFinite,
    WrongOwnership,
    UnknownUnit,
    Sleep,
    WrongUnitList,
    BadGradients,
}

struct Sim {
    client: Client,
    conn: Option<ConnId>,
    lease: Option<(u64, Vec<MicroShard>)>,
    frames: u32,
    /// Backward units run since the last gradient sums, with their micro-shards.
    owed: Vec<(u64, Vec<MicroShard>)>,
    rejoin_at: u64,
}

fn zeros(w: &PipeWork, d: usize, seq: usize) -> PipeResult {
    PipeResult::Activation(Activation::encode(&[seq, d], &vec![0.0; seq * d], w.output))
}

/// The honest result of a unit (its values do not matter to the invariant).
fn honest(w: &PipeWork, d: usize, seq: usize) -> PipeResult {
    let cfg = tiny_model();
    match (w.stages[0], w.pass) {
        (0, Pass::Backward) => PipeResult::Accumulated,
        (HEAD, Pass::Forward) => {
            let targets = w.tokens.as_ref().unwrap().to_u32().unwrap();
            PipeResult::HeadStats(
                w.shards
                    .iter()
                    .map(|sh| {
                        let MicroShard::Head { cols } = from_wire(sh, &cfg).unwrap() else {
                            panic!("head stage")
                        };
                        let mut stats = Vec::new();
                        let mut owned = Vec::new();
                        for &t in &targets {
                            stats.extend([0.0, cols.len() as f32, 0.0]);
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
        _ => zeros(w, d, seq),
    }
}

struct Run {
    core: Core,
    now: u64,
    next_conn: ConnId,
    rng: SplitMix,
    tricks: BTreeMap<String, usize>,
    rejected: usize,
    crashes: usize,
    log: Vec<tessera_protocol::log::SignedEntry>,
    receipts: Vec<tessera_protocol::messages::Receipt>,
    status: StatusRows,
}

impl Run {
    fn feed(&mut self, sims: &mut [Sim], input: Input) {
        // The status built from the core's marks of what changed is the status built whole.
        assert_eq!(self.status.build(&mut self.core), status_of(&self.core));
        let mut queue = vec![input];
        while !queue.is_empty() {
            let input = queue.remove(0);
            let actions = self.core.tick(self.now, input);
            for a in actions {
                match a {
                    Action::Send { conn, msg } => {
                        if let Some(k) = sims.iter().position(|s| s.conn == Some(conn)) {
                            for reply in self.answer(&mut sims[k], msg) {
                                queue.push(Input::Message { conn, msg: reply });
                            }
                        }
                    }
                    Action::Logged(e) => self.log.push(e),
                    Action::Close { conn, .. } => {
                        if let Some(s) = sims.iter_mut().find(|s| s.conn == Some(conn)) {
                            s.conn = None;
                            s.lease = None;
                            s.owed.clear();
                            s.rejoin_at = self.now + 500;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn trick(&mut self, name: Trick) -> bool {
        // One result in 12 is a trick.
        if self.rng.next_u64().is_multiple_of(12) {
            *self.tricks.entry(format!("{name:?}")).or_default() += 1;
            true
        } else {
            false
        }
    }

    fn answer(&mut self, s: &mut Sim, msg: ToContributor) -> Vec<tessera_protocol::ToCoordinator> {
        let cfg = tiny_model();
        let (d, seq) = (cfg.hidden_size, 8);
        if let Some(r) = common::lease_download(&mut s.client, &mut s.lease, &mut s.frames, &msg) {
            return r;
        }
        match msg {
            ToContributor::Unit(w) => {
                let out = |result| UnitOutput {
                    unit: w.unit,
                    lease: w.lease,
                    weights: w.weights,
                    result,
                    log_head: LogHead::default(),
                };
                if self.trick(Trick::Sleep) {
                    return vec![]; // the deadline re-runs it
                }
                if self.trick(Trick::UnknownUnit) {
                    let mut o = out(honest(&w, d, seq));
                    o.unit += 1_000_000;
                    let bogus = s.client.signed(SessionMessage::Output(o));
                    let real = self.finish(s, &w, d, seq);
                    return vec![bogus, real];
                }
                let is_head_fwd = w.pass == Pass::Forward && w.stages[0] == HEAD;
                let is_embed_bwd = w.pass == Pass::Backward && w.stages[0] == 0;
                if !is_head_fwd && !is_embed_bwd && self.trick(Trick::WrongShape) {
                    let r = PipeResult::Activation(Activation::encode(
                        &[seq - 1, d],
                        &vec![0.0; (seq - 1) * d],
                        w.output,
                    ));
                    return vec![s.client.signed(SessionMessage::Output(out(r)))];
                }
                if !is_head_fwd && !is_embed_bwd && self.trick(Trick::NotFinite) {
                    let r = PipeResult::Activation(Activation::encode(
                        &[seq, d],
                        &vec![f32::NAN; seq * d],
                        ActEncoding::F32,
                    ));
                    return vec![s.client.signed(SessionMessage::Output(out(r)))];
                }
                if is_head_fwd && self.trick(Trick::WrongOwnership) {
                    let mut r = honest(&w, d, seq);
                    if let PipeResult::HeadStats(sl) = &mut r {
                        sl[0].owned = TensorPayload::from_u8(&[seq], vec![1; seq]);
                    }
                    return vec![s.client.signed(SessionMessage::Output(out(r)))];
                }
                vec![self.finish(s, &w, d, seq)]
            }
            ToContributor::Collect { unit, lease, step } => {
                let Some((_, held)) = s.lease.clone() else {
                    return vec![];
                };
                let mut units: Vec<u64> = s.owed.iter().map(|o| o.0).collect();
                let shards = held
                    .iter()
                    .map(|h| {
                        let n = s.owed.iter().filter(|o| o.1.contains(h)).count() as f32;
                        let mut t = ShardTensors::zeros(&cfg, h).unwrap();
                        t.tensors.iter_mut().for_each(|x| x.data.fill(n));
                        grads_to_wire(&t)
                    })
                    .collect::<Vec<_>>();
                let mut g = StepGrads {
                    unit,
                    lease,
                    step,
                    units: units.clone(),
                    shards,
                    log_head: LogHead::default(),
                };
                if self.trick(Trick::WrongUnitList) {
                    units.push(12345);
                    g.units = units;
                } else if self.trick(Trick::BadGradients) {
                    if let Update::Dense(ts) = &mut g.shards[0].tensors {
                        ts[0].tensor = TensorPayload::from_f32(&[1], &[f32::INFINITY]);
                    }
                } else {
                    s.owed.clear();
                }
                vec![s.client.signed(SessionMessage::Grads(g))]
            }
            ToContributor::Receipt { receipt, .. } => {
                if let Verdict::Rejected(_) = receipt.verdict {
                    self.rejected += 1;
                }
                self.receipts.push(receipt);
                vec![]
            }
            _ => vec![],
        }
    }

    fn finish(
        &mut self,
        s: &mut Sim,
        w: &PipeWork,
        d: usize,
        seq: usize,
    ) -> tessera_protocol::ToCoordinator {
        if w.pass == Pass::Backward {
            let cfg = tiny_model();
            s.owed.push((
                w.unit,
                w.shards
                    .iter()
                    .map(|x| from_wire(x, &cfg).unwrap())
                    .collect(),
            ));
        }
        s.client.signed(SessionMessage::Output(UnitOutput {
            unit: w.unit,
            lease: w.lease,
            weights: w.weights,
            result: honest(w, d, seq),
            log_head: LogHead::default(),
        }))
    }
}

#[test]
fn churn_and_hostile_results_neither_drop_nor_double_count_gradients() {
    // Four seeds by default; `TESSERA_SIM_SEED=N` reruns one, `TESSERA_SIM_SEEDS=N` sweeps N.
    common::sweep(42, 4, churn);
}

/// One simulated pipeline run under churn and tricks, drawn from `seed`.
fn churn(seed: u64) {
    let cfg = tiny_model();
    let init = ModelParams::random(&cfg, 3);
    let mut run = Run {
        core: Core::new(spec(), Identity::from_seed([200; 32]), init.clone()),
        now: 0,
        next_conn: 1,
        rng: SplitMix(seed),
        tricks: BTreeMap::new(),
        rejected: 0,
        crashes: 0,
        log: Vec::new(),
        receipts: Vec::new(),
        status: StatusRows::default(),
    };
    let mut sims: Vec<Sim> = (0..16)
        .map(|i| Sim {
            client: Client::new(7000 + i),
            conn: None,
            lease: None,
            frames: 0,
            owed: Vec::new(),
            rejoin_at: i * 10,
        })
        .collect();
    let mut iterations = 0;
    while run.core.phase() != Phase::Finished {
        iterations += 1;
        assert!(iterations < 20_000, "the run did not finish");
        run.now += 50;
        for k in 0..sims.len() {
            if sims[k].conn.is_none() && sims[k].rejoin_at <= run.now {
                let conn = run.next_conn;
                run.next_conn += 1;
                sims[k].conn = Some(conn);
                sims[k].owed.clear();
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&conn.to_le_bytes());
                run.feed(&mut sims, Input::Connected { conn, nonce });
                let hello = sims[k].client.hello(1000);
                run.feed(&mut sims, Input::Message { conn, msg: hello });
            }
        }
        // Now and then a contributor crashes (whatever it owes is lost with it).
        if run.rng.next_u64().is_multiple_of(40) {
            let k = (run.rng.next_u64() % sims.len() as u64) as usize;
            if let Some(conn) = sims[k].conn.take() {
                run.crashes += 1;
                sims[k].lease = None;
                sims[k].owed.clear();
                sims[k].rejoin_at = run.now + 1_000;
                run.feed(&mut sims, Input::Disconnected { conn });
            }
        }
        run.feed(&mut sims, Input::Tick);
    }
    println!(
        "{iterations} ticks, {} crashes, {} rejected results, tricks {:?}, losses {:?}",
        run.crashes,
        run.rejected,
        run.tricks,
        run.core.losses()
    );
    for t in [
        "WrongShape",
        "NotFinite",
        "WrongOwnership",
        "UnknownUnit",
        "Sleep",
        "WrongUnitList",
        "BadGradients",
    ] {
        assert!(run.tricks.get(t).copied().unwrap_or(0) > 0, "{t} was tried");
    }
    assert!(run.crashes > 0 && run.rejected > 0);
    // The run log: every decision, chained and signed; each receipt names the entry that
    // records its verdict.
    let key = run.core.public_key();
    let head = tessera_protocol::log::verify_chain(&run.log, &key, None).expect("an intact log");
    assert_eq!(head, Some(run.core.log_head()));
    assert!(matches!(
        run.log[0].entry.event,
        tessera_protocol::log::LogEvent::Started { .. }
    ));
    for r in &run.receipts {
        let e = &run.log[r.log_head.index as usize];
        assert_eq!(e.hash, r.log_head.hash);
        let (unit, accepted) = match &e.entry.event {
            tessera_protocol::log::LogEvent::Accepted { unit, .. } => (*unit, true),
            tessera_protocol::log::LogEvent::Rejected { unit, .. } => (*unit, false),
            other => panic!("a receipt points at {other:?}"),
        };
        assert_eq!(unit, r.unit);
        assert_eq!(accepted, r.verdict == Verdict::Accepted);
    }
    let count = |f: fn(&tessera_protocol::log::LogEvent) -> bool| {
        run.log.iter().filter(|e| f(&e.entry.event)).count()
    };
    println!(
        "log: {} entries ({} joins, {} leaves, {} leases, {} closed steps)",
        run.log.len(),
        count(|e| matches!(e, tessera_protocol::log::LogEvent::Joined { .. })),
        count(|e| matches!(e, tessera_protocol::log::LogEvent::Left { .. })),
        count(|e| matches!(e, tessera_protocol::log::LogEvent::Leased { .. })),
        count(|e| matches!(e, tessera_protocol::log::LogEvent::Closed { .. })),
    );
    assert_eq!(
        count(|e| matches!(e, tessera_protocol::log::LogEvent::Closed { .. })),
        STEPS as usize
    );
    // Every micro-shard's gradient per step is exactly the number of micro-batches; a norm
    // weight replicated in k slices of its stage gets k times that.
    let mut expected = ModelParams::<f32>::zeros(&cfg);
    for stage in shards(&cfg, slicing()).unwrap() {
        for s in &stage {
            let mut t = ShardTensors::zeros(&cfg, s).unwrap();
            t.tensors
                .iter_mut()
                .for_each(|x| x.data.fill((STEPS * MICRO) as f32));
            t.add_into(&cfg, &mut expected).unwrap();
        }
    }
    for (((name, got), (_, start)), (_, moved)) in run
        .core
        .weights()
        .named()
        .into_iter()
        .zip(init.named())
        .zip(expected.named())
    {
        for ((g, s0), m) in got.iter().zip(start).zip(moved) {
            assert!((g - (s0 - m)).abs() < 1e-3, "{name}: {g} != {s0} - {m}");
        }
    }
}

#[test]
fn a_lease_is_refused_when_the_adapter_cannot_bind_an_activation() {
    use tessera_protocol::messages::{Capabilities, ContributorKind};
    use tessera_protocol::ToCoordinator;
    let mut core = Core::new(
        spec(),
        Identity::from_seed([200; 32]),
        ModelParams::random(&tiny_model(), 3),
    );
    let mut client = Client::new(1);
    let hello = ToCoordinator::Hello {
        key: client.key(),
        kind: ContributorKind::Browser,
        software: "test".into(),
        capabilities: Capabilities {
            adapter: "tiny".into(),
            backend: "none".into(),
            max_binding_bytes: 64,
            memory_budget_bytes: 1 << 30,
        },
    };
    core.tick(
        0,
        Input::Connected {
            conn: 1,
            nonce: [1; 32],
        },
    );
    let mut challenge = None;
    for a in core.tick(
        0,
        Input::Message {
            conn: 1,
            msg: hello,
        },
    ) {
        if let Action::Send {
            msg: ToContributor::Challenge {
                nonce, coordinator, ..
            },
            ..
        } = a
        {
            challenge = Some((nonce, coordinator));
        }
    }
    let (nonce, coordinator) = challenge.expect("a challenge");
    let proof = client.proof(nonce, &coordinator);
    let said: Vec<ToContributor> = core
        .tick(
            0,
            Input::Message {
                conn: 1,
                msg: proof,
            },
        )
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    assert!(
        said.iter().any(|m| matches!(m, ToContributor::Error { reason, fatal: false } if reason.code == Code::Budget)),
        "{said:?}"
    );
    assert!(!said.iter().any(|m| matches!(m, ToContributor::Lease(_))));
    assert!(core.sessions()[0].lease.is_none());
}

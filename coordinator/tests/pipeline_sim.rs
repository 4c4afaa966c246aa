//! Deterministic simulation of a pipeline run with contributors that join, crash, rejoin, miss
//! deadlines and send every kind of malformed or hostile result. Each contributor is the real
//! protocol session of the worker (`tessera_worker::session::Session`: it downloads its lease's
//! weights, signs and numbers what it sends, checks its receipts) over scripted compute (no
//! GPU), which reports, as its gradient sum for a micro-shard, the number of backward units it
//! ran on it; with SGD at learning rate 1 the run's weights then move by exactly
//! steps x micro-batches per element (times the slices sharing a replicated norm weight) if and
//! only if every backward unit's gradient was counted once: nothing dropped by a crash,
//! nothing double-counted by a re-run, nothing taken from a rejected result.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::{tiny_model, Client};
use tessera_compute::model::{shards, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::{MicroShard, ShardTensors};
use tessera_coordinator::core::spec::PipelineSpec;
use tessera_coordinator::core::{Action, ConnId, Core, Input, Phase, RunSpec};
use tessera_coordinator::status::{status_of, StatusRows};
use tessera_protocol::messages::{ContributorKind, Update, Verdict};
use tessera_protocol::pipeline::{Pass, PipeResult, PipeWork};
use tessera_protocol::{ActEncoding, Activation, Code, Identity, TensorPayload, ToContributor};
use tessera_train::schedule::Schedule;
use tessera_train::shards::grads_to_wire;
use tessera_worker::backend::{Backend, Done, Job};
use tessera_worker::error::WorkerError;
use tessera_worker::exchange;
use tessera_worker::session::Session;

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
    WrongUnitList,
    BadGradients,
}

/// A contributor's compute, scripted: each unit's result is what the invariant needs (a
/// backward unit is counted, in the gradient sums, for the micro-shards it ran on), or one time
/// in 12 a trick. It answers the jobs of the worker's real protocol session, which signs and
/// numbers what it sends.
struct Scripted {
    /// Backward units run since the last gradient sums, with their micro-shards.
    owed: Vec<(u64, Vec<MicroShard>)>,
    /// The loaded lease's micro-shards.
    held: Vec<MicroShard>,
    rng: SplitMix,
    tricks: BTreeMap<String, usize>,
}

impl Scripted {
    fn new(seed: u64) -> Self {
        Scripted {
            owed: Vec::new(),
            held: Vec::new(),
            rng: SplitMix(seed),
            tricks: BTreeMap::new(),
        }
    }

    fn trick(&mut self, name: Trick) -> bool {
        if self.rng.next_u64().is_multiple_of(12) {
            *self.tricks.entry(format!("{name:?}")).or_default() += 1;
            true
        } else {
            false
        }
    }

    fn unit(&mut self, w: &PipeWork) -> PipeResult {
        let cfg = tiny_model();
        let (d, seq) = (cfg.hidden_size, 8);
        let is_head_fwd = w.pass == Pass::Forward && w.stages[0] == HEAD;
        let is_embed_bwd = w.pass == Pass::Backward && w.stages[0] == 0;
        if !is_head_fwd && !is_embed_bwd && self.trick(Trick::WrongShape) {
            return PipeResult::Activation(Activation::encode(
                &[seq - 1, d],
                &vec![0.0; (seq - 1) * d],
                w.output,
            ));
        }
        if !is_head_fwd && !is_embed_bwd && self.trick(Trick::NotFinite) {
            return PipeResult::Activation(Activation::encode(
                &[seq, d],
                &vec![f32::NAN; seq * d],
                ActEncoding::F32,
            ));
        }
        if is_head_fwd && self.trick(Trick::WrongOwnership) {
            let mut r = honest(w, d, seq);
            if let PipeResult::HeadStats(sl) = &mut r {
                sl[0].owned = TensorPayload::from_u8(&[seq], vec![1; seq]);
            }
            return r;
        }
        if w.pass == Pass::Backward {
            self.owed.push(common::backward_shards(w));
        }
        honest(w, d, seq)
    }

    fn collect(&mut self) -> Done {
        let cfg = tiny_model();
        let mut units: Vec<u64> = self.owed.iter().map(|o| o.0).collect();
        let mut shards = self
            .held
            .iter()
            .map(|h| {
                let n = self.owed.iter().filter(|o| o.1.contains(h)).count() as f32;
                let mut t = ShardTensors::zeros(&cfg, h).unwrap();
                t.tensors.iter_mut().for_each(|x| x.data.fill(n));
                grads_to_wire(&t)
            })
            .collect::<Vec<_>>();
        if self.trick(Trick::WrongUnitList) {
            units.push(12345);
        } else if self.trick(Trick::BadGradients) {
            if let Update::Dense(ts) = &mut shards[0].tensors {
                ts[0].tensor = TensorPayload::from_f32(&[1], &[f32::INFINITY]);
            }
        } else {
            self.owed.clear();
        }
        Done::Collected(units, shards)
    }
}

impl Backend for Scripted {
    async fn run(&mut self, job: Job) -> Result<Done, WorkerError> {
        Ok(match job {
            Job::LoadShards { shards, .. } => {
                self.held = shards.into_iter().map(|t| t.shard).collect();
                self.owed.clear();
                Done::Loaded
            }
            Job::StepWeights { .. } => Done::Loaded,
            Job::Unit(w) => Done::Unit(self.unit(&w)),
            Job::Collect => self.collect(),
            other => panic!("a pipeline run asked for {other:?}"),
        })
    }
}

/// One simulated contributor: the worker's protocol session over scripted compute.
struct Sim {
    id: Identity,
    session: Session,
    compute: Scripted,
    conn: Option<ConnId>,
    /// Messages not yet taken: a contributor takes one at a time, and a unit it sleeps on
    /// holds the rest until it is done.
    inbox: VecDeque<ToContributor>,
    /// Until when it sleeps on the unit at the front of its inbox.
    asleep_until: Option<u64>,
    rejoin_at: u64,
}

impl Sim {
    /// A fresh session on `conn` (a restarted worker keeps only its identity).
    fn connect(&mut self, conn: ConnId) {
        self.session = Session::new(
            self.id.clone(),
            ContributorKind::Native,
            common::scripted_caps(1000),
        );
        self.compute.owed.clear();
        self.compute.held.clear();
        self.inbox.clear();
        self.asleep_until = None;
        self.conn = Some(conn);
    }
}

fn sim(i: u64, seed: u64) -> Sim {
    let id = Identity::from_seed([i as u8; 32]);
    Sim {
        session: Session::new(
            id.clone(),
            ContributorKind::Native,
            common::scripted_caps(1000),
        ),
        id,
        compute: Scripted::new(seed * 1000 + i),
        conn: None,
        inbox: VecDeque::new(),
        asleep_until: None,
        rejoin_at: i * 10,
    }
}

fn zeros(w: &PipeWork, d: usize, seq: usize) -> PipeResult {
    PipeResult::Activation(Activation::encode(&[seq, d], &vec![0.0; seq * d], w.output))
}

/// The honest result of a unit (its values do not matter to the invariant).
fn honest(w: &PipeWork, d: usize, seq: usize) -> PipeResult {
    match (w.stages[0], w.pass) {
        (0, Pass::Backward) => PipeResult::Accumulated,
        (HEAD, Pass::Forward) => common::head_stats(w, seq, 0.0),
        _ => zeros(w, d, seq),
    }
}

struct Run {
    core: Core,
    now: u64,
    next_conn: ConnId,
    rng: SplitMix,
    slept: usize,
    rejected: usize,
    crashes: usize,
    /// Sessions that ended on an error of their own, by what it said.
    errors: BTreeMap<String, usize>,
    log: Vec<tessera_protocol::log::SignedEntry>,
    receipts: Vec<tessera_protocol::messages::Receipt>,
    status: StatusRows,
}

impl Run {
    fn feed(&mut self, sims: &mut [Sim], input: Input) {
        // The status built from the core's marks of what changed is the status built whole.
        assert_eq!(self.status.build(&mut self.core), status_of(&self.core));
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let actions = self.core.tick(self.now, input);
            for a in actions {
                match a {
                    Action::Send { conn, msg } => {
                        if let Some(k) = sims.iter().position(|s| s.conn == Some(conn)) {
                            sims[k].inbox.push_back(msg);
                            queue.extend(self.drain(&mut sims[k]));
                        }
                    }
                    Action::Logged(e) => self.log.push(e),
                    Action::Close { conn, .. } => {
                        if let Some(s) = sims.iter_mut().find(|s| s.conn == Some(conn)) {
                            s.conn = None;
                            s.rejoin_at = self.now + 500;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// What `s` sends now: its inbox taken in order, until a unit it sleeps on (one in 12,
    /// past its deadline) holds the rest.
    fn drain(&mut self, s: &mut Sim) -> Vec<Input> {
        let mut out = Vec::new();
        while let Some(conn) = s.conn {
            match s.asleep_until {
                Some(t) if self.now < t => break,
                Some(_) => s.asleep_until = None,
                None => {
                    if matches!(s.inbox.front(), Some(ToContributor::Unit(_)))
                        && self.rng.next_u64().is_multiple_of(12)
                    {
                        self.slept += 1;
                        s.asleep_until = Some(self.now + 2_500);
                        continue;
                    }
                }
            }
            let Some(msg) = s.inbox.pop_front() else {
                break;
            };
            match pollster::block_on(exchange(&mut s.session, &mut s.compute, msg)) {
                Ok(sent) => out.extend(sent.into_iter().map(|msg| Input::Message { conn, msg })),
                Err(e) => {
                    // As the native worker does: the session ends, and it comes back later.
                    let kind = match &e {
                        WorkerError::Refused(r) | WorkerError::Unexpected(r) => {
                            format!("{:?}", r.code)
                        }
                        other => panic!("the session failed on its own: {other}"),
                    };
                    *self.errors.entry(kind).or_default() += 1;
                    out.push(Input::Disconnected { conn });
                    s.conn = None;
                    s.rejoin_at = self.now + 500;
                }
            }
            for (r, _) in s.session.take_receipts() {
                self.rejected += usize::from(r.verdict != Verdict::Accepted);
                self.receipts.push(r);
            }
        }
        out
    }

    /// Every contributor whose sleep is over answers what it holds.
    fn wake(&mut self, sims: &mut [Sim]) {
        for k in 0..sims.len() {
            if sims[k].asleep_until.is_some_and(|t| t <= self.now) {
                for input in self.drain(&mut sims[k]) {
                    self.feed(sims, input);
                }
            }
        }
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
        slept: 0,
        rejected: 0,
        crashes: 0,
        errors: BTreeMap::new(),
        log: Vec::new(),
        receipts: Vec::new(),
        status: StatusRows::default(),
    };
    let mut sims: Vec<Sim> = (0..16).map(|i| sim(i, seed)).collect();
    let mut iterations = 0;
    while run.core.phase() != Phase::Finished {
        iterations += 1;
        assert!(iterations < 20_000, "the run did not finish");
        run.now += 50;
        for k in 0..sims.len() {
            if sims[k].conn.is_none() && sims[k].rejoin_at <= run.now {
                let conn = run.next_conn;
                run.next_conn += 1;
                sims[k].connect(conn);
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&conn.to_le_bytes());
                run.feed(&mut sims, Input::Connected { conn, nonce });
                let hello = sims[k].session.hello();
                run.feed(&mut sims, Input::Message { conn, msg: hello });
            }
        }
        // Now and then a contributor crashes (whatever it owes is lost with it).
        if run.rng.next_u64().is_multiple_of(40) {
            let k = (run.rng.next_u64() % sims.len() as u64) as usize;
            if let Some(conn) = sims[k].conn.take() {
                run.crashes += 1;
                sims[k].rejoin_at = run.now + 1_000;
                run.feed(&mut sims, Input::Disconnected { conn });
            }
        }
        run.wake(&mut sims);
        run.feed(&mut sims, Input::Tick);
    }
    let mut tricks: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sims {
        for (t, n) in &s.compute.tricks {
            *tricks.entry(t.clone()).or_default() += n;
        }
    }
    if run.slept > 0 {
        tricks.insert("Sleep".into(), run.slept);
    }
    println!(
        "{iterations} ticks, {} crashes, {} rejected results, sessions ended on {:?}, tricks {tricks:?}, losses {:?}",
        run.crashes,
        run.rejected,
        run.errors,
        run.core.losses()
    );
    for t in [
        "WrongShape",
        "NotFinite",
        "WrongOwnership",
        "Sleep",
        "WrongUnitList",
        "BadGradients",
    ] {
        assert!(tricks.get(t).copied().unwrap_or(0) > 0, "{t} was tried");
    }
    assert!(run.crashes > 0 && run.rejected > 0);
    // The run log: every decision, chained and signed; each receipt names the entry that
    // records its verdict, except a rejection before its identity's first accepted work,
    // which is not logged (the receipt names the log as it stood).
    let key = run.core.public_key();
    let head = tessera_protocol::log::verify_chain(&run.log, &key, None).expect("an intact log");
    assert_eq!(head, Some(run.core.log_head()));
    assert!(matches!(
        run.log[0].entry.event,
        tessera_protocol::log::LogEvent::Started { .. }
    ));
    let mut unlogged = 0;
    for r in &run.receipts {
        let at = r.log_head.index as usize;
        let e = &run.log[at];
        assert_eq!(e.hash, r.log_head.hash);
        let recorded = match &e.entry.event {
            tessera_protocol::log::LogEvent::Accepted { unit, key, .. } => {
                (*unit, *key, true) == (r.unit, r.contributor, r.verdict == Verdict::Accepted)
            }
            tessera_protocol::log::LogEvent::Rejected { unit, key, .. } => {
                (*unit, *key, false) == (r.unit, r.contributor, r.verdict == Verdict::Accepted)
            }
            _ => false,
        };
        if !recorded {
            assert_ne!(
                r.verdict,
                Verdict::Accepted,
                "an acceptance is always logged"
            );
            let accepted_before = run.log[..=at].iter().any(|e| {
                matches!(&e.entry.event, tessera_protocol::log::LogEvent::Accepted { key, .. } if *key == r.contributor)
            });
            assert!(
                !accepted_before,
                "a rejection after accepted work is logged"
            );
            unlogged += 1;
        }
    }
    println!("{unlogged} rejections of identities with no accepted work yet, not logged");
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

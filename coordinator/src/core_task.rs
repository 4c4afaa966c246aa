//! The task that owns the [`Core`]. It takes what is queued as one batch (up to [`BATCH`]
//! events, a clock tick last when one is due), feeds the batch to the core, makes the batch's
//! durable writes in one [`Store::write`] (log entries, accepted contributions, withdrawals, a
//! round's commit), and only then carries out the rest in order: frames to sockets (a message
//! sent to many sessions is encoded once), closes, printed rounds, administrators' answers.
//! A message is given to the core at the time the transport received it, so a long queue does
//! not make a live session look silent; the queue itself is bounded ([`EVENT_QUEUE`]), so a
//! flood holds the readers that feed it instead of the coordinator's memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_protocol::{encode, ToContributor, MAX_FRAME_BYTES};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::admin::AdminRefusal;
use crate::core::{Action, ConnId, Core, Input, Measured, RoundSummary};
use crate::shared::{Event, Outbox, Outgoing};
use crate::status::{Status, StatusRows};
use crate::store::{Store, StoreError, Write};

/// How the run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Still training.
    Running,
    /// Every round done.
    Finished,
    /// Stopped: storage failed.
    Failed(String),
}

/// Events queued for the core's task at most: a connection whose event does not fit waits (and
/// stops reading its socket) until the task catches up.
pub(crate) const EVENT_QUEUE: usize = 4096;

/// Events taken into one batch at most: their actions' durable writes share one transaction.
const BATCH: usize = 256;

/// How often the core's clock ticks.
const TICK: Duration = Duration::from_millis(500);

/// How often at most the status is rebuilt while the core keeps acting (it lags the core by
/// this plus a tick at most).
const STATUS_EVERY: Duration = TICK;

/// The core and what its task keeps beside it.
pub(crate) struct CoreTask {
    core: Core,
    store: Store,
    status: Arc<Mutex<Status>>,
    first_page: Arc<Mutex<Bytes>>,
    finished: watch::Sender<Outcome>,
    rounds: mpsc::UnboundedSender<RoundSummary>,
    /// The writers of the open connections.
    conns: HashMap<ConnId, Outbox>,
    /// Administrators waiting for their answer, by request.
    replies: HashMap<u64, oneshot::Sender<Result<u64, AdminRefusal>>>,
    next_request: u64,
    start: Instant,
    /// The core's clock (ms since `start`), never going back.
    now: u64,
    ticked: Instant,
    built: Instant,
    /// Whether the core acted since the status was last built.
    stale: bool,
    /// Bytes a connection may have queued and unsent at most ([`out_budget`]).
    out_budget: usize,
    /// Where measurements run off this task send their answers.
    measured: mpsc::UnboundedSender<Measured>,
    /// The status's contributor rows as last built (unchanged ones are kept).
    rows: StatusRows,
    /// What `GET /metrics` shows.
    metrics: Arc<crate::metrics::Metrics>,
}

/// What one batch made of the core: its actions, the connections that went, and whether the
/// status is due.
struct Fed {
    actions: Vec<Action>,
    gone: Vec<ConnId>,
    refresh: bool,
}

impl CoreTask {
    pub(crate) fn new(
        core: Core,
        store: Store,
        (status, first_page): (Arc<Mutex<Status>>, Arc<Mutex<Bytes>>),
        finished: watch::Sender<Outcome>,
        rounds: mpsc::UnboundedSender<RoundSummary>,
    ) -> Self {
        let start = Instant::now();
        let out_budget = out_budget(core.spec());
        CoreTask {
            out_budget,
            core,
            store,
            status,
            first_page,
            finished,
            rounds,
            conns: HashMap::new(),
            replies: HashMap::new(),
            next_request: 0,
            start,
            now: 0,
            ticked: start,
            built: start,
            stale: false,
            measured: mpsc::unbounded_channel().0,
            rows: StatusRows::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (what `GET /metrics` shows).
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until every sender of events is gone, or storage fails.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Measurements run on blocking threads and answer here (one per round at most).
        let (measured, mut answers) = mpsc::unbounded_channel();
        self.measured = measured;
        loop {
            let mut inputs = Vec::new();
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.take(ev, &mut inputs),
                    None => break,
                },
                Some(m) = answers.recv() => inputs.push((Input::Measured(Box::new(m)), None)),
                _ = tick.tick() => {}
            }
            while inputs.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => self.take(ev, &mut inputs),
                    Err(_) => break,
                }
            }
            if self.ticked.elapsed() >= TICK {
                // The liveness asked and the tick share one time, so no session passes its
                // silence between the two.
                let at = Instant::now();
                self.ticked = at;
                self.heard_from_the_silent(at, &mut inputs);
                inputs.push((Input::Tick, Some(at)));
            }
            if inputs.is_empty() {
                continue;
            }
            let fed = self.feed(inputs);
            if let Err((what, e)) = self.carry_out(fed).await {
                let why = format!(
                    "recording {what}: {e}; stopping so that a restart resumes from what was recorded"
                );
                tracing::error!("{why}");
                let _ = self.finished.send(Outcome::Failed(why));
                return;
            }
        }
    }

    /// Before a tick at `at`: the sessions the core would close as silent by then (or within
    /// the next tick) that their connections heard from since (heartbeats stop at the
    /// connection) are alive, as of then. Only those cost an input, about one per session per
    /// silence period.
    fn heard_from_the_silent(&self, at: Instant, inputs: &mut Vec<(Input, Option<Instant>)>) {
        let now = at.saturating_duration_since(self.start).as_millis() as u64;
        for conn in self.core.looks_silent(now + TICK.as_millis() as u64) {
            let Some(heard) = self.conns.get(&conn).and_then(|o| o.heard.get()) else {
                continue;
            };
            let heard = heard.saturating_duration_since(self.start).as_millis() as u64;
            inputs.push((Input::Alive { conn, heard }, Some(at)));
        }
    }

    /// Takes one event: a connection's writer is kept at once, inputs join the batch.
    fn take(&mut self, ev: Event, inputs: &mut Vec<(Input, Option<Instant>)>) {
        match ev {
            Event::Register(c, outbox) => {
                self.conns.insert(c, outbox);
            }
            Event::Input(i, at) => inputs.push((*i, Some(at))),
            Event::Admin {
                action,
                reason,
                reply,
            } => {
                self.next_request += 1;
                self.replies.insert(self.next_request, reply);
                let request = self.next_request;
                inputs.push((
                    Input::Admin {
                        request,
                        action,
                        reason,
                    },
                    None,
                ));
            }
        }
    }

    /// Feeds a batch to the core, each input at the time it was received.
    fn feed(&mut self, inputs: Vec<(Input, Option<Instant>)>) -> Fed {
        // The status is rebuilt at once after an administrator's act or a closed round, and
        // otherwise when the core acted since (inputs that change nothing, such as heartbeats,
        // leave no action), at most every STATUS_EVERY: not after every message, whose cost
        // grows with the contributors connected.
        let mut refresh = false;
        let mut fed = Fed {
            actions: Vec::new(),
            gone: Vec::new(),
            refresh: false,
        };
        for (input, at) in inputs {
            refresh |= matches!(input, Input::Admin { .. });
            if let Input::Disconnected { conn } = input {
                fed.gone.push(conn);
            }
            let at = at.map_or_else(
                || self.start.elapsed(),
                |t| t.saturating_duration_since(self.start),
            );
            self.now = self.now.max(at.as_millis() as u64);
            fed.actions.extend(self.core.tick_streamed(self.now, input));
        }
        self.stale |= !fed.actions.is_empty();
        fed.refresh = refresh
            || (self.stale && self.built.elapsed() >= STATUS_EVERY)
            || fed
                .actions
                .iter()
                .any(|a| matches!(a, Action::RoundClosed(_) | Action::Finished));
        fed
    }

    /// Makes the batch's records durable, then carries out the rest of its actions in order.
    async fn carry_out(&mut self, fed: Fed) -> Result<(), (String, StoreError)> {
        let checkpoint = self.persist(&fed.actions).await?;
        let mut encoded: Option<(&ToContributor, Bytes)> = None;
        for a in &fed.actions {
            match a {
                Action::Send { conn, msg } => {
                    // Consecutive sends of one message (a round's update to every session)
                    // share one encoding.
                    let frame = match &encoded {
                        Some((m, f)) if *m == msg => f.clone(),
                        _ => match encode(msg) {
                            Ok(f) => Bytes::from(f),
                            Err(e) => {
                                tracing::error!("encode: {e}");
                                continue;
                            }
                        },
                    };
                    self.send(*conn, msg, frame.clone());
                    encoded = Some((msg, frame));
                }
                Action::SendWeights { conn, weights } => self.send_weights(*conn, weights),
                Action::Measure(job) => {
                    // The CPU reference model, away from this task: every other connection is
                    // served meanwhile, and the round waits for the answer.
                    let (job, answer) = (job.clone(), self.measured.clone());
                    tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        let m = job.run();
                        tracing::debug!(
                            round = job.round(),
                            ms = started.elapsed().as_millis() as u64,
                            "measured a round's updates"
                        );
                        let _ = answer.send(m);
                    });
                }
                Action::Close { conn, reason } => {
                    tracing::debug!(conn, "close: {reason}");
                    // The writer sends what is queued, then closes the socket and stops the
                    // connection's reading.
                    self.conns.remove(conn);
                }
                Action::RoundClosed(sum) => {
                    println!(
                        "{} {} loss {:.4} tokens {} contributors {} checkpoint {}",
                        if self.core.spec().pipeline.is_some() {
                            "step"
                        } else {
                            "round"
                        },
                        sum.round,
                        sum.loss,
                        sum.tokens,
                        sum.contributors.len(),
                        checkpoint
                            .as_ref()
                            .map_or_else(String::new, |c| c.display().to_string())
                    );
                    self.metrics.closed(sum.loss);
                    let _ = self.rounds.send(sum.clone());
                }
                Action::Finished => {
                    let _ = self.finished.send(Outcome::Finished);
                }
                Action::AdminDone { request, result } => {
                    if let Some(reply) = self.replies.remove(request) {
                        let _ = reply.send(result.clone());
                    }
                }
                Action::Logged(entry) => self.metrics.logged(&entry.entry.event),
                Action::Accepted(_) | Action::Withdrawn { .. } => {}
            }
        }
        for conn in fed.gone {
            self.conns.remove(&conn);
        }
        if fed.refresh {
            let fresh = self.rows.build(&mut self.core);
            let page = fresh.first_page_json();
            if let Ok(mut s) = self.status.lock() {
                *s = fresh;
            }
            if let Ok(mut p) = self.first_page.lock() {
                *p = page;
            }
            self.built = Instant::now();
            self.stale = false;
        }
        Ok(())
    }

    /// The batch's durable writes, in one [`Store::write`]: log entries, accepted
    /// contributions, withdrawals and, when a round closed, the commit of the core's snapshot.
    /// Returns the checkpoint written, if any; or what failed to be recorded, and why.
    async fn persist(
        &self,
        actions: &[Action],
    ) -> Result<Option<std::path::PathBuf>, (String, StoreError)> {
        let closed = actions.iter().any(|a| matches!(a, Action::RoundClosed(_)));
        let snap = closed.then(|| self.core.snapshot());
        let mut writes: Vec<Write<'_>> = actions.iter().filter_map(Write::of).collect();
        if let Some(snap) = &snap {
            writes.push(Write::Commit {
                run: self.core.name(),
                cfg: &self.core.spec().model,
                snap,
            });
        }
        match self.store.write(&writes).await {
            Ok(mut written) => Ok(written.pop()),
            Err(e) => Err((described(&writes), e)),
        }
    }

    /// Queues `frame` for `conn`; a connection whose queue would pass [`Self::out_budget`]
    /// does not read what it is sent, and is dropped (its reader reports it to the core).
    fn send(&mut self, conn: ConnId, msg: &ToContributor, frame: Bytes) {
        let Some(out) = self.conns.get(&conn) else {
            return;
        };
        if let ToContributor::Welcome { .. } = msg {
            // The handshake is done: the session may send frames of any protocol size.
            out.limit.admit(MAX_FRAME_BYTES);
        }
        let len = frame.len();
        let queued = out.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.out_budget && queued > len {
            tracing::info!(conn, queued, "dropping a connection that does not read");
            out.limit.slow_reader(queued);
            self.conns.remove(&conn);
            return;
        }
        let _ = out.frames.send(Outgoing::Frame(frame));
    }

    /// Queues a lease's weights for `conn`, after what is queued already (its writer cuts the
    /// frames as the socket takes them).
    fn send_weights(&mut self, conn: ConnId, weights: &crate::core::WeightStream) {
        if let Some(out) = self.conns.get(&conn) {
            let _ = out.frames.send(Outgoing::Weights(weights.clone()));
        }
    }
}

/// The bytes of encoded frames a connection may have queued and not yet written to its
/// socket: room for a whole-model update (the largest message the core sends, a dense run's
/// outer step) twice over, and 64 MiB at least; a lease's weights are streamed and count one
/// frame at a time. A peer that lets more pile up does not read, and is dropped.
pub(crate) fn out_budget(spec: &crate::core::RunSpec) -> usize {
    let weights = spec.model.parameter_count().saturating_mul(4);
    let budget = weights
        .saturating_mul(2)
        .saturating_add(16 << 20)
        .max(64 << 20);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// What a batch of writes holds, for people: "a contribution, 3 log entries and a round's
/// commit".
fn described(writes: &[Write<'_>]) -> String {
    let count = |f: fn(&Write<'_>) -> bool| writes.iter().filter(|w| f(w)).count();
    let parts: Vec<String> = [
        (count(|w| matches!(w, Write::Record(_))), "contribution"),
        (count(|w| matches!(w, Write::Withdraw { .. })), "withdrawal"),
        (count(|w| matches!(w, Write::Log(_))), "log entry"),
        (
            count(|w| matches!(w, Write::Commit { .. })),
            "round's commit",
        ),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| match (n, what) {
        (1, _) => format!("a {what}"),
        (n, "log entry") => format!("{n} log entries"),
        (n, what) => format!("{n} {what}s"),
    })
    .collect();
    match parts.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task over a tiny run, with a store of its own.
    async fn task(name: &str) -> CoreTask {
        let model = crate::config::preset("tiny-byte").expect("a preset");
        let tokens: Vec<u32> = (0..400u32).map(|i| i % 200).collect();
        let core = Core::new(
            crate::core::RunSpec::new("task", model.clone(), tokens),
            tessera_protocol::Identity::from_seed([9; 32]),
            tessera_compute::reference::ModelParams::random(&model, 1),
        );
        let dir = std::env::temp_dir().join(format!("tessera-task-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, None).await.expect("a store");
        let (finished, _) = watch::channel(Outcome::Running);
        let (rounds, _) = mpsc::unbounded_channel();
        CoreTask::new(core, store, Default::default(), finished, rounds)
    }

    #[tokio::test]
    async fn a_connection_that_lets_its_budget_pile_up_is_dropped() {
        let mut t = task("budget").await;
        assert_eq!(t.out_budget, 64 << 20, "a tiny run's budget is the floor");
        let (frames, mut rx) = mpsc::unbounded_channel();
        let limit = crate::frame_guard::Limit::new();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        t.conns.insert(
            1,
            Outbox {
                frames,
                limit: limit.clone(),
                queued: queued.clone(),
                heard: Default::default(),
            },
        );
        let msg = ToContributor::Cancel { unit: 1 };
        let third = Bytes::from(vec![0u8; t.out_budget / 3]);
        // A writer that keeps up: nothing piles up, however much goes through.
        for _ in 0..10 {
            t.send(1, &msg, third.clone());
            let Ok(Outgoing::Frame(f)) = rx.try_recv() else {
                panic!("no frame queued");
            };
            queued.fetch_sub(f.len(), Ordering::Relaxed);
        }
        assert!(limit.slow().is_none() && t.conns.contains_key(&1));
        // One that reads nothing: the frame that would pass the budget drops it.
        for _ in 0..3 {
            t.send(1, &msg, third.clone());
        }
        assert!(t.conns.contains_key(&1), "three thirds fit");
        t.send(1, &msg, third.clone());
        assert_eq!(limit.slow(), Some(4 * third.len()));
        assert!(!t.conns.contains_key(&1), "dropped");
        // A single frame larger than the budget still goes to a connection with nothing queued.
        let (frames, _rx) = mpsc::unbounded_channel();
        t.conns.insert(
            2,
            Outbox {
                frames,
                limit: crate::frame_guard::Limit::new(),
                queued: Default::default(),
                heard: Default::default(),
            },
        );
        t.send(2, &msg, Bytes::from(vec![0u8; t.out_budget + 1]));
        assert!(t.conns.contains_key(&2));
    }

    #[test]
    fn a_failed_batch_is_described_by_what_it_held() {
        assert_eq!(described(&[]), "nothing");
        assert_eq!(
            described(&[Write::Withdraw { round: 1, slot: 2 }]),
            "a withdrawal"
        );
        assert_eq!(
            described(&[
                Write::Withdraw { round: 1, slot: 2 },
                Write::Withdraw { round: 1, slot: 3 },
            ]),
            "2 withdrawals"
        );
    }
}

//! Pipeline leases: which micro-shards a new contributor gets for its memory budget, the
//! weight frames of a lease, and what happens when a lease is lost (its running units and its
//! uncollected backward units are run again elsewhere).

use tessera_protocol::messages::Lease;
use tessera_protocol::{Code, Reason, ToContributor};
use tessera_train::shards::to_wire;

use super::{Holding, Pipe, ShardId, ShardState};
use crate::core::context::Context;
use crate::core::part::Part;
use crate::core::session::Session;
use crate::core::weight_stream::WeightStream;
use crate::core::{Action, ConnId};

impl Pipe {
    /// Gives the session a pipeline lease sized to its budget and sends its weights.
    pub(in crate::core) fn offer_lease(&mut self, cx: &mut Context, conn: ConnId) {
        let ps = &self.spec;
        let Some(s) = cx.sessions.get(&conn) else {
            return;
        };
        let budget = s.caps.as_ref().map_or(0, |c| c.memory_budget_bytes);
        let binding = s.caps.as_ref().map_or(0, |c| c.max_binding_bytes);
        let activation = cx.spec.seq * cx.spec.model.hidden_size as u64 * 4;
        if binding < activation {
            let msg = format!("a micro-batch's activation of this run is {activation} bytes, more than your adapter's largest binding of {binding} bytes");
            return cx.refuse(conn, Reason::new(Code::Budget, msg));
        }
        let replicas = self.replicas();
        let Some(shards) = cx
            .draws
            .lease_shards(&replicas, budget, |x| ps.lease_bytes(x))
        else {
            let need = ps
                .state_bytes
                .iter()
                .zip(&ps.work_bytes)
                .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y))
                .min()
                .unwrap_or(0);
            let msg = format!("the smallest micro-shard of this run needs {need} bytes; your memory budget is {budget}. Raise it to take part");
            return cx.refuse(conn, Reason::new(Code::Budget, msg));
        };
        let lease = cx.next_lease;
        cx.next_lease += 1;
        if let Some(s) = cx.sessions.get_mut(&conn) {
            s.lease = Some(lease);
            s.leased_at = cx.now;
            s.ready = false;
        }
        let weights = self.weight_stream(cx, lease, &shards);
        let cfg = &cx.spec.model;
        let msg = ToContributor::Lease(Lease {
            lease,
            config_json: cfg.to_hf_json(),
            shards: shards
                .iter()
                .map(|&(s, i)| to_wire(&ps.stages[s][i]))
                .collect(),
            optimizer: cx.spec.optimizer,
            clip: cx.spec.inner_clip,
            sync: ps.grads,
            rows: cx.spec.seq,
            version: cx.version,
            frames: weights.len(),
            activations: Some(ps.activations),
            fresh_units: false,
        });
        tracing::info!(conn, lease, shards = shards.len(), "pipeline lease");
        if let ToContributor::Lease(l) = &msg {
            cx.log_lease(conn, lease, l.shards.clone());
        }
        self.holdings.insert(lease, Holding { conn, shards });
        cx.send(conn, msg);
        cx.out.push(Action::SendWeights { conn, weights });
    }

    /// The `Weights` frames of a lease's micro-shards at the current version, as a stream.
    pub(super) fn weight_stream(
        &self,
        cx: &Context,
        lease: u64,
        shards: &[ShardId],
    ) -> WeightStream {
        let shards = shards
            .iter()
            .map(|&(s, i)| self.spec.stages[s][i].clone())
            .collect();
        WeightStream::shards(
            &cx.spec.model,
            &cx.weights,
            (lease, cx.version),
            cx.spec.weights_frame_elems,
            shards,
        )
    }

    /// When a micro-shard has no holder left (its leases vanished and nobody new joined), moves
    /// an idle lease whose micro-shards all have other replicas onto it, so the step can go on.
    /// Only a lease that owes nothing for the open step moves: no gradient sum is lost.
    pub(in crate::core) fn rebalance(&mut self, cx: &mut Context) {
        let reps = self.replicas();
        if reps.iter().flatten().all(|&n| n > 0) {
            return;
        }
        let ps = &self.spec;
        let orphans: Vec<ShardId> = reps
            .iter()
            .enumerate()
            .flat_map(|(s, r)| {
                r.iter()
                    .enumerate()
                    .filter(|(_, &n)| n == 0)
                    .map(move |(i, _)| (s, i))
            })
            .collect();
        let spare = self.holdings.iter().find(|(lease, h)| {
            let session = cx
                .sessions
                .get(&h.conn)
                .filter(|s| s.ready && s.unit.is_none() && s.lease == Some(**lease));
            let budget = session
                .and_then(|s| s.caps.as_ref())
                .map_or(0, |c| c.memory_budget_bytes);
            let fits = orphans.iter().any(|&o| ps.lease_bytes(&[o]) <= budget);
            let owes = self.step.owed.get(lease).is_some_and(|o| !o.is_empty())
                || self.step.collecting.contains_key(lease);
            session.is_some() && fits && !owes && h.shards.iter().all(|&(s, i)| reps[s][i] >= 2)
        });
        let Some((&lease, h)) = spare else {
            return;
        };
        let conn = h.conn;
        tracing::info!(
            conn,
            lease,
            "re-leasing a spare replica onto an uncovered micro-shard"
        );
        self.holdings.remove(&lease);
        cx.sessions.touch(conn);
        self.offer_lease(cx, conn);
    }

    /// A pipeline lease is gone: its running units reopen, and so do the backward units whose
    /// gradient sums it had not yet delivered.
    pub(in crate::core) fn lease_lost(&mut self, cx: &mut Context, lease: u64) {
        self.expire_audits(cx, Some(lease));
        if let Some(h) = self.holdings.remove(&lease) {
            cx.sessions.touch(h.conn);
        }
        let step = &mut self.step;
        let lost: Vec<u64> = step
            .units
            .iter()
            .filter(|(_, u)| u.lease == lease)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            step.reopen(id);
        }
        step.collecting.remove(&lease);
        for o in step.owed.remove(&lease).unwrap_or_default() {
            for (s, i) in o.cells {
                let cover = &mut step.mbs[o.mb].bwd[s];
                if cover.shards[i] == ShardState::Done(lease) {
                    cover.shards[i] = ShardState::Open;
                }
            }
        }
    }
}

impl Part for Pipe {
    fn number(&self) -> u64 {
        self.step.number
    }

    fn in_progress(&self) -> bool {
        !self.step.units.is_empty() || !self.step.contributors.is_empty()
    }

    /// Its lease's running units and uncollected backward units run again elsewhere.
    fn session_lost(&mut self, cx: &mut Context, s: Session) {
        if let Some(lease) = s.lease {
            self.lease_lost(cx, lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_protocol::pipeline::Pass;

    use super::super::testing::{pipe, spec};
    use super::{Part, Pipe, ShardState};
    use crate::core::context::testing::{active, context};

    #[test]
    fn a_lost_lease_s_running_units_reopen_and_its_holding_goes() {
        let spec = spec();
        let mut cx = context(spec.clone());
        let mut p: Pipe = pipe(&spec, vec![(0, 0)]);
        active(&mut cx, 1, 1, Some(1));
        p.schedule(&mut cx);
        let unit = cx.sessions[&1]
            .unit
            .expect("the embedding's forward is handed out");
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Pending(unit)
        );
        let s = cx.sessions.remove(&1).unwrap();
        p.session_lost(&mut cx, s);
        assert!(p.step.units.is_empty());
        assert!(p.holdings.is_empty());
        assert_eq!(
            p.step.mbs[0].cover(0, Pass::Forward).shards[0],
            ShardState::Open
        );
    }
}

//! Whole-model leases: a contributor whose memory budget holds a replica gets a lease on the
//! whole model (every micro-shard, logged) and the current weights as a stream of frames.

use tessera_protocol::messages::{Lease, ShardSpec};
use tessera_protocol::{Code, Reason, ToContributor};

use super::context::Context;
use super::weight_stream::WeightStream;
use super::{Action, ConnId, Replicas};

impl Replicas {
    /// Gives the session a whole-model lease if its budget allows, and sends the weights.
    pub(super) fn offer_lease(&self, cx: &mut Context, conn: ConnId) {
        let need = cx.spec.replica_bytes();
        let Some(s) = cx.sessions.get_mut(&conn) else {
            return;
        };
        let budget = s.caps.as_ref().map_or(0, |c| c.memory_budget_bytes);
        if budget < need {
            let msg = format!("a replica of this run needs {need} bytes; your memory budget is {budget}. Raise it to take part");
            return cx.refuse(conn, Reason::new(Code::Budget, msg));
        }
        let lease = cx.next_lease;
        cx.next_lease += 1;
        s.lease = Some(lease);
        s.leased_at = cx.now;
        s.ready = false;
        let cfg = &cx.spec.model;
        let shards: Vec<ShardSpec> = vec![ShardSpec::Embed {
            rows: [0, cfg.vocab_size as u64],
        }]
        .into_iter()
        .chain((0..cfg.num_hidden_layers as u64).flat_map(|layer| {
            [
                ShardSpec::Attn {
                    layer,
                    groups: [0, cfg.num_key_value_heads as u64],
                },
                ShardSpec::Mlp {
                    layer,
                    cols: [0, cfg.intermediate_size as u64],
                },
            ]
        }))
        .chain([ShardSpec::Head {
            cols: [0, cfg.vocab_size as u64],
        }])
        .collect();
        let weights = WeightStream::whole(
            &cx.spec.model,
            &cx.weights,
            (lease, cx.version),
            cx.spec.weights_frame_elems,
        );
        cx.log_lease(conn, lease, shards.clone());
        let cfg = &cx.spec.model;
        let msg = ToContributor::Lease(Lease {
            lease,
            config_json: cfg.to_hf_json(),
            shards,
            optimizer: cx.spec.optimizer,
            clip: cx.spec.inner_clip,
            sync: cx.spec.sync,
            rows: cx.spec.batch * cx.spec.seq,
            version: cx.version,
            frames: weights.len(),
            activations: None,
            fresh_units: self.replays_on(cx),
        });
        cx.send(conn, msg);
        cx.out.push(Action::SendWeights { conn, weights });
    }
}

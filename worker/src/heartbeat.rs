//! How often a contributor sends a heartbeat: as often as the coordinator's `Welcome` asks
//! (holding a lease, a quarter of the run's silence limit; holding none, four times rarer),
//! held to 1 s to 60 s, and every 5 s before it asks.
//! Every heartbeat of every idle contributor costs the coordinator a frame to read, so they go
//! no oftener than the run needs.

use std::time::Duration;

/// Heartbeats before a `Welcome` says how often: every 5 s.
pub const DEFAULT: Duration = Duration::from_secs(5);

/// The heartbeat interval a `Welcome` asks for (`ms`), held to 1 s to 60 s: a coordinator can
/// neither make a contributor spin nor keep it silent for longer than any run allows.
pub fn every(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms).clamp(1_000, 60_000))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera_protocol::messages::{
        Capabilities, ContributorKind, InnerOptimizer, Lease, LogHead, ShardSpec, SyncMode,
    };
    use tessera_protocol::{Identity, ToContributor};

    use super::{every, DEFAULT};
    use crate::session::Session;

    #[test]
    fn heartbeats_go_as_often_as_the_welcome_asks_within_bounds() {
        assert_eq!(every(15_000), Duration::from_secs(15));
        assert_eq!(every(0), Duration::from_secs(1));
        assert_eq!(every(u32::MAX), Duration::from_secs(60));
        let caps = Capabilities {
            adapter: "test".into(),
            backend: "none".into(),
            max_binding_bytes: 1 << 20,
            memory_budget_bytes: 1 << 20,
        };
        let mut s = Session::new(Identity::from_seed([1; 32]), ContributorKind::Native, caps);
        assert_eq!(s.heartbeat_every(), DEFAULT);
        s.handle(ToContributor::Welcome {
            run: "r".into(),
            log_head: LogHead::default(),
            heartbeat_ms: 7_500,
            idle_heartbeat_ms: 30_000,
        })
        .expect("a welcome is taken");
        // No lease yet: the idle pace; a lease (its weights on their way): the run's pace.
        assert_eq!(s.heartbeat_every(), Duration::from_secs(30));
        let cfg = tessera_compute::ModelConfig::tiny();
        let lease = Lease {
            lease: 1,
            config_json: cfg.to_hf_json(),
            shards: vec![ShardSpec::Embed {
                rows: [0, cfg.vocab_size as u64],
            }],
            optimizer: InnerOptimizer::Sgd,
            clip: None,
            sync: SyncMode::Dense,
            rows: 8,
            version: 0,
            frames: 1,
            activations: None,
            fresh_units: false,
        };
        s.handle(ToContributor::Lease(lease))
            .expect("a lease is taken");
        assert_eq!(s.heartbeat_every(), Duration::from_millis(7_500));
    }
}

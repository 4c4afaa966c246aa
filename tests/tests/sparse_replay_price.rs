//! What replays cost a SparseLoCo run, which is why they are opt-in there: a replayed unit must
//! be a function of its weights and data alone, so units start from fresh inner state and no
//! error feedback is carried from round to round. The end-to-end configuration (tiny byte-level
//! model, built-in corpus, three slots a round, SparseLoCo) trains twelve rounds on real GPU
//! replicas with replays off (the default) and on; both must learn, no worker (all honest) may
//! fail a check, and the held-out losses are printed side by side. Outer steps go out as the
//! replicas' compressed updates, and every replica ends with the coordinator's weights.

use tessera_coordinator::core::{Core, Phase};
use tessera_e2e::{data_run, gpu, held_out_loss};
use tessera_protocol::messages::Update;
use tessera_protocol::{Identity, ToContributor};

#[test]
fn sparse_runs_learn_with_and_without_replays_and_the_price_is_printed() {
    let g = gpu();
    let mut ends = Vec::new();
    for replay in [false, true] {
        let (mut spec, init) = data_run("e2e.toml", |cfg| cfg.rounds = 12);
        assert!(spec.sparse().is_some(), "a SparseLoCo run");
        spec.checks.as_mut().expect("checks are on").replay = replay;
        let before = held_out_loss(&spec, &init);
        let mut core = Core::new(spec.clone(), Identity::from_seed([9; 32]), init);
        let mut clients = tessera_e2e::contributors(&g, 5);
        let mut by_parts = 0;
        tessera_e2e::run(&g, &mut core, &mut clients, |m| {
            if let tessera_e2e::Message::Down(ToContributor::OuterStep { update, .. }) = m {
                by_parts += usize::from(matches!(**update, Update::SparseMean(_)));
            }
        })
        .unwrap();
        assert_eq!(core.phase(), Phase::Finished);
        // Outer steps went out as the replicas' compressed updates (the smallest form with
        // three slots), and every replica summed them to the coordinator's weights, bit for bit.
        assert!(by_parts > 0, "outer steps published as parts");
        let same = clients
            .iter()
            .filter(|c| c.replica().is_some_and(|r| r.weights() == core.weights()))
            .count();
        assert!(
            same >= 3,
            "{same} replicas hold the coordinator's final weights"
        );
        // Every worker is honest: none fails a check (the held-out one included, on updates
        // carrying error feedback).
        let zs: Vec<f64> = core.held_out_scores().map(|s| s.z).collect();
        println!(
            "{} held-out checks, z from {:+.2} to {:+.2}",
            zs.len(),
            zs.iter().copied().fold(f64::INFINITY, f64::min),
            zs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        let failed: Vec<u64> = core.records().values().map(|r| r.checks_failed).collect();
        assert!(
            failed.iter().all(|&n| n == 0),
            "an honest worker failed a check"
        );
        let after = held_out_loss(&spec, core.weights());
        println!(
            "replays {}: held-out loss {before:.4} -> {after:.4}",
            if replay {
                "on (fresh units)"
            } else {
                "off (error feedback kept)"
            }
        );
        assert!(before - after > 1.0, "the run learns (replay = {replay})");
        ends.push(after);
    }
    println!(
        "replays cost {:+.4} nats of held-out loss after 12 rounds ({:+.1}%)",
        ends[1] - ends[0],
        100.0 * (ends[1] - ends[0]) / ends[0]
    );
}

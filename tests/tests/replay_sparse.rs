//! Replays in a SparseLoCo run on real GPU replicas (in process): the end-to-end configuration
//! (tiny byte-level model, built-in corpus, SparseLoCo sync) with replays asked for. Drawn units
//! are replayed by other workers, whose replays come back dense; honest compressions pass
//! against them, and a worker whose compressed updates carry levels 1.5 times too high (every
//! message signed with its own key) fails, is refused with no credits, and none of its updates
//! is applied.

use tessera_coordinator::core::{Core, Phase};
use tessera_e2e::{gpu, identity, Control};
use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::messages::{SessionMessage, Update};
use tessera_protocol::{Identity, TensorPayload};

const CHEAT: usize = 2;

fn scale_levels(u: &mut Update, by: f32) {
    match u {
        Update::Sparse(packed) => {
            let n = packed.levels.shape[0] as usize;
            let v: Vec<f32> = packed
                .levels
                .to_f32()
                .unwrap()
                .iter()
                .map(|x| x * by)
                .collect();
            packed.levels = TensorPayload::from_f32(&[n, 2], &v);
        }
        Update::Dense(ts) => {
            for t in ts {
                let shape: Vec<usize> = t.tensor.shape.iter().map(|&d| d as usize).collect();
                let v: Vec<f32> = t.tensor.to_f32().unwrap().iter().map(|x| x * by).collect();
                t.tensor = TensorPayload::from_f32(&shape, &v);
            }
        }
        Update::Indexed(_) | Update::SparseMean(_) => {}
    }
}

#[test]
fn sparse_units_replay_dense_and_a_skewed_compression_is_caught() {
    let (mut spec, init) = tessera_e2e::data_run("e2e.toml", |cfg| cfg.rounds = 3);
    assert!(spec.sparse().is_some(), "a SparseLoCo run");
    let checks = spec.checks.as_mut().expect("checks are on");
    assert!(!checks.replay, "SparseLoCo runs do not replay unless asked");
    checks.replay = true;
    // A fixed three slots a round (rounds do not grow to the five contributors), so that two
    // stay free to replay.
    spec.max_replicas = spec.replicas;
    let g = gpu();
    let mut core = Core::new(spec, Identity::from_seed([9; 32]), init);
    // Three slots a round go to workers 0, 1 and the cheat; 3 and 4 are idle for replays.
    let mut clients = tessera_e2e::contributors(&g, 5);
    let mut dense_replays = 0;
    let ran = tessera_e2e::run_tampered(
        &g,
        &mut core,
        &mut clients,
        |m, _| {
            if let tessera_e2e::Message::Up(tessera_protocol::ToCoordinator::Session(s)) = m {
                if let SessionMessage::Submit(sub) = &s.body {
                    if matches!(sub.result, Update::Dense(_)) {
                        dense_replays += 1;
                    }
                }
            }
            Control::Go
        },
        |k, body| {
            if let (CHEAT, SessionMessage::Submit(sub)) = (k, body) {
                scale_levels(&mut sub.result, 1.5);
            }
        },
    )
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    let cheat = identity(CHEAT).public();
    let mut passed = 0;
    let mut cheat_failed = false;
    for e in &ran.log {
        if let LogEvent::Checked {
            key,
            auditors,
            outcome,
            ..
        } = &e.entry.event
        {
            println!(
                "{}: {:?} by {} auditors",
                key.fingerprint(),
                outcome,
                auditors.len()
            );
            if *key == cheat {
                cheat_failed |= matches!(outcome, CheckOutcome::Failed(_)) && auditors.len() == 2;
            } else if !auditors.is_empty() {
                assert_eq!(*outcome, CheckOutcome::Passed, "honest compressions pass");
                passed += 1;
            }
        }
    }
    println!("{dense_replays} dense replays sent back; {passed} honest replays passed");
    assert!(dense_replays > 0 && passed > 0);
    assert!(
        cheat_failed,
        "the skewed compression fails against two dense replays"
    );
    assert!(core.is_refused(&cheat));
    let r = core.records().get(&cheat).cloned().unwrap_or_default();
    assert_eq!((r.flops, r.pending_flops), (0.0, 0.0));
    assert!(ran.applied.iter().all(|c| c.contributor != cheat));
    assert_eq!(ran.applied.len(), 9, "three rounds of three slots");
}

//! The `[checks]` section: replays default to on for whole-model runs with dense sync and off
//! with SparseLoCo (which may ask for them), asking for them in a pipeline run is a clear error,
//! and bad tolerances are refused; held-out sequences for the held-out loss check are kept out
//! of training (a tenth of the data by default, none for pipelines); a checked whole-model
//! round averages at least three updates. The `[admission]`
//! section: an invite list makes a run invite-only.

use tessera_coordinator::config::{ConfigError, RunConfig};
use tessera_coordinator::core::spec::ChecksError;

fn resolve(train: &str, checks: &str) -> Result<Option<(bool, f64)>, ConfigError> {
    Ok(spec(train, checks)?
        .checks
        .map(|c| (c.replay, c.round_tolerance)))
}

#[test]
fn replays_follow_the_sync_mode_and_bad_settings_are_refused() {
    assert_eq!(
        resolve("sync = \"dense\"", "").unwrap(),
        Some((true, 2.5e-4)),
        "dense whole-model runs replay by default"
    );
    assert_eq!(
        resolve("sync = \"sparse\"", "").unwrap(),
        Some((false, 2.5e-4)),
        "SparseLoCo runs do not"
    );
    assert_eq!(
        resolve(
            "sync = \"dense\"",
            "[checks]\nreplay = false\nround_tolerance = 1e-3"
        )
        .unwrap(),
        Some((false, 1e-3))
    );
    assert_eq!(
        resolve("sync = \"sparse\"", "[checks]\nreplay = true").unwrap(),
        Some((true, 2.5e-4))
    );
    let e = resolve(
        "seq = 64",
        "[pipeline]\nbudget = \"400KiB\"\nmicro_batches = 2\n[checks]\nreplay = true",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::WholeModelCheck("replay")), "{e}");
    let e = resolve("sync = \"dense\"", "[checks]\nround_tolerance = 2.0").unwrap_err();
    assert!(
        matches!(e, ConfigError::Checks(ChecksError::RoundTolerance)),
        "{e}"
    );
}

/// The resolved run for `[train]` and `[checks]` lines.
fn spec(train: &str, checks: &str) -> Result<tessera_coordinator::core::RunSpec, ConfigError> {
    let toml = format!(
        "name = \"c\"\nseed = 1\nrounds = 2\n[model]\npreset = \"tiny-byte\"\n[data]\nbuiltin = true\n[train]\n{train}\n{checks}"
    );
    RunConfig::from_toml(&toml)?
        .resolve(std::path::Path::new("."))
        .map(|(s, _)| s)
}

#[test]
fn held_out_sequences_are_kept_out_of_training() {
    // The built-in corpus in sequences of 64: a tenth is held out by default.
    let s = spec("seq = 64", "").unwrap();
    let samples = (s.tokens.len() as u64 - 1) / 64;
    assert_eq!(s.held_out(), samples / 10);
    let start = s.training_tokens();
    assert_eq!(start, s.tokens.len() - (s.held_out() as usize * 64 + 1));
    let b = s.held_out_batch().expect("a held-out batch");
    assert_eq!(b.ids.len(), s.held_out() as usize * 64);
    assert_eq!(b.ids[..64], s.tokens[start..start + 64]);
    assert_eq!(b.targets[..64], s.tokens[start + 1..start + 65]);
    // No training sample reaches into them: the sampler covers the training tokens only.
    let mut sampler = tessera_train::data::Sampler::new(s.seed, start, 64);
    for n in 0..sampler.len() as u64 * 3 {
        let i = sampler.sample(n);
        assert!(sampler.span(i).end <= start);
    }
    // Explicitly set, off, too many, or asked of a pipeline.
    assert_eq!(
        spec("seq = 64", "[checks]\nheld_out = 5")
            .unwrap()
            .held_out(),
        5
    );
    let off = spec("seq = 64", "[checks]\nheld_out = 0").unwrap();
    assert_eq!(
        (off.held_out(), off.training_tokens()),
        (0, off.tokens.len())
    );
    assert!(off.held_out_batch().is_none());
    let e = spec("seq = 64", "[checks]\nheld_out = 2").unwrap_err();
    assert!(
        matches!(e, ConfigError::Checks(ChecksError::HeldOut)),
        "{e}"
    );
    assert!(e.to_string().contains("at least 4"), "{e}");
    let e = spec("seq = 64\nbatch = 4", "[checks]\nheld_out = 78").unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::HeldOutTooMany {
                held_out: 78,
                batch: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = spec(
        "seq = 64",
        "[pipeline]\nbudget = \"400KiB\"\nmicro_batches = 2\n[checks]\nheld_out = 8",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::WholeModelCheck("held_out")), "{e}");
    // Pipelines train on all of the data.
    let p = spec(
        "seq = 64",
        "[pipeline]\nbudget = \"400KiB\"\nmicro_batches = 2",
    )
    .unwrap();
    assert_eq!((p.held_out(), p.training_tokens()), (0, p.tokens.len()));
    // With checks off nothing is held out.
    let none = spec("seq = 64", "[checks]\nenabled = false").unwrap();
    assert_eq!(none.training_tokens(), none.tokens.len());
}

#[test]
fn a_round_s_quorum_defaults_to_every_replica_and_must_fit_them() {
    let s = spec("replicas = 3\nunit_deadline_secs = 30", "").unwrap();
    assert_eq!((s.quorum, s.round_deadline_ms), (3, 60_000));
    let s = spec("replicas = 4\nquorum = 3\nround_deadline_secs = 90", "").unwrap();
    assert_eq!((s.quorum, s.round_deadline_ms), (3, 90_000));
    for q in [0, 4] {
        let e = spec(&format!("replicas = 3\nquorum = {q}"), "").unwrap_err();
        assert!(
            matches!(e, ConfigError::Quorum { quorum, replicas: 3 } if quorum == q),
            "{e}"
        );
    }
}

#[test]
fn a_checked_whole_model_round_averages_at_least_three_updates() {
    // Rounds of fewer updates (opening with fewer slots, or closing on a smaller quorum) are
    // refused where work is checked, and allowed where it is not or in a pipeline run.
    for (train, replicas, quorum) in [
        ("replicas = 2", 2, 2),
        ("replicas = 1", 1, 1),
        ("replicas = 4\nquorum = 2", 4, 2),
    ] {
        let e = spec(train, "").unwrap_err();
        assert!(
            matches!(e, ConfigError::TooFewChecked { replicas: r, quorum: q } if (r, q) == (replicas, quorum)),
            "{train}: {e}"
        );
        assert!(e.to_string().contains("enabled = false"), "{e}");
        assert!(spec(train, "[checks]\nenabled = false").is_ok(), "{train}");
    }
    assert_eq!(spec("replicas = 3", "").unwrap().replicas, 3);
}

#[test]
fn an_invite_list_makes_the_run_invite_only_and_a_bad_key_is_named() {
    assert_eq!(
        spec("", "").unwrap().invited,
        None,
        "anyone may join by default"
    );
    let key = tessera_protocol::Identity::from_seed([4; 32]).public();
    let s = spec("", &format!("[admission]\ninvite = [\"{key}\"]")).unwrap();
    assert_eq!(s.invited, Some([key].into()));
    let e = spec("", &format!("[admission]\ninvite = [\"{key}\", \"ab12\"]")).unwrap_err();
    assert!(e.to_string().contains("entry 2"), "{e}");
}

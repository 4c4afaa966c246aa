//! The `[checks]` section: replays default to on for whole-model runs with dense sync and off
//! with SparseLoCo (which may ask for them), asking for them in a pipeline run is a clear error,
//! and bad tolerances are refused.

use tessera_coordinator::config::RunConfig;

fn resolve(train: &str, checks: &str) -> Result<Option<(bool, f64)>, String> {
    let toml = format!(
        "name = \"c\"\nseed = 1\nrounds = 2\n[model]\npreset = \"tiny-byte\"\n[data]\nbuiltin = true\n[train]\n{train}\n{checks}"
    );
    let cfg = RunConfig::from_toml(&toml).map_err(|e| e.to_string())?;
    let (spec, _) = cfg
        .resolve(std::path::Path::new("."))
        .map_err(|e| e.to_string())?;
    Ok(spec.checks.map(|c| (c.replay, c.round_tolerance)))
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
    assert!(e.contains("replay is for whole-model runs"), "{e}");
    let e = resolve("sync = \"dense\"", "[checks]\nround_tolerance = 2.0").unwrap_err();
    assert!(e.contains("round_tolerance"), "{e}");
}

//! The default demo (whole-model rounds, three native workers) with a browser tab: the tab
//! opens the URL the demo prints, presses Start, and from the first round it was ready for
//! on it is in every round's aggregate, because a round grows a slot for every further ready
//! contributor (elastic replicas). What each round averaged comes from the run's own log
//! (its `Aggregated` entries), which `tessera verify` checks first. Screenshots land in
//! `target/screenshots/`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{build_page, target_dir, Browser, WEBGPU_FLAGS};
use common::{exe, free_port, page_url, scratch, status, wait_for, Proc};
use tessera_protocol::log::LogEvent;
use tessera_protocol::log_store::StoredEntry;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// Each round's contributors, from the `Aggregated` entries of the run's log (saved by a
/// passing `tessera verify`).
fn rounds_of(dir: &Path) -> Vec<(u64, Vec<String>)> {
    let saved = dir.join("log.json");
    let text = common::log_files::verify_saving(dir, &saved, &[]);
    assert!(text.contains("rounds' aggregates checked"), "{text}");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).expect("the saved log")).expect("json");
    file["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|l| {
            let e = StoredEntry::decode(l["signed"].as_str()?).ok()?.upgrade();
            match e.entry.event {
                LogEvent::Aggregated { round, updates } => {
                    Some((round, updates.iter().map(|w| w.key.to_string()).collect()))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn a_tab_opening_the_demos_url_trains_in_every_round_it_is_ready_for() {
    let page = build_page();
    let dir = scratch("demo-browser");
    let port = free_port();
    // From the workspace root: a binary built before the page serves `target/web-dist`.
    let root = target_dir().parent().expect("the workspace").to_path_buf();
    let mut child = Command::new(exe())
        .args(["demo", "--rounds", "14", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&dir)
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tessera demo starts");
    let out = child.stdout.take().expect("the demo's output");
    let mut demo = Proc(child);
    let url = page_url(out, "demo", FIVE_MINUTES);
    assert_eq!(url, format!("http://127.0.0.1:{port}"), "{page:?}");
    wait_for(
        port,
        FIVE_MINUTES,
        "the three native workers' leases",
        |s| {
            s["contributors"]
                .as_array()
                .is_some_and(|cs| cs.iter().filter(|c| c["lease"].is_string()).count() == 3)
        },
    );
    let b = Browser::start(&WEBGPU_FLAGS, &dir.join("chromium-profile"));
    let opened = Instant::now();
    b.contribute(&url, Duration::from_secs(60), None);
    let browser = |s: &serde_json::Value| -> Option<serde_json::Value> {
        s["contributors"]
            .as_array()?
            .iter()
            .find(|c| c["kind"] == "browser")
            .cloned()
    };
    let first = wait_for(port, FIVE_MINUTES, "the tab's first accepted unit", |s| {
        browser(s).is_some_and(|c| c["accepted"].as_u64() > Some(0))
    });
    let took = opened.elapsed();
    println!(
        "page open to the tab's first accepted unit: {:.1} s (the default demo, headless Chromium, SwiftShader)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(120),
        "the tab's first accepted work came {took:?} after the page opened"
    );
    let key = browser(&first).expect("the tab")["key"]
        .as_str()
        .expect("its key")
        .to_string();
    b.screenshot(&target_dir().join("screenshots/demo-tab.png"));
    demo.wait_exit(Duration::from_secs(900), "the demo's 14 rounds");
    drop(b);
    let rounds = rounds_of(&dir);
    assert_eq!(rounds.len(), 14, "{rounds:?}");
    let joined = rounds
        .iter()
        .position(|(_, keys)| keys.contains(&key))
        .expect("the tab's update in some round");
    for (round, keys) in &rounds[joined..] {
        assert!(
            keys.contains(&key),
            "round {round} averaged {} updates without the tab's: {keys:?}",
            keys.len()
        );
        assert!(keys.len() >= 4, "round {round}: {keys:?}");
    }
    println!(
        "the tab was in rounds {} to {} of the demo's 14: each of them averaged {} updates",
        rounds[joined].0,
        rounds.last().expect("rounds").0,
        rounds[joined].1.len()
    );
    assert!(status(port).is_none(), "the demo ended with its run");
}

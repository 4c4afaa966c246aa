//! The contributor page end to end: a real `tessera coordinator` serving the page (built by
//! `scripts/build-web`), native `tessera worker` processes, and headless Chromium (WebGPU on
//! SwiftShader) driven over WebDriver. The model is split so that the natives hold every
//! micro-shard but one head slice, which the browser's lease takes. Screenshots land in
//! `target/screenshots/`.

mod common;

use std::time::{Duration, Instant};

use common::browser::{build_page, target_dir, Browser, WEBGPU_FLAGS};
use common::{coordinator_with_page, data, eval, free_port, scratch, wait_for, worker_with_budget};

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn browser_contributors(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["contributors"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["kind"] == "browser")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_browser_tab_trains_a_micro_shard_beside_native_workers() {
    let page = build_page();
    let dir = scratch("browser");
    let port = free_port();
    let start = Instant::now();
    let mut c = coordinator_with_page(&data("browser.toml"), port, &dir, Some(&page));
    let _big = worker_with_budget(port, &dir.join("big.key"), "900KiB");
    wait_for(port, FIVE_MINUTES, "the big worker's lease", |s| {
        s["contributors"].as_array().is_some_and(|cs| cs.len() == 1)
    });
    let _small: Vec<_> = (0..5)
        .map(|i| worker_with_budget(port, &dir.join(format!("s{i}.key")), "220KiB"))
        .collect();
    wait_for(port, FIVE_MINUTES, "six native leases", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|cs| cs.iter().filter(|c| c["lease"].is_string()).count() == 6)
    });
    let b = Browser::start(&WEBGPU_FLAGS, &dir.join("chromium-profile"));
    b.open(&format!("http://127.0.0.1:{port}/"));
    b.wait(
        "WebGPU detected",
        Duration::from_secs(30),
        "return window.tessera && window.tessera.webGpu === true;",
    );
    // A 215 KiB budget holds one head slice and nothing more.
    b.eval("document.getElementById('budget').value = String(215 / 1024); document.getElementById('start').click(); return true;");
    let mid = wait_for(port, FIVE_MINUTES, "the browser's accepted work", |s| {
        browser_contributors(s)
            .iter()
            .any(|c| c["lease"].is_string() && c["accepted"].as_u64() > Some(2))
    });
    let me = browser_contributors(&mid).remove(0);
    println!("browser contributor: {me}");
    let shards: Vec<String> = me["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        shards,
        vec!["Head(128..256)".to_string()],
        "the browser holds one micro-shard"
    );
    b.wait(
        "the page to show accepted work",
        Duration::from_secs(30),
        "return Number(document.getElementById('accepted').textContent) > 0 && document.getElementById('shards').textContent.includes('Head');",
    );
    b.screenshot(&target_dir().join("screenshots/contributor-page-joined.png"));
    wait_for(port, FIVE_MINUTES, "a few steps", |s| {
        s["round"].as_u64() >= Some(6)
    });
    b.wait(
        "the loss curve",
        Duration::from_secs(30),
        "return window.tessera.state.losses.length >= 6;",
    );
    b.screenshot(&target_dir().join("screenshots/contributor-page-training.png"));
    assert!(c.wait_exit(FIVE_MINUTES, "the run to finish").success());
    let held_out = data("held-out.txt");
    let before = eval(&dir.join("checkpoints/round-0"), &held_out);
    let after = eval(&dir.join("checkpoints/round-30"), &held_out);
    println!(
        "held-out loss {before:.4} -> {after:.4} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(before - after > 1.0, "the held-out loss falls");
}

#[test]
fn the_page_explains_what_to_do_without_webgpu() {
    let page = build_page();
    let dir = scratch("no-webgpu");
    let port = free_port();
    let _c = coordinator_with_page(&data("browser.toml"), port, &dir, Some(&page));
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    // The same headless Chromium without --enable-unsafe-webgpu: no adapter.
    let flags: Vec<&str> = WEBGPU_FLAGS
        .iter()
        .copied()
        .filter(|f| *f != "--enable-unsafe-webgpu")
        .collect();
    let b = Browser::start(&flags, &dir.join("chromium-profile"));
    b.open(&format!("http://127.0.0.1:{port}/"));
    b.wait(
        "the no-WebGPU explanation",
        Duration::from_secs(30),
        "return !document.getElementById('no-webgpu').hidden && document.getElementById('start').disabled;",
    );
    let text = b.eval("return document.getElementById('no-webgpu').innerText;");
    println!("{text}");
    assert!(text.as_str().unwrap().contains("WebGPU"));
    b.screenshot(&target_dir().join("screenshots/no-webgpu.png"));
}

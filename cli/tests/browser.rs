//! The contributor page end to end: a real `tessera coordinator` serving the page (built by
//! `scripts/build-web`), native `tessera worker` processes, and headless Chromium (WebGPU on
//! SwiftShader) driven over WebDriver. The model is split so that the natives hold every
//! micro-shard but one head slice, which the browser's lease takes. Screenshots land in
//! `target/screenshots/`.

mod common;

use std::time::{Duration, Instant};

use common::browser::{build_page, target_dir, Browser, WEBGPU_FLAGS};
use common::{
    checkpoint, coordinator_with, coordinator_with_page, data, eval, free_port, scratch, wait_for,
    worker_with_budget,
};

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
    // Admission at the default difficulty: every native worker and the tab solve a puzzle.
    let bits = tessera_coordinator::admission::DEFAULT_BITS.to_string();
    let admission: [&std::ffi::OsStr; 2] = ["--admission-bits".as_ref(), bits.as_ref()];
    let mut c = coordinator_with(&data("browser.toml"), port, &dir, Some(&page), &admission);
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
    let opened = Instant::now();
    // A 215 KiB budget holds one head slice and nothing more.
    b.contribute(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(30),
        Some(215.0 / 1024.0),
    );
    wait_for(
        port,
        FIVE_MINUTES,
        "the browser's first accepted unit",
        |s| {
            browser_contributors(s)
                .iter()
                .any(|c| c["accepted"].as_u64() > Some(0))
        },
    );
    println!(
        "page open to first accepted work unit: {:.2} s (localhost, headless Chromium, SwiftShader)",
        opened.elapsed().as_secs_f64()
    );
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
    // The run checks pipeline work; nobody else holds the browser's head slice, so no check
    // of its work can run: its drawn work stays unverified and earns nothing (credits count
    // verified work only; what waits for the next draw shows as pending).
    assert!(
        me["accepted"].as_u64() > Some(0) && me["credits"].as_f64() == Some(0.0),
        "accepted work that no check covered earns no credits: {me}"
    );
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
    let solved = b.eval("return window.tessera.admission || null;");
    assert_eq!(
        solved["bits"].as_u64(),
        Some(u64::from(tessera_coordinator::admission::DEFAULT_BITS)),
        "{solved}"
    );
    println!(
        "the browser tab solved the {}-bit admission puzzle in its Web Worker: {} hashes in {:.2} s ({:.2} M hashes/s; headless Chromium, wasm)",
        solved["bits"],
        solved["hashes"],
        solved["ms"].as_f64().unwrap_or(0.0) / 1000.0,
        solved["hashes"].as_f64().unwrap_or(0.0) / solved["ms"].as_f64().unwrap_or(1.0).max(1.0) / 1000.0
    );
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
    let before = eval(&checkpoint(&dir.join("checkpoints"), 0), &held_out);
    let after = eval(&checkpoint(&dir.join("checkpoints"), 30), &held_out);
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

/// A long run (it is stopped by the test) with two native workers that can hold the whole model
/// between them, so leases cover every micro-shard in any join order; the browser joins third.
struct Long {
    dir: std::path::PathBuf,
    port: u16,
    page: std::path::PathBuf,
    config: std::path::PathBuf,
    coordinator: Option<common::Proc>,
    _natives: Vec<common::Proc>,
}

fn long_run(name: &str) -> Long {
    let page = build_page();
    let dir = scratch(name);
    let port = free_port();
    let text = std::fs::read_to_string(data("browser.toml"))
        .expect("browser.toml")
        .replace("rounds = 30", "rounds = 100000");
    let config = dir.with_extension("toml");
    std::fs::write(&config, text).expect("write the run file");
    let coordinator = Some(coordinator_with_page(&config, port, &dir, Some(&page)));
    let mut natives = Vec::new();
    for i in 0..2 {
        natives.push(worker_with_budget(
            port,
            &dir.join(format!("n{i}.key")),
            "900KiB",
        ));
        wait_for(port, FIVE_MINUTES, "a native lease", |s| {
            s["contributors"]
                .as_array()
                .is_some_and(|cs| cs.iter().filter(|c| c["lease"].is_string()).count() == i + 1)
        });
    }
    Long {
        dir,
        port,
        page,
        config,
        coordinator,
        _natives: natives,
    }
}

/// Opens the page in a fresh headless Chromium and starts contributing with a small budget;
/// returns once the browser has accepted work.
fn join(l: &Long) -> Browser {
    let b = Browser::start(&WEBGPU_FLAGS, &l.dir.join("chromium-profile"));
    b.contribute(
        &format!("http://127.0.0.1:{}/", l.port),
        Duration::from_secs(30),
        Some(215.0 / 1024.0),
    );
    wait_for(l.port, FIVE_MINUTES, "the browser's accepted work", |s| {
        browser_contributors(s)
            .iter()
            .any(|c| c["lease"].is_string() && c["accepted"].as_u64() > Some(0))
    });
    b
}

fn accepted(port: u16) -> u64 {
    common::status(port)
        .map(|s| {
            browser_contributors(&s)
                .iter()
                .filter_map(|c| c["accepted"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn the_page_rejoins_when_the_coordinator_restarts_under_it() {
    let mut l = long_run("browser-restart");
    let b = join(&l);
    // SIGKILL the coordinator, then start it again on the same port and data.
    drop(l.coordinator.take());
    assert!(common::status(l.port).is_none(), "the coordinator is gone");
    let t = Instant::now();
    l.coordinator = Some(coordinator_with_page(
        &l.config,
        l.port,
        &l.dir,
        Some(&l.page),
    ));
    wait_for(
        l.port,
        FIVE_MINUTES,
        "the browser's work after the restart",
        |s| {
            browser_contributors(s)
                .iter()
                .any(|c| c["lease"].is_string() && c["accepted"].as_u64() > Some(0))
        },
    );
    println!(
        "the page re-joined and had work accepted {:.1} s after the restart",
        t.elapsed().as_secs_f64()
    );
    b.wait(
        "the page to show it reconnected",
        Duration::from_secs(30),
        "return window.tessera.reports.some(r => r.type === 'connection' && r.state === 'reconnecting') && document.getElementById('connection').textContent === 'connected';",
    );
    b.screenshot(&target_dir().join("screenshots/after-coordinator-restart.png"));
}

#[test]
fn the_page_recovers_from_a_lost_gpu_device() {
    let l = long_run("browser-device-lost");
    let b = join(&l);
    let before = accepted(l.port);
    b.eval("window.tessera.loseDevice(); return true;");
    b.wait(
        "the page to re-acquire the GPU",
        Duration::from_secs(60),
        "return window.tessera.reports.some(r => r.type === 'note' && r.text.includes('GPU was lost')) && window.tessera.reports.filter(r => r.type === 'adapter').length >= 2;",
    );
    let start = Instant::now();
    while accepted(l.port) <= before + 2 {
        assert!(
            start.elapsed() < FIVE_MINUTES,
            "no work accepted after the device was lost"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "accepted {before} before the device was lost, {} after re-acquiring it",
        accepted(l.port)
    );
    b.screenshot(&target_dir().join("screenshots/after-device-lost.png"));
}

#[test]
fn closing_the_page_mid_unit_frees_its_work_at_once() {
    let l = long_run("browser-closed");
    let b = join(&l);
    // Close while the browser holds a unit.
    let start = Instant::now();
    loop {
        let busy = common::status(l.port).is_some_and(|s| {
            browser_contributors(&s)
                .iter()
                .any(|c| c["unit"].as_u64().is_some())
        });
        if busy {
            break;
        }
        assert!(
            start.elapsed() < FIVE_MINUTES,
            "the browser never held a unit"
        );
    }
    let step = common::status(l.port)
        .and_then(|s| s["round"].as_u64())
        .unwrap_or(0);
    drop(b);
    let t = Instant::now();
    wait_for(
        l.port,
        Duration::from_secs(10),
        "the browser's session to end",
        |s| browser_contributors(s).is_empty(),
    );
    println!(
        "the coordinator dropped the closed page after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Its work ran elsewhere: the run goes on past the step it was in.
    wait_for(l.port, Duration::from_secs(60), "the run to go on", |s| {
        s["round"].as_u64() > Some(step + 1)
    });
}

/// The identity, and the kernel tuning of the first visit, stay across visits.
#[test]
fn the_identity_key_stays_across_visits() {
    let page = build_page();
    let dir = scratch("browser-identity");
    let port = free_port();
    let _c = coordinator_with_page(&data("browser.toml"), port, &dir, Some(&page));
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let key = |b: &Browser| -> String {
        b.contribute(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(30),
            None,
        );
        b.wait(
            "the identity",
            Duration::from_secs(30),
            "return window.tessera.state.key !== null;",
        );
        b.eval("return window.tessera.state.key;")
            .as_str()
            .expect("a key")
            .to_string()
    };
    let reported = |b: &Browser, kind: &str| -> bool {
        b.eval(&format!(
            "return window.tessera.reports.some(r => r.type === '{kind}');"
        ))
        .as_bool()
        .unwrap_or(false)
    };
    let profile = dir.join("chromium-profile");
    let first = {
        let b = Browser::start(&WEBGPU_FLAGS, &profile);
        let k = key(&b);
        // The first visit tunes the kernels and the page keeps the choice.
        b.wait(
            "the kernel tuning",
            Duration::from_secs(180),
            "return window.tessera.reports.some(r => r.type === 'tuned');",
        );
        let tuned = b.eval("return window.tessera.reports.find(r => r.type === 'tuned');");
        println!("the tab tuned its kernels: {}", tuned["tiles"]);
        print!("{}", tuned["table"].as_str().unwrap_or_default());
        // A reload in the same browser keeps the key, and the tuning: it connects without
        // measuring again.
        assert_eq!(key(&b), k, "the same key after a reload");
        b.wait(
            "the reloaded page to connect",
            Duration::from_secs(60),
            "return window.tessera.reports.some(r => r.type === 'connection');",
        );
        assert!(
            !reported(&b, "tuning"),
            "the kept tuning is used, not measured again"
        );
        k
    };
    // The browser closed and opened again on the same profile: still the same key.
    let again = key(&Browser::start(&WEBGPU_FLAGS, &profile));
    assert_eq!(again, first, "the key is kept in IndexedDB across visits");
    // Another browser profile is another contributor.
    let other = key(&Browser::start(&WEBGPU_FLAGS, &dir.join("other-profile")));
    assert_ne!(other, first);
    println!("identity {first} kept across visits; another profile got {other}");
}

#[test]
fn a_banned_tab_stops_and_says_why() {
    let page = build_page();
    let dir = scratch("browser-banned");
    let port = free_port();
    let token = dir.with_extension("token");
    std::fs::write(&token, "correct horse battery staple\n").expect("the token file");
    let _c = coordinator_with(
        &data("browser.toml"),
        port,
        &dir,
        Some(&page),
        &["--admin-token-file".as_ref(), token.as_os_str()],
    );
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let url = format!("http://127.0.0.1:{port}");
    let b = Browser::start(&WEBGPU_FLAGS, &dir.join("chromium-profile"));
    b.contribute(&format!("{url}/"), Duration::from_secs(30), None);
    b.wait(
        "the identity",
        Duration::from_secs(30),
        "return window.tessera.state.key !== null;",
    );
    let key = b
        .eval("return window.tessera.state.key;")
        .as_str()
        .expect("a key")
        .to_string();
    let listed = |s: &serde_json::Value| {
        browser_contributors(s)
            .iter()
            .any(|c| c["key"].as_str() == Some(key.as_str()))
    };
    wait_for(port, Duration::from_secs(60), "the tab connected", listed);
    let (ok, text) = common::tessera(&[
        "admin".as_ref(),
        "--coordinator".as_ref(),
        url.as_ref(),
        "--token-file".as_ref(),
        token.as_os_str(),
        "--reason".as_ref(),
        "testing a ban".as_ref(),
        "ban".as_ref(),
        key.as_ref(),
    ]);
    assert!(ok, "{text}");
    b.wait(
        "the page to stop",
        Duration::from_secs(60),
        "return document.getElementById('connection').textContent === 'stopped';",
    );
    // It stays stopped: no reconnection, and the page says why.
    std::thread::sleep(Duration::from_secs(5));
    let log = b
        .eval("return document.getElementById('log').textContent;")
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!("the banned page's log: {log}");
    assert!(
        log.contains("banned by the run's administrator: testing a ban"),
        "{log}"
    );
    assert!(!log.contains("reconnecting"), "{log}");
    assert_eq!(
        b.eval("return document.getElementById('connection').textContent;"),
        serde_json::Value::String("stopped".into())
    );
    assert!(!listed(&common::status(port).expect("the status")));
    b.screenshot(&target_dir().join("screenshots/banned-tab.png"));
}

//! The administrator's dashboard (`GET /admin`) in headless Chromium, against a real
//! `tessera coordinator` with three `tessera worker` processes and a hand-spoken contributor whose
//! adapter name is markup meant to run in the page: the page shows the run, its training and held-out loss curves and
//! its contributors (the hostile name as text, nothing of it run), refuses an act with a wrong
//! token, pauses and resumes the run with the right one, and lists the acts among the log's
//! latest entries. Screenshots land in `target/screenshots/`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser::{target_dir, Browser, WEBGPU_FLAGS};
use common::contributor::{handshake_as, say};
use common::{coordinator_with, data, free_port, scratch, status, wait_for, worker};
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::{Identity, ToContributor};

const LIMIT: Duration = Duration::from_secs(300);
const TOKEN: &str = "correct horse battery staple";
/// What the hostile contributor calls its adapter.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";

/// A contributor that says its adapter is [`HOSTILE`], with a budget too small for a lease,
/// and heartbeats until `stop`.
fn hostile(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut ws, _) =
            tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream).expect("upgrade");
        let id = Identity::from_seed([66; 32]);
        let (welcome, nonce) = handshake_as(&mut ws, &id, HOSTILE, 1, "admin-page test");
        assert!(
            matches!(welcome, Some(ToContributor::Welcome { .. })),
            "{welcome:?}"
        );
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a timeout");
        let mut seq = 1;
        while !stop.load(Ordering::Relaxed) {
            let beat = SessionMessage::Heartbeat {
                log_head: Default::default(),
            };
            say(&mut ws, &id, &nonce, seq, beat);
            seq += 1;
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(700) {
                let _ = ws.read();
            }
        }
    })
}

#[test]
fn the_dashboard_shows_the_run_as_text_and_steers_it_with_the_token() {
    let dir = scratch("admin-page");
    let port = free_port();
    let token_file = dir.with_extension("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("the token file");
    let extra: [&std::ffi::OsStr; 4] = [
        "--admin-token-file".as_ref(),
        token_file.as_os_str(),
        "--requests-per-second".as_ref(),
        "0".as_ref(),
    ];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &extra);
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let h = hostile(port, stop.clone());
    wait_for(port, LIMIT, "four contributors and a closed round", |s| {
        s["round"].as_u64() >= Some(1) && s["contributors"].as_array().is_some_and(|c| c.len() == 4)
    });
    let s = wait_for(port, LIMIT, "two held-out losses", |s| {
        s["held_out_history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2)
    });
    let held = s["held_out_history"].as_array().unwrap();
    assert_eq!(
        held[0][0], 0,
        "the first point is the initial weights': {held:?}"
    );

    let b = Browser::start(&WEBGPU_FLAGS, &dir.join("chromium-profile"));
    b.open(&format!("http://127.0.0.1:{port}/admin"));
    b.wait(
        "the contributors and the training and held-out loss curves",
        Duration::from_secs(30),
        "return window.tessera && window.tessera.contributors === 4 \
         && window.tessera.losses.length >= 1 && window.tessera.held.length >= 2 \
         && document.querySelectorAll('#curve polyline.train').length === 1 \
         && document.querySelectorAll('#curve polyline.held').length === 1 \
         && document.getElementById('held-loss').textContent !== '–';",
    );
    let shown = b.eval(&format!(
        "return [...document.querySelectorAll('#contributors td')].some(td => td.textContent === {});",
        serde_json::to_string(HOSTILE).unwrap()
    ));
    assert_eq!(
        shown,
        serde_json::Value::Bool(true),
        "the adapter name shown as text"
    );
    let ran = b.eval(
        "return [window.pwned === undefined, document.querySelectorAll('img, #contributors script').length];",
    );
    assert_eq!(ran, serde_json::json!([true, 0]), "nothing of the name ran");
    b.screenshot(&target_dir().join("screenshots/admin-dashboard.png"));

    // A wrong token: refused, and the page says so.
    b.eval(
        "document.getElementById('token').value = 'not the token'; \
         document.getElementById('reason').value = 'a test'; \
         document.getElementById('pause').click(); return true;",
    );
    b.wait(
        "the refusal",
        Duration::from_secs(10),
        "return document.getElementById('answer').textContent.includes('HTTP 403');",
    );
    assert_eq!(status(port).expect("status")["phase"], "training");

    // The right token: pause, then resume.
    let started = Instant::now();
    b.eval(&format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('reason').value = 'maintenance'; \
         document.getElementById('pause').click(); return true;",
        serde_json::to_string(TOKEN).unwrap()
    ));
    wait_for(port, Duration::from_secs(10), "the pause", |s| {
        s["phase"] == "paused"
    });
    b.wait(
        "the paused run on the page",
        Duration::from_secs(10),
        "return document.getElementById('phase').textContent === 'paused' \
         && window.tessera.log.some(e => e.startsWith('Admin'));",
    );
    b.screenshot(&target_dir().join("screenshots/admin-dashboard-paused.png"));
    b.eval("document.getElementById('resume').click(); return true;");
    wait_for(port, Duration::from_secs(10), "the resume", |s| {
        s["phase"] == "training"
    });
    println!(
        "paused and resumed from the page in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    h.join().expect("the hostile contributor");
}

//! HTTPS and WSS: a coordinator given a certificate and key (a self-signed one made here)
//! serves the page over https and the protocol over wss; a native worker trusting that
//! certificate (`--ca`) and a browser page (a secure context, so WebGPU is offered) both
//! contribute to the same run.

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::browser::{build_page, Browser, WEBGPU_FLAGS};
use common::{coordinator_with, data, free_port, scratch, worker_at};

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn https_status(agent: &ureq::Agent, port: u16) -> Option<serde_json::Value> {
    agent
        .get(&format!("https://localhost:{port}/api/status"))
        .call()
        .ok()?
        .into_json()
        .ok()
}

#[test]
fn the_coordinator_serves_https_and_wss_to_workers_and_browsers() {
    let page = build_page();
    let dir = scratch("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let _c = coordinator_with(
        &data("browser.toml"),
        port,
        &dir,
        Some(&page),
        &[
            OsStr::new("--tls-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-key"),
            key.as_os_str(),
        ],
    );
    let tls = tessera_worker::native::tls_config(Some(&cert)).expect("trust the certificate");
    let agent = ureq::AgentBuilder::new().tls_config(tls).build();
    let start = Instant::now();
    while https_status(&agent, port).is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no https status");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Plain http on the same port is refused: the port speaks TLS only.
    assert!(common::status(port).is_none(), "plain http is not served");
    let url = format!("wss://localhost:{port}/ws");
    let _natives: Vec<_> = (0..2)
        .map(|i| {
            worker_at(
                &url,
                &dir.join(format!("n{i}.key")),
                "900KiB",
                &[OsStr::new("--ca"), cert.as_os_str()],
            )
        })
        .collect();
    let mut flags = WEBGPU_FLAGS.to_vec();
    flags.push("--ignore-certificate-errors");
    let b = Browser::start(&flags, &dir.join("chromium-profile"));
    b.open(&format!("https://localhost:{port}/"));
    b.wait(
        "WebGPU in a secure context",
        Duration::from_secs(30),
        "return window.isSecureContext && window.tessera && window.tessera.webGpu === true;",
    );
    b.eval("document.getElementById('budget').value = String(215 / 1024); document.getElementById('start').click(); return true;");
    let start = Instant::now();
    loop {
        let s = https_status(&agent, port).unwrap_or_default();
        let cs = s["contributors"].as_array().cloned().unwrap_or_default();
        let busy = |kind: &str| {
            cs.iter()
                .any(|c| c["kind"] == kind && c["accepted"].as_u64() > Some(0))
        };
        if busy("native") && busy("browser") {
            println!("over TLS: {}", serde_json::Value::Array(cs));
            break;
        }
        assert!(
            start.elapsed() < FIVE_MINUTES,
            "no accepted work over TLS: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

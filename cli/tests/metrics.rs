//! `GET /metrics` scraped by a real Prometheus server (Debian's `prometheus` package, which
//! `scripts/test-all` installs): a `tessera coordinator` process trains with three `tessera
//! worker` processes while Prometheus scrapes it every second, and queries through
//! Prometheus's HTTP API return the run's contributors by kind, its loss, its closed rounds and
//! the bytes its contributors sent. The exposition itself names no key and no contributor text.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{coordinator, data, free_port, get_text, scratch, wait_for, worker, Proc};

const LIMIT: Duration = Duration::from_secs(300);

/// Starts Prometheus on `port`, scraping the coordinator on `target` every second, with its
/// configuration and database under `dir`.
fn prometheus(dir: &Path, port: u16, target: u16) -> Proc {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tessera\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .expect("write the Prometheus configuration");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus (Debian's `prometheus` package; scripts/test-all installs it)");
    Proc(child)
}

/// The value of the first series an instant query through Prometheus's HTTP API returns.
fn query(port: u16, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = common::try_get(port, &format!("/api/v1/query?query={encoded}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Polls `promql` until its value satisfies `good`; the value.
fn wait_query(port: u16, promql: &str, good: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        if let Some(v) = query(port, promql).filter(|v| good(*v)) {
            println!(
                "{promql} = {v} after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return v;
        }
        assert!(
            start.elapsed() < LIMIT,
            "Prometheus never answered {promql} as expected (last: {:?})",
            query(port, promql)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_the_run_s_contributors_loss_and_traffic() {
    let dir = scratch("metrics");
    let port = free_port();
    let _c = coordinator(&data("e2e.toml"), port, &dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    wait_for(port, LIMIT, "a closed round", |s| {
        s["round"].as_u64() >= Some(1)
    });
    let text = get_text(port, "/metrics");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    let status = common::status(port).expect("the status");
    for c in status["credits"].as_array().expect("credit lines") {
        let key = c["key"].as_str().expect("a key");
        assert!(!text.contains(key), "a key in the metrics: {key}");
    }

    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("a directory");
    let prom_port = free_port();
    let _p = prometheus(&prom_dir, prom_port, port);
    wait_query(prom_port, "up{job=\"tessera\"}", |v| v == 1.0);
    wait_query(prom_port, "tessera_contributors{kind=\"Native\"}", |v| {
        v == 3.0
    });
    let loss = wait_query(prom_port, "tessera_loss", |v| v > 0.0 && v < 6.0);
    let rounds = wait_query(prom_port, "tessera_rounds_closed_total", |v| v >= 1.0);
    wait_query(prom_port, "tessera_units_accepted_total", |v| v >= 3.0);
    wait_query(prom_port, "tessera_bytes_total{direction=\"In\"}", |v| {
        v > 0.0
    });
    wait_query(prom_port, "tessera_bytes_total{direction=\"Out\"}", |v| {
        v > 0.0
    });
    println!("Prometheus saw {rounds} closed rounds, loss {loss:.4}");
}

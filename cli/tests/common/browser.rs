//! Headless Chromium driven over ChromeDriver's WebDriver protocol (W3C), for the tests of the
//! contributor page: open a page, run a script in it, take a screenshot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::{free_port, Proc};

/// Chromium flags for headless WebGPU on SwiftShader.
pub const WEBGPU_FLAGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
];

/// A browser session: ChromeDriver and one Chromium.
pub struct Browser {
    base: String,
    session: String,
    _driver: Proc,
}

fn driver_path() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium_path() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with `flags` (and a fresh profile).
    pub fn start(flags: &[&str], profile: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver_path())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (apt install chromium-driver)");
        let driver = Proc(child);
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1000,1400".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_path(), "args": args}
        }}});
        let v: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .expect("a browser session")
            .into_json()
            .expect("json");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            base,
            session,
            _driver: driver,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        match ureq::post(&url).send_json(body) {
            Ok(r) => r.into_json::<Value>().expect("json")["value"].clone(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "webdriver {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("webdriver {path}: {e}"),
        }
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Opens the contributor page at `url`, waits up to `limit` for it to find WebGPU, sets the
    /// budget field to `budget_mib` (MiB) when given, and presses Start.
    pub fn contribute(&self, url: &str, limit: Duration, budget_mib: Option<f64>) {
        self.open(url);
        self.wait(
            "WebGPU detected",
            limit,
            "return window.tessera && window.tessera.webGpu === true;",
        );
        let budget = budget_mib
            .map(|b| format!("document.getElementById('budget').value = String({b}); "))
            .unwrap_or_default();
        self.eval(&format!(
            "{budget}document.getElementById('start').click(); return true;"
        ));
    }

    /// Polls `script` until it returns true.
    pub fn wait(&self, what: &str, limit: Duration, script: &str) {
        let start = Instant::now();
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG screenshot of the page as `path`.
    pub fn screenshot(&self, path: &Path) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let v: Value = ureq::get(&url)
            .call()
            .expect("screenshot")
            .into_json()
            .expect("json");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("base64"))
            .expect("png");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write the screenshot");
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

/// The target directory the test binaries live in.
pub fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_tessera"));
    exe.parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .expect("the target directory")
}

/// Builds the contributor page (scripts/build-web) into `<target>/web-dist`, once per test
/// binary; returns it.
pub fn build_page() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let out = target_dir().join("web-dist");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = Command::new(root.join("scripts/build-web"))
        .arg(&out)
        .env("WEB_PROFILE", "release")
        .status()
        .expect("run scripts/build-web");
    assert!(st.success(), "scripts/build-web failed");
    out
}

//! Helpers for tests that run the real `tessera` binary as separate processes: free ports,
//! child processes killed on drop, `GET /api/status` over a plain TCP socket, and a
//! contributor's handshake spoken by hand (`contributor`).

#![allow(dead_code)]

pub mod browser;
pub mod contributor;
pub mod log_files;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// The repository's `tests/data` folder.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

/// A fresh directory under the system temp folder.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits for the process to exit by itself, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().expect("wait") {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts `tessera coordinator`.
pub fn coordinator(config: &Path, port: u16, dir: &Path) -> Proc {
    coordinator_with_page(config, port, dir, None)
}

/// Starts `tessera coordinator`, serving the contributor page from `web` when given.
pub fn coordinator_with_page(config: &Path, port: u16, dir: &Path, web: Option<&Path>) -> Proc {
    coordinator_with(config, port, dir, web, &[])
}

/// Arguments for a coordinator whose test opens many sockets from 127.0.0.1: `per_address`
/// connections from one address, and no limit on HTTP requests a second.
pub fn loopback_crowd(per_address: &'static str) -> [&'static std::ffi::OsStr; 4] {
    [
        "--max-connections-per-address".as_ref(),
        per_address.as_ref(),
        "--requests-per-second".as_ref(),
        "0".as_ref(),
    ]
}

/// Starts `tessera coordinator` with the page from `web` and `extra` arguments.
pub fn coordinator_with(
    config: &Path,
    port: u16,
    dir: &Path,
    web: Option<&Path>,
    extra: &[&std::ffi::OsStr],
) -> Proc {
    let log = std::fs::File::create(dir.with_extension("coordinator.log")).expect("log file");
    let mut cmd = Command::new(exe());
    cmd.args(["coordinator", "--config"])
        .arg(config)
        .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir);
    if let Some(w) = web {
        cmd.arg("--web").arg(w);
    }
    // The proof of work is off unless a test asks for it: tests that speak the protocol by
    // hand open sockets without tickets (admission is tested by tests/admission.rs and the
    // browser test).
    if !extra.iter().any(|a| *a == "--admission-bits") {
        cmd.args(["--admission-bits", "0"]);
    }
    cmd.args(extra);
    let child = cmd
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the coordinator");
    Proc(child)
}

/// A quiet `tessera worker` for the coordinator on `port` with identity file `key`; what it
/// says of itself at level info (notices, reconnects, its admission) goes to `log`.
pub fn worker_logged(port: u16, key: &Path, log: &Path) -> Proc {
    Proc(
        Command::new(exe())
            .args([
                "worker",
                "--coordinator",
                &format!("ws://127.0.0.1:{port}/ws"),
                "--quiet",
                "--identity",
            ])
            .arg(key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("a worker's log"))
            .spawn()
            .expect("start a worker"),
    )
}

/// The whole answer (status line, headers and body) to `GET path` over a fresh TCP
/// connection.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("answer");
    text
}

/// The body of `GET path` over a fresh TCP connection.
pub fn get_text(port: u16, path: &str) -> String {
    let text = http_get(port, path);
    text.split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_string())
}

/// Starts `tessera worker`.
pub fn worker(port: u16, key: &Path) -> Proc {
    worker_with_budget(port, key, "1GiB")
}

/// A `tessera worker` with identity file `key` and memory budget `budget`.
pub fn worker_with_budget(port: u16, key: &Path, budget: &str) -> Proc {
    worker_at(&format!("ws://127.0.0.1:{port}/ws"), key, budget, &[])
}

/// A `tessera worker` for the coordinator at `url` with `extra` arguments.
pub fn worker_at(url: &str, key: &Path, budget: &str, extra: &[&std::ffi::OsStr]) -> Proc {
    let child = Command::new(exe())
        .args([
            "worker",
            "--coordinator",
            url,
            "--memory-budget",
            budget,
            "--quiet",
            "--identity",
        ])
        .arg(key)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker");
    Proc(child)
}

/// Echoes a child's output lines as `label: LINE` from a thread and returns the URL of the line
/// `contributor page: URL` that `tessera demo` prints, waiting at most `limit` for it.
pub fn page_url(out: impl Read + Send + 'static, label: &'static str, limit: Duration) -> String {
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{label}: {line}");
            // Keep echoing after the URL line was taken.
            let _ = lines.send(line);
        }
    });
    let start = Instant::now();
    loop {
        let line = seen
            .recv_timeout(limit.saturating_sub(start.elapsed()))
            .unwrap_or_else(|e| panic!("{label} prints its page's URL within {limit:?}: {e}"));
        if let Some(rest) = line.strip_prefix("contributor page: ") {
            return rest.split_whitespace().next().expect("a URL").to_string();
        }
    }
}

/// `GET /api/status`, or `None` while nothing answers.
pub fn status(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&try_get(port, "/api/status")?).ok()
}

/// The body of `GET path` (a text one) over a fresh TCP connection, or `None` while nothing
/// answers there.
pub fn try_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

/// Polls the status until `done` holds, failing after `limit`.
pub fn wait_for(
    port: u16,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status(port) {
            if done(&s) {
                return s;
            }
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tessera eval` on a checkpoint; the printed loss.
/// The folder of checkpoint `version` in a run's `checkpoints/` folder (or a copy of it): the
/// one `round-N-HASH` (named by its version and weights digest) of that version.
#[allow(dead_code)]
pub fn checkpoint(checkpoints: &Path, version: u64) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(checkpoints)
        .unwrap_or_else(|e| panic!("reading {}: {e}", checkpoints.display()))
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(tessera_coordinator::store::parse_checkpoint_name)
                .is_some_and(|(v, hash)| v == version && hash.is_some())
        })
        .map(|e| e.path())
        .collect();
    match <[PathBuf; 1]>::try_from(found) {
        Ok([one]) => one,
        Err(found) => panic!(
            "{} holds {} checkpoints of version {version}: {found:?}",
            checkpoints.display(),
            found.len()
        ),
    }
}

pub fn eval(checkpoint: &Path, data: &Path) -> f64 {
    let out = Command::new(exe())
        .args(["eval", "--checkpoint"])
        .arg(checkpoint)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run eval");
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no loss in {text:?}"))
}

/// Runs `tessera ARGS`: whether it succeeded, and what it printed (standard output, then
/// standard error).
pub fn tessera<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(exe())
        .args(args)
        .output()
        .expect("run tessera");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `tessera verify --log DIR` on a run's data directory, which must pass; what it printed.
pub fn verify_dir(dir: &Path) -> String {
    let (ok, text) = tessera(&["verify".as_ref(), "--log".as_ref(), dir.as_os_str()]);
    println!("{text}");
    assert!(ok, "the run's log verifies: {text}");
    text
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Flips one bit of the byte `from_end` bytes before the end of a file.
pub fn flip_byte(path: &Path, from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// A kernel memory figure of a process, in bytes (`VmHWM`: peak resident, `VmRSS`: now).
pub fn memory(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Writes `run` (a run configuration) as `dir/run.toml`, trains it to the end with a
/// `tessera coordinator` and three `tessera worker` processes (within ten minutes), and returns
/// its data directory (`dir/data`).
pub fn train_to_the_end(dir: &Path, run: &str) -> PathBuf {
    let toml = dir.join("run.toml");
    std::fs::write(&toml, run).expect("the run configuration");
    let data_dir = dir.join("data");
    let port = free_port();
    let mut c = coordinator(&toml, port, &data_dir);
    let _w: Vec<_> = (0..3)
        .map(|i| worker(port, &dir.join(format!("w{i}.key"))))
        .collect();
    assert!(c
        .wait_exit(Duration::from_secs(600), "the run to finish")
        .success());
    data_dir
}

/// A word-level Hugging Face `tokenizer.json` (whitespace pre-tokenization, no decoder: decoded
/// tokens are joined by spaces) whose word `wI` is token I, for `words` words.
pub fn word_tokenizer_json(words: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..words)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    })
    .to_string()
}

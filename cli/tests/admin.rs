//! `tessera admin` against a real coordinator and worker: requests without the token or with a
//! wrong one are refused (401, 403) and change nothing, as are malformed ones (400) and ones
//! that cannot apply (409); pause stops new work and the worker hears why; ban closes the
//! worker's session and refuses it after; stop ends the run; every act is in the verified log,
//! and a restarted coordinator keeps them in force.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    coordinator_with, data, exe, free_port, scratch, status, wait_for, worker_logged, Proc,
};

const LIMIT: Duration = Duration::from_secs(180);
const TOKEN: &str = "correct horse battery staple";

/// `POST /api/admin` with `auth` as the Authorization header; the status code and JSON body.
fn post(port: u16, auth: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut req = ureq::post(&format!("http://127.0.0.1:{port}/api/admin"))
        .set("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.set("Authorization", a);
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => panic!("POST /api/admin: {e}"),
    }
}

fn admin(port: u16, token_file: &std::path::Path, args: &[&str]) -> (bool, String) {
    let url = format!("http://127.0.0.1:{port}");
    let mut all: Vec<&std::ffi::OsStr> = vec![
        "admin".as_ref(),
        "--coordinator".as_ref(),
        url.as_ref(),
        "--token-file".as_ref(),
        token_file.as_os_str(),
    ];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    let (ok, text) = common::tessera(&all);
    println!("tessera admin {args:?}: {text}");
    (ok, text)
}

fn log_len(port: u16) -> usize {
    let page: serde_json::Value = ureq::get(&format!(
        "http://127.0.0.1:{port}/api/log?from=0&limit=1000"
    ))
    .call()
    .expect("GET /api/log")
    .into_json()
    .expect("json");
    page["entries"].as_array().map_or(0, Vec::len)
}

fn accepted(s: &serde_json::Value) -> u64 {
    s["contributors"].as_array().map_or(0, |c| {
        c.iter().map(|x| x["accepted"].as_u64().unwrap_or(0)).sum()
    })
}

#[test]
fn admin_requests_are_authenticated_logged_and_seen_by_contributors() {
    let dir = scratch("admin");
    let port = free_port();
    let token_file = dir.with_extension("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let coord = |dir: &std::path::Path| {
        coordinator_with(
            &data("e2e.toml"),
            port,
            dir,
            None,
            &["--admin-token-file".as_ref(), token_file.as_os_str()],
        )
    };
    let c = coord(&dir);
    let worker_log = dir.with_extension("worker.log");
    let mut w = worker_logged(port, &dir.with_extension("w.key"), &worker_log);
    let s = wait_for(port, LIMIT, "an accepted unit", |s| accepted(s) >= 1);
    let key = s["contributors"][0]["key"].as_str().unwrap().to_string();

    // Refused, and nothing changes: not even the log.
    let before = log_len(port);
    let pause = r#"{"action":"pause","reason":"maintenance"}"#;
    let (code, body) = post(port, None, pause);
    assert_eq!((code, &body["code"]), (401, &"no_token".into()), "{body}");
    let (code, body) = post(port, Some("Bearer not-the-token-at-all"), pause);
    assert_eq!(
        (code, &body["code"]),
        (403, &"wrong_token".into()),
        "{body}"
    );
    let (code, body) = post(
        port,
        Some(&format!("Bearer {TOKEN}")),
        r#"{"action":"fly","reason":"x"}"#,
    );
    assert_eq!(
        (code, &body["code"]),
        (400, &"bad_request".into()),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("unknown action"));
    let (code, body) = post(port, Some(&format!("Bearer {TOKEN}")), "not json");
    assert_eq!(
        (code, &body["code"]),
        (400, &"bad_request".into()),
        "{body}"
    );
    let (code, body) = post(
        port,
        Some(&format!("Bearer {TOKEN}")),
        r#"{"action":"resume","reason":"x"}"#,
    );
    assert_eq!((code, &body["code"]), (409, &"refused".into()), "{body}");
    assert!(body["error"].as_str().unwrap().contains("not paused"));
    assert_eq!(status(port).unwrap()["phase"], "training");
    // The refusals logged nothing (the run itself may have logged work meanwhile, but no admin
    // entry).
    let page: serde_json::Value =
        ureq::get(&format!("http://127.0.0.1:{port}/api/log?from={before}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
    assert!(page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| !e["event"].as_str().unwrap().starts_with("Admin")));

    // Pause through the CLI: no new work, and the worker hears why.
    let (ok, out) = admin(port, &token_file, &["--reason", "maintenance", "pause"]);
    assert!(ok && out.contains("done: pause (run log entry"), "{out}");
    wait_for(port, LIMIT, "paused", |s| s["phase"] == "paused");
    // The unit in flight when the pause came may still be submitted; after it, nothing.
    let idle = |s: &serde_json::Value| {
        s["contributors"]
            .as_array()
            .is_some_and(|c| c.iter().all(|x| x["unit"].is_null()))
    };
    let n = accepted(&wait_for(port, LIMIT, "the unit in flight done", idle));
    std::thread::sleep(Duration::from_secs(3));
    let s = status(port).unwrap();
    assert_eq!(accepted(&s), n, "no work while paused");
    assert!(idle(&s), "no unit handed out while paused: {s}");
    let heard = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        heard.contains("the run's administrator: pause because \"maintenance\""),
        "{heard}"
    );
    let (ok, out) = admin(port, &token_file, &["--reason", "again", "pause"]);
    assert!(
        !ok && out.contains("refused (409 refused): the run is already paused"),
        "{out}"
    );
    let (ok, _) = admin(port, &token_file, &["--reason", "back", "resume"]);
    assert!(ok);
    wait_for(port, LIMIT, "work again", |s| accepted(s) > n);

    // A parameter.
    let (ok, out) = admin(
        port,
        &token_file,
        &["--reason", "longer", "set", "rounds", "40"],
    );
    assert!(ok, "{out}");
    wait_for(port, LIMIT, "40 rounds", |s| s["rounds"] == 40);

    // Ban the worker: its session closes and it is refused when it reconnects.
    let (ok, out) = admin(
        port,
        &token_file,
        &["--reason", "sent garbage", "ban", &key],
    );
    assert!(ok, "{out}");
    let s = wait_for(port, LIMIT, "the worker gone", |s| {
        s["contributors"].as_array().is_some_and(|c| c.is_empty())
    });
    assert_eq!(s["banned"][0], key.as_str());
    // The worker reads the refusal once its unit in flight is done and stops: connecting
    // again cannot help a banned identity.
    let st = w.wait_exit(LIMIT, "the banned worker to stop");
    assert!(!st.success(), "a banned worker exits with an error");
    let heard = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        heard.contains("banned by the run's administrator: sent garbage"),
        "{heard}"
    );
    // Started again with the same key, it is refused at its handshake and stops at once.
    let again_log = dir.with_extension("worker-again.log");
    let mut again = worker_logged(port, &dir.with_extension("w.key"), &again_log);
    let st = again.wait_exit(LIMIT, "the banned identity's new worker to stop");
    assert!(!st.success());
    let heard = std::fs::read_to_string(&again_log).unwrap();
    assert!(heard.contains("this identity is banned"), "{heard}");
    assert!(!heard.contains("reconnecting"), "no retry: {heard}");

    // A restarted coordinator keeps the acts in force.
    drop(c); // SIGKILL
    let mut c = coord(&dir);
    let s = wait_for(port, LIMIT, "the restarted coordinator", |_| true);
    assert_eq!(s["phase"], "training");
    assert_eq!(s["rounds"], 40);
    assert_eq!(s["banned"][0], key.as_str());

    // Stop: the coordinator finishes, and started again it has nothing to do.
    let (ok, out) = admin(port, &token_file, &["--reason", "done for today", "stop"]);
    assert!(ok, "{out}");
    assert!(c.wait_exit(LIMIT, "the stopped run to end").success());
    let mut again = coord(&dir);
    assert!(again
        .wait_exit(LIMIT, "a stopped run to stay stopped")
        .success());

    // The log verifies and holds every act with its reason.
    let saved = dir.with_extension("log.json");
    let out = Command::new(exe())
        .args(["verify", "--log"])
        .arg(&dir)
        .arg("--save")
        .arg(&saved)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the administrator:"))
        .collect();
    assert_eq!(acts.len(), 5, "{text}");
    assert!(acts[0].ends_with("the administrator: pause, because \"maintenance\""));
    assert!(acts[3].ends_with(&format!("ban {key}, because \"sent garbage\"")));
    assert!(acts[4].ends_with("stop, because \"done for today\""));
}

/// `tessera coordinator` with no config: idle until an administrator creates its run.
fn idle_coordinator(port: u16, dir: &std::path::Path, token_file: &std::path::Path) -> Proc {
    let log = std::fs::File::create(dir.with_extension("coordinator.log")).expect("log file");
    Proc(
        Command::new(exe())
            .args(["coordinator", "--bind", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .arg("--admin-token-file")
            .arg(token_file)
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the coordinator"),
    )
}

#[test]
fn an_idle_coordinator_serves_the_run_an_administrator_creates() {
    let dir = scratch("admin-create");
    let port = free_port();
    let token_file = dir.with_extension("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = dir.with_extension("run.toml");
    let text = std::fs::read_to_string(data("e2e.toml"))
        .unwrap()
        .replace("name = \"e2e\"", "name = \"created\"")
        .replace("rounds = 12", "rounds = 2");
    std::fs::write(&config, &text).unwrap();
    let mut c = idle_coordinator(port, &dir, &token_file);
    wait_for(port, LIMIT, "the idle coordinator", |s| {
        s["phase"] == "idle"
    });

    // Refused, changing nothing: no token, a wrong one, other acts, a malformed request, a
    // configuration that does not resolve.
    let bearer = format!("Bearer {TOKEN}");
    let create = |config: &str, reason: &str| {
        serde_json::json!({"action": "create", "config": config, "reason": reason}).to_string()
    };
    let good = create(&text, "the first run");
    assert_eq!(post(port, None, &good).0, 401);
    assert_eq!(
        post(port, Some("Bearer not the token at all"), &good).0,
        403
    );
    let (code, body) = post(port, Some(&bearer), r#"{"action":"pause","reason":"x"}"#);
    assert_eq!((code, &body["code"]), (409, &"no_run".into()), "{body}");
    let (code, body) = post(port, Some(&bearer), &create(&text, " "));
    assert_eq!(
        (code, &body["code"]),
        (400, &"bad_request".into()),
        "a reason is needed: {body}"
    );
    let (code, body) = post(port, Some(&bearer), &create("[model]\npreset = 7", "r"));
    assert_eq!((code, &body["code"]), (400, &"bad_config".into()), "{body}");
    let (code, body) = post(
        port,
        Some(&bearer),
        &create(
            &text.replace("builtin = true", "files = [\"missing.txt\"]"),
            "r",
        ),
    );
    assert_eq!((code, &body["code"]), (400, &"bad_config".into()), "{body}");
    assert!(!dir.join("run.toml").exists(), "nothing was created");
    assert_eq!(status(port).unwrap()["phase"], "idle");

    let (ok, out) = admin(
        port,
        &token_file,
        &[
            "--reason",
            "the first run",
            "create",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(
        ok && out.contains("done: create run created (run log entry 1)"),
        "{out}"
    );
    wait_for(port, LIMIT, "the created run", |s| {
        s["run"] == "created" && s["phase"] == "training"
    });
    // A coordinator serving a run creates no other.
    let (code, body) = post(port, Some(&bearer), &good);
    assert_eq!((code, &body["code"]), (409, &"refused".into()), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("already serves run created"),
        "{body}"
    );
    let _w: Vec<_> = (0..3)
        .map(|i| common::worker(port, &dir.with_extension(format!("w{i}.key"))))
        .collect();
    assert!(c.wait_exit(LIMIT, "the created run to finish").success());

    let text = common::verify_dir(&dir);
    assert!(
        text.contains("entry 1: the administrator: create run created, because \"the first run\""),
        "{text}"
    );
    assert!(text.contains("2 closed rounds"), "{text}");

    // Restarted without a config, it serves the created run again (finished, so it exits).
    let mut again = idle_coordinator(port, &dir, &token_file);
    assert!(again.wait_exit(LIMIT, "the finished run to exit").success());
    let printed = std::fs::read_to_string(dir.with_extension("coordinator.log")).unwrap();
    assert!(
        printed.contains("serving the run an administrator created"),
        "{printed}"
    );
}

//! The routes of a coordinator serving a run, driven in-process (`tower::ServiceExt::oneshot`,
//! no socket) against a real core task and a real SQLite store: every route answers, and every
//! administrative refusal is the response its `AdminError` names.

use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tessera_compute::reference::ModelParams;
use tessera_protocol::Identity;
use tower::ServiceExt;

use crate::admin_token::AdminToken;
use crate::core::{Core, RunSpec};
use crate::store::Store;

const TOKEN: &str = "a-token-long-enough-for-tests";

/// A one-round tiny run served by the routes, with `TOKEN` as the admin token when `admin`.
async fn app(admin: bool) -> Router {
    app_and_store(admin).await.0
}

/// [`app`], and the store it serves from.
async fn app_and_store(admin: bool) -> (Router, Store) {
    let model = crate::config::preset("tiny-byte").expect("a preset");
    let tokens: Vec<u32> = (0..400u32).map(|i| i % 200).collect();
    let weights = ModelParams::random(&model, 1);
    let core = Core::new(
        RunSpec::new("routes", model, tokens),
        Identity::from_seed([9; 32]),
        weights,
    );
    // A store of its own for each app: the tests run in parallel.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tessera-routes-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, None).await.expect("a store");
    let token = admin.then(|| AdminToken::new(TOKEN).expect("a token"));
    let (shared, _running) = super::launch(core, store.clone(), token, ([127, 0, 0, 1], 0).into());
    (super::router(shared, None), store)
}

/// The status and JSON body of `request` sent to `app`.
async fn call(app: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value, bool) {
    let r = app.clone().oneshot(request).await.expect("an answer");
    let status = r.status();
    let challenge = r.headers().contains_key(header::WWW_AUTHENTICATE);
    let bytes = r.into_body().collect().await.expect("a body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, challenge)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn admin(auth: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::post("/api/admin").header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn status_and_log_answer_and_unknown_routes_are_404() {
    let app = app(true).await;
    let (code, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (&status["run"], &status["phase"]),
        (&"routes".into(), &"training".into())
    );
    // The run's first entry, `Started`, is in the log before anything is served.
    let mut page = serde_json::Value::Null;
    for _ in 0..100 {
        let (code, p, _) = call(&app, get("/api/log?from=0&limit=5")).await;
        assert_eq!(code, StatusCode::OK);
        if p["entries"].as_array().is_some_and(|e| !e.is_empty()) {
            page = p;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(page["entries"][0]["index"], 0, "{page}");
    assert!(
        page["entries"][0]["event"]
            .as_str()
            .unwrap()
            .starts_with("Started"),
        "{page}"
    );
    let (code, _, _) = call(&app, get("/api/log?from=x")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a malformed query");
    let (code, _, _) = call(&app, get("/nowhere")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// A log page is bounded in bytes as well as in entries: entries of 400 KB (their stored text
/// twice that) come two to a page, and `next` resumes after the last one served.
#[tokio::test]
async fn log_pages_are_bounded_in_bytes() {
    let (app, store) = app_and_store(false).await;
    let id = Identity::from_seed([3; 32]);
    for index in 1000..1005 {
        let e = tessera_protocol::log::SignedEntry::seal(
            tessera_protocol::log::LogEntry {
                index,
                prev: [0; 32],
                time_ms: 0,
                event: tessera_protocol::log::LogEvent::Started {
                    run: "r".repeat(400_000),
                    coordinator: id.public(),
                    config: [0; 32],
                },
            },
            &id,
        );
        store.append_log(&e).await.expect("appended");
    }
    let mut pages = Vec::new();
    let mut from = 1000;
    loop {
        let (code, p, _) = call(&app, get(&format!("/api/log?from={from}&limit=5"))).await;
        assert_eq!(code, StatusCode::OK);
        let got: Vec<u64> = p["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        pages.push(got);
        match p["next"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(pages, vec![vec![1000, 1001], vec![1002, 1003], vec![1004]]);
}

#[tokio::test]
async fn each_admin_refusal_is_its_own_response_and_an_act_is_logged() {
    let app = app(true).await;
    let bearer = format!("Bearer {TOKEN}");
    let pause = r#"{"action":"pause","reason":"maintenance"}"#;
    for (auth, body, status, code) in [
        (None, pause, StatusCode::UNAUTHORIZED, "no_token"),
        (
            Some("Bearer wrong"),
            pause,
            StatusCode::FORBIDDEN,
            "wrong_token",
        ),
        (
            Some(bearer.as_str()),
            "{",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Some(bearer.as_str()),
            r#"{"action":"stop","key":"00","reason":"x"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Some(bearer.as_str()),
            r#"{"action":"resume","reason":"x"}"#,
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            Some(bearer.as_str()),
            r#"{"action":"create","config":"name = \"b\"","reason":"x"}"#,
            StatusCode::CONFLICT,
            "refused",
        ),
    ] {
        let (got, json, challenge) = call(&app, admin(auth, body)).await;
        assert_eq!(
            (got, json["code"].as_str()),
            (status, Some(code)),
            "{body}: {json}"
        );
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{json}"
        );
        assert_eq!(
            challenge,
            code == "no_token",
            "only a missing token is challenged"
        );
    }
    let (_, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(status["phase"], "training", "no refusal changed anything");

    let (got, json, _) = call(&app, admin(Some(&bearer), pause)).await;
    assert_eq!(got, StatusCode::OK, "{json}");
    assert_eq!(json["done"], "pause");
    assert!(json["log_index"].as_u64().is_some_and(|i| i >= 1), "{json}");
    let (_, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(status["phase"], "paused");
}

#[tokio::test]
async fn an_oversized_admin_body_is_refused_before_it_is_read() {
    let app = app(true).await;
    let bearer = format!("Bearer {TOKEN}");
    // A valid act whose reason alone is 3 MiB: axum's body limit (2 MiB) refuses it unread.
    let body = format!(r#"{{"action":"pause","reason":"{}"}}"#, "x".repeat(3 << 20));
    let (got, _, _) = call(&app, admin(Some(&bearer), &body)).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(status["phase"], "training", "nothing changed");
}

#[tokio::test]
async fn without_a_token_administration_is_disabled() {
    let app = app(false).await;
    let body = r#"{"action":"pause","reason":"x"}"#;
    let (got, json, _) = call(&app, admin(Some(&format!("Bearer {TOKEN}")), body)).await;
    assert_eq!(
        (got, json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("disabled"))
    );
}

#[tokio::test]
async fn wrong_tokens_make_their_sender_wait() {
    let app = app(true).await;
    let body = r#"{"action":"pause","reason":"guessing"}"#;
    for _ in 0..crate::admin_token::FREE_GUESSES {
        let (code, json, _) = call(&app, admin(Some("Bearer guess-guess-guess"), body)).await;
        assert_eq!(
            (code, json["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("wrong_token"))
        );
    }
    // Now even the right token waits, and the answer says how long.
    let bearer = format!("Bearer {TOKEN}");
    let r = app
        .clone()
        .oneshot(admin(Some(&bearer), body))
        .await
        .expect("an answer");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["code"], "throttled");
    // Nothing was paused.
    let (_, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(status["phase"], "training");
}

#[tokio::test]
async fn over_plain_http_a_token_is_taken_from_this_machine_only() {
    let app = app(true).await;
    let bearer = format!("Bearer {TOKEN}");
    let from = |addr: &str| {
        let mut r = admin(Some(&bearer), r#"{"action":"pause","reason":"from afar"}"#);
        let peer = crate::gate::Peer(addr.parse().unwrap());
        r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        r
    };
    let (code, json, _) = call(&app, from("203.0.113.7:40000")).await;
    assert_eq!(
        (code, json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("plain_http"))
    );
    let (_, status, _) = call(&app, get("/api/status")).await;
    assert_eq!(status["phase"], "training", "nothing changed");
    let (code, _, _) = call(&app, from("127.0.0.1:40000")).await;
    assert_eq!(code, StatusCode::OK);
}

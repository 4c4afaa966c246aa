//! The idle coordinator's routes, driven in-process: only a valid `create` is accepted, and it
//! hands the run to the caller; every refusal is the response its `AdminError` names.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{router, Idle};
use crate::admin_token::AdminToken;

const TOKEN: &str = "a-token-long-enough-for-tests";

async fn post(app: &axum::Router, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let r = app
        .clone()
        .oneshot(
            Request::post("/api/admin")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .expect("an answer");
    let status = r.status();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn only_a_valid_create_is_accepted_and_hands_the_run_over() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = router(Idle {
        token: AdminToken::new(TOKEN).unwrap(),
        transport: Default::default(),
        base: std::env::temp_dir(),
        created: tx,
        taken: Arc::new(Mutex::new(false)),
    });
    let r = app
        .clone()
        .oneshot(Request::get("/api/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status["phase"], "idle");

    let create = |config: &str, reason: &str| serde_json::json!({"action": "create", "config": config, "reason": reason});
    let good = "name = \"made\"\nrounds = 1\n[train]\nreplicas = 3\n";
    for (body, want, code) in [
        (
            serde_json::json!({"action": "pause", "reason": "x"}),
            StatusCode::CONFLICT,
            "no_run",
        ),
        (create(good, " "), StatusCode::BAD_REQUEST, "bad_request"),
        (
            create("[model]\npreset = \"huge\"", "r"),
            StatusCode::BAD_REQUEST,
            "bad_config",
        ),
        (
            create("rounds = \"x\"", "r"),
            StatusCode::BAD_REQUEST,
            "bad_config",
        ),
    ] {
        let (got, json) = post(&app, body.clone()).await;
        assert_eq!(
            (got, json["code"].as_str()),
            (want, Some(code)),
            "{body}: {json}"
        );
    }
    assert!(rx.try_recv().is_err(), "no refusal created anything");

    let (got, json) = post(&app, create(good, "the first run")).await;
    assert_eq!(got, StatusCode::OK, "{json}");
    assert_eq!(json["done"], "create run made");
    let made = rx.try_recv().expect("the run is handed over");
    assert_eq!(
        (made.run.as_str(), made.reason.as_str()),
        ("made", "the first run")
    );
    let (got, json) = post(&app, create(good, "again")).await;
    assert_eq!(
        (got, json["code"].as_str()),
        (StatusCode::CONFLICT, Some("creating"))
    );
}

//! The contributor page over HTTP: the files `scripts/build-web` writes (the page, its script,
//! the Web Worker and the wasm client), served from a directory by name from a fixed list, so
//! nothing else on the disk is reachable.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's files and their content types.
const FILES: [(&str, &str); 6] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("worker.js", "text/javascript; charset=utf-8"),
    ("tessera-client-wasm.js", "text/javascript; charset=utf-8"),
    ("tessera-client-wasm_bg.wasm", "application/wasm"),
    ("style.css", "text/css; charset=utf-8"),
];

/// Routes `/` and the page's files from `dir`.
pub fn page(dir: PathBuf) -> Router {
    Router::new()
        .route(
            "/",
            get(|s: State<PathBuf>| file(s, Path("index.html".into()))),
        )
        .route("/{name}", get(file))
        .with_state(dir)
}

/// Whether `dir` holds a built page.
pub fn is_built(dir: &std::path::Path) -> bool {
    FILES.iter().all(|(f, _)| dir.join(f).is_file())
}

async fn file(State(dir): State<PathBuf>, Path(name): Path<String>) -> Response {
    let Some((name, mime)) = FILES.iter().find(|(f, _)| *f == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    match tokio::fs::read(dir.join(name)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!("{name}: {e} (build the page with scripts/build-web)"),
        )
            .into_response(),
    }
}

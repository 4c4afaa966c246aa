//! The contributor page over HTTP: the files `scripts/build-web` writes (the page, its script,
//! the Web Worker and the wasm client), served from a directory by name from a fixed list, so
//! nothing else on the disk is reachable. Every file goes out with a Content-Security-Policy
//! (the page's own scripts, wasm and styles; fetches and WebSockets to its own host; no
//! framing), `nosniff` and no referrer.

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
            get(|s: State<PathBuf>, h: axum::http::HeaderMap| {
                file(s, Path("index.html".into()), h)
            }),
        )
        .route("/{name}", get(file))
        .with_state(dir)
}

/// Whether `dir` holds a built page.
pub fn is_built(dir: &std::path::Path) -> bool {
    FILES.iter().all(|(f, _)| dir.join(f).is_file())
}

/// The page's Content-Security-Policy for a request to `host`: its own scripts and wasm
/// (`'wasm-unsafe-eval'` compiles the client), its own styles, fetches and WebSockets to its
/// own host only, no framing, no plugins.
fn policy(host: &str) -> String {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        .collect();
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
         connect-src 'self' ws://{host} wss://{host}; style-src 'self'; img-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

async fn file(
    State(dir): State<PathBuf>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some((name, mime)) = FILES.iter().find(|(f, _)| *f == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match tokio::fs::read(dir.join(name)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, mime.to_string()),
                (header::CACHE_CONTROL, "no-cache".into()),
                (header::CONTENT_SECURITY_POLICY, policy(host)),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                (header::X_FRAME_OPTIONS, "DENY".into()),
                (header::REFERRER_POLICY, "no-referrer".into()),
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn the_policy_allows_the_page_s_own_host_and_nothing_a_host_header_could_add() {
        let p = policy("coord.example:8443");
        assert!(p.contains("script-src 'self' 'wasm-unsafe-eval'"), "{p}");
        assert!(p.contains("connect-src 'self' ws://coord.example:8443 wss://coord.example:8443"));
        assert!(p.contains("frame-ancestors 'none'"));
        // A Host header cannot add a directive or a source: no `;`, space, quote or `*` is kept.
        let sneaky = policy("x; script-src * 'unsafe-inline'");
        assert_eq!(
            sneaky.matches(';').count(),
            p.matches(';').count(),
            "{sneaky}"
        );
        assert!(
            !sneaky.contains('*') && !sneaky.contains("'unsafe-inline'"),
            "{sneaky}"
        );
        assert!(
            sneaky.contains("ws://xscript-srcunsafe-inline "),
            "{sneaky}"
        );
    }

    #[tokio::test]
    async fn every_file_of_the_page_goes_out_with_the_security_headers() {
        let dir = std::env::temp_dir().join(format!("tessera-page-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (f, _) in FILES {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        for uri in ["/", "/worker.js", "/tessera-client-wasm_bg.wasm"] {
            let req = Request::get(uri)
                .header(header::HOST, "127.0.0.1:8080")
                .body(Body::empty())
                .unwrap();
            let r = page(dir.clone()).oneshot(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
            let h = r.headers();
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("ws://127.0.0.1:8080"), "{uri}: {csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The contributor page over HTTP: the files `scripts/build-web` writes (the page, its script,
//! the Web Worker and the wasm client), served by name from a fixed list — from a directory, so
//! nothing else on the disk is reachable, or from the copies the `tessera` binary embedded when
//! it was built — or, when there is no page, a `/` that says how to build one. Every file goes
//! out with a Content-Security-Policy (the page's own scripts, wasm and styles; fetches and
//! WebSockets to its own host; no framing), `nosniff` and no referrer.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's files and their content types.
pub const FILES: [(&str, &str); 6] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("worker.js", "text/javascript; charset=utf-8"),
    ("tessera-client-wasm.js", "text/javascript; charset=utf-8"),
    ("tessera-client-wasm_bg.wasm", "application/wasm"),
    ("style.css", "text/css; charset=utf-8"),
];

/// Where the page's files come from.
#[derive(Clone, Debug)]
pub enum PageSource {
    /// A directory `scripts/build-web` wrote.
    Dir(PathBuf),
    /// Files compiled into the binary, by name.
    Embedded(&'static [(&'static str, &'static [u8])]),
}

/// What `/` answers when the coordinator has no page to serve.
const NOT_BUILT: &str = "This coordinator serves no contributor page: it was built without one.

Native workers can still contribute: tessera worker --coordinator ws://HOST:PORT/ws

To serve the page, build it and then the binary, from the repository's root:
    npm ci --prefix web && scripts/build-web     (needs the wasm32 target and wasm-bindgen-cli)
    cargo build --release -p tessera             (embeds target/web-dist in the binary)
or point a coordinator at a built page: tessera coordinator --web DIR
";

/// Routes `/` and the page's files from `source`.
pub fn page(source: PageSource) -> Router {
    Router::new()
        .route(
            "/",
            get(|s: State<PageSource>, h: axum::http::HeaderMap| {
                file(s, Path("index.html".into()), h)
            }),
        )
        .route("/{name}", get(file))
        .with_state(source)
}

/// Routes `/` to an explanation of how to build the page, for a coordinator without one.
pub fn not_built() -> Router {
    Router::new().route(
        "/",
        get(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                NOT_BUILT,
            )
        }),
    )
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
    State(source): State<PageSource>,
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
    let bytes = match &source {
        PageSource::Dir(dir) => tokio::fs::read(dir.join(name))
            .await
            .map(axum::body::Bytes::from)
            .map_err(|e| e.to_string()),
        PageSource::Embedded(files) => files
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, b)| axum::body::Bytes::from_static(b))
            .ok_or_else(|| "not embedded".to_string()),
    };
    match bytes {
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

    async fn get(router: Router, uri: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::get(uri)
            .header(header::HOST, "127.0.0.1:8080")
            .body(Body::empty())
            .unwrap();
        let r = router.oneshot(req).await.unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn an_embedded_page_serves_its_files_and_nothing_else() {
        static FILES_IN: [(&str, &[u8]); 2] = [("index.html", b"<p>page</p>"), ("app.js", b"1")];
        let router = || page(PageSource::Embedded(&FILES_IN));
        assert_eq!(
            get(router(), "/").await,
            (StatusCode::OK, b"<p>page</p>".to_vec())
        );
        assert_eq!(
            get(router(), "/app.js").await,
            (StatusCode::OK, b"1".to_vec())
        );
        assert_eq!(get(router(), "/worker.js").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(router(), "/Cargo.toml").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn without_a_page_the_root_says_how_to_build_one() {
        let (status, body) = get(not_built(), "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("scripts/build-web") && text.contains("--web DIR"),
            "{text}"
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
            let r = page(PageSource::Dir(dir.clone()))
                .oneshot(req)
                .await
                .unwrap();
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

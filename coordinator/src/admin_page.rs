//! The administrator's dashboard, `GET /admin` (with `/admin/admin.js` and `/admin/admin.css`):
//! a static page compiled into the coordinator (`src/admin_page/`) that shows what
//! `/api/status`, `/api/log` and `/metrics` report and sends acts to `POST /api/admin` with a
//! token the administrator types in. The page renders the run's text, contributors' among it,
//! only as text; its Content-Security-Policy allows its own script and style and requests to its
//! own origin, nothing else, so that nothing a contributor reports can run in the page that holds
//! the token.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("admin_page/index.html");
const SCRIPT: &str = include_str!("admin_page/admin.js");
const STYLE: &str = include_str!("admin_page/admin.css");

/// The page's Content-Security-Policy: its own script, style and requests only.
const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The dashboard's routes, for any state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/admin",
            get(|| async { answer(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/admin.js",
            get(|| async { answer(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin/admin.css",
            get(|| async { answer(STYLE, "text/css; charset=utf-8") }),
        )
}

fn answer(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_puts_the_run_s_text_into_the_document_only_as_text() {
        // No way for a string to become markup: no innerHTML, outerHTML, insertAdjacentHTML,
        // document.write or eval in the script, and no inline script or handler in the page.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.contains(sink), "admin.js uses {sink}");
        }
        assert!(!INDEX.contains("onclick") && !INDEX.contains("<script>"));
        assert!(POLICY.contains("script-src 'self';") && !POLICY.contains("unsafe"));
    }
}

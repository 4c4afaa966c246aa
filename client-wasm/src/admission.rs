//! The browser's side of admission (see `tessera_protocol::admission`): before each connection
//! the Web Worker fetches a puzzle from the coordinator's `/api/admission`, solves it here in
//! wasm for the contributor's key, and opens `/ws?ticket=`. A browser cannot read the body of
//! a refused WebSocket upgrade, so it asks over HTTP first.

use tessera_protocol::PublicKey;
use tessera_worker::admission::{read_offer, with_ticket};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// `/api/admission` of the coordinator whose socket is `ws_url` (`ws://host/ws` →
/// `http://host/api/admission`, `wss://` → `https://`).
pub fn admission_url(ws_url: &str) -> Option<String> {
    let (scheme, rest) = if let Some(r) = ws_url.strip_prefix("wss://") {
        ("https", r)
    } else {
        ("http", ws_url.strip_prefix("ws://")?)
    };
    let host = rest.split(['/', '?']).next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}/api/admission"))
}

/// What solving took.
pub struct Solved {
    /// The URL to open, with its ticket (as given when no ticket is asked for).
    pub url: String,
    /// Zero bits asked for (0: none).
    pub bits: u8,
    /// Hashes tried.
    pub hashes: u64,
    /// Milliseconds the solving took (not the fetch).
    pub ms: f64,
}

async fn fetch_text(url: &str) -> Result<String, String> {
    let scope = js_sys::global()
        .dyn_into::<web_sys::WorkerGlobalScope>()
        .map_err(|_| "not in a Web Worker".to_string())?;
    let js = |e: wasm_bindgen::JsValue| format!("{e:?}");
    let resp: web_sys::Response = JsFuture::from(scope.fetch_with_str(url))
        .await
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    if !resp.ok() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let text = JsFuture::from(resp.text().map_err(js)?)
        .await
        .map_err(js)?
        .as_string()
        .unwrap_or_default();
    Ok(text)
}

/// Fetches the coordinator's puzzle and solves it for `key`: the URL to open.
pub async fn ticketed(ws_url: &str, key: PublicKey) -> Result<Solved, String> {
    let offer_url =
        admission_url(ws_url).ok_or_else(|| format!("{ws_url} is not a ws:// or wss:// URL"))?;
    let text = fetch_text(&offer_url).await?;
    let Some(puzzle) = read_offer(text.as_bytes())?.puzzle else {
        return Ok(Solved {
            url: ws_url.to_string(),
            bits: 0,
            hashes: 0,
            ms: 0.0,
        });
    };
    let t0 = js_sys::Date::now();
    let (ticket, hashes) = tessera_protocol::admission::solve(puzzle, key);
    Ok(Solved {
        url: with_ticket(ws_url, &ticket),
        bits: puzzle.bits,
        hashes,
        ms: js_sys::Date::now() - t0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_is_asked_of_the_socket_s_host() {
        assert_eq!(
            admission_url("ws://127.0.0.1:8080/ws").as_deref(),
            Some("http://127.0.0.1:8080/api/admission")
        );
        assert_eq!(
            admission_url("wss://run.example/ws?x=1").as_deref(),
            Some("https://run.example/api/admission")
        );
        assert_eq!(admission_url("http://run.example/ws"), None);
        assert_eq!(admission_url("ws:///ws"), None);
    }
}

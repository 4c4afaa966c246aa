//! JSON read from a coordinator's HTTP API with a bound on its size: a page of `/api/log` or
//! `/api/status` is a few MiB at most, so a server that sends more is not a Tessera
//! coordinator, and what it sends past the bound is never read.

use std::io::Read;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

/// The most bytes one page of the coordinator's API may take. A coordinator serves about
/// 4 MiB of `/api/log` a page (and one entry more, of at most `MAX_ENTRY_BYTES`) and at most
/// 1000 contributors and credit lines of `/api/status`, well under this.
pub const MAX_PAGE_BYTES: u64 = 16 << 20;

/// `GET url` as `T`, read to at most [`MAX_PAGE_BYTES`]; `what` names the page in errors.
pub fn get_json<T: DeserializeOwned>(url: &str, what: &str) -> Result<T> {
    let mut body = Vec::new();
    ureq::get(url)
        .call()
        .with_context(|| format!("fetching {url}"))?
        .into_reader()
        .take(MAX_PAGE_BYTES + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {url}"))?;
    if body.len() as u64 > MAX_PAGE_BYTES {
        bail!(
            "{url} sent {what} over {} MiB, which no Tessera coordinator serves; refusing to read more",
            MAX_PAGE_BYTES >> 20
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} does not send {what}"))
}

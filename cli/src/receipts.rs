//! Receipts files: the coordinator's signed receipts a worker keeps (`tessera worker
//! --receipts FILE`), one JSON line each, so that `tessera verify --receipts FILE` can prove
//! what the coordinator recorded of that worker's submissions.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tessera_protocol::identity::{hex, unhex};
use tessera_protocol::messages::Receipt;
use tessera_protocol::signed::{from_signing_bytes, signing_bytes};
use tessera_protocol::Signature;

/// One line of a receipts file.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// The unit, for people.
    unit: u64,
    /// Hex of the receipt's postcard encoding (what the coordinator signed).
    receipt: String,
    /// Hex of the signature's encoding.
    signature: String,
}

/// Appends receipts to the file at `path`.
pub fn append(path: &Path, receipts: &[(Receipt, Signature)]) -> Result<()> {
    if receipts.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    for (r, s) in receipts {
        let line = Line {
            unit: r.unit,
            receipt: hex(&signing_bytes(r)?),
            signature: hex(&signing_bytes(s)?),
        };
        writeln!(f, "{}", serde_json::to_string(&line)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Every receipt in the file, with its line number.
pub fn read(path: &Path) -> Result<Vec<(usize, Receipt, Signature)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = || format!("{} line {}: not a receipt", path.display(), i + 1);
            let line: Line = serde_json::from_str(l).with_context(bad)?;
            let r: Receipt = from_signing_bytes(
                &unhex(&line.receipt)
                    .map_err(anyhow::Error::msg)
                    .with_context(bad)?,
            )
            .with_context(bad)?;
            let s: Signature = from_signing_bytes(
                &unhex(&line.signature)
                    .map_err(anyhow::Error::msg)
                    .with_context(bad)?,
            )
            .with_context(bad)?;
            Ok((i + 1, r, s))
        })
        .collect()
}

//! A contributor's side of admission (see `tessera_protocol::admission`), for the native worker
//! and the browser alike: the coordinator's offer read within a bound ([`read_offer`]: the 401
//! answer to a ticketless `/ws` upgrade, which the native worker reads, or `GET
//! /api/admission`, which a browser must ask since it cannot read a refused upgrade's body),
//! and the URL that carries the solved ticket ([`with_ticket`]). The native worker solves off
//! the async threads ([`solve`]).

use tessera_protocol::admission::{Puzzle, Ticket, MAX_BITS};
#[cfg(not(target_arch = "wasm32"))]
use tessera_protocol::PublicKey;

/// The most bytes of an offer read (one is under 1 KiB).
const MAX_BODY: usize = 16 << 10;

/// What a coordinator's offer (or its refusal of an upgrade) says.
#[derive(Debug, PartialEq)]
pub struct Offer {
    /// The puzzle to solve (none when the coordinator asks for no proof of work).
    pub puzzle: Option<Puzzle>,
    /// Why it refused, when it did.
    pub error: Option<String>,
}

#[derive(serde::Deserialize)]
struct OfferJson {
    #[serde(default)]
    puzzle: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The offer in `body`, refused unread beyond [`MAX_BODY`] bytes; a puzzle that is not one,
/// or asks for more than [`MAX_BITS`], is an error.
pub fn read_offer(body: &[u8]) -> Result<Offer, String> {
    if body.len() > MAX_BODY {
        return Err(format!(
            "an answer of {} bytes, not an admission offer",
            body.len()
        ));
    }
    let offer: OfferJson = serde_json::from_slice(body)
        .map_err(|e| format!("the coordinator's answer is not an admission offer: {e}"))?;
    let puzzle = match offer.puzzle {
        Some(hex) => Some(Puzzle::from_hex(&hex).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(p) = puzzle.filter(|p| p.bits > MAX_BITS) {
        return Err(format!(
            "the coordinator asks for {} zero bits, more than anyone can solve ({MAX_BITS} at most)",
            p.bits
        ));
    }
    Ok(Offer {
        puzzle,
        error: offer.error,
    })
}

/// `url` with the ticket as its `ticket` parameter.
pub fn with_ticket(url: &str, ticket: &Ticket) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}ticket={}", ticket.to_hex())
}

/// Solves `puzzle` for `key` on a blocking thread: the ticket, the hashes tried and the seconds
/// it took.
#[cfg(not(target_arch = "wasm32"))]
pub async fn solve(puzzle: Puzzle, key: PublicKey) -> Result<(Ticket, u64, f64), String> {
    let t0 = std::time::Instant::now();
    let (ticket, tries) =
        tokio::task::spawn_blocking(move || tessera_protocol::admission::solve(puzzle, key))
            .await
            .map_err(|e| format!("the admission solver stopped: {e}"))?;
    Ok((ticket, tries, t0.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::PublicKey;

    #[test]
    fn an_offer_gives_its_puzzle_and_a_refusal_its_reason() {
        let p = Puzzle {
            expires: 9,
            salt: [1; 16],
            bits: 4,
            tag: [2; 32],
        };
        let body = format!(
            r#"{{"code":"admission_required","error":"x","bits":4,"puzzle":"{}"}}"#,
            p.to_hex()
        );
        assert_eq!(
            read_offer(body.as_bytes()),
            Ok(Offer {
                puzzle: Some(p),
                error: Some("x".into())
            })
        );
        let busy = read_offer(br#"{"code":"admission_busy","error":"try again shortly"}"#).unwrap();
        assert_eq!(
            (busy.puzzle, busy.error.as_deref()),
            (None, Some("try again shortly"))
        );
        assert_eq!(read_offer(br#"{"bits":0}"#).unwrap().puzzle, None);
        assert!(read_offer(b"<html>").is_err());
        assert!(read_offer(br#"{"puzzle":"00"}"#).is_err());
        let hard = Puzzle {
            bits: MAX_BITS + 1,
            ..p
        };
        let body = format!(r#"{{"puzzle":"{}"}}"#, hard.to_hex());
        assert!(read_offer(body.as_bytes())
            .unwrap_err()
            .contains("more than anyone can solve"));
        assert!(read_offer(&vec![b' '; MAX_BODY + 1])
            .unwrap_err()
            .contains("not an admission offer"));
        let t = Ticket {
            puzzle: p,
            key: PublicKey([3; 32]),
            nonce: 1,
        };
        assert!(with_ticket("ws://h/ws", &t).starts_with("ws://h/ws?ticket="));
        assert!(with_ticket("ws://h/ws?a=1", &t).starts_with("ws://h/ws?a=1&ticket="));
    }
}

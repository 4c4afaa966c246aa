//! A contributor's side of the WebSocket, spoken by hand: the next message, and the real
//! handshake (Hello, Challenge, signed Proof).

use std::net::TcpStream;

use tessera_protocol::identity::{handshake_message, HANDSHAKE};
use tessera_protocol::messages::{Capabilities, ContributorKind, SessionMessage};
use tessera_protocol::{decode, encode, Identity, Signed, ToContributor, ToCoordinator};
use tungstenite::{Message, WebSocket};

/// A contributor's socket.
pub type Ws = WebSocket<TcpStream>;

/// The next protocol message, or `None` once the socket is closed.
pub fn next(ws: &mut Ws) -> Option<ToContributor> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Some(decode(&b, 64 << 20).expect("a frame")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The handshake of `id` as a native contributor (`software`) with a memory budget of
/// `budget` bytes: Hello, then the Proof for the Challenge. Returns the first message after the
/// Challenge (`Welcome`, or why not) and the session's nonce (what its messages are signed over).
pub fn handshake(
    ws: &mut Ws,
    id: &Identity,
    budget: u64,
    software: &str,
) -> (Option<ToContributor>, [u8; 32]) {
    handshake_as(ws, id, "none", budget, software)
}

/// [`handshake`] with the adapter name `adapter` in the Hello's capabilities.
pub fn handshake_as(
    ws: &mut Ws,
    id: &Identity,
    adapter: &str,
    budget: u64,
    software: &str,
) -> (Option<ToContributor>, [u8; 32]) {
    let hello = ToCoordinator::Hello {
        key: id.public(),
        kind: ContributorKind::Native,
        software: software.into(),
        capabilities: Capabilities {
            adapter: adapter.into(),
            backend: "none".into(),
            max_binding_bytes: 1 << 30,
            memory_budget_bytes: budget,
        },
    };
    ws.send(Message::Binary(encode(&hello).unwrap().into()))
        .expect("send Hello");
    let Some(ToContributor::Challenge {
        nonce, coordinator, ..
    }) = next(ws)
    else {
        panic!("no challenge");
    };
    let signature = id.sign(
        HANDSHAKE,
        &handshake_message(&nonce, &coordinator, &id.public()),
    );
    ws.send(Message::Binary(
        encode(&ToCoordinator::Proof { signature }).unwrap().into(),
    ))
    .expect("send Proof");
    (next(ws), nonce)
}

/// Sends `body` as message `seq` of the session with `nonce`, signed by `id`.
pub fn say(ws: &mut Ws, id: &Identity, nonce: &[u8; 32], seq: u64, body: SessionMessage) {
    assert!(try_say(ws, id, nonce, seq, body), "send a session message");
}

/// [`say`], for a socket the coordinator may have closed: whether it was sent.
pub fn try_say(
    ws: &mut Ws,
    id: &Identity,
    nonce: &[u8; 32],
    seq: u64,
    body: SessionMessage,
) -> bool {
    let m = ToCoordinator::Session(Signed::new(id, nonce, seq, body).expect("signed"));
    ws.send(Message::Binary(encode(&m).unwrap().into())).is_ok()
}

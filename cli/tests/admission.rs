//! Admission by proof of work against a real `tessera coordinator` process: `GET
//! /api/admission` offers a puzzle; a `/ws` upgrade without a ticket is refused with 401 and a
//! puzzle in its body; malformed, forged, unsolved and reused tickets are refused before the
//! upgrade, each with its code; a solved ticket admits the key it names only (a `Hello` with
//! another key is closed); a real `tessera worker` solves the puzzle from the 401 and takes a lease;
//! a ticket whose upgrade the connection limit refuses is not used up.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::contributor::{handshake, next, Ws};
use common::{coordinator_with, data, free_port, get_text, scratch, wait_for, worker_logged};
use tessera_protocol::admission::{solve, Puzzle, Ticket};
use tessera_protocol::{Code, Identity, ToContributor};

const LIMIT: Duration = Duration::from_secs(120);
const BITS: u8 = 12;

/// A WebSocket upgrade to `/ws` with `query`: the socket, or the status and JSON body of the
/// refusal.
fn upgrade(port: u16, query: &str) -> Result<Ws, (u16, serde_json::Value)> {
    let req = format!("ws://127.0.0.1:{port}/ws{query}");
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            let body = r.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            Err((r.status().as_u16(), json))
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

fn refusal(port: u16, query: &str) -> (u16, String, serde_json::Value) {
    let (status, body) = upgrade(port, query).map(|_| ()).expect_err("refused");
    let code = body["code"].as_str().unwrap_or_default().to_string();
    (status, code, body)
}

fn offered(port: u16) -> Puzzle {
    let body: serde_json::Value = get_json(port, "/api/admission");
    assert_eq!(body["bits"], u64::from(BITS), "{body}");
    Puzzle::from_hex(body["puzzle"].as_str().expect("a puzzle")).expect("a puzzle's hex")
}

fn get_json(port: u16, path: &str) -> serde_json::Value {
    let body = get_text(port, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn only_a_solved_ticket_for_the_hello_s_key_opens_the_socket_and_a_worker_solves_one() {
    let port = free_port();
    let dir = scratch("admission");
    let bits = BITS.to_string();
    let args: [&std::ffi::OsStr; 2] = ["--admission-bits".as_ref(), bits.as_ref()];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &args);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);

    // No ticket: 401, with a puzzle to solve in the body.
    let (status, code, body) = refusal(port, "");
    assert_eq!(
        (status, code.as_str()),
        (401, "admission_required"),
        "{body}"
    );
    assert!(
        body["puzzle"].as_str().is_some_and(|p| p.len() == 114),
        "{body}"
    );
    assert!(
        body["scheme"]
            .as_str()
            .is_some_and(|s| s.contains("SHA-256")),
        "{body}"
    );

    // Not a ticket: 400, refused by its length before anything is decoded.
    let long = "0".repeat(5000);
    for q in ["?ticket=", "?ticket=xyz", &format!("?ticket={long}")] {
        let (status, code, body) = refusal(port, q);
        assert_eq!((status, code.as_str()), (400, "malformed_ticket"), "{body}");
    }

    let id = Identity::from_seed([41; 32]);
    // A puzzle the coordinator never issued (its own tag made up), solved: forged.
    let made_up = Puzzle {
        tag: [7; 32],
        ..offered(port)
    };
    let (t, _) = solve(made_up, id.public());
    let (status, code, _) = refusal(port, &format!("?ticket={}", t.to_hex()));
    assert_eq!((status, code.as_str()), (401, "forged_ticket"));
    // Its own puzzle with a lowered difficulty: the tag covers the bits.
    let lowered = Puzzle {
        bits: 1,
        ..offered(port)
    };
    let (t, _) = solve(lowered, id.public());
    let (_, code, _) = refusal(port, &format!("?ticket={}", t.to_hex()));
    assert_eq!(code, "forged_ticket");
    // A nonce that does not solve it.
    let (mut t, _) = solve(offered(port), id.public());
    while t.is_solved() {
        t.nonce += 1;
    }
    let (_, code, _) = refusal(port, &format!("?ticket={}", t.to_hex()));
    assert_eq!(code, "unsolved_ticket");

    // A solved ticket for `id`, used by another key's Hello: closed with a handshake error.
    let (t, _) = solve(offered(port), id.public());
    let mut ws = upgrade(port, &format!("?ticket={}", t.to_hex())).expect("a solved ticket opens");
    let other = Identity::from_seed([42; 32]);
    let hello = tessera_protocol::ToCoordinator::Hello {
        key: other.public(),
        kind: tessera_protocol::messages::ContributorKind::Native,
        software: "admission-test".into(),
        capabilities: tessera_protocol::messages::Capabilities {
            adapter: "none".into(),
            backend: "none".into(),
            max_binding_bytes: 1 << 30,
            memory_budget_bytes: 1,
        },
    };
    ws.send(tungstenite::Message::Binary(
        tessera_protocol::encode(&hello).unwrap().into(),
    ))
    .expect("send Hello");
    let mut why = None;
    while let Some(m) = next(&mut ws) {
        if let ToContributor::Error {
            reason,
            fatal: true,
        } = m
        {
            why = Some(reason);
            break;
        }
    }
    let why = why.expect("a fatal error");
    assert_eq!(why.code, Code::Handshake, "{why}");
    assert!(
        why.text.as_str().contains("admission ticket is for"),
        "{why}"
    );
    // The same ticket again: used.
    let (status, code, _) = refusal(port, &format!("?ticket={}", t.to_hex()));
    assert_eq!((status, code.as_str()), (401, "reused_ticket"));

    // A fresh ticket for `id`, with `id`'s Hello: welcomed.
    let (t, tries) = solve(offered(port), id.public());
    let ticket = Ticket::from_hex(&t.to_hex()).unwrap();
    assert!(ticket.is_solved() && tries > 0);
    let mut ws = upgrade(port, &format!("?ticket={}", t.to_hex())).expect("a solved ticket opens");
    let (welcome, _) = handshake(&mut ws, &id, 1, "admission-test");
    assert!(
        matches!(welcome, Some(ToContributor::Welcome { .. })),
        "{welcome:?}"
    );
    drop(ws);

    // A real worker: refused without a ticket, it solves the puzzle from the 401 and leases.
    let log = dir.with_extension("worker.log");
    let _w = worker_logged(port, &dir.with_extension("worker.key"), &log);
    wait_for(port, LIMIT, "the worker's lease", |s| {
        s["contributors"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["lease"].is_string()))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let solved = text
        .lines()
        .find(|l| l.contains("solved the coordinator's admission puzzle"))
        .unwrap_or_else(|| panic!("the worker did not solve a puzzle: {text}"));
    assert!(solved.contains(&format!("({BITS} bits")), "{solved}");
    println!("{solved}");
}

#[test]
fn a_ticket_refused_by_the_connection_limit_is_not_used_up() {
    let port = free_port();
    let dir = scratch("admission-gate");
    let bits = BITS.to_string();
    let args: [&std::ffi::OsStr; 4] = [
        "--admission-bits".as_ref(),
        bits.as_ref(),
        "--max-connections-per-address".as_ref(),
        "1".as_ref(),
    ];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &args);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let (first, second) = (Identity::from_seed([41; 32]), Identity::from_seed([42; 32]));
    let (t, _) = solve(offered(port), first.public());
    let held = upgrade(port, &format!("?ticket={}", t.to_hex())).expect("the first opens");
    // The address holds its one connection: the second's solved ticket is refused by the
    // limit, before it is checked.
    let (t, _) = solve(offered(port), second.public());
    let query = format!("?ticket={}", t.to_hex());
    let (status, body) = upgrade(port, &query)
        .map(|_| ())
        .expect_err("over the limit");
    assert_eq!(status, 503, "{body}");
    drop(held);
    // Once the first closes, the same ticket still opens.
    let start = std::time::Instant::now();
    let mut ws = loop {
        match upgrade(port, &query) {
            Ok(ws) => break ws,
            Err((503, _)) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the ticket after the limit refused it: {e:?}"),
        }
    };
    let (welcome, _) = handshake(&mut ws, &second, 1, "admission-gate");
    assert!(
        matches!(welcome, Some(ToContributor::Welcome { .. })),
        "{welcome:?}"
    );
}

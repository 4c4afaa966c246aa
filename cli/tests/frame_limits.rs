//! The contributors' WebSocket of a real coordinator process, attacked as a script would:
//! - 100 sockets that each announce a 64 MiB frame before the handshake and stream its payload
//!   are each closed with a `TooLarge` reason, and the coordinator's peak memory stays under a
//!   bound (the frames are refused on their header; nothing of them is buffered);
//! - a socket that never says Hello is closed with `TimedOut` once the handshake time is up;
//! - a session the core closes (here: replaced by a newer session of the same identity) stops
//!   being read: its socket closes; an identity that only joined and idled leaves nothing in
//!   the run log;
//! - 120 sessions whose heartbeats the connection takes itself outlive the run's silence; a
//!   mute one is closed;
//! - connections over the per-address limit are refused before the upgrade (503, naming the
//!   limit) and admitted again once one closes;
//! - HTTP requests from one address over its rate are answered 429 with `Retry-After`, and
//!   served again once that time has passed;
//! - a browser page of another origin may not open `/ws` (403, naming the origin), one of an
//!   origin the operator allowed may, and so may the coordinator's own page and native workers.
//!
//! The coordinator still serves afterwards.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::contributor::{handshake, next, say, Ws};
use common::{
    coordinator_with, data, free_port, get_text, http_get, loopback_crowd, memory, scratch, status,
    wait_for,
};
use tessera_protocol::messages::SessionMessage;
use tessera_protocol::{decode, Code, Identity, ToContributor};
use tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(120);
/// Sockets in the attack.
const SOCKETS: usize = 100;
/// What a frame announces.
const ANNOUNCED: u64 = 64 << 20;
/// The coordinator's peak resident memory must stay under this (a tiny run idles near 40 MiB;
/// one 16 MB frame before the handshake used to take it past 1 GB).
const PEAK_BOUND: u64 = 256 << 20;

fn connect(port: u16) -> Ws {
    let ws = try_connect(port).expect("WebSocket upgrade");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    ws
}

/// The reason of the fatal error the coordinator closes a socket with.
fn fatal_reason(ws: &mut Ws) -> (Code, String) {
    while let Some(msg) = next(ws) {
        if let ToContributor::Error {
            reason,
            fatal: true,
        } = msg
        {
            return (reason.code, reason.text.as_str().to_string());
        }
    }
    panic!("the socket closed without a fatal error");
}

/// A masked binary frame header announcing `len` bytes.
fn header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[9, 8, 7, 6]);
    h
}

/// One attacking socket: the header of a 64 MiB frame before Hello, then as much of its
/// payload as the coordinator takes, while the reply is read on the side.
fn attack(port: u16) -> (Code, String) {
    let mut ws = connect(port);
    let mut raw = ws.get_ref().try_clone().expect("clone the socket");
    let writer = std::thread::spawn(move || {
        raw.set_write_timeout(Some(Duration::from_secs(5))).ok();
        let _ = raw.write_all(&header(ANNOUNCED));
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        while sent < ANNOUNCED {
            match raw.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        sent
    });
    let reason = fatal_reason(&mut ws);
    let sent = writer.join().expect("writer");
    assert!(sent < ANNOUNCED, "the coordinator read the whole frame");
    reason
}

/// The real handshake of `id` on a fresh socket, too small a budget for a lease; the socket
/// once welcomed.
fn join(port: u16, id: &Identity) -> Ws {
    let mut ws = connect(port);
    match handshake(&mut ws, id, 1, "frame-limits") {
        (Some(ToContributor::Welcome { .. }), _) => ws,
        (other, _) => panic!("not welcomed: {other:?}"),
    }
}

/// Heartbeats on `ws` every 700 ms for `how_long`; panics if the coordinator closes the session.
fn beat(ws: &mut Ws, id: &Identity, nonce: &[u8; 32], how_long: Duration) {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut seq = 1;
    while start.elapsed() < how_long {
        say(
            ws,
            id,
            nonce,
            seq,
            SessionMessage::Heartbeat {
                log_head: Default::default(),
            },
        );
        seq += 1;
        // Whatever comes (a lease and its weights, or a budget refusal) is read; a fatal error
        // would end the session.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(700) {
            if let Ok(Message::Binary(b)) = ws.read() {
                if let Ok(ToContributor::Error {
                    reason,
                    fatal: true,
                }) = decode(&b, 1 << 20)
                {
                    panic!("a heartbeating session was closed: {reason:?}");
                }
            }
        }
    }
}

#[test]
fn heartbeats_taken_by_the_transport_keep_a_session_alive_and_silence_still_closes() {
    let port = free_port();
    let dir = scratch("heartbeats");
    std::fs::create_dir_all(&dir).unwrap();
    // Silence of 6 s; heartbeats stop at the connection, and the core hears of them only when
    // it would close a session as silent. 120 leased sessions, each heartbeating for 8 s, pass
    // that point: none may be closed. A mute session holding a lease is closed after 6 s; a
    // mute one holding none (it has nothing the run waits for) after the idle silence, four
    // idle heartbeats of four heartbeats each (24 s), which is past the handshake's 20 s: a
    // welcomed session that sends nothing is not taken for one that never finished its
    // handshake.
    let run = dir.with_extension("toml");
    let e2e = std::fs::read_to_string(data("e2e.toml")).unwrap();
    std::fs::write(&run, e2e.replace("silence_secs = 30", "silence_secs = 6")).unwrap();
    let raised = loopback_crowd("500");
    let _c = coordinator_with(&run, port, &dir, None, &raised);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let mute = Identity::from_seed([8; 32]);
    let idle = Identity::from_seed([9; 32]);
    let beating: Vec<Identity> = (0..120u8)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[1] = i;
            Identity::from_seed(seed)
        })
        .collect();
    let start = Instant::now();
    let mut quiet = connect(port);
    let (Some(ToContributor::Welcome { .. }), _) = handshake(&mut quiet, &mute, 1 << 30, "mute")
    else {
        panic!("not welcomed");
    };
    let mut idle_ws = join(port, &idle);
    let crowd: Vec<_> = beating
        .iter()
        .map(|id| {
            let id = id.clone();
            std::thread::spawn(move || {
                let mut ws = connect(port);
                let (Some(ToContributor::Welcome { .. }), nonce) =
                    handshake(&mut ws, &id, 1 << 30, "hb")
                else {
                    panic!("not welcomed");
                };
                beat(&mut ws, &id, &nonce, Duration::from_secs(8));
                ws
            })
        })
        .collect();
    let _open: Vec<Ws> = crowd
        .into_iter()
        .map(|t| t.join().expect("a heartbeating session"))
        .collect();
    // Eight seconds of heartbeats, past the 6 s of silence: every session is still listed,
    // the idle mute one too, and the leased mute one is gone, its socket closed.
    let mut keys: Vec<String> = status(port).expect("status")["contributors"]
        .as_array()
        .expect("contributors")
        .iter()
        .filter_map(|c| c["key"].as_str().map(String::from))
        .collect();
    keys.sort();
    let mut want: Vec<String> = beating
        .iter()
        .chain([&idle])
        .map(|id| id.public().to_string())
        .collect();
    want.sort();
    assert_eq!(keys, want);
    // The mute ones are told why before their sockets close.
    let (code, why) = fatal_reason(&mut quiet);
    assert_eq!(code, Code::Silent, "{why}");
    assert!(why.contains("silent for over 6 s"), "{why}");
    while next(&mut quiet).is_some() {}
    let (code, why) = fatal_reason(&mut idle_ws);
    let idle_for = start.elapsed();
    assert_eq!(code, Code::Silent, "{why}");
    assert!(why.contains("silent for over 24 s"), "{why}");
    assert!(idle_for >= Duration::from_secs(24), "{idle_for:?}");
    assert!(start.elapsed() < Duration::from_secs(40));
}

#[test]
fn oversized_frames_silence_and_closed_sessions_cost_the_coordinator_nothing() {
    let port = free_port();
    let dir = scratch("frame-limits");
    // The attack's sockets all come from 127.0.0.1: the per-address limits are raised for them.
    let raised = loopback_crowd("500");
    let c = coordinator_with(&data("e2e.toml"), port, &dir, None, &raised);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let pid = c.0.id();
    let started = Instant::now();
    let mut silent = connect(port);
    let idle = memory(pid, "VmRSS:");

    let attackers: Vec<_> = (0..SOCKETS)
        .map(|_| std::thread::spawn(move || attack(port)))
        .collect();
    for a in attackers {
        let (code, text) = a.join().expect("attacker");
        assert_eq!(code, Code::TooLarge, "{text}");
        assert!(text.contains("before the handshake"), "{text}");
    }
    let peak = memory(pid, "VmHWM:");
    println!(
        "{SOCKETS} sockets announcing {} MiB frames before the handshake: coordinator resident {} MiB idle, peak {} MiB (bound {} MiB)",
        ANNOUNCED >> 20,
        idle >> 20,
        peak >> 20,
        PEAK_BOUND >> 20
    );
    assert!(peak < PEAK_BOUND, "peak resident memory {peak} bytes");

    // A session the core closes is no longer read: its socket closes.
    let id = Identity::from_seed([5; 32]);
    let mut first = join(port, &id);
    let _second = join(port, &id);
    let closed = Instant::now();
    while next(&mut first).is_some() {}
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "the replaced session's socket stayed open"
    );
    // An identity that only joined (twice) and idled left nothing in the run log.
    let log = get_text(port, "/api/log");
    assert!(log.contains("Started"), "{log}");
    assert!(
        !log.contains("Joined") && !log.contains(&id.public().fingerprint()),
        "{log}"
    );

    // The socket that never said Hello is closed once the handshake time is up.
    let (code, text) = fatal_reason(&mut silent);
    assert_eq!(code, Code::TimedOut, "{text}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(19) && waited < Duration::from_secs(60),
        "closed after {waited:?}"
    );
    assert!(status(port).is_some(), "the coordinator still serves");
}

/// A WebSocket upgrade: the socket, or the HTTP status and body it was refused with.
fn try_connect(port: u16) -> Result<Ws, (u16, String)> {
    upgrade_from(port, None)
}

#[test]
fn connections_over_the_per_address_limit_are_refused_until_one_closes() {
    let port = free_port();
    let dir = scratch("connection-limits");
    let three: [&std::ffi::OsStr; 2] = ["--max-connections-per-address".as_ref(), "3".as_ref()];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &three);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let mut held: Vec<Ws> = (0..3)
        .map(|_| try_connect(port).expect("admitted"))
        .collect();
    let (code, body) = try_connect(port)
        .map(|_| ())
        .expect_err("a fourth is refused");
    assert_eq!(code, 503);
    assert!(
        body.contains("127.0.0.1 holds its most connections to this coordinator (3)"),
        "{body}"
    );
    // The status page is not a contributor connection: it still answers.
    assert!(status(port).is_some());
    let mut gone = held.pop().unwrap();
    gone.close(None).ok();
    drop(gone);
    let start = Instant::now();
    loop {
        match try_connect(port) {
            Ok(_) => break,
            Err((503, _)) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("not admitted after a connection closed: {e:?}"),
        }
    }
}

/// `GET path` over a fresh TCP connection: the status code and the `Retry-After` header.
fn get(port: u16, path: &str) -> (u16, Option<u64>) {
    let text = http_get(port, path);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let retry = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok());
    (code, retry)
}

#[test]
fn http_requests_over_an_address_rate_are_answered_429_until_it_waits() {
    let port = free_port();
    let dir = scratch("request-rate");
    let five: [&std::ffi::OsStr; 2] = ["--requests-per-second".as_ref(), "5".as_ref()];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &five);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    std::thread::sleep(Duration::from_secs(3)); // the burst refills after the waits above
    let started = Instant::now();
    let answers: Vec<_> = (0..40).map(|_| get(port, "/api/log?limit=1")).collect();
    let took = started.elapsed().as_secs_f64();
    let served = answers.iter().filter(|(c, _)| *c == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(c, _)| *c == 429).collect();
    println!(
        "40 requests in {took:.2} s at 5/s (bursts of 10): {served} served, {} refused",
        refused.len()
    );
    assert_eq!(served + refused.len(), 40, "{answers:?}");
    assert!(
        served as f64 <= 10.0 + 5.0 * took + 1.0,
        "{served} served in {took:.2} s"
    );
    assert!(!refused.is_empty());
    let wait = refused[0].1.expect("a 429 says when to come back");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(
        get(port, "/api/log?limit=1").0,
        200,
        "served again after the wait"
    );
}

/// A WebSocket upgrade with `origin` (as a browser sends it): the socket, or the HTTP status and
/// body it was refused with.
fn upgrade_from(port: u16, origin: Option<&str>) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("a request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("a header value"));
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            let body = r.body().clone().unwrap_or_default();
            Err((
                r.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[test]
fn pages_of_other_origins_may_not_contribute_unless_allowed() {
    let port = free_port();
    let dir = scratch("origins");
    let allow: [&std::ffi::OsStr; 2] = [
        "--allow-origin".as_ref(),
        "https://friends.example".as_ref(),
    ];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &allow);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let (code, body) = upgrade_from(port, Some("https://evil.example"))
        .map(|_| ())
        .expect_err("another origin is refused");
    assert_eq!(code, 403);
    assert!(
        body.contains("pages from https://evil.example may not contribute here"),
        "{body}"
    );
    for ok in [
        Some("https://friends.example"),
        Some(format!("http://127.0.0.1:{port}").as_str()),
        None,
    ] {
        // Upgraded (101): the socket is the contributor's to handshake on.
        let mut ws = upgrade_from(port, ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e:?}"));
        ws.close(None).ok();
    }
}

//! The HTTP server's sockets, against a real coordinator process, as a script would use them:
//! - a socket that sends nothing, and one that sends a request's head a line a second, are
//!   both closed once the header-read timeout (10 s) has passed, and the coordinator serves on;
//! - sockets from one address beyond twice `--max-connections-per-address` are answered 503
//!   naming the cap and closed, before any byte of theirs is read; once one closes, the address
//!   is served again.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{coordinator_with, data, free_port, http_get, scratch, status, wait_for};

const LIMIT: Duration = Duration::from_secs(120);
/// The coordinator's header-read timeout.
const HEADER_READ: Duration = Duration::from_secs(10);

/// Reads until the peer closes the socket (or resets it); how long that took. Fails after
/// `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < limit,
            "the socket is still open after {limit:?}"
        );
    }
}

#[test]
fn silent_and_slow_sockets_are_closed_after_the_header_read_timeout() {
    let port = free_port();
    let dir = scratch("header-timeout");
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &[]);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let slow = std::thread::spawn(move || {
        // A request's head, one header line a second: never finished.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        s.write_all(b"GET /api/status HTTP/1.1\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 1024];
        for i in 0.. {
            assert!(
                start.elapsed() < HEADER_READ * 2,
                "a head sent a line a second is still read after {:?}",
                start.elapsed()
            );
            if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        start.elapsed()
    });
    let quiet = closed_within(&mut silent, HEADER_READ * 2);
    let slowly = slow.join().unwrap();
    for (what, took) in [("silent", quiet), ("slow", slowly)] {
        assert!(
            took >= HEADER_READ - Duration::from_secs(2),
            "the {what} socket was closed after {took:?}, before the header-read timeout"
        );
    }
    assert!(status(port).is_some(), "the coordinator still serves");
}

#[test]
fn sockets_over_the_per_address_cap_are_answered_503_until_one_closes() {
    let port = free_port();
    let dir = scratch("socket-cap");
    let two: [&std::ffi::OsStr; 2] = ["--max-connections-per-address".as_ref(), "2".as_ref()];
    let _c = coordinator_with(&data("e2e.toml"), port, &dir, None, &two);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    // The status polls' sockets are closed and their places given back.
    std::thread::sleep(Duration::from_millis(300));
    // Twice the WebSocket limit: four sockets that never send a byte.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Give the coordinator a moment to accept them all.
    std::thread::sleep(Duration::from_millis(300));
    let answer = http_get(port, "/api/status");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("127.0.0.1 holds its most sockets to this coordinator (4"),
        "{answer}"
    );
    drop(held.pop());
    let start = Instant::now();
    loop {
        let answer = http_get(port, "/api/status");
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not served after a socket closed: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! The contributor page travels inside the `tessera` binary: a coordinator started from a
//! directory that holds no page, without `--web`, serves the page the binary embedded when it
//! was built (`cli/build.rs`; `scripts/test-all` builds the page before the tests), byte for
//! byte; a binary built without one answers `/` with how to build it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{data, free_port, get_text, http_get, scratch, wait_for, Proc};

mod page {
    include!(concat!(env!("OUT_DIR"), "/page.rs"));
}

/// `GET path`: the answer's status line and headers, and its body's bytes.
fn raw_get(port: u16, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("answer");
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    (
        String::from_utf8_lossy(&bytes[..split]).to_lowercase(),
        bytes[split + 4..].to_vec(),
    )
}

#[test]
fn the_binary_serves_its_page_from_any_directory() {
    let dir = scratch("embedded-page");
    let port = free_port();
    let _c = Proc(
        Command::new(common::exe())
            .args(["coordinator", "--config"])
            .arg(data("e2e.toml"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.join("run"))
            .args(["--admission-bits", "0"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the coordinator"),
    );
    wait_for(port, Duration::from_secs(60), "the coordinator", |_| true);
    let answer = http_get(port, "/");
    match page::EMBEDDED {
        Some(files) => {
            let index = files
                .iter()
                .find(|(f, _)| *f == "index.html")
                .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                .expect("the embedded index.html");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert_eq!(get_text(port, "/"), index);
            let (head, body) = raw_get(port, "/tessera-client-wasm_bg.wasm");
            assert!(head.contains("content-type: application/wasm"), "{head}");
            let want = files
                .iter()
                .find(|(f, _)| *f == "tessera-client-wasm_bg.wasm")
                .map(|(_, b)| *b)
                .expect("the embedded wasm");
            assert_eq!(body, want, "the wasm byte for byte");
            println!(
                "served the embedded page ({} files) from {}",
                files.len(),
                dir.display()
            );
        }
        None => {
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
            assert!(answer.contains("scripts/build-web"), "{answer}");
            println!("this binary has no page: / says how to build one");
        }
    }
}

//! The WebSocket shell with bad peers: malformed, wrong-version, text and oversized frames get a
//! clear error (where the socket still carries one) and the connection closed, while the run
//! goes on unchanged for everyone else.

mod common;

use futures_util::{SinkExt, StreamExt};
use tessera_coordinator::server;
use tessera_coordinator::store::Store;
use tessera_protocol::messages::SyncMode;
use tessera_protocol::{
    decode, encode, Code, Reason, ToContributor, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

async fn start() -> (server::Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "tessera-transport-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let store = Store::open(&dir, None).await.unwrap();
    let core = common::core(common::spec(2, 3, SyncMode::Dense));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (
        server::serve(core, store, listener, None).await.unwrap(),
        dir,
    )
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Ws {
    let cfg = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(cfg), true)
        .await
        .unwrap()
        .0
}

/// Sends one frame; returns the error message the coordinator answered with (if any) and
/// whether the connection then closed.
async fn probe(addr: std::net::SocketAddr, frame: Message) -> (Option<Reason>, bool) {
    let mut ws = connect(addr).await;
    let _ = ws.send(frame).await;
    let mut error = None;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ToContributor::Error { reason, .. }) = decode(&b, MAX_FRAME_BYTES) {
                    error = Some(reason);
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return (error, true),
            Ok(Some(Ok(_))) => {}
            Err(_) => return (error, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_refused_and_change_nothing() {
    let (running, dir) = start().await;
    let addr = running.addr;
    let (e, closed) = probe(
        addr,
        Message::Binary(vec![1, 2, 3, 4, 5, 6, 7, 8, 9].into()),
    )
    .await;
    let code = |e: &Option<Reason>| e.as_ref().map(|r| r.code);
    assert!(closed && code(&e) == Some(Code::MalformedFrame), "{e:?}");
    let mut v2 = encode(&common::Client::new(1).hello(1 << 30)).unwrap();
    v2[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let (e, closed) = probe(addr, Message::Binary(v2.into())).await;
    assert!(closed && code(&e) == Some(Code::ProtocolVersion), "{e:?}");
    let mut cut = encode(&common::Client::new(1).hello(1 << 30)).unwrap();
    cut.truncate(cut.len() - 5);
    let (e, closed) = probe(addr, Message::Binary(cut.into())).await;
    assert!(closed && code(&e) == Some(Code::MalformedFrame), "{e:?}");
    let (e, closed) = probe(addr, Message::Text("hello".into())).await;
    assert!(closed && code(&e) == Some(Code::MalformedFrame), "{e:?}");
    let (_, closed) = probe(addr, Message::Binary(vec![0u8; MAX_FRAME_BYTES + 1].into())).await;
    assert!(closed, "an oversized frame closes the connection");
    // Nothing changed: no sessions, round 0; an honest peer still gets its challenge.
    let st = running.status.lock().unwrap().clone();
    assert_eq!((st.round, st.contributors.len()), (0, 0));
    let mut ws = connect(addr).await;
    ws.send(Message::Binary(
        encode(&common::Client::new(2).hello(1 << 30))
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    let Some(Ok(Message::Binary(b))) = ws.next().await else {
        panic!("no answer")
    };
    assert!(matches!(
        decode::<ToContributor>(&b, MAX_FRAME_BYTES),
        Ok(ToContributor::Challenge { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// When the ledger cannot be written, no receipt goes out for the unrecorded contribution and
/// the coordinator stops (a restart resumes from what was recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ledger_write_sends_no_receipt_and_stops() {
    let (mut running, dir) = start().await;
    // Make the ledger unwritable in a way that holds even for root: a file where the folder was.
    let _ = std::fs::remove_dir_all(dir.join("ledger"));
    std::fs::write(dir.join("ledger"), b"not a folder").unwrap();
    let mut ws = connect(running.addr).await;
    let mut client = common::Client::new(5);
    let cfg = common::tiny_model();
    let send = |m: &tessera_protocol::ToCoordinator| Message::Binary(encode(m).unwrap().into());
    ws.send(send(&client.hello(1 << 30))).await.unwrap();
    let mut receipts = 0;
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            r = running.finished.wait_for(|o| *o != server::Outcome::Running) => {
                assert!(matches!(&*r.unwrap(), server::Outcome::Failed(why) if why.contains("recording a contribution")));
                break;
            }
        };
        let Some(Ok(Message::Binary(b))) = msg else {
            continue;
        };
        match decode::<ToContributor>(&b, MAX_FRAME_BYTES).unwrap() {
            ToContributor::Challenge {
                nonce, coordinator, ..
            } => ws
                .send(send(&client.proof(nonce, &coordinator)))
                .await
                .unwrap(),
            ToContributor::Lease(l) => {
                let ready = client.signed(tessera_protocol::messages::SessionMessage::Ready {
                    lease: l.lease,
                    log_head: Default::default(),
                });
                ws.send(send(&ready)).await.unwrap();
            }
            ToContributor::Work(w) => {
                let sub = client.submission(&cfg, &w, 0.1);
                ws.send(send(&client.signed(
                    tessera_protocol::messages::SessionMessage::Submit(sub),
                )))
                .await
                .unwrap();
            }
            ToContributor::Receipt { .. } => receipts += 1,
            _ => {}
        }
    }
    assert_eq!(receipts, 0, "no receipt for work that is not recorded");
    let _ = std::fs::remove_dir_all(dir);
}

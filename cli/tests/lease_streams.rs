//! Leases of a real coordinator process stream their weights: sessions that take a lease of a
//! 52 MB model and then read nothing cost the coordinator about one frame each, not a copy of
//! the model each (every lease's frames used to be queued at once, so N such sessions held N
//! copies); a session that reads gets every frame its lease announces; none of these
//! identities, which took leases and did no work, is in the run log; and the coordinator still
//! serves afterwards.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::contributor::{handshake, next, Ws};
use common::{
    coordinator_with, free_port, get_text, loopback_crowd, memory, scratch, status, wait_for,
};
use tessera_protocol::{Identity, ToContributor};

const LIMIT: Duration = Duration::from_secs(120);
/// Sessions that take a lease and never read it.
const STALLED: usize = 24;

/// A model of about 13M parameters (52 MB of f32): big enough that copies show.
fn model() -> tessera_compute::ModelConfig {
    let mut m = tessera_plan::preset("small-byte").expect("a preset");
    m.hidden_size = 512;
    m.intermediate_size = 1376;
    m.num_attention_heads = 32;
    m.num_key_value_heads = 16;
    m
}

/// Joins as `id` with a budget for a whole replica and reads up to the lease's message: the
/// socket and the frames the lease announces.
fn lease(port: u16, id: &Identity) -> (Ws, u32) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut ws, _) =
        tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), tcp).expect("upgrade");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (mut msg, _) = handshake(&mut ws, id, 1 << 40, "lease-streams");
    loop {
        match msg {
            Some(ToContributor::Lease(l)) => return (ws, l.frames),
            Some(_) => msg = next(&mut ws),
            None => panic!("closed before a lease"),
        }
    }
}

#[test]
fn leases_stream_their_weights_so_sessions_that_do_not_read_hold_no_copy_of_the_model() {
    let port = free_port();
    let dir = scratch("lease-streams");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = model();
    let weights = cfg.parameter_count() * 4;
    let config_json = dir.with_extension("config.json");
    std::fs::write(&config_json, cfg.to_hf_json()).unwrap();
    let run = dir.with_extension("toml");
    std::fs::write(
        &run,
        format!(
            "name = \"streams\"\nseed = 1\nrounds = 100\n[model]\nconfig = {:?}\n[data]\nbuiltin = true\n[train]\nreplicas = 3\ninner_steps = 1\nbatch = 1\nseq = 64\nsync = \"sparse\"\n",
            config_json.display().to_string()
        ),
    )
    .unwrap();
    let raised = loopback_crowd("100");
    let c = coordinator_with(&run, port, &dir, None, &raised);
    wait_for(port, LIMIT, "the coordinator serving", |_| true);
    let pid = c.0.id();
    let idle = memory(pid, "VmRSS:");

    let started = Instant::now();
    let stalled: Vec<(Ws, u32)> = (0..STALLED)
        .map(|i| lease(port, &Identity::from_seed([i as u8 + 1; 32])))
        .collect();
    let frames = stalled[0].1;
    assert!(frames > 1, "the weights come in several frames");
    // The writers have pushed what the sockets take; nothing more piles up.
    std::thread::sleep(Duration::from_secs(3));
    let peak = memory(pid, "VmHWM:");
    // Each stalled session holds at most the frame its socket has not taken (4 MiB of
    // values, twice: the payload and its encoding), besides the model the core holds itself
    // (weights, the previous round's aggregate, and a copy for a stream while it changes).
    let frame = 8u64 << 20;
    let bound = idle + 3 * weights + STALLED as u64 * frame;
    println!(
        "{STALLED} sessions not reading leases of {} MB ({frames} frames each): coordinator resident {} MiB idle, peak {} MiB (bound {} MiB; queued whole, the leases would be {} MiB)",
        weights / 1_000_000,
        idle >> 20,
        peak >> 20,
        bound >> 20,
        (STALLED as u64 * weights) >> 20
    );
    assert!(peak < bound, "peak resident {peak} bytes over {bound}");

    // A session that reads gets every frame its lease announced.
    let (mut ws, announced) = lease(port, &Identity::from_seed([200; 32]));
    let mut got = 0;
    while got < announced {
        match next(&mut ws) {
            Some(ToContributor::Weights { .. }) => got += 1,
            Some(_) => {}
            None => panic!("closed after {got} of {announced} frames"),
        }
    }
    assert_eq!(got, frames);
    // Identities that took leases and did no work are not in the run log.
    let log = get_text(port, "/api/log");
    assert!(log.contains("Started"), "{log}");
    assert!(
        !log.contains("Joined") && !log.contains("Leased"),
        "leases without work were logged: {log}"
    );
    assert!(status(port).is_some(), "still serving");
    assert!(started.elapsed() < LIMIT);
    drop(stalled);
}

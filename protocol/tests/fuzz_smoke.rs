//! A time-boxed fuzz run of every decoder untrusted bytes reach: contributors' frames
//! (`ToCoordinator`: the handshake and every session message, pipeline outputs, gradient sums
//! and audit results included), the coordinator's frames as a worker reads them
//! (`ToContributor`: leases, weights, whole-model and pipeline work, audits, collects), and
//! run-log entries as stored and served (`StoredEntry::decode`, which reads both log formats).
//! A corpus of valid encodings of every message kind is mutated (bit flips, random and boundary
//! bytes, inserted huge lengths, truncation, splices of two inputs, repeated runs); no input may
//! panic, whatever decodes must re-encode to what decodes to the same message, and a counting
//! allocator holds each decode to a memory bound: at most twice the decode budget of its input
//! (`bounded::budget_for`: twice the frame plus 1 MiB), which leaves room for a vector's growth.
//!
//! CI runs it for `TESSERA_FUZZ_SECS` (default 20) seconds; the long run is
//! `TESSERA_FUZZ_SECS=3600 cargo test --release -p tessera-protocol --test fuzz_smoke -- --nocapture`.
//! `TESSERA_FUZZ_SEED` picks the mutation sequence (default 1); a failing input is printed in hex
//! with the seed and its position in the run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tessera_protocol::bounded::budget_for;
use tessera_protocol::log::{LogEntry, LogEvent, SignedEntry};
use tessera_protocol::log_store::StoredEntry;
use tessera_protocol::messages::{
    Capabilities, ContributorKind, InnerOptimizer, Lease, LogHead, NamedTensor, SessionMessage,
    ShardSpec, SparseUpdate, Submission, SyncMode, Update,
};
use tessera_protocol::pipeline::{
    AuditResult, AuditWork, HeadBackward, HeadSlice, Pass, PipeResult, PipeWork, ShardGrads,
    StepGrads, UnitOutput,
};
use tessera_protocol::{
    decode, encode, ActEncoding, Activation, Code, Identity, Reason, Signed, TensorPayload,
    ToContributor, ToCoordinator, MAX_FRAME_BYTES,
};

/// Counts live heap bytes, and the most live at once since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes `f` held at its peak beyond what was live when it started.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn id(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

fn tensor(n: usize) -> TensorPayload {
    let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
    TensorPayload::from_f32(&[n], &v)
}

fn head() -> LogHead {
    LogHead {
        index: 3,
        hash: [7; 32],
    }
}

fn submission(result: Update) -> Submission {
    Submission {
        unit: 7,
        lease: 3,
        weights: 2,
        tokens: 512,
        loss_sum: 1234.5,
        result,
        log_head: head(),
    }
}

/// An activation `[2, 4]` in `encoding`.
fn activation(encoding: ActEncoding) -> Activation {
    let values: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    Activation::encode(&[2, 4], &values, encoding)
}

/// A pipeline unit of the first block stage.
fn pipe_work(pass: Pass) -> PipeWork {
    PipeWork {
        unit: 11,
        lease: 2,
        step: 3,
        micro_batch: 1,
        stages: [1, 2],
        shards: vec![
            ShardSpec::Attn {
                layer: 0,
                groups: [0, 1],
            },
            ShardSpec::Mlp {
                layer: 0,
                cols: [0, 16],
            },
        ],
        pass,
        weights: 3,
        tokens: Some(TensorPayload::from_u32(&[2], &[5, 9])),
        input: Some(activation(ActEncoding::Bf16)),
        grad: (pass == Pass::Backward).then(|| activation(ActEncoding::Int8)),
        head: (pass == Pass::Backward).then(|| HeadBackward {
            lse: tensor(2),
            inv_count: 0.5,
        }),
        output: ActEncoding::Bf16,
    }
}

/// A micro-shard's gradient sums.
fn shard_grads() -> ShardGrads {
    ShardGrads {
        shard: ShardSpec::Embed { rows: [0, 8] },
        tensors: Update::Dense(vec![NamedTensor {
            name: "model.embed_tokens.weight".into(),
            tensor: tensor(8),
        }]),
    }
}

/// Valid frames of the messages contributors send.
fn to_coordinator() -> Vec<Vec<u8>> {
    let nonce = [5u8; 32];
    let signed = |seq: u64, m: SessionMessage| {
        ToCoordinator::Session(Signed::new(&id(1), &nonce, seq, m).expect("signs"))
    };
    let dense = Update::Dense(vec![
        NamedTensor {
            name: "model.norm.weight".into(),
            tensor: tensor(16),
        },
        NamedTensor {
            name: "lm_head.weight".into(),
            tensor: tensor(4),
        },
    ]);
    let sparse = Update::Sparse(Box::new(SparseUpdate {
        chunk: [4, 4],
        k: 2,
        levels: tensor(8),
        codes: vec![0b1110_0100, 0b0001_1011],
        positions: vec![0b1011_0010, 0b0110_1101, 0b0000_0101],
    }));
    [
        ToCoordinator::Hello {
            key: id(1).public(),
            kind: ContributorKind::Browser,
            software: "tessera 0.1.0".into(),
            capabilities: Capabilities {
                adapter: "llvmpipe".into(),
                backend: "Vulkan".into(),
                max_binding_bytes: 128 << 20,
                memory_budget_bytes: 1 << 30,
            },
        },
        ToCoordinator::Proof {
            signature: id(1).sign("x", b"y"),
        },
        signed(1, SessionMessage::Heartbeat { log_head: head() }),
        signed(2, SessionMessage::Submit(submission(dense))),
        signed(3, SessionMessage::Submit(submission(sparse))),
        signed(4, SessionMessage::Leave),
        signed(
            5,
            SessionMessage::Ready {
                lease: 2,
                log_head: head(),
            },
        ),
        signed(
            6,
            SessionMessage::Output(UnitOutput {
                unit: 11,
                lease: 2,
                weights: 3,
                result: PipeResult::Activation(activation(ActEncoding::F32)),
                log_head: head(),
            }),
        ),
        signed(
            7,
            SessionMessage::Output(UnitOutput {
                unit: 12,
                lease: 2,
                weights: 3,
                result: PipeResult::HeadStats(vec![HeadSlice {
                    shard: ShardSpec::Head { cols: [0, 32] },
                    stats: tensor(6),
                    owned: TensorPayload::from_u8(&[2], vec![1, 0]),
                }]),
                log_head: head(),
            }),
        ),
        signed(
            8,
            SessionMessage::Output(UnitOutput {
                unit: 13,
                lease: 2,
                weights: 3,
                result: PipeResult::Span(vec![
                    activation(ActEncoding::Bf16),
                    activation(ActEncoding::Int8),
                ]),
                log_head: head(),
            }),
        ),
        signed(
            9,
            SessionMessage::Grads(StepGrads {
                unit: 14,
                lease: 2,
                step: 3,
                units: vec![11, 12, 13],
                shards: vec![shard_grads()],
                log_head: head(),
            }),
        ),
        signed(
            10,
            SessionMessage::Audited(AuditResult {
                audit: 15,
                lease: 2,
                outputs: vec![
                    PipeResult::Accumulated,
                    PipeResult::Activation(activation(ActEncoding::Bf16)),
                ],
                grads: vec![shard_grads()],
                log_head: head(),
            }),
        ),
    ]
    .iter()
    .map(|m| encode(m).expect("encodes"))
    .collect()
}

/// Valid frames of the messages the coordinator sends.
fn to_contributor() -> Vec<Vec<u8>> {
    [
        ToContributor::Challenge {
            nonce: [1; 32],
            coordinator: id(9).public(),
            run: "demo".into(),
        },
        ToContributor::Welcome {
            run: "demo".into(),
            log_head: head(),
            heartbeat_ms: 15_000,
            idle_heartbeat_ms: 60_000,
        },
        ToContributor::Weights {
            lease: 1,
            version: 2,
            shard: 0,
            name: "model.embed_tokens.weight".into(),
            shape: vec![4, 8],
            offset: 16,
            values: tensor(16),
        },
        ToContributor::OuterStep {
            round: 1,
            version: 2,
            lr: 0.7,
            update: std::sync::Arc::new(Update::Dense(vec![NamedTensor {
                name: "model.norm.weight".into(),
                tensor: tensor(8),
            }])),
        },
        ToContributor::Error {
            reason: Reason::new(Code::Budget, "a replica needs more memory"),
            fatal: true,
        },
        ToContributor::Lease(Lease {
            lease: 2,
            config_json: "{\"hidden_size\": 64}".into(),
            shards: vec![ShardSpec::Mlp {
                layer: 1,
                cols: [0, 32],
            }],
            optimizer: InnerOptimizer::AdamW {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            clip: Some(1.0),
            sync: SyncMode::Sparse {
                chunk: [64, 64],
                k: 32,
                beta: 0.95,
            },
            rows: 256,
            version: 3,
            frames: 4,
            activations: Some(ActEncoding::Bf16),
            fresh_units: false,
        }),
        ToContributor::Unit(Box::new(pipe_work(Pass::Forward))),
        ToContributor::Unit(Box::new(pipe_work(Pass::Backward))),
        ToContributor::Collect {
            unit: 16,
            lease: 2,
            step: 3,
        },
        ToContributor::StepWeights {
            lease: 2,
            step: 3,
            version: 4,
            frames: 2,
        },
        ToContributor::Cancel { unit: 11 },
        ToContributor::Audit(Box::new(AuditWork {
            audit: 15,
            lease: 2,
            step: 3,
            units: vec![pipe_work(Pass::Forward), pipe_work(Pass::Backward)],
        })),
    ]
    .iter()
    .map(|m| encode(m).expect("encodes"))
    .collect()
}

/// Stored run-log entries (the text `StoredEntry::encode` writes).
fn stored_entries() -> Vec<Vec<u8>> {
    let key = id(2).public();
    [
        LogEvent::Started {
            run: "demo".into(),
            coordinator: id(9).public(),
            config: [3; 32],
        },
        LogEvent::Joined {
            key,
            kind: ContributorKind::Native,
        },
        LogEvent::Leased {
            key,
            lease: 4,
            shards: vec![
                ShardSpec::Embed { rows: [0, 256] },
                ShardSpec::Attn {
                    layer: 0,
                    groups: [0, 2],
                },
                ShardSpec::Mlp {
                    layer: 1,
                    cols: [0, 64],
                },
            ],
        },
        LogEvent::Left {
            key,
            reason: Reason::new(Code::TimedOut, "silent"),
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, event)| {
        let e = SignedEntry::seal(
            LogEntry {
                index: i as u64,
                prev: [i as u8; 32],
                time_ms: 10 * i as u64,
                event,
            },
            &id(9),
        );
        StoredEntry::encode(&e).into_bytes()
    })
    .collect()
}

/// Bytes that make decoders work hardest: the largest varints, zero, all ones.
const BOUNDARY: [&[u8]; 5] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x04],
    &[0x00],
    &[0xff],
];

/// One to four mutations of `input`, with `other` for splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut f = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(f.len().max(1));
        match rng.below(8) {
            0 => {
                if let Some(b) = f.get_mut(pos) {
                    *b = rng.next() as u8;
                }
            }
            1 => {
                if let Some(b) = f.get_mut(pos) {
                    *b ^= 1 << rng.below(8);
                }
            }
            2 => f.truncate(pos),
            3 => f.insert(pos.min(f.len()), rng.next() as u8),
            4 => {
                let b = BOUNDARY[rng.below(BOUNDARY.len())];
                let at = pos.min(f.len());
                f.splice(at..at, b.iter().copied());
            }
            5 => {
                let b = BOUNDARY[rng.below(BOUNDARY.len())];
                let end = (pos + b.len()).min(f.len());
                f.splice(pos.min(f.len())..end, b.iter().copied());
            }
            6 => {
                let cut = rng.below(other.len().max(1));
                f.truncate(pos);
                f.extend_from_slice(&other[cut.min(other.len())..]);
            }
            _ => {
                let len = 1 + rng.below(16);
                let end = (pos + len).min(f.len());
                let run = f[pos.min(f.len())..end].to_vec();
                for _ in 0..1 + rng.below(8) {
                    f.splice(end..end, run.iter().copied());
                }
            }
        }
    }
    f
}

/// Decodes `f` as `T`; a decoded message must re-encode to what decodes to the same bytes.
fn frame_round_trip<T>(f: &[u8]) -> bool
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    match decode::<T>(f, MAX_FRAME_BYTES) {
        Ok(m) => {
            // Compared as bytes: a decoded float may be NaN.
            let again = encode(&m).expect("a decoded message encodes");
            let back: T = decode(&again, MAX_FRAME_BYTES).expect("re-decodes");
            assert_eq!(encode(&back).expect("encodes"), again);
            true
        }
        Err(_) => false,
    }
}

fn stored_round_trip(f: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(f) else {
        return false;
    };
    match StoredEntry::decode(text) {
        Ok(StoredEntry::Current(e)) => {
            let again = StoredEntry::encode(&e);
            assert!(matches!(
                StoredEntry::decode(&again),
                Ok(StoredEntry::Current(_))
            ));
            true
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

#[derive(Clone, Copy)]
enum Decoder {
    ToCoordinator,
    ToContributor,
    Stored,
}

#[test]
fn every_decoder_survives_mutated_inputs_within_its_memory_bound() {
    let secs: u64 = std::env::var("TESSERA_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("TESSERA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let corpora = [
        (Decoder::ToCoordinator, "ToCoordinator", to_coordinator()),
        (Decoder::ToContributor, "ToContributor", to_contributor()),
        (Decoder::Stored, "stored log entry", stored_entries()),
    ];
    let mut rng = Rng(seed);
    let started = Instant::now();
    let limit = Duration::from_secs(secs);
    let (mut inputs, mut decoded) = (0u64, [0u64; 3]);
    let (mut worst, mut worst_len, mut worst_ratio) = (0usize, 0usize, 0f64);
    while started.elapsed() < limit {
        for _ in 0..1000 {
            let k = rng.below(corpora.len());
            let (decoder, name, corpus) = &corpora[k];
            let input = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            let f = mutate(&mut rng, input, other);
            let at = inputs;
            inputs += 1;
            let run = std::panic::catch_unwind(|| {
                peak_of(|| match decoder {
                    Decoder::ToCoordinator => frame_round_trip::<ToCoordinator>(&f),
                    Decoder::ToContributor => frame_round_trip::<ToContributor>(&f),
                    Decoder::Stored => stored_round_trip(&f),
                })
            });
            let Ok((ok, peak)) = run else {
                panic!(
                    "{name} panicked on input {at} of seed {seed}: {}",
                    tessera_protocol::identity::hex(&f)
                );
            };
            decoded[k] += u64::from(ok);
            // The round trip's own encodings count too: three frames of the input's size.
            let bound = 2 * budget_for(f.len()) + 4 * f.len();
            assert!(
                peak <= bound,
                "{name} input {at} of seed {seed} ({} bytes) held {peak} bytes, over {bound}: {}",
                f.len(),
                tessera_protocol::identity::hex(&f)
            );
            if peak > worst {
                (worst, worst_len) = (peak, f.len());
            }
            if f.len() > 64 {
                worst_ratio = worst_ratio.max(peak as f64 / f.len() as f64);
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{inputs} mutated inputs in {took:.1} s (seed {seed}), 0 panics; still decoding: {} ToCoordinator, {} ToContributor, {} stored entries; peak heap per input {worst} bytes (a {worst_len}-byte input), at most {worst_ratio:.1}x the input for inputs over 64 bytes",
        decoded[0], decoded[1], decoded[2]
    );
    assert!(inputs > 0);
}

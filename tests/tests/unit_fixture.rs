//! The fixture the browser test compares against (`tests/fixtures/pipeline-unit.bin`): pipeline
//! units for four micro-shards run by the native worker code on this machine's adapter. This
//! test recomputes the native results and checks the stored fixture still holds them (within
//! 1e-5 of the largest value), so the browser is always compared with what native workers
//! compute today. `TESSERA_WRITE_FIXTURE=1` rewrites it.

#[path = "../../client-wasm/tests/common/unit_fixture.rs"]
mod unit_fixture;

use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::shard::ShardTensors;
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::messages::{NamedTensor, SyncMode};
use tessera_protocol::pipeline::{HeadBackward, Pass, PipeResult, PipeWork};
use tessera_protocol::{
    decode_since, encode, ActEncoding, Activation, TensorPayload, WORK_FORMAT_SINCE,
};
use tessera_train::shards::to_wire;
use tessera_worker::pipeline::PipeReplica;
use unit_fixture::{grad_values, lease, rel, result_error, weights, Fixture};

const SEQ: usize = 16;
const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pipeline-unit.bin");

fn model() -> ModelConfig {
    ModelConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 16,
        tie_word_embeddings: false,
    }
}

fn noise(r: &mut SplitMix, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((r.next_u64() % 20001) as f32 / 10000.0 - 1.0) * scale)
        .collect()
}

/// The units and the native results, computed now.
fn compute(gpu: &Gpu) -> Fixture {
    let cfg = model();
    let params = ModelParams::random(&cfg, 41);
    let shards = lease();
    let tensors: Vec<ShardTensors> = shards
        .iter()
        .map(|s| ShardTensors::from_model(&cfg, &params, s).unwrap())
        .collect();
    let mut r = SplitMix(7);
    let d = cfg.hidden_size;
    let ids: Vec<u32> = (0..SEQ).map(|_| (r.next_u64() % 64) as u32).collect();
    let targets: Vec<u32> = (0..SEQ).map(|_| (r.next_u64() % 64) as u32).collect();
    let act = |v: &[f32]| Activation::encode(&[SEQ, d], v, ActEncoding::F32);
    let (h1, h2, h3) = (
        noise(&mut r, SEQ * d, 1.0),
        noise(&mut r, SEQ * d, 1.0),
        noise(&mut r, SEQ * d, 1.0),
    );
    let g = noise(&mut r, SEQ * d, 0.1);
    let unit = |n: u64, stage: u64, s: usize, pass: Pass| PipeWork {
        unit: n,
        lease: 1,
        step: 0,
        micro_batch: 0,
        stages: [stage, stage + 1],
        shards: vec![to_wire(&shards[s])],
        pass,
        weights: 0,
        tokens: None,
        input: None,
        grad: None,
        head: None,
        output: ActEncoding::F32,
    };
    let ids_p = TensorPayload::from_u32(&[SEQ], &ids);
    let tg_p = TensorPayload::from_u32(&[SEQ], &targets);
    let lse: Vec<f32> = (0..SEQ).map(|i| 4.0 + 0.05 * i as f32).collect();
    let units = vec![
        PipeWork {
            tokens: Some(ids_p.clone()),
            ..unit(1, 0, 0, Pass::Forward)
        },
        PipeWork {
            input: Some(act(&h1)),
            ..unit(2, 1, 1, Pass::Forward)
        },
        PipeWork {
            input: Some(act(&h2)),
            ..unit(3, 2, 2, Pass::Forward)
        },
        PipeWork {
            input: Some(act(&h3)),
            tokens: Some(tg_p.clone()),
            ..unit(4, 3, 3, Pass::Forward)
        },
        PipeWork {
            input: Some(act(&h3)),
            tokens: Some(tg_p),
            head: Some(HeadBackward {
                lse: TensorPayload::from_f32(&[SEQ], &lse),
                inv_count: 1.0 / SEQ as f32,
            }),
            ..unit(5, 3, 3, Pass::Backward)
        },
        PipeWork {
            input: Some(act(&h2)),
            grad: Some(act(&g)),
            ..unit(6, 2, 2, Pass::Backward)
        },
        PipeWork {
            input: Some(act(&h1)),
            grad: Some(act(&g)),
            ..unit(7, 1, 1, Pass::Backward)
        },
        PipeWork {
            tokens: Some(ids_p),
            grad: Some(act(&g)),
            ..unit(8, 0, 0, Pass::Backward)
        },
    ];
    let mut replica =
        PipeReplica::new(gpu, cfg.clone(), 1, 0, SEQ, &tensors, &SyncMode::Dense).unwrap();
    let outputs: Vec<PipeResult> = units
        .iter()
        .map(|w| pollster::block_on(replica.work(gpu, w)).unwrap())
        .collect();
    let (covered, grads) = pollster::block_on(replica.take_grads(gpu)).unwrap();
    assert_eq!(covered, vec![5, 6, 7, 8]);
    Fixture {
        config_json: cfg.to_hf_json(),
        seq: SEQ as u64,
        shards: shards.iter().map(to_wire).collect(),
        weights: tensors
            .iter()
            .map(|t| {
                t.tensors
                    .iter()
                    .map(|x| NamedTensor {
                        name: x.name.clone(),
                        tensor: TensorPayload::from_f32(&x.shape, &x.data),
                    })
                    .collect()
            })
            .collect(),
        units,
        outputs,
        grads,
    }
}

#[test]
fn the_stored_unit_fixture_holds_what_native_workers_compute() {
    let gpu = pollster::block_on(Gpu::new(Default::default())).expect("a GPU adapter");
    let now = compute(&gpu);
    if std::env::var_os("TESSERA_WRITE_FIXTURE").is_some() {
        std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
        std::fs::write(PATH, encode(&now).unwrap()).unwrap();
        println!("wrote {PATH}");
    }
    let bytes = std::fs::read(PATH).expect("the fixture (TESSERA_WRITE_FIXTURE=1 writes it)");
    let stored: Fixture = decode_since(&bytes, usize::MAX, WORK_FORMAT_SINCE).expect("a fixture");
    assert_eq!(stored.units, now.units, "the units are the same");
    assert_eq!(stored.weights, now.weights);
    let cfg = ModelConfig::from_hf_json(&stored.config_json).unwrap();
    assert_eq!(weights(&stored, &cfg).len(), 4);
    for (i, (a, b)) in now.outputs.iter().zip(&stored.outputs).enumerate() {
        let e = result_error(a, b).unwrap_or_else(|| panic!("unit {i}: different kind of result"));
        assert!(e <= 1e-5, "unit {i}: {e:.2e}");
    }
    let e = rel(&grad_values(&now.grads), &grad_values(&stored.grads)).expect("same shapes");
    assert!(e <= 1e-5, "gradient sums: {e:.2e}");
    assert!(grad_values(&now.grads).iter().any(|&x| x != 0.0));
}

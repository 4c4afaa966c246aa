//! The error bf16 and 8-bit activations on the wire add, measured against f32: one SGD step of
//! the same pipeline run with each encoding, so the weight change is the learning rate times the
//! step's gradient and its relative difference is the gradient's relative error.

use tessera_compute::model::{shards, Slicing};
use tessera_compute::reference::model::SplitMix;
use tessera_compute::reference::ModelParams;
use tessera_compute::{Gpu, ModelConfig};
use tessera_coordinator::core::spec::PipelineSpec;
use tessera_coordinator::core::{Core, Phase, RunSpec};
use tessera_e2e::rel;
use tessera_protocol::messages::{InnerOptimizer, SyncMode};
use tessera_protocol::{ActEncoding, Identity};
use tessera_train::schedule::Schedule;

fn model() -> ModelConfig {
    ModelConfig {
        vocab_size: 96,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 16,
        tie_word_embeddings: false,
    }
}

fn spec(enc: ActEncoding) -> RunSpec {
    let cfg = model();
    let stages = shards(
        &cfg,
        Slicing {
            embed: 2,
            attn: 2,
            mlp: 2,
            head: 2,
        },
    )
    .unwrap();
    let state_bytes = stages
        .iter()
        .map(|st| st.iter().map(|s| s.parameters(&cfg) as u64 * 8).collect())
        .collect();
    let work_bytes = stages.iter().map(|st| vec![0; st.len()]).collect();
    let mut r = SplitMix(8);
    let tokens: Vec<u32> = (0..4000).map(|_| (r.next_u64() % 96) as u32).collect();
    RunSpec::new("activations", cfg, tokens)
        .with_pipeline(PipelineSpec {
            stages,
            state_bytes,
            work_bytes,
            micro_batches: 4,
            activations: enc,
            grads: SyncMode::Dense,
            max_activation: tessera_coordinator::core::spec::DEFAULT_MAX_ACTIVATION,
        })
        .with_seed(3)
        .with_units(1, 1, 16)
        .with_optimizer(InnerOptimizer::Sgd, Schedule::constant(1.0), None)
        .with_weights_frame(1000)
}

/// The weight change of one SGD step at lr 1 (minus the gradient) with activations `enc`.
fn step(g: &Gpu, init: &ModelParams<f32>, enc: ActEncoding) -> Vec<f32> {
    let mut core = Core::new(spec(enc), Identity::from_seed([4; 32]), init.clone());
    let mut clients = tessera_e2e::with_budgets(g, &[1 << 30; 3]);
    tessera_e2e::run(g, &mut core, &mut clients, |_| {}).unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    core.weights()
        .named()
        .into_iter()
        .zip(init.named())
        .flat_map(|((_, a), (_, b))| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
        .collect()
}

#[test]
fn bf16_and_int8_activations_add_a_bounded_gradient_error() {
    let g = pollster::block_on(Gpu::new(Default::default())).expect("a GPU adapter");
    let init = ModelParams::random(&model(), 31);
    let exact = step(&g, &init, ActEncoding::F32);
    assert!(
        exact.iter().any(|&x| x != 0.0),
        "the step changed the weights"
    );
    let again = step(&g, &init, ActEncoding::F32);
    let bf16 = rel(&step(&g, &init, ActEncoding::Bf16), &exact);
    let int8 = rel(&step(&g, &init, ActEncoding::Int8), &exact);
    println!(
        "gradient rel err against f32 activations: f32 again {:.1e}, bf16 {bf16:.2e}, int8 {int8:.2e}",
        rel(&again, &exact)
    );
    assert!(rel(&again, &exact) < 1e-6, "f32 runs repeat");
    assert!(
        bf16 > 1e-5 && bf16 < 2e-2,
        "bf16 adds a small error: {bf16}"
    );
    assert!(
        int8 > bf16 && int8 < 1e-1,
        "int8 adds more, still bounded: {int8}"
    );
}

/// One pipeline run of the tiny byte-level model on the built-in corpus with gradient sums sent
/// as `grads`: the training losses and the bytes of every gradient-sum message.
fn byte_run(g: &Gpu, grads: &str) -> (Vec<f64>, usize) {
    let cfg = tessera_coordinator::config::RunConfig::from_toml(&format!(
        "name = \"grads\"\nseed = 2\nrounds = 10\n[model]\npreset = \"tiny-byte\"\n[train]\nseq = 64\nlr = 1e-2\nwarmup = 1\nchunk = 16\nk = 16\n[pipeline]\nbudget = \"250KiB\"\nmicro_batches = 4\ngrads = \"{grads}\"\n"
    ))
    .unwrap();
    let (spec, init) = cfg.resolve(std::path::Path::new(".")).unwrap();
    let mut core = Core::new(spec, Identity::from_seed([5; 32]), init);
    let mut clients = tessera_e2e::with_budgets(g, &[1 << 30]);
    let mut bytes = 0;
    tessera_e2e::run(g, &mut core, &mut clients, |m| {
        if let tessera_e2e::Message::Up(tessera_protocol::ToCoordinator::Session(s)) = m {
            if let tessera_protocol::messages::SessionMessage::Grads(gr) = &s.body {
                bytes += tessera_protocol::encode(gr).unwrap().len();
            }
        }
    })
    .unwrap();
    assert_eq!(core.phase(), Phase::Finished);
    (core.losses().to_vec(), bytes)
}

#[test]
fn compressed_gradient_sums_train_and_send_fewer_bytes() {
    let g = pollster::block_on(Gpu::new(Default::default())).expect("a GPU adapter");
    let (dense, dense_bytes) = byte_run(&g, "dense");
    let (sparse, sparse_bytes) = byte_run(&g, "sparse");
    println!(
        "gradient sums: dense {dense_bytes} bytes, SparseLoCo {sparse_bytes} bytes ({:.1}x less); last loss dense {:.3}, sparse {:.3}",
        dense_bytes as f64 / sparse_bytes as f64,
        dense.last().unwrap(),
        sparse.last().unwrap()
    );
    assert!(sparse_bytes * 3 < dense_bytes, "compression pays");
    for l in [&dense, &sparse] {
        assert!(
            l.first().unwrap() - l.last().unwrap() > 1.0,
            "training loss falls: {l:?}"
        );
    }
}

#![cfg(not(target_arch = "wasm32"))]
//! The golden fixture written by Hugging Face transformers (`fixtures/make_golden.py`): a tiny
//! `LlamaForCausalLM` checkpoint, and its float32 logits, loss and gradients on fixed ids. The
//! CPU reference and the GPU path (unsliced and sliced) must reproduce them, which pins RoPE
//! layout and theta, RMSNorm placement and epsilon, GQA grouping and the label shift.

mod common;

use common::{checks, gpu_with};
use safetensors::tensor::{Dtype, SafeTensors};
use tessera_compute::hf::{
    decode_f32, params_from_safetensors, params_to_safetensors, tensor_shapes,
};
use tessera_compute::model::{GpuModel, Slicing};
use tessera_compute::reference::model;
use tessera_compute::reference::scalar::convert;
use tessera_compute::reference::{Batch, ModelParams};
use tessera_compute::ModelConfig;
use tessera_compute::{GpuOptions, MatmulTiles, Tiles};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden");

struct Golden {
    cfg: ModelConfig,
    params: ModelParams<f32>,
    ids: Vec<u32>,
    seq: usize,
    logits: Vec<f32>,
    loss: f64,
    grads: ModelParams<f32>,
}

fn load() -> Golden {
    let cfg =
        ModelConfig::from_hf_json(&std::fs::read_to_string(format!("{DIR}/config.json")).unwrap())
            .unwrap();
    let params = params_from_safetensors(
        &cfg,
        &std::fs::read(format!("{DIR}/model.safetensors")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(format!("{DIR}/golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids_t = st.tensor("input_ids").unwrap();
    assert_eq!(ids_t.dtype(), Dtype::I32);
    let seq = ids_t.shape()[1];
    let ids: Vec<u32> = ids_t
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
        .collect();
    let f = |name: &str| {
        let t = st.tensor(name).unwrap();
        decode_f32(t.dtype(), t.data()).unwrap()
    };
    let mut grads = ModelParams::<f32>::zeros(&cfg);
    for ((name, _), slot) in tensor_shapes(&cfg).into_iter().zip(grads.tensors_mut()) {
        *slot = f(&format!("grad.{name}"));
    }
    Golden {
        logits: f("logits"),
        loss: f("loss")[0] as f64,
        cfg,
        params,
        ids,
        seq,
        grads,
    }
}

#[test]
fn config_reads_transformers_4_and_5_layouts() {
    let g = load();
    assert_eq!(g.cfg.rope_theta, 10000.0);
    assert_eq!(
        (
            g.cfg.num_attention_heads,
            g.cfg.num_key_value_heads,
            g.cfg.head_dim
        ),
        (6, 3, 8)
    );
    // transformers 4.x writes rope_theta at the top level.
    let v4 = r#"{"model_type":"llama","vocab_size":67,"hidden_size":24,"intermediate_size":40,"num_hidden_layers":2,
        "num_attention_heads":6,"num_key_value_heads":3,"head_dim":8,"rms_norm_eps":1e-05,"rope_theta":500000.0,
        "rope_scaling":null,"max_position_embeddings":64,"tie_word_embeddings":false}"#;
    let c4 = ModelConfig::from_hf_json(v4).unwrap();
    assert_eq!(c4.rope_theta, 500000.0);
    assert_eq!(ModelConfig::from_hf_json(&c4.to_hf_json()).unwrap(), c4);
    let tied = v4.replace(
        "\"tie_word_embeddings\":false",
        "\"tie_word_embeddings\":true",
    );
    let ct = ModelConfig::from_hf_json(&tied).unwrap();
    assert!(ct.tie_word_embeddings && !c4.tie_word_embeddings);
    assert_eq!(ModelConfig::from_hf_json(&ct.to_hf_json()).unwrap(), ct);
    assert_eq!(
        c4.parameter_count() - ct.parameter_count(),
        (c4.vocab_size * c4.hidden_size) as u64,
        "a tied matrix counts once"
    );
    for (bad, why) in [
        (
            v4.replace("\"tie_word_embeddings\":false", "\"tie_word_embeddings\":1"),
            "tie_word_embeddings must be true or false",
        ),
        (
            v4.replace(
                "\"rope_scaling\":null",
                "\"rope_scaling\":{\"rope_type\":\"llama3\"}",
            ),
            "rope_type",
        ),
        (
            v4.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4"),
            "multiple",
        ),
        ("not json".to_string(), "JSON"),
    ] {
        let e = ModelConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn safetensors_round_trip_is_exact() {
    let g = load();
    let bytes = params_to_safetensors(&g.cfg, &g.params).unwrap();
    assert_eq!(params_from_safetensors(&g.cfg, &bytes).unwrap(), g.params);
    assert!(
        params_from_safetensors(&g.cfg, &bytes[..bytes.len() - 4]).is_err(),
        "truncated file"
    );
    let wider = ModelConfig {
        hidden_size: 32,
        ..g.cfg.clone()
    };
    assert!(
        params_from_safetensors(&wider, &bytes).is_err(),
        "shape mismatch"
    );
}

/// A tied checkpoint is written without `lm_head.weight`, as transformers writes one, and read
/// back with the head equal to the embedding; one that holds a different head is refused.
#[test]
fn tied_checkpoints_leave_out_the_head() {
    let g = load();
    let cfg = ModelConfig {
        tie_word_embeddings: true,
        ..g.cfg.clone()
    };
    let mut p = g.params.clone();
    p.tie();
    let bytes = params_to_safetensors(&cfg, &p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("lm_head.weight").is_err());
    assert!(st.tensor("model.embed_tokens.weight").is_ok());
    assert_eq!(params_from_safetensors(&cfg, &bytes).unwrap(), p);
    // The untied golden file holds a head that differs from its embedding.
    let untied = std::fs::read(format!("{DIR}/model.safetensors")).unwrap();
    let e = params_from_safetensors(&cfg, &untied)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lm_head.weight differs"), "{e}");
    // One that holds an equal head (some tools write both) is read.
    let both = params_to_safetensors(&g.cfg, &p).unwrap();
    assert_eq!(params_from_safetensors(&cfg, &both).unwrap(), p);
    // An untied model still needs its head.
    assert!(params_from_safetensors(&g.cfg, &bytes)
        .unwrap_err()
        .to_string()
        .contains("no tensor lm_head.weight"));
}

#[test]
fn cpu_reference_matches_transformers() {
    let g = load();
    let p64: ModelParams<f64> = g.params.map(convert);
    let logits: Vec<f32> = convert(&model::logits(&g.cfg, &p64, &g.ids, g.seq));
    println!(
        "{}",
        checks::close("reference logits vs transformers", &logits, &g.logits, 1e-5)
    );
    let batch = Batch::from_sequences(&g.ids, g.seq);
    let (loss, grads) = model::loss_and_grads(&g.cfg, &p64, &batch);
    println!("loss: reference {loss:.7} transformers {:.7}", g.loss);
    assert!((loss - g.loss).abs() / g.loss < 1e-6);
    let worst = checks::compare_models(
        "reference grads vs transformers",
        &grads.map(convert),
        &g.grads,
        1e-4,
    );
    println!("reference grads vs transformers: worst rel err {worst:.2e}");
}

#[test]
fn gpu_matches_transformers() {
    for t in [MatmulTiles::SHARED, MatmulTiles::DIRECT, MatmulTiles::VEC4] {
        println!("matmul {t:?}");
        gpu_case(&gpu_with(GpuOptions {
            tiles: Some(Tiles {
                matmul: t,
                ..Tiles::default()
            }),
            ..Default::default()
        }));
    }
}

fn gpu_case(gpu: &tessera_compute::Gpu) {
    let g = load();
    let batch = Batch::from_sequences(&g.ids, g.seq);
    for slicing in [
        Slicing::whole(),
        Slicing {
            embed: 2,
            attn: 3,
            mlp: 2,
            head: 2,
        },
    ] {
        let m = GpuModel::new(gpu, &g.cfg, &g.params, slicing, g.ids.len()).unwrap();
        let logits = pollster::block_on(m.logits(gpu, &g.ids, g.seq)).unwrap();
        println!(
            "{}",
            checks::close(
                &format!("GPU logits vs transformers ({slicing:?})"),
                &logits,
                &g.logits,
                1e-5
            )
        );
        let loss = pollster::block_on(m.loss_and_grads(gpu, &batch)).unwrap();
        assert!(
            (loss - g.loss).abs() / g.loss < 1e-5,
            "loss {loss} vs {}",
            g.loss
        );
        let grads = pollster::block_on(m.read_grads(gpu)).unwrap();
        let worst = checks::compare_models("GPU grads vs transformers", &grads, &g.grads, 1e-4);
        println!("GPU ({slicing:?}): loss {loss:.7} (transformers {:.7}), worst grad rel err {worst:.2e}", g.loss);
    }
}

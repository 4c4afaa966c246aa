//! A browser's results equal a native worker's for the same work units: the worker crate's
//! pipeline code in a dedicated Web Worker in headless Chromium (WebGPU on SwiftShader) runs the
//! units of `tests/fixtures/pipeline-unit.bin` (forward and backward of an embedding slice, an
//! attention group, MLP columns and a head slice) and matches the native results stored there
//! (computed on lavapipe) within 1e-4 of each result's largest value, gradient sums included.
//! Different GPUs do not agree bit for bit; this is the tolerance the pipeline accepts between
//! them.

#![cfg(target_arch = "wasm32")]

mod common;

use common::unit_fixture::{grad_values, rel, result_error, weights, Fixture};
use tessera_compute::{Gpu, ModelConfig};
use tessera_protocol::messages::SyncMode;
use tessera_protocol::{decode_since, WORK_FORMAT_SINCE};
use tessera_worker::pipeline::PipeReplica;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

const TOLERANCE: f64 = 1e-4;

#[wasm_bindgen_test]
async fn browser_units_match_native_units() {
    let f: Fixture = decode_since(
        include_bytes!("../../tests/fixtures/pipeline-unit.bin"),
        usize::MAX,
        WORK_FORMAT_SINCE,
    )
    .expect("the fixture");
    let cfg = ModelConfig::from_hf_json(&f.config_json).expect("config");
    let gpu = Gpu::new(Default::default()).await.expect("WebGPU");
    console_log!("adapter: {}", gpu.adapter());
    let mut replica = PipeReplica::new(
        &gpu,
        cfg.clone(),
        1,
        0,
        f.seq as usize,
        &weights(&f, &cfg),
        &SyncMode::Dense,
    )
    .expect("the lease on WebGPU");
    let mut worst = 0f64;
    for (w, want) in f.units.iter().zip(&f.outputs) {
        let got = replica.work(&gpu, w).await.expect("the unit runs");
        let e = result_error(&got, want)
            .unwrap_or_else(|| panic!("unit {}: a different kind of result", w.unit));
        console_log!(
            "unit {} ({:?} stage {}): {e:.2e}",
            w.unit,
            w.pass,
            w.stages[0]
        );
        assert!(e <= TOLERANCE, "unit {}: {e:.2e}", w.unit);
        worst = worst.max(e);
    }
    let (units, grads) = replica.take_grads(&gpu).await.expect("gradient sums");
    assert_eq!(units, vec![5, 6, 7, 8]);
    let e = rel(&grad_values(&grads), &grad_values(&f.grads)).expect("same shapes");
    console_log!("gradient sums: {e:.2e}; worst unit {worst:.2e}");
    assert!(e <= TOLERANCE, "gradient sums: {e:.2e}");
}

#[wasm_bindgen_test]
async fn an_audit_in_the_browser_matches_native_results_and_leaves_its_own_sums_alone() {
    let f: Fixture = decode_since(
        include_bytes!("../../tests/fixtures/pipeline-unit.bin"),
        usize::MAX,
        WORK_FORMAT_SINCE,
    )
    .expect("the fixture");
    let cfg = ModelConfig::from_hf_json(&f.config_json).expect("config");
    let gpu = Gpu::new(Default::default()).await.expect("WebGPU");
    let mut replica = PipeReplica::new(
        &gpu,
        cfg.clone(),
        1,
        0,
        f.seq as usize,
        &weights(&f, &cfg),
        &SyncMode::Dense,
    )
    .expect("the lease on WebGPU");
    // The lease's own work: the backward units, accumulating gradient sums.
    for w in f.units.iter().filter(|w| w.unit >= 5) {
        replica.work(&gpu, w).await.expect("the unit runs");
    }
    // A check of another lease's step: every unit again, into a separate accumulator.
    let (outputs, grads) = replica.audit(&gpu, &f.units).await.expect("the audit runs");
    for ((got, want), w) in outputs.iter().zip(&f.outputs).zip(&f.units) {
        let e = result_error(got, want).expect("the same kind of result");
        assert!(e <= TOLERANCE, "audited unit {}: {e:.2e}", w.unit);
    }
    let e = rel(&grad_values(&grads), &grad_values(&f.grads)).expect("same shapes");
    assert!(e <= TOLERANCE, "the audit's gradient sums: {e:.2e}");
    // The lease's own sums and the units they cover are what they were before the audit.
    let (units, own) = replica.take_grads(&gpu).await.expect("gradient sums");
    assert_eq!(units, vec![5, 6, 7, 8]);
    let e = rel(&grad_values(&own), &grad_values(&f.grads)).expect("same shapes");
    console_log!("audit in the browser: sums {e:.2e} from native");
    assert!(e <= TOLERANCE, "own gradient sums after the audit: {e:.2e}");
}

//! The golden steps compiled to wasm32 and run in headless Chromium: the same digest of every
//! output bit as natively (`determinism.rs`), and subnormals kept. Run with
//! `wasm-bindgen-test-runner`.

#![cfg(target_arch = "wasm32")]

mod golden;

use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn the_golden_steps_reach_the_golden_digest_in_the_browser() {
    assert!(tessera_step::subnormals_kept());
    let d = golden::digest();
    console_log!("digest {d:#018x}");
    assert_eq!(d, golden::DIGEST, "got {d:#018x}");
}

//! The golden steps natively: the digest of every output bit equals the one the browser test
//! (`browser.rs`, wasm32 in headless Chromium) must reach too, and subnormals are kept.

#![cfg(not(target_arch = "wasm32"))]

mod golden;

#[test]
fn the_golden_steps_reach_the_golden_digest() {
    assert!(tessera_step::subnormals_kept());
    let d = golden::digest();
    println!("digest {d:#018x}");
    assert_eq!(d, golden::DIGEST, "got {d:#018x}");
}

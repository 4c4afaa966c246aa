#![cfg(not(target_arch = "wasm32"))]
//! Without a usable adapter, opening the GPU is a clear error naming what to install, not a
//! panic. `WGPU_BACKEND=metal` on a machine without Metal leaves wgpu no adapter to find.

#[cfg(not(target_os = "macos"))]
#[test]
fn missing_adapter_is_a_clear_error() {
    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("WGPU_BACKEND", "metal");
    let err = pollster::block_on(tessera_compute::Gpu::new(Default::default()))
        .err()
        .expect("no adapter can exist");
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, tessera_compute::ComputeError::NoAdapter(_)));
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
}

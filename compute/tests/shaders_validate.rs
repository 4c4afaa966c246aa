#![cfg(not(target_arch = "wasm32"))]
//! Every `.wgsl` file under `shaders/` parses and validates with naga, under the WebGPU default
//! of at most 8 storage buffers per stage.

use std::collections::BTreeSet;
use tessera_compute::shaders::{example_constants, source, KERNELS};

#[test]
fn every_kernel_is_listed_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("shaders folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
        .map(|n| n.trim_end_matches(".wgsl").to_string())
        .collect();
    let listed: BTreeSet<String> = KERNELS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "every shader file must be embedded, and only those"
    );
    for (name, _) in KERNELS {
        let src = source(name, &example_constants(name)).expect("known kernel");
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not validate: {e:?}"));
        let storage = module
            .global_variables
            .iter()
            .filter(|(_, g)| matches!(g.space, naga::AddressSpace::Storage { .. }))
            .count();
        assert!(
            storage <= 8,
            "{name}.wgsl binds {storage} storage buffers, above WebGPU's default of 8"
        );
        println!("{name}.wgsl: valid, {storage} storage buffers");
    }
}

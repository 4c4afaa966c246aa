//! The kernel checks compiled to wasm32 and run inside headless Chromium on its WebGPU
//! (SwiftShader without a GPU): one full sliced decoder block forward and backward against the
//! CPU reference, and the vocab-parallel cross-entropy. Run with `wasm-bindgen-test-runner`.

#![cfg(target_arch = "wasm32")]

#[path = "common/checks.rs"]
mod checks;

use tessera_compute::{Gpu, GpuOptions, MatmulTiles, Tiles};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

async fn gpu() -> Gpu {
    gpu_with(GpuOptions::default()).await
}

async fn gpu_with(opts: GpuOptions) -> Gpu {
    match Gpu::new(opts).await {
        Ok(g) => {
            console_log!("adapter: {}", g.adapter());
            g
        }
        Err(e) => panic!("{e}"),
    }
}

#[wasm_bindgen_test]
async fn browser_block_forward_backward_matches_reference() {
    // Browsers on GPUs take the workgroup-memory matmul; the vec4 one (falling back to the
    // scalar direct kernel on unaligned shapes) is SwiftShader's default.
    for t in [MatmulTiles::SHARED, MatmulTiles::VEC4] {
        let g = gpu_with(GpuOptions {
            tiles: Some(Tiles {
                matmul: t,
                ..Tiles::default()
            }),
            ..Default::default()
        })
        .await;
        console_log!("matmul {t:?}");
        for line in checks::sliced_blocks_match_reference(&g, 1).await {
            console_log!("{line}");
        }
    }
}

#[wasm_bindgen_test]
async fn browser_cross_entropy_matches_reference() {
    let g = gpu().await;
    for line in checks::cross_entropy_matches_reference(&g).await {
        console_log!("{line}");
    }
}

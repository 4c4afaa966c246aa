//! Helpers shared by the GPU tests: opening the adapter under WebGPU default limits, and
//! relative errors.

#![allow(dead_code)]

use tessera_compute::{Gpu, GpuOptions};

/// Opens the GPU with `wgpu::Limits::default()` and says which adapter runs the tests.
pub fn gpu() -> Gpu {
    gpu_with(GpuOptions::default())
}

/// Opens the GPU with the given options.
pub fn gpu_with(opts: GpuOptions) -> Gpu {
    match pollster::block_on(Gpu::new(opts)) {
        Ok(g) => {
            println!("adapter: {}", g.adapter());
            g
        }
        Err(e) => panic!("{e}"),
    }
}

/// ‖a−b‖/‖b‖ in f64.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Asserts a relative error within `tol`, printing it.
pub fn close(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    let e = rel(gpu, cpu);
    println!("{name}: rel err {e:.2e}");
    assert!(
        e <= tol,
        "{name}: GPU differs from the CPU reference, rel err {e:.3e} > {tol:.0e}"
    );
}

/// Reads a tensor back.
pub fn read(g: &Gpu, t: &tessera_compute::Tensor) -> Vec<f32> {
    pollster::block_on(g.read(t)).expect("read back")
}

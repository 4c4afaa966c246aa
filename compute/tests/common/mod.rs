//! Helpers shared by the native GPU tests: opening the adapter under WebGPU default limits.

#![allow(dead_code)]

pub mod checks;

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

/// Asserts a relative error within `tol`, printing it.
pub fn close(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    println!("{}", checks::close(name, gpu, cpu, tol));
}

/// Reads a tensor back.
pub fn read(g: &Gpu, t: &tessera_compute::Tensor) -> Vec<f32> {
    pollster::block_on(g.read(t)).expect("read back")
}

/// Runs a shared check and prints what it says.
pub fn run_check(lines: Vec<String>) {
    for l in lines {
        println!("{l}");
    }
}

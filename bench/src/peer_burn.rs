//! burn's wgpu backend as the benchmark peer, on the same adapter (wgpu's default choice).

use std::time::Instant;

use anyhow::{anyhow, Result};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

/// GFLOP/s of burn's `matmul` at `n³`, after one warm-up run.
pub fn matmul_gflops(n: usize, iters: usize) -> Result<f64> {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let _ = a.clone().matmul(b.clone());
    device.sync().map_err(|e| anyhow!("burn sync: {e:?}"))?;
    let t = Instant::now();
    let mut keep = Vec::with_capacity(iters);
    for _ in 0..iters {
        keep.push(a.clone().matmul(b.clone()));
    }
    device.sync().map_err(|e| anyhow!("burn sync: {e:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    drop(keep);
    Ok(2.0 * (n as f64).powi(3) * iters as f64 / secs / 1e9)
}

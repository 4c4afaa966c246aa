//! Command buffers stay within the submission budget: on a real adapter, a device whose
//! submissions overrun a (tiny) budget cuts its batches down to single dispatches, and one whose
//! submissions finish well within a (huge) budget grows them to the maximum. Also: limits are
//! raised only as far as the adapter allows.

use tessera_compute::{Gpu, GpuOptions};

fn run(budget_ms: f64) -> (u32, f64) {
    let gpu = pollster::block_on(Gpu::new(GpuOptions {
        submit_budget_ms: budget_ms,
        ..Default::default()
    }))
    .expect("a GPU adapter");
    let x = gpu.upload(&vec![1.0; 1 << 12], &[1 << 12]).unwrap();
    let y = gpu.zeros(&[1 << 12]).unwrap();
    for _ in 0..40 {
        for _ in 0..300 {
            gpu.add_assign(&y, &x, 1 << 12).unwrap();
        }
        pollster::block_on(gpu.finish()).unwrap();
    }
    (gpu.dispatches_per_submit(), gpu.longest_submit_ms())
}

#[test]
fn batches_shrink_under_a_tight_budget_and_grow_under_a_loose_one() {
    let (tight, longest) = run(1e-6);
    println!("budget 1 ns: {tight} dispatches per submission (longest {longest:.2} ms)");
    assert_eq!(tight, 1);
    let (loose, longest) = run(1e9);
    println!("budget of 10^9 ms: {loose} dispatches per submission (longest {longest:.2} ms)");
    assert_eq!(loose, 256);
}

#[test]
fn raised_limits_never_exceed_the_adapter() {
    let plain = pollster::block_on(Gpu::new(GpuOptions::default())).expect("a GPU adapter");
    let raised = pollster::block_on(Gpu::new(GpuOptions {
        raise_limits: true,
        ..Default::default()
    }))
    .expect("a GPU adapter");
    println!(
        "binding limit: WebGPU default {} bytes, raised {} bytes",
        plain.max_binding_bytes(),
        raised.max_binding_bytes()
    );
    assert_eq!(plain.max_binding_bytes(), 128 << 20);
    assert!(raised.max_binding_bytes() >= plain.max_binding_bytes());
    assert!(raised.max_binding_bytes() <= 1 << 30);
}

//! One device shared by threads (as the soak test's in-process workers share it): each
//! thread's writes, recorded copies and reads stay in the order that thread made them. A
//! write used to be able to slip into the queue between another thread's taking of the pending
//! command encoder and its submission, and so run before the commands recorded ahead of it.
//! Native only: on the web a device belongs to one thread.
#![cfg(not(target_arch = "wasm32"))]

use tessera_compute::{Gpu, GpuOptions};

const THREADS: usize = 4;
const ROUNDS: usize = 400;
const N: usize = 1024;

#[test]
fn threads_sharing_a_device_see_their_own_writes_in_order() {
    let gpu = pollster::block_on(Gpu::new(GpuOptions::default())).expect("a GPU adapter");
    let wrong: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let gpu = &gpu;
                s.spawn(move || {
                    let src = gpu.zeros(&[N]).unwrap();
                    let dst = gpu.zeros(&[N]).unwrap();
                    let mut wrong = 0;
                    for r in 0..ROUNDS {
                        let want = (t * ROUNDS + r) as f32;
                        gpu.write(&src, &vec![want; N]).unwrap();
                        // Recorded, not yet submitted: it must copy `want`, whatever the
                        // next write does and whoever submits the encoder.
                        gpu.copy(&src, &dst).unwrap();
                        gpu.write(&src, &vec![-1.0; N]).unwrap();
                        let got = pollster::block_on(gpu.read(&dst)).unwrap();
                        if got.iter().any(|&x| x != want) {
                            wrong += 1;
                        }
                    }
                    wrong
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    println!("{wrong} of {} copies saw a later write", THREADS * ROUNDS);
    assert_eq!(wrong, 0);
}

//! Choosing an adapter by name (`GpuOptions::adapter`, the worker's `--adapter`): every adapter
//! this machine lists opens when named in full, and reports the name it was chosen by; a name
//! no adapter has is refused with the list. With Chromium's SwiftShader beside Mesa's lavapipe
//! (`VK_ICD_FILENAMES` naming both ICDs) both are listed and each opens.

use tessera_compute::{Gpu, GpuOptions};

#[test]
fn each_listed_adapter_opens_by_its_name() {
    let all = pollster::block_on(Gpu::adapters());
    println!("adapters: {all:#?}");
    assert!(!all.is_empty(), "no adapter at all");
    for a in &all {
        let shown = a.to_string();
        if all.iter().filter(|b| b.to_string() == shown).count() > 1 {
            continue; // two adapters that display alike cannot be told apart by name
        }
        let gpu = pollster::block_on(Gpu::new(GpuOptions {
            adapter: Some(shown.clone()),
            ..Default::default()
        }));
        match gpu {
            Ok(g) => {
                assert_eq!(g.adapter().to_string(), shown);
                let x = g.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
                assert_eq!(pollster::block_on(g.read(&x)).unwrap(), vec![1.0, 2.0, 3.0]);
            }
            // Every listed adapter (Vulkan, Metal, DX12) meets the WebGPU defaults.
            Err(e) => panic!("{shown}: {e}"),
        }
    }
}

#[test]
fn a_name_no_adapter_has_is_refused_with_the_list() {
    let e = pollster::block_on(Gpu::new(GpuOptions {
        adapter: Some("no such adapter 7f3a".into()),
        ..Default::default()
    }))
    .err()
    .expect("refused");
    let text = e.to_string();
    assert!(text.contains("no adapter's name contains"), "{text}");
    let first = pollster::block_on(Gpu::adapters())[0].name.clone();
    assert!(text.contains(&first), "{text}");
}

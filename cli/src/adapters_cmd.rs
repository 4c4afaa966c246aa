//! `tessera adapters`: the GPU adapters this machine offers, one per line as `--adapter` of
//! `tessera worker` and `tessera calibrate` matches them (a part of the line picks one).

use anyhow::Result;
use tessera_compute::Gpu;

/// Options of `adapters` (none).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Prints the adapters, or says there are none and what to install.
pub fn run(_: Args) -> Result<()> {
    let all = pollster::block_on(Gpu::adapters());
    if all.is_empty() {
        anyhow::bail!(
            "no GPU adapter found; on Linux without a GPU install mesa-vulkan-drivers (lavapipe)"
        );
    }
    for a in all {
        println!("{a}");
    }
    Ok(())
}

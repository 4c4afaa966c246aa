//! `tessera-bench`: matmul GFLOP/s at 1024³ and 2048³ on this machine's adapter, the same for
//! burn's wgpu backend as the peer (with `--features burn`), and forward+backward tokens/s of a
//! small model (d=256, 4 layers, seq 256) with Tessera's kernels.
//!
//! ```text
//! cargo run --release -p tessera-bench --features burn
//! cargo run --release -p tessera-bench -- --sizes 512 --iters 2 --matmul shared --tiles 64,64,16,4,4
//! ```

mod ours;
#[cfg(feature = "burn")]
mod peer_burn;

use anyhow::{bail, Context, Result};
use tessera_compute::{MatmulKernel, MatmulTiles};

/// Command-line options.
struct Opts {
    sizes: Vec<usize>,
    iters: usize,
    tiles: Option<MatmulTiles>,
    kernel: Option<MatmulKernel>,
    model_iters: usize,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        sizes: vec![1024, 2048],
        iters: 3,
        tiles: None,
        kernel: None,
        model_iters: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--sizes takes numbers like 1024,2048")?
            }
            "--iters" => o.iters = val()?.parse().context("--iters takes a number")?,
            "--model-iters" => {
                o.model_iters = val()?.parse().context("--model-iters takes a number")?
            }
            "--tiles" => {
                let v: Vec<u32> = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--tiles takes bm,bn,bk,tm,tn")?;
                let [bm, bn, bk, tm, tn] = v[..] else {
                    bail!("--tiles takes five numbers: bm,bn,bk,tm,tn")
                };
                o.tiles = Some(MatmulTiles {
                    kernel: MatmulKernel::Shared,
                    bm,
                    bn,
                    bk,
                    tm,
                    tn,
                });
            }
            "--matmul" => {
                o.kernel = Some(match val()?.as_str() {
                    "shared" => MatmulKernel::Shared,
                    "direct" => MatmulKernel::Direct,
                    "vec4" => MatmulKernel::Vec4,
                    other => bail!("--matmul takes shared, direct or vec4, not {other}"),
                })
            }
            "-h" | "--help" => {
                println!("tessera-bench [--sizes 1024,2048] [--iters 3] [--model-iters 3] [--matmul shared|direct|vec4] [--tiles bm,bn,bk,tm,tn]");
                println!("Without --matmul and --tiles, the adapter type picks the defaults (direct on CPU adapters).");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if o.iters == 0 || o.model_iters == 0 || o.sizes.is_empty() {
        bail!("--iters, --model-iters and --sizes must be positive");
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = parse()?;
    let tiles = match (o.kernel, o.tiles) {
        (None, None) => None,
        (k, t) => {
            let kernel = k.unwrap_or(MatmulKernel::Shared);
            let base = match kernel {
                MatmulKernel::Shared => MatmulTiles::SHARED,
                MatmulKernel::Direct => MatmulTiles::DIRECT,
                MatmulKernel::Vec4 => MatmulTiles::VEC4,
            };
            Some(MatmulTiles {
                kernel,
                ..t.unwrap_or(base)
            })
        }
    };
    let gpu = ours::open(tiles)?;
    println!("adapter: {}", gpu.adapter());
    println!("tiles: {:?}", gpu.tiles().matmul);
    for &n in &o.sizes {
        let tessera = ours::matmul_gflops(&gpu, n, o.iters)?;
        print!("matmul {n}^3: tessera {tessera:.2} GFLOP/s");
        #[cfg(feature = "burn")]
        {
            let burn = peer_burn::matmul_gflops(n, o.iters)?;
            print!(
                ", burn {burn:.2} GFLOP/s, ratio tessera/burn {:.2}",
                tessera / burn
            );
        }
        #[cfg(not(feature = "burn"))]
        print!(" (burn peer not built: add --features burn)");
        println!();
    }
    let (tps, loss) = ours::model_tokens_per_second(&gpu, o.model_iters)?;
    println!("model d=256 layers=4 heads=4 kv=2 ffn=688 vocab=256 seq=256: forward+backward {tps:.1} tokens/s (loss {loss:.3})");
    Ok(())
}

//! The wire form of SparseLoCo-compressed tensors ([`SparseUpdate`]): every tensor of an update
//! packed into three arrays (levels, 2-bit codes, Rice-coded positions) with no names, and read
//! back against the tensors the receiver expects. The receiver's shapes give every count; each
//! position, level and padding bit is checked, and a refusal names the receiver's tensor, never
//! text from the sender.

use tessera_protocol::messages::SparseUpdate;
use tessera_protocol::TensorPayload;

use crate::bits::{rice_parameter, BitReader, BitWriter};
use crate::error::TrainError;
use crate::sparseloco::{chunks, kept, Compressed, SparseConfig};
use crate::update::two_d;

/// The wire form of `tensors` (each compressed with `cfg`, in the receiver's order).
pub fn pack(tensors: &[Compressed], cfg: &SparseConfig) -> SparseUpdate {
    let mut levels = Vec::new();
    let (mut codes, mut positions) = (BitWriter::default(), BitWriter::default());
    for t in tensors {
        levels.extend(t.levels.iter().flatten());
        let mut entry = 0usize;
        for c in chunks(t.shape, t.chunk) {
            let n = kept(t.k, &c);
            let b = rice_parameter(c.len(), n);
            let mut prev: Option<u16> = None;
            for e in entry..entry + n {
                codes.put(u32::from(t.code(e)), 2);
                if n < c.len() {
                    let at = t.indices[e];
                    positions.rice(u32::from(prev.map_or(at, |p| at - p - 1)), b);
                    prev = Some(at);
                }
            }
            entry += n;
        }
    }
    SparseUpdate {
        chunk: [cfg.chunk[0] as u32, cfg.chunk[1] as u32],
        k: cfg.k as u32,
        levels: TensorPayload::from_f32(&[levels.len() / 2, 2], &levels),
        codes: codes.finish(),
        positions: positions.finish(),
    }
}

/// Bytes of tensor data on the wire (levels, codes, positions; not the few bytes of framing).
pub fn packed_bytes(u: &SparseUpdate) -> usize {
    u.levels.data.len() + u.codes.len() + u.positions.len()
}

/// Reads `u` as the tensors `shapes` (name, shape, in order) compressed with the run's `cfg`:
/// chunk and k must be the run's, the levels one finite non-negative pair per chunk, the codes
/// one per kept entry, the positions ascending within their chunks; nothing may be left over.
pub fn unpack(
    u: &SparseUpdate,
    shapes: &[(String, Vec<usize>)],
    cfg: &SparseConfig,
) -> Result<Vec<Compressed>, TrainError> {
    let bad = |name: &str, why: String| TrainError::BadUpdate {
        name: name.to_string(),
        why,
    };
    if u.chunk != [cfg.chunk[0] as u32, cfg.chunk[1] as u32] || u.k != cfg.k as u32 {
        return Err(bad(
            "update",
            format!(
                "chunk {:?} k {}, the run uses {:?} k {}",
                u.chunk, u.k, cfg.chunk, cfg.k
            ),
        ));
    }
    let layouts: Vec<_> = shapes
        .iter()
        .map(|(_, s)| {
            let shape = two_d(s);
            (shape, chunks(shape, cfg.chunk))
        })
        .collect();
    let all_chunks: usize = layouts.iter().map(|(_, cs)| cs.len()).sum();
    let entries: usize = layouts
        .iter()
        .flat_map(|(_, cs)| cs.iter().map(|c| kept(cfg.k, c)))
        .sum();
    let levels = u.levels.to_f32()?;
    if levels.len() != 2 * all_chunks || u.codes.len() != entries.div_ceil(4) {
        return Err(bad(
            "update",
            format!(
                "{} levels and {} code bytes for {all_chunks} chunks and {entries} entries",
                levels.len(),
                u.codes.len()
            ),
        ));
    }
    if levels.iter().any(|&l| l < 0.0) {
        return Err(bad("update", "a negative magnitude level".into()));
    }
    let mut codes = BitReader::new(&u.codes);
    let mut positions = BitReader::new(&u.positions);
    let mut level_pairs = levels.chunks_exact(2).map(|l| [l[0], l[1]]);
    let mut out = Vec::with_capacity(shapes.len());
    for ((name, _), (shape, cs)) in shapes.iter().zip(&layouts) {
        let mut t = Compressed {
            shape: *shape,
            chunk: cfg.chunk,
            k: cfg.k,
            indices: Vec::new(),
            codes: Vec::new(),
            levels: level_pairs.by_ref().take(cs.len()).collect(),
        };
        let mut tensor_codes = BitWriter::default();
        for c in cs {
            let (len, n) = (c.len(), kept(cfg.k, c));
            let b = rice_parameter(len, n);
            let mut next = 0usize;
            for j in 0..n {
                let at = if n == len {
                    j
                } else {
                    // Room must remain for the positions still to come.
                    let max = (len - (n - j) - next) as u32;
                    let gap = positions
                        .rice(b, max)
                        .map_err(|e| bad(name, e.to_string()))?;
                    next + gap as usize
                };
                next = at + 1;
                t.indices.push(at as u16);
                let code = codes.get(2).map_err(|e| bad(name, e.to_string()))?;
                tensor_codes.put(code, 2);
            }
        }
        t.codes = tensor_codes.finish();
        out.push(t);
    }
    codes
        .end()
        .map_err(|_| bad("update", "non-zero padding after the codes".into()))?;
    positions.end().map_err(|e| bad("update", e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparseloco::compress;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        tessera_compute::reference::model::SplitMix(seed).vec(n, 1.0)
    }

    type Shapes = Vec<(String, Vec<usize>)>;

    fn two() -> (Shapes, Vec<Compressed>, SparseConfig) {
        let cfg = SparseConfig::default();
        let shapes = vec![
            ("a".to_string(), vec![100, 130]),
            ("norm".to_string(), vec![64]),
        ];
        let ts = shapes
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                let n = s.iter().product();
                compress(&rand(n, i as u64 + 1), two_d(s), &cfg)
            })
            .collect();
        (shapes, ts, cfg)
    }

    #[test]
    fn packs_and_reads_back() {
        let (shapes, ts, cfg) = two();
        let u = pack(&ts, &cfg);
        assert_eq!(unpack(&u, &shapes, &cfg).unwrap(), ts);
        // The norm vector keeps all its 64 entries: codes, no positions. The matrix's 2 x 3
        // chunks (the smallest, 36 x 2, has 72 entries) keep 64 each, with positions.
        assert_eq!(u.codes.len(), (6 * 64 + 64usize).div_ceil(4));
        let plain = 6 * 64 * 2;
        assert!(
            u.positions.len() * 3 < plain * 2,
            "{} bytes of positions, {plain} as u16",
            u.positions.len()
        );
    }

    #[test]
    fn malformed_updates_are_refused_by_the_receivers_names() {
        let (shapes, ts, cfg) = two();
        let u = pack(&ts, &cfg);
        let refused = |v: &SparseUpdate| unpack(v, &shapes, &cfg).unwrap_err().to_string();
        let mut other = SparseConfig { k: 32, ..cfg };
        assert!(unpack(&u, &shapes, &other).is_err(), "another k");
        other = SparseConfig {
            chunk: [32, 64],
            ..cfg
        };
        assert!(unpack(&u, &shapes, &other).is_err(), "another chunk");
        assert!(unpack(&u, &shapes[..1], &cfg).is_err(), "a tensor too many");
        // The receiver's shapes size everything: one with other chunks reads other counts.
        let mut wider = shapes.clone();
        wider[0].1 = vec![100, 200];
        assert!(unpack(&u, &wider, &cfg).is_err(), "shape mismatch");
        let mut short = u.clone();
        short.codes.pop();
        assert!(refused(&short).contains("code bytes"));
        let mut cut = u.clone();
        cut.positions.truncate(cut.positions.len() / 2);
        assert!(
            refused(&cut).contains("bad update for a:"),
            "{}",
            refused(&cut)
        );
        let mut long = u.clone();
        long.positions.push(0);
        assert!(refused(&long).contains("after the packed positions"));
        let mut ones = u.clone();
        ones.positions.iter_mut().for_each(|b| *b = 0xff);
        assert!(refused(&ones).contains("runs past its chunk"));
        let mut nan = u.clone();
        nan.levels.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(unpack(&nan, &shapes, &cfg).is_err(), "a NaN level");
        let mut neg = u.clone();
        neg.levels.data[0..4].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert!(refused(&neg).contains("negative"));
        let mut lie = u;
        lie.levels.shape[0] += 1;
        assert!(
            unpack(&lie, &shapes, &cfg).is_err(),
            "levels' shape and bytes differ"
        );
    }

    #[test]
    fn positions_stay_inside_and_ascending_whatever_the_bits() {
        // Every position stream a sender could make decodes to distinct positions inside their
        // chunks, or is refused.
        let cfg = SparseConfig {
            chunk: [4, 4],
            k: 3,
            beta: 0.9,
        };
        let shapes = vec![("m".to_string(), vec![4, 4])];
        let base = pack(&[compress(&rand(16, 9), [4, 4], &cfg)], &cfg);
        for bits in 0u32..1 << 12 {
            let mut u = base.clone();
            u.positions = vec![bits as u8, (bits >> 8) as u8];
            if let Ok(ts) = unpack(&u, &shapes, &cfg) {
                let idx = &ts[0].indices;
                assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx.iter().all(|&i| i < 16));
            }
        }
    }
}

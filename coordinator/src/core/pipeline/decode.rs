//! A pipeline unit's result checked against what the unit was and decoded: partial sums,
//! head statistics (their slices and target ownership checked), a span's whole-stage results.
//! A pure function of the pipeline's state; `units.rs` folds what it returns.

use tessera_compute::shard::{HeadStats, MicroShard};
use tessera_compute::ModelConfig;
use tessera_protocol::pipeline::{Pass, PipeResult};
use tessera_train::shards::from_wire;

use super::{Pipe, PipeUnit};

/// What a unit's output decodes to.
pub(super) enum Folded {
    Sum(Vec<f32>),
    Stats(Vec<(usize, HeadStats)>),
    Nothing,
    /// A span's whole-stage results, one per stage of the span that has one, each with the
    /// hash of its encoding.
    Span(Vec<(usize, [u8; 32], Vec<f32>)>),
}

impl Pipe {
    /// Unit `u`'s result `r` for a model `model` on sequences of `seq` tokens, checked and
    /// decoded; why it does not fit otherwise.
    pub(super) fn decode(
        &self,
        model: &ModelConfig,
        seq: usize,
        u: &PipeUnit,
        r: &PipeResult,
    ) -> Result<Folded, String> {
        let pipe = self;
        let last = pipe.stages.len() - 1;
        let d = model.hidden_size;
        if u.stages.len() > 1 {
            let PipeResult::Span(parts) = r else {
                return Err(format!(
                    "a span of stages {:?} answers with one result per stage",
                    u.stages
                ));
            };
            // Forward: the residual after each stage; backward: the gradient of each stage's
            // input but the embedding's.
            let stages: Vec<usize> = match u.pass {
                Pass::Forward => u.stages.clone().collect(),
                Pass::Backward => u.stages.clone().filter(|&s| s > 0).collect(),
            };
            if parts.len() != stages.len() {
                return Err(format!(
                    "{} results for a span with {} of them",
                    parts.len(),
                    stages.len()
                ));
            }
            return stages
                .into_iter()
                .zip(parts)
                .map(|(s, a)| {
                    a.decode_shaped(&[seq, d])
                        .map(|v| (s, crate::core::digest(a), v))
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<_, _>>()
                .map(Folded::Span);
        }
        let shards: Vec<usize> = u.cells.iter().map(|&(_, i)| i).collect();
        match (u.pass, u.stages.start, r) {
            (Pass::Backward, 0, PipeResult::Accumulated) => Ok(Folded::Nothing),
            (Pass::Forward, s, PipeResult::HeadStats(slices)) if s == last => {
                if slices.len() != shards.len() {
                    return Err(format!(
                        "{} head slices for {} micro-shards",
                        slices.len(),
                        shards.len()
                    ));
                }
                let targets = &pipe.step.mbs[u.mb].targets;
                let mut out = Vec::new();
                for (slice, &i) in slices.iter().zip(&shards) {
                    let shard = from_wire(&slice.shard, model).map_err(|e| e.to_string())?;
                    if shard != pipe.stages[s][i] {
                        return Err(format!(
                            "statistics of {shard}, expected {}",
                            pipe.stages[s][i]
                        ));
                    }
                    let MicroShard::Head { cols } = &shard else {
                        return Err(format!("{shard} is not a head slice"));
                    };
                    slice
                        .stats
                        .expect_shape(&[seq, 3])
                        .map_err(|e| e.to_string())?;
                    let st = slice.stats.to_f32().map_err(|e| e.to_string())?;
                    slice
                        .owned
                        .expect_shape(&[seq])
                        .map_err(|e| e.to_string())?;
                    let owned = slice.owned.to_u8().map_err(|e| e.to_string())?;
                    let mut h = HeadStats::default();
                    for r in 0..seq {
                        let own = cols.contains(&(targets[r] as usize));
                        if owned[r] != u8::from(own) {
                            return Err(format!("token {r}: target ownership is wrong"));
                        }
                        if st[r * 3 + 1] < 0.999 {
                            return Err(format!("token {r}: sum-exp {} below 1", st[r * 3 + 1]));
                        }
                        h.max.push(st[r * 3] as f64);
                        h.sum_exp.push(st[r * 3 + 1] as f64);
                        h.target_logit.push(own.then_some(st[r * 3 + 2] as f64));
                    }
                    out.push((i, h));
                }
                Ok(Folded::Stats(out))
            }
            (Pass::Forward, s, PipeResult::Activation(a)) if s < last => Ok(Folded::Sum(
                a.decode_shaped(&[seq, d]).map_err(|e| e.to_string())?,
            )),
            (Pass::Backward, s, PipeResult::Activation(a)) if s > 0 => Ok(Folded::Sum(
                a.decode_shaped(&[seq, d]).map_err(|e| e.to_string())?,
            )),
            (pass, s, _) => Err(format!(
                "wrong kind of result for a {pass:?} unit of stage {s}"
            )),
        }
    }
}

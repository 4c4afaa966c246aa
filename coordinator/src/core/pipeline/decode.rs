//! A pipeline unit's result checked against what the unit was and decoded: partial sums,
//! head statistics (their slices and target ownership checked), a span's whole-stage results.
//! A pure function of the pipeline's state; `units.rs` folds what it returns.

use tessera_compute::shard::{HeadStats, MicroShard};
use tessera_compute::ModelConfig;
use tessera_protocol::pipeline::{Pass, PipeResult};
use tessera_protocol::{Activation, Code, Reason};
use tessera_train::shards::from_wire;

use super::{Pipe, PipeUnit};
use crate::core::spec::PipelineSpec;

/// An activation of shape `[seq, d]` in the run's encoding and within its bound, decoded.
fn activation(a: &Activation, shape: [usize; 2], ps: &PipelineSpec) -> Result<Vec<f32>, Reason> {
    if a.encoding != ps.activations {
        let why = format!(
            "an activation in {:?}; this run's activations travel in {:?}",
            a.encoding, ps.activations
        );
        return Err(Reason::new(Code::OutOfRange, why));
    }
    let v = a
        .decode_shaped(&shape)
        .map_err(|e| Reason::new(Code::WrongShape, e.to_string()))?;
    let bound = ps.max_activation;
    if let Some(x) = v.iter().find(|x| x.is_finite() && x.abs() > bound) {
        let why = format!("an activation of {x:e}, beyond this run's bound of {bound:e}");
        return Err(Reason::new(Code::OutOfRange, why));
    }
    Ok(v)
}

/// Why a result does not fit its unit.
enum Misfit {
    /// Its kind, shape or slices are not the unit's.
    Shape(String),
    /// Its values are refused, with the reason.
    Value(Reason),
}

impl From<String> for Misfit {
    fn from(why: String) -> Self {
        Misfit::Shape(why)
    }
}

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
    /// Unit `u`'s result `r` for a model `model` on sequences of `seq` tokens in the pipeline
    /// `ps`, checked and decoded; why it does not fit otherwise (activations in another
    /// encoding or beyond the run's bound are `OutOfRange`, other misfits `WrongShape`).
    pub(super) fn decode(
        &self,
        model: &ModelConfig,
        seq: usize,
        u: &PipeUnit,
        r: &PipeResult,
    ) -> Result<Folded, Reason> {
        self.fold_result(model, seq, &self.spec, u, r)
            .map_err(|e| match e {
                Misfit::Shape(why) => Reason::new(Code::WrongShape, why),
                Misfit::Value(reason) => reason,
            })
    }

    fn fold_result(
        &self,
        model: &ModelConfig,
        seq: usize,
        ps: &PipelineSpec,
        u: &PipeUnit,
        r: &PipeResult,
    ) -> Result<Folded, Misfit> {
        let pipe = self;
        let last = pipe.spec.stages.len() - 1;
        let d = model.hidden_size;
        if u.stages.len() > 1 {
            let PipeResult::Span(parts) = r else {
                return Err(Misfit::Shape(format!(
                    "a span of stages {:?} answers with one result per stage",
                    u.stages
                )));
            };
            // Forward: the residual after each stage; backward: the gradient of each stage's
            // input but the embedding's.
            let stages: Vec<usize> = match u.pass {
                Pass::Forward => u.stages.clone().collect(),
                Pass::Backward => u.stages.clone().filter(|&s| s > 0).collect(),
            };
            if parts.len() != stages.len() {
                return Err(Misfit::Shape(format!(
                    "{} results for a span with {} of them",
                    parts.len(),
                    stages.len()
                )));
            }
            return stages
                .into_iter()
                .zip(parts)
                .map(|(s, a)| {
                    activation(a, [seq, d], ps)
                        .map(|v| (s, crate::core::digest(a), v))
                        .map_err(Misfit::Value)
                })
                .collect::<Result<_, _>>()
                .map(Folded::Span);
        }
        let shards: Vec<usize> = u.cells.iter().map(|&(_, i)| i).collect();
        match (u.pass, u.stages.start, r) {
            (Pass::Backward, 0, PipeResult::Accumulated) => Ok(Folded::Nothing),
            (Pass::Forward, s, PipeResult::HeadStats(slices)) if s == last => {
                if slices.len() != shards.len() {
                    return Err(Misfit::Shape(format!(
                        "{} head slices for {} micro-shards",
                        slices.len(),
                        shards.len()
                    )));
                }
                let targets = &pipe.step.mbs[u.mb].targets;
                let mut out = Vec::new();
                for (slice, &i) in slices.iter().zip(&shards) {
                    let shard =
                        from_wire(&slice.shard, model).map_err(|e| Misfit::Shape(e.to_string()))?;
                    if shard != pipe.spec.stages[s][i] {
                        return Err(Misfit::Shape(format!(
                            "statistics of {shard}, expected {}",
                            pipe.spec.stages[s][i]
                        )));
                    }
                    let MicroShard::Head { cols } = &shard else {
                        return Err(Misfit::Shape(format!("{shard} is not a head slice")));
                    };
                    slice
                        .stats
                        .expect_shape(&[seq, 3])
                        .map_err(|e| Misfit::Shape(e.to_string()))?;
                    let st = slice
                        .stats
                        .to_f32()
                        .map_err(|e| Misfit::Shape(e.to_string()))?;
                    slice
                        .owned
                        .expect_shape(&[seq])
                        .map_err(|e| Misfit::Shape(e.to_string()))?;
                    let owned = slice
                        .owned
                        .to_u8()
                        .map_err(|e| Misfit::Shape(e.to_string()))?;
                    let mut h = HeadStats::default();
                    for r in 0..seq {
                        let own = cols.contains(&(targets[r] as usize));
                        if owned[r] != u8::from(own) {
                            return Err(Misfit::Shape(format!(
                                "token {r}: target ownership is wrong"
                            )));
                        }
                        if st[r * 3 + 1] < 0.999 {
                            return Err(Misfit::Shape(format!(
                                "token {r}: sum-exp {} below 1",
                                st[r * 3 + 1]
                            )));
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
                activation(a, [seq, d], ps).map_err(Misfit::Value)?,
            )),
            (Pass::Backward, s, PipeResult::Activation(a)) if s > 0 => Ok(Folded::Sum(
                activation(a, [seq, d], ps).map_err(Misfit::Value)?,
            )),
            (pass, s, _) => Err(Misfit::Shape(format!(
                "wrong kind of result for a {pass:?} unit of stage {s}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_protocol::pipeline::{Pass, PipeResult};
    use tessera_protocol::{ActEncoding, Activation, Code};

    use super::super::testing::{pipe, spec};
    use super::super::PipeUnit;

    #[test]
    fn an_activation_must_be_in_the_run_s_encoding_and_within_its_bound() {
        let sp = spec();
        let ps = sp.pipeline.clone().unwrap();
        let p = pipe(&sp, vec![(0, 0)]);
        let (seq, d) = (sp.seq as usize, sp.model.hidden_size);
        let u = PipeUnit {
            conn: 1,
            lease: 1,
            mb: 0,
            stages: 0..1,
            pass: Pass::Forward,
            cells: vec![(0, 0)],
            deadline: 0,
        };
        let result = |values: &[f32], enc| {
            let r = PipeResult::Activation(Activation::encode(&[seq, d], values, enc));
            p.decode(&sp.model, seq, &u, &r).map(|_| ())
        };
        let ok = vec![0.5f32; seq * d];
        assert_eq!(ps.activations, ActEncoding::F32);
        assert!(result(&ok, ActEncoding::F32).is_ok());
        let code = |r: Result<(), tessera_protocol::Reason>| r.unwrap_err().code;
        assert_eq!(code(result(&ok, ActEncoding::Bf16)), Code::OutOfRange);
        let mut big = ok.clone();
        big[3] = 3.0e38;
        assert_eq!(code(result(&big, ActEncoding::F32)), Code::OutOfRange);
        big[3] = ps.max_activation;
        assert!(
            result(&big, ActEncoding::F32).is_ok(),
            "the bound itself is allowed"
        );
        let short = PipeResult::Activation(Activation::encode(&[1, d], &ok[..d], ActEncoding::F32));
        assert_eq!(
            code(p.decode(&sp.model, seq, &u, &short).map(|_| ())),
            Code::WrongShape
        );
    }
}

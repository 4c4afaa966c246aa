//! Where a micro-batch's activations and gradients travel between stages: the one interface
//! ([`Route`]) the pipeline uses to attach a unit's tensor inputs and to fold in its partial
//! results.
//!
//! [`Relay`] is the coordinator relay, the small-run default and the fallback: the coordinator
//! keeps each stage's input and output gradient, sums the partial results of a tensor-sliced
//! stage (adding the residual), and attaches the tensors to the units it hands out. At scale a
//! peer-to-peer route implements the same trait keeping only payload hashes, and tells the
//! leases of consecutive stages to exchange the tensors directly (docs/ARCHITECTURE.md, "The
//! 72B plan on paper").

use std::ops::Range;

use tessera_protocol::pipeline::{Pass, PipeWork};
use tessera_protocol::{ActEncoding, Activation};

/// How a micro-batch's tensors reach the units that need them.
pub(in crate::core) trait Route {
    /// Whether the tensor a unit of `stage` and `pass` takes is available: the stage input for
    /// a forward, the output gradient for a backward (the head's backward needs no tensor
    /// gradient; its log-sum-exp is the loss's, kept by the caller).
    fn ready(&self, stage: usize, pass: Pass, last: usize) -> bool;
    /// Attaches the input of the first of `stages` and, for a backward below the head, the
    /// output gradient of the last.
    fn attach(&self, work: &mut PipeWork, stages: Range<usize>, pass: Pass, last: usize);
    /// Adds a unit's partial result (partial output, or partial input gradient).
    fn add(&mut self, stage: usize, pass: Pass, part: Vec<f32>);
    /// Every micro-shard of `stage` reported for `pass`: passes the sum on (the next stage's
    /// input, or the previous stage's output gradient).
    fn complete(&mut self, stage: usize, pass: Pass, last: usize);
    /// A whole stage's result from a span unit: forward, the residual stream after `stage`;
    /// backward, the gradient of `stage`'s input.
    fn put(&mut self, stage: usize, pass: Pass, full: Vec<f32>);
}

/// The coordinator relay for one micro-batch.
#[derive(Clone, Debug)]
pub(in crate::core) struct Relay {
    encoding: ActEncoding,
    shape: [usize; 2],
    /// Input of each stage (`None` for the embedding and until computed).
    input: Vec<Option<Vec<f32>>>,
    /// Gradient of each stage's output (the head's is implicit in the loss).
    dout: Vec<Option<Vec<f32>>>,
    /// Partial sums so far per stage, forward and backward.
    fwd: Vec<Option<Vec<f32>>>,
    bwd: Vec<Option<Vec<f32>>>,
}

impl Relay {
    /// A relay for `stages` stages of `[seq, hidden]` tensors sent as `encoding`.
    pub(super) fn new(stages: usize, shape: [usize; 2], encoding: ActEncoding) -> Self {
        Relay {
            encoding,
            shape,
            input: vec![None; stages],
            dout: vec![None; stages],
            fwd: vec![None; stages],
            bwd: vec![None; stages],
        }
    }

    fn encode(&self, x: &[f32]) -> Activation {
        Activation::encode(&self.shape, x, self.encoding)
    }
}

fn plus(acc: Option<Vec<f32>>, base: Option<&Vec<f32>>) -> Option<Vec<f32>> {
    let (mut a, b) = (acc?, base?);
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    Some(a)
}

impl Route for Relay {
    fn ready(&self, stage: usize, pass: Pass, last: usize) -> bool {
        match pass {
            Pass::Forward => stage == 0 || self.input[stage].is_some(),
            Pass::Backward => stage == last || self.dout[stage].is_some(),
        }
    }

    fn attach(&self, work: &mut PipeWork, stages: Range<usize>, pass: Pass, last: usize) {
        let top = stages.end - 1;
        work.input = self.input[stages.start].as_deref().map(|x| self.encode(x));
        work.grad = match pass {
            Pass::Backward if top < last => self.dout[top].as_deref().map(|x| self.encode(x)),
            _ => None,
        };
    }

    fn put(&mut self, stage: usize, pass: Pass, full: Vec<f32>) {
        match pass {
            Pass::Forward => self.input[stage + 1] = Some(full),
            Pass::Backward if stage > 0 => self.dout[stage - 1] = Some(full),
            Pass::Backward => {}
        }
    }

    fn add(&mut self, stage: usize, pass: Pass, part: Vec<f32>) {
        let acc = match pass {
            Pass::Forward => &mut self.fwd[stage],
            Pass::Backward => &mut self.bwd[stage],
        };
        match acc {
            Some(a) => a.iter_mut().zip(&part).for_each(|(x, y)| *x += y),
            None => *acc = Some(part),
        }
    }

    fn complete(&mut self, stage: usize, pass: Pass, last: usize) {
        match (pass, stage) {
            (Pass::Forward, s) if s == last => {}
            (Pass::Forward, 0) => self.input[1] = self.fwd[0].take(),
            (Pass::Forward, s) => {
                self.input[s + 1] = plus(self.fwd[s].take(), self.input[s].as_ref());
            }
            (Pass::Backward, 0) => {}
            (Pass::Backward, s) if s == last => self.dout[s - 1] = self.bwd[s].take(),
            (Pass::Backward, s) => {
                self.dout[s - 1] = plus(self.bwd[s].take(), self.dout[s].as_ref());
            }
        }
    }
}

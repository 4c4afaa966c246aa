//! Where a micro-batch's activations and gradients travel between stages: the one interface
//! ([`Route`]) the pipeline uses to learn that a unit's tensor inputs are ready, to tell who
//! sends what to whom ([`Directions`]), and to record the partial results units send.
//!
//! A route speaks in tensor names ([`Sent`]: the unit that sent a tensor, whose lease holds it,
//! and the hash of its encoded bytes), so a route that never sees the bytes can implement it:
//! at scale, a peer-to-peer route keeps only these names and tells the leases of consecutive
//! stages which tensors to fetch from whom and sum (docs/ARCHITECTURE.md, "The 72B plan on
//! paper"). Today's one implementation, [`Relay`], also carries the bytes: the coordinator sums
//! the partial results of a tensor-sliced stage (adding the residual) and attaches the tensors
//! to the units it hands out.

use std::ops::Range;

use tessera_protocol::pipeline::Pass;
use tessera_protocol::{ActEncoding, Activation};

/// A tensor a unit sent: the unit (its lease holds the tensor) and the SHA-256 of what named
/// it on the wire: the unit's result (the digest its receipt carries), or for a span unit
/// that stage's part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::core) struct Sent {
    pub(in crate::core) unit: u64,
    pub(in crate::core) hash: [u8; 32],
}

/// Who sends what to a unit: the tensors whose sum is its input, and (a backward below the
/// head) the tensors whose sum is its output gradient. Empty where it takes none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(in crate::core) struct Directions {
    pub(in crate::core) input: Vec<Sent>,
    pub(in crate::core) grad: Vec<Sent>,
}

/// How a micro-batch's tensors reach the units that need them.
pub(in crate::core) trait Route: std::fmt::Debug + Send + Sync {
    /// Whether the tensor a unit of `stage` and `pass` takes is available: the stage input for
    /// a forward, the output gradient for a backward (the head's backward needs no tensor
    /// gradient; its log-sum-exp is the loss's, kept by the caller).
    fn ready(&self, stage: usize, pass: Pass, last: usize) -> bool;
    /// Who sends what to a unit of `stages` and `pass`.
    fn directions(&self, stages: Range<usize>, pass: Pass, last: usize) -> Directions;
    /// A unit's partial result for `stage` (partial output, or partial input gradient): its
    /// name, and its values where the route carries bytes ([`Route::carries_bytes`]).
    fn add(&mut self, stage: usize, pass: Pass, sent: Sent, values: Option<Vec<f32>>);
    /// A whole stage's result from a span unit: forward, the residual stream after `stage`;
    /// backward, the gradient of `stage`'s input.
    fn put(&mut self, stage: usize, pass: Pass, sent: Sent, values: Option<Vec<f32>>);
    /// Every micro-shard of `stage` reported for `pass`: passes the sum on (the next stage's
    /// input, or the previous stage's output gradient).
    fn complete(&mut self, stage: usize, pass: Pass, last: usize);
    /// Whether the coordinator carries the tensors (receives them and attaches them to the
    /// work it hands out) rather than only directing leases to each other.
    fn carries_bytes(&self) -> bool;
    /// The input and output gradient to attach to a unit of `stages` and `pass`, where the
    /// route carries bytes.
    fn attached(
        &self,
        stages: Range<usize>,
        pass: Pass,
        last: usize,
    ) -> (Option<Activation>, Option<Activation>);
}

/// The names of a micro-batch's tensors, stage by stage: what every route keeps.
#[derive(Clone, Debug)]
pub(in crate::core) struct Ledger {
    /// The tensors whose sum is each stage's input (`None` for the embedding and until known).
    input: Vec<Option<Vec<Sent>>>,
    /// The tensors whose sum is the gradient of each stage's output.
    dout: Vec<Option<Vec<Sent>>>,
    /// Partial results so far per stage, forward and backward.
    fwd: Vec<Vec<Sent>>,
    bwd: Vec<Vec<Sent>>,
}

impl Ledger {
    /// A ledger of `stages` stages.
    pub(in crate::core) fn new(stages: usize) -> Self {
        Ledger {
            input: vec![None; stages],
            dout: vec![None; stages],
            fwd: vec![Vec::new(); stages],
            bwd: vec![Vec::new(); stages],
        }
    }

    fn ready(&self, stage: usize, pass: Pass, last: usize) -> bool {
        match pass {
            Pass::Forward => stage == 0 || self.input[stage].is_some(),
            Pass::Backward => stage == last || self.dout[stage].is_some(),
        }
    }

    fn directions(&self, stages: Range<usize>, pass: Pass, last: usize) -> Directions {
        let top = stages.end - 1;
        Directions {
            input: self.input[stages.start].clone().unwrap_or_default(),
            grad: match pass {
                Pass::Backward if top < last => self.dout[top].clone().unwrap_or_default(),
                _ => Vec::new(),
            },
        }
    }

    fn add(&mut self, stage: usize, pass: Pass, sent: Sent) {
        match pass {
            Pass::Forward => self.fwd[stage].push(sent),
            Pass::Backward => self.bwd[stage].push(sent),
        }
    }

    fn put(&mut self, stage: usize, pass: Pass, sent: Sent) {
        match pass {
            Pass::Forward => self.input[stage + 1] = Some(vec![sent]),
            Pass::Backward if stage > 0 => self.dout[stage - 1] = Some(vec![sent]),
            Pass::Backward => {}
        }
    }

    /// The partial results then the residual: the tensors whose sum passes on.
    fn with(parts: Vec<Sent>, residual: Option<&Vec<Sent>>) -> Vec<Sent> {
        let mut all = parts;
        all.extend(residual.into_iter().flatten().copied());
        all
    }

    fn complete(&mut self, stage: usize, pass: Pass, last: usize) {
        match (pass, stage) {
            (Pass::Forward, s) if s == last => {}
            (Pass::Forward, 0) => self.input[1] = Some(std::mem::take(&mut self.fwd[0])),
            (Pass::Forward, s) => {
                let parts = std::mem::take(&mut self.fwd[s]);
                self.input[s + 1] = Some(Self::with(parts, self.input[s].as_ref()));
            }
            (Pass::Backward, 0) => {}
            (Pass::Backward, s) if s == last => {
                self.dout[s - 1] = Some(std::mem::take(&mut self.bwd[s]))
            }
            (Pass::Backward, s) => {
                let parts = std::mem::take(&mut self.bwd[s]);
                self.dout[s - 1] = Some(Self::with(parts, self.dout[s].as_ref()));
            }
        }
    }
}

/// The coordinator relay for one micro-batch: the ledger, and the values themselves.
#[derive(Clone, Debug)]
pub(in crate::core) struct Relay {
    ledger: Ledger,
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
            ledger: Ledger::new(stages),
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
        self.ledger.ready(stage, pass, last)
    }

    fn directions(&self, stages: Range<usize>, pass: Pass, last: usize) -> Directions {
        self.ledger.directions(stages, pass, last)
    }

    fn attached(
        &self,
        stages: Range<usize>,
        pass: Pass,
        last: usize,
    ) -> (Option<Activation>, Option<Activation>) {
        let top = stages.end - 1;
        let input = self.input[stages.start].as_deref().map(|x| self.encode(x));
        let grad = match pass {
            Pass::Backward if top < last => self.dout[top].as_deref().map(|x| self.encode(x)),
            _ => None,
        };
        (input, grad)
    }

    fn put(&mut self, stage: usize, pass: Pass, sent: Sent, values: Option<Vec<f32>>) {
        self.ledger.put(stage, pass, sent);
        match pass {
            Pass::Forward => self.input[stage + 1] = values,
            Pass::Backward if stage > 0 => self.dout[stage - 1] = values,
            Pass::Backward => {}
        }
    }

    fn add(&mut self, stage: usize, pass: Pass, sent: Sent, values: Option<Vec<f32>>) {
        self.ledger.add(stage, pass, sent);
        let Some(part) = values else { return };
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
        self.ledger.complete(stage, pass, last);
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

    fn carries_bytes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(unit: u64) -> Sent {
        Sent {
            unit,
            hash: [unit as u8; 32],
        }
    }

    /// Stages: embedding (0), two blocks (1, 2), head (3); the blocks in two slices each.
    fn forward(r: &mut impl Route, values: bool) {
        let v = |x: f32| values.then(|| vec![x; 2]);
        r.add(0, Pass::Forward, sent(1), v(1.0));
        r.complete(0, Pass::Forward, 3);
        r.add(1, Pass::Forward, sent(2), v(10.0));
        r.add(1, Pass::Forward, sent(3), v(100.0));
        r.complete(1, Pass::Forward, 3);
    }

    #[test]
    fn directions_name_the_partial_results_then_the_residual() {
        let mut r = Relay::new(4, [1, 2], ActEncoding::F32);
        assert!(r.ready(0, Pass::Forward, 3) && !r.ready(1, Pass::Forward, 3));
        forward(&mut r, true);
        assert!(r.ready(2, Pass::Forward, 3));
        // Stage 2's input: stage 1's two slices, then the residual (the embedding's output).
        let d = r.directions(2..3, Pass::Forward, 3);
        assert_eq!(d.input, vec![sent(2), sent(3), sent(1)]);
        assert!(d.grad.is_empty());
        // The relay carries their sum.
        let (input, grad) = r.attached(2..3, Pass::Forward, 3);
        assert_eq!(input.unwrap().decode().unwrap(), vec![111.0; 2]);
        assert!(grad.is_none());
    }

    #[test]
    fn backward_gradients_flow_down_with_their_residual() {
        let mut r = Relay::new(4, [1, 2], ActEncoding::F32);
        r.add(3, Pass::Backward, sent(7), Some(vec![2.0; 2]));
        r.complete(3, Pass::Backward, 3);
        assert!(r.ready(2, Pass::Backward, 3));
        r.add(2, Pass::Backward, sent(8), Some(vec![5.0; 2]));
        r.complete(2, Pass::Backward, 3);
        let d = r.directions(1..2, Pass::Backward, 3);
        assert_eq!(d.grad, vec![sent(8), sent(7)]);
        let (_, grad) = r.attached(1..2, Pass::Backward, 3);
        assert_eq!(grad.unwrap().decode().unwrap(), vec![7.0; 2]);
        // A span's whole-stage result replaces the sums.
        r.put(1, Pass::Backward, sent(9), Some(vec![1.0; 2]));
        assert_eq!(r.directions(0..1, Pass::Backward, 3).grad, vec![sent(9)]);
    }

    /// A route that never sees the bytes: names only, as a peer-to-peer route keeps them.
    #[derive(Debug)]
    struct NamesOnly(Ledger);

    impl Route for NamesOnly {
        fn ready(&self, stage: usize, pass: Pass, last: usize) -> bool {
            self.0.ready(stage, pass, last)
        }
        fn directions(&self, stages: Range<usize>, pass: Pass, last: usize) -> Directions {
            self.0.directions(stages, pass, last)
        }
        fn add(&mut self, stage: usize, pass: Pass, sent: Sent, values: Option<Vec<f32>>) {
            assert!(
                values.is_none(),
                "no bytes reach a route that does not carry them"
            );
            self.0.add(stage, pass, sent)
        }
        fn put(&mut self, stage: usize, pass: Pass, sent: Sent, _: Option<Vec<f32>>) {
            self.0.put(stage, pass, sent)
        }
        fn complete(&mut self, stage: usize, pass: Pass, last: usize) {
            self.0.complete(stage, pass, last)
        }
        fn carries_bytes(&self) -> bool {
            false
        }
        fn attached(
            &self,
            _: Range<usize>,
            _: Pass,
            _: usize,
        ) -> (Option<Activation>, Option<Activation>) {
            (None, None)
        }
    }

    #[test]
    fn a_route_without_bytes_gives_the_same_directions() {
        let (mut relay, mut names) = (
            Relay::new(4, [1, 2], ActEncoding::F32),
            NamesOnly(Ledger::new(4)),
        );
        forward(&mut relay, true);
        forward(&mut names, false);
        for s in 0..4 {
            assert_eq!(
                relay.ready(s, Pass::Forward, 3),
                names.ready(s, Pass::Forward, 3)
            );
            assert_eq!(
                relay.directions(s..s + 1, Pass::Forward, 3),
                names.directions(s..s + 1, Pass::Forward, 3)
            );
        }
        assert_eq!(names.attached(2..3, Pass::Forward, 3), (None, None));
    }
}

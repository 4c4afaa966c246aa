//! Which task an idle pipeline lease gets: backward before forward, earlier micro-batches
//! first, and where the lease holds every micro-shard of consecutive open stages (never the
//! head) one span unit covering them all. A pure decision of the pipeline's own state.

use std::collections::BTreeMap;
use std::ops::Range;

use tessera_protocol::pipeline::Pass;
use tessera_protocol::PublicKey;

use super::{MicroBatch, Pipe, ShardId, ShardState};

/// A task: the micro-batch, the stages, the pass and the micro-shards to run.
pub(super) type Task = (usize, Range<usize>, Pass, Vec<ShardId>);

/// Who runs each lease as the scheduler sees it: the identity and whether the lease's weights
/// are loaded. Only read while an identity is barred from a task (see `Step::barred`).
pub(super) type Holders = BTreeMap<u64, (PublicKey, bool)>;

/// Whether the tensor a unit of `stage` and `pass` of `mb` needs is there (the head's backward
/// needs the loss's log-sum-exp).
fn available(mb: &MicroBatch, stage: usize, pass: Pass, last: usize) -> bool {
    match pass {
        Pass::Backward if stage == last => mb.lse.is_some(),
        _ => mb.route.ready(stage, pass, last),
    }
}

impl Pipe {
    /// The task for an idle lease: backward before forward, earlier micro-batches first; where
    /// the lease holds every micro-shard of consecutive open stages (never the head), one span
    /// unit covers them all. A task the lease's identity was barred from goes to it only when
    /// no other ready identity holds it.
    pub(super) fn pick_task(&self, lease: u64, holders: &Holders) -> Option<Task> {
        let pipe = self;
        let held = &pipe.holdings.get(&lease)?.shards;
        let key = holders.get(&lease).map(|&(k, _)| k);
        let last = pipe.spec.stages.len() - 1;
        let open = |m: usize, stage: usize, pass: Pass| -> Vec<usize> {
            let mb = &pipe.step.mbs[m];
            let cover = match pass {
                Pass::Forward => &mb.fwd[stage],
                Pass::Backward => &mb.bwd[stage],
            };
            held.iter()
                .filter(|&&(s, i)| s == stage && cover.shards[i] == ShardState::Open)
                .filter(|&&cell| match key {
                    Some(k) if pipe.step.is_barred(k, m, pass, cell) => {
                        !pipe.elsewhere(k, lease, (m, pass, cell), holders)
                    }
                    _ => true,
                })
                .map(|&(_, i)| i)
                .collect()
        };
        // A stage the lease can run whole: it holds every micro-shard and all are open.
        let whole = |m: usize, stage: usize, pass: Pass| -> bool {
            stage != last && open(m, stage, pass).len() == pipe.spec.stages[stage].len()
        };
        let stages: Vec<usize> = {
            let mut v: Vec<usize> = held.iter().map(|&(s, _)| s).collect();
            v.dedup();
            v
        };
        for pass in [Pass::Backward, Pass::Forward] {
            for (m, mb) in pipe.step.mbs.iter().enumerate() {
                let order: Box<dyn Iterator<Item = &usize>> = match pass {
                    Pass::Backward => Box::new(stages.iter().rev()),
                    Pass::Forward => Box::new(stages.iter()),
                };
                for &stage in order {
                    if !available(mb, stage, pass, last) {
                        continue;
                    }
                    let shards = open(m, stage, pass);
                    if shards.is_empty() {
                        continue;
                    }
                    let mut span = stage..stage + 1;
                    if whole(m, stage, pass) {
                        match pass {
                            Pass::Forward => {
                                while whole(m, span.end, pass) {
                                    span.end += 1;
                                }
                            }
                            Pass::Backward => {
                                while span.start > 0 && whole(m, span.start - 1, pass) {
                                    span.start -= 1;
                                }
                            }
                        }
                    }
                    let cells = if span.len() == 1 {
                        shards.iter().map(|&i| (stage, i)).collect()
                    } else {
                        span.clone()
                            .flat_map(|s| (0..pipe.spec.stages[s].len()).map(move |i| (s, i)))
                            .collect()
                    };
                    return Some((m, span, pass, cells));
                }
            }
        }
        None
    }

    /// Whether a ready lease of an identity other than `key`, not barred from it, holds
    /// `cell` of micro-batch `mb` in `pass`.
    fn elsewhere(
        &self,
        key: PublicKey,
        lease: u64,
        (mb, pass, cell): (usize, Pass, ShardId),
        holders: &Holders,
    ) -> bool {
        self.holdings.iter().any(|(&other, h)| {
            other != lease
                && h.shards.contains(&cell)
                && holders.get(&other).is_some_and(|&(k, ready)| {
                    ready && k != key && !self.step.is_barred(k, mb, pass, cell)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe(held: Vec<ShardId>) -> Pipe {
        super::super::testing::pipe(&super::super::testing::spec(), held)
    }

    /// Every micro-shard of the tiny model's pipeline, and its head's stage.
    fn every_cell() -> (Vec<ShardId>, usize) {
        let p = pipe(Vec::new());
        let cells = (0..p.spec.stages.len())
            .flat_map(|s| (0..p.spec.stages[s].len()).map(move |i| (s, i)))
            .collect();
        (cells, p.spec.stages.len() - 1)
    }

    #[test]
    fn a_lease_holding_whole_stages_runs_them_as_one_span_never_with_the_head() {
        let (all, head) = every_cell();
        let (mb, stages, pass, cells) = pipe(all.clone())
            .pick_task(1, &Holders::new())
            .expect("a task");
        assert_eq!((mb, stages, pass), (0, 0..head, Pass::Forward));
        assert_eq!(
            cells,
            all[..head].to_vec(),
            "one micro-shard a stage below the head"
        );
    }

    #[test]
    fn a_lease_waits_for_its_input() {
        // The head alone: nothing until the forward reached it.
        let (_, head) = every_cell();
        let mut p = pipe(vec![(head, 0), (head, 1)]);
        assert_eq!(p.pick_task(1, &Holders::new()), None);
        assert_eq!(
            p.pick_task(2, &Holders::new()),
            None,
            "an unknown lease gets nothing"
        );
        // The embedding: its forward.
        p.holdings.get_mut(&1).unwrap().shards = vec![(0, 0)];
        let (mb, stages, pass, _) = p
            .pick_task(1, &Holders::new())
            .expect("the embedding's forward");
        assert_eq!((mb, stages, pass), (0, 0..1, Pass::Forward));
    }
}

//! Tied embeddings on the GPU: the embedding and the head are one matrix, held as the `Embed`
//! shards' tables and the `Head` shards' weights, cut into vocabulary rows independently. Before
//! a step the head's gradient rows are added into the embedding's at the same rows and zeroed
//! (the matrix's gradient is the sum of both parts, counted once by the global norm); after it
//! the embedding's weights and moments are copied over the head's, so both copies stay equal.

use std::ops::Range;

use crate::error::ComputeError;
use crate::gpu::Gpu;
use crate::model::GpuModel;
use crate::shard::{GpuShard, Piece};

/// The pieces of an `Embed` or `Head` shard: each holds vocabulary rows `units` of the matrix
/// as its first sliced slot, `[rows, d]` row-major.
fn rows_of(s: &GpuShard) -> impl Iterator<Item = &Piece> {
    s.pieces.iter()
}

/// Where two pieces' rows overlap: (first row, rows).
fn overlap(a: &Range<usize>, b: &Range<usize>) -> Option<(usize, usize)> {
    let lo = a.start.max(b.start);
    let hi = a.end.min(b.end);
    (lo < hi).then(|| (lo, hi - lo))
}

impl GpuModel {
    /// Every (embedding piece, head piece) pair sharing rows: the call gets both pieces, the
    /// first shared row and the row count.
    fn tied_pairs(
        &self,
        mut f: impl FnMut(&Piece, &Piece, usize, usize) -> Result<(), ComputeError>,
    ) -> Result<(), ComputeError> {
        let last = self.stages.len() - 1;
        for e in self.stages[0].iter().flat_map(rows_of) {
            for h in self.stages[last].iter().flat_map(rows_of) {
                if let Some((row, n)) = overlap(&e.units, &h.units) {
                    f(e, h, row, n)?;
                }
            }
        }
        Ok(())
    }

    /// Adds the head's gradient into the embedding's, row by row, and zeroes the head's.
    pub(crate) fn fold_tied_grads(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        let d = self.cfg.hidden_size;
        self.tied_pairs(|e, h, row, n| {
            gpu.add_region(
                &e.slots[0].g,
                (row - e.units.start) * d,
                &h.slots[0].g,
                (row - h.units.start) * d,
                n * d,
            )
        })?;
        let last = self.stages.len() - 1;
        for h in self.stages[last].iter().flat_map(rows_of) {
            gpu.clear(&h.slots[0].g)?;
        }
        Ok(())
    }

    /// Copies the embedding's weights (and AdamW moments) over the head's.
    pub(crate) fn retie(&self, gpu: &Gpu) -> Result<(), ComputeError> {
        let d = self.cfg.hidden_size;
        self.tied_pairs(|e, h, row, n| {
            let (from, to) = ((row - e.units.start) * d, (row - h.units.start) * d);
            let (es, hs) = (&e.slots[0], &h.slots[0]);
            gpu.copy_region(&es.w, from, &hs.w, to, n * d)?;
            if let (Some((em, ev)), Some((hm, hv))) = (&es.adam, &hs.adam) {
                gpu.copy_region(em, from, hm, to, n * d)?;
                gpu.copy_region(ev, from, hv, to, n * d)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn overlaps_of_row_ranges() {
        assert_eq!(overlap(&(0..10), &(5..20)), Some((5, 5)));
        assert_eq!(overlap(&(5..20), &(0..10)), Some((5, 5)));
        assert_eq!(overlap(&(0..5), &(5..9)), None);
        assert_eq!(overlap(&(3..4), &(0..67)), Some((3, 1)));
    }
}

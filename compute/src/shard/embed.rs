//! `Embed(vocab rows)`: gather of the slice's rows (zero for other ids) and the scatter-add
//! gradient.

use super::kind::MicroShard;
use super::params::GpuShard;
use crate::error::ComputeError;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::embedding::RowIndex;

impl GpuShard {
    fn expect_embed(&self) -> Result<(), ComputeError> {
        match self.shard {
            MicroShard::Embed { .. } => Ok(()),
            _ => Err(ComputeError::Shape(format!(
                "{} is not an Embed shard",
                self.shard
            ))),
        }
    }

    /// This slice's part of the embedding of `ids`: `[ids.len(), d]`.
    pub fn embed_forward(&self, gpu: &Gpu, ids: &[u32]) -> Result<Tensor, ComputeError> {
        self.expect_embed()?;
        self.check_tokens(ids, false)?;
        if ids.is_empty() || ids.len() > self.max_rows {
            return Err(ComputeError::Shape(format!(
                "{}: {} tokens, sized for 1..={}",
                self.shard,
                ids.len(),
                self.max_rows
            )));
        }
        let d = self.cfg.hidden_size;
        let tids = gpu.upload_u32(ids)?;
        let out = gpu.zeros(&[ids.len(), d])?;
        for (i, p) in self.pieces.iter().enumerate() {
            gpu.embedding(
                &tids,
                &p.slots[0].w,
                &out,
                ids.len(),
                p.units.start,
                p.units.len(),
                d,
                i > 0,
            )?;
        }
        Ok(out)
    }

    /// Accumulates the slice's gradient from the output gradient `dout: [ids.len(), d]`.
    pub fn embed_backward(
        &self,
        gpu: &Gpu,
        ids: &[u32],
        dout: &Tensor,
    ) -> Result<(), ComputeError> {
        self.expect_embed()?;
        self.check_tokens(ids, false)?;
        let d = self.cfg.hidden_size;
        for p in &self.pieces {
            let idx = RowIndex::new(ids, p.units.start, p.units.len());
            let starts = gpu.upload_u32(&idx.starts)?;
            let order = gpu.upload_u32(&idx.order)?;
            gpu.embedding_backward(
                &starts,
                &order,
                dout,
                &p.slots[0].g,
                ids.len(),
                p.units.len(),
                d,
                true,
            )?;
        }
        Ok(())
    }
}

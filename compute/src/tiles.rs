//! Tile and workgroup sizes: parameters checked against the adapter's limits, never constants
//! tuned to one adapter.

use crate::error::ComputeError;

/// Which matmul kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MatmulKernel {
    /// `matmul.wgsl`: operands staged through workgroup memory in `bk` steps (GPUs).
    Shared,
    /// `matmul_direct.wgsl`: no workgroup memory and no barriers (CPU adapters such as lavapipe
    /// and SwiftShader, where barriers are expensive).
    Direct,
    /// `matmul_vec4.wgsl`: like `Direct`, reading whole vec4s along each operand's contiguous
    /// dimension, 4x4 per invocation; shapes whose contiguous dimensions are not multiples of 4
    /// fall back to `Direct` with the same workgroup.
    Vec4,
}

/// Register-blocked matmul tiling: a workgroup computes `bm x bn` of C, each invocation
/// `tm x tn`, stepping `bk` along the reduction through workgroup memory (shared kernel only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MatmulTiles {
    /// Kernel variant.
    pub kernel: MatmulKernel,
    /// Workgroup tile rows.
    pub bm: u32,
    /// Workgroup tile columns.
    pub bn: u32,
    /// Reduction step.
    pub bk: u32,
    /// Rows per invocation.
    pub tm: u32,
    /// Columns per invocation.
    pub tn: u32,
}

/// Every size the kernels are compiled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// Matmul tiling.
    pub matmul: MatmulTiles,
    /// Workgroup size of elementwise kernels and row reductions (a power of two).
    pub wg: u32,
    /// Queries per workgroup in attention forward and dq (keys per workgroup in dk/dv).
    pub attn_rows: u32,
    /// Largest key (or query) tile attention streams through workgroup memory; the actual tile
    /// shrinks to fit the adapter's workgroup storage for wide heads.
    pub attn_tile: u32,
    /// Elements per invocation in the norm reduction.
    pub reduce_items: u32,
}

impl Default for Tiles {
    fn default() -> Self {
        Tiles {
            matmul: MatmulTiles::SHARED,
            wg: 256,
            attn_rows: 64,
            attn_tile: 32,
            reduce_items: 8,
        }
    }
}

impl MatmulTiles {
    /// 64x64 workgroup tiles through workgroup memory, 4x4 per invocation (256 invocations).
    pub const SHARED: MatmulTiles = MatmulTiles {
        kernel: MatmulKernel::Shared,
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    };
    /// 32x32 workgroup tiles read as vec4, 4x4 per invocation (64 invocations).
    pub const VEC4: MatmulTiles = MatmulTiles {
        kernel: MatmulKernel::Vec4,
        bm: 32,
        bn: 32,
        bk: 1,
        tm: 4,
        tn: 4,
    };
    /// 32x32 workgroup tiles read directly, 4x4 per invocation (64 invocations).
    pub const DIRECT: MatmulTiles = MatmulTiles {
        kernel: MatmulKernel::Direct,
        bm: 32,
        bn: 32,
        bk: 1,
        tm: 4,
        tn: 4,
    };
}

impl Tiles {
    /// Defaults for an adapter type: the barrier-free matmul on CPU adapters, the
    /// workgroup-memory one elsewhere.
    pub fn for_device_type(t: wgpu::DeviceType) -> Self {
        let matmul = if t == wgpu::DeviceType::Cpu {
            MatmulTiles::VEC4
        } else {
            MatmulTiles::SHARED
        };
        Tiles {
            matmul,
            ..Tiles::default()
        }
    }

    /// Checks the sizes against `limits`.
    pub fn validate(&self, limits: &wgpu::Limits) -> Result<(), ComputeError> {
        let m = self.matmul;
        let bad = |why: String| Err(ComputeError::InvalidTiles(why));
        if m.tm == 0
            || m.tn == 0
            || m.bk == 0
            || !m.bm.is_multiple_of(m.tm)
            || !m.bn.is_multiple_of(m.tn)
        {
            return bad(format!(
                "matmul {m:?}: bm must be a multiple of tm, bn of tn"
            ));
        }
        if m.kernel == MatmulKernel::Vec4 && (m.tm != 4 || m.tn != 4) {
            return bad(format!(
                "matmul {m:?}: the vec4 kernel computes 4x4 per invocation"
            ));
        }
        let threads = (m.bm / m.tm) * (m.bn / m.tn);
        if threads > limits.max_compute_invocations_per_workgroup
            || m.bn / m.tn > limits.max_compute_workgroup_size_x
            || m.bm / m.tm > limits.max_compute_workgroup_size_y
        {
            return bad(format!(
                "matmul {m:?} needs {threads} invocations per workgroup"
            ));
        }
        let shared = if m.kernel == MatmulKernel::Shared {
            4 * m.bk * (m.bm + m.bn)
        } else {
            0
        };
        if shared > limits.max_compute_workgroup_storage_size {
            return bad(format!(
                "matmul {m:?} needs {shared} bytes of workgroup storage"
            ));
        }
        if !self.wg.is_power_of_two()
            || self.wg > limits.max_compute_invocations_per_workgroup
            || self.wg > limits.max_compute_workgroup_size_x
        {
            return bad(format!(
                "wg {} must be a power of two within the adapter's workgroup limits",
                self.wg
            ));
        }
        if self.attn_rows == 0
            || self.attn_rows > limits.max_compute_invocations_per_workgroup
            || self.attn_tile == 0
            || self.reduce_items == 0
        {
            return bad(
                "attention rows and tile must be positive and within the workgroup limit".into(),
            );
        }
        Ok(())
    }

    /// The key/query tile attention uses for heads of width `hd`, so that its workgroup arrays
    /// fit `storage` bytes (two `tile x hd` arrays plus two of `tile`).
    pub fn attn_tile_for(&self, hd: u32, storage: u32) -> Result<u32, ComputeError> {
        let fit = storage / (4 * (2 * hd + 2));
        let t = self.attn_tile.min(fit);
        if t == 0 {
            return Err(ComputeError::InvalidTiles(format!(
                "head width {hd} does not fit {storage} bytes of workgroup storage"
            )));
        }
        Ok(t)
    }
}

//! Matmul in the three layouts forward and backward need, on strided views (so a slice of
//! columns or rows of a tensor can be an operand without a copy).

use super::{need, u32_of};
use crate::error::ComputeError;
use crate::gpu::{Gpu, Params, Tensor};
use crate::shaders::Const;
use crate::tiles::MatmulKernel;

/// Operand layouts of `C[m,n] = op(A) op(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// `A[m,k] * B[n,k]^T`: a linear layer with weights stored `[out, in]`.
    NT,
    /// `A[m,k] * B[k,n]`: the input gradient of a linear layer.
    NN,
    /// `A[k,m]^T * B[k,n]`: the weight gradient of a linear layer.
    TN,
}

/// A strided 2D view: element `(i, j)` of the stored matrix is `t[off + i * ld + j]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The tensor.
    pub t: &'a Tensor,
    /// Offset of element (0, 0).
    pub off: usize,
    /// Row stride in elements.
    pub ld: usize,
}

impl<'a> View<'a> {
    /// The whole tensor as a matrix with `cols` columns.
    pub fn full(t: &'a Tensor, cols: usize) -> Self {
        View {
            t,
            off: 0,
            ld: cols,
        }
    }
    /// Columns `c0..` of a matrix with `cols` columns.
    pub fn cols(t: &'a Tensor, cols: usize, c0: usize) -> Self {
        View {
            t,
            off: c0,
            ld: cols,
        }
    }
    fn check(&self, what: &str, rows: usize, cols: usize) -> Result<(), ComputeError> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        if cols > self.ld {
            return Err(ComputeError::Shape(format!(
                "{what}: {cols} columns exceed the row stride {}",
                self.ld
            )));
        }
        need(what, self.t, self.off + (rows - 1) * self.ld + cols)
    }
}

impl Gpu {
    /// `C = A op B` (or `C += A op B` when `accumulate`), whole tensors.
    pub fn matmul(
        &self,
        layout: Layout,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        let (lda, ldb) = match layout {
            Layout::NT => (k, k),
            Layout::NN => (k, n),
            Layout::TN => (m, n),
        };
        self.matmul_view(
            layout,
            View {
                t: a,
                off: 0,
                ld: lda,
            },
            View {
                t: b,
                off: 0,
                ld: ldb,
            },
            View::full(c, n),
            m,
            n,
            k,
            1.0,
            accumulate,
        )
    }

    /// `C = alpha * A op B (+ C)` on strided views.
    pub fn matmul_view(
        &self,
        layout: Layout,
        a: View,
        b: View,
        c: View,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        accumulate: bool,
    ) -> Result<(), ComputeError> {
        let (a_trans, b_trans) = match layout {
            Layout::NT => (false, true),
            Layout::NN => (false, false),
            Layout::TN => (true, false),
        };
        if a_trans {
            a.check("matmul A", k, m)?
        } else {
            a.check("matmul A", m, k)?
        }
        if b_trans {
            b.check("matmul B", n, k)?
        } else {
            b.check("matmul B", k, n)?
        }
        c.check("matmul C", m, n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let t = self.tiles().matmul;
        let gx = n.div_ceil(t.bn as usize);
        let gy = m.div_ceil(t.bm as usize);
        let max = self.limits().max_compute_workgroups_per_dimension as usize;
        if gx > max || gy > max {
            return Err(ComputeError::Shape(format!(
                "matmul {m}x{n} needs a {gx}x{gy} grid, above {max} per dimension"
            )));
        }
        let aligned = |v: usize| v.is_multiple_of(4);
        let vec4_ok = match layout {
            Layout::NT => {
                aligned(k) && aligned(a.ld) && aligned(b.ld) && aligned(a.off) && aligned(b.off)
            }
            Layout::NN => {
                aligned(k)
                    && aligned(n)
                    && aligned(a.ld)
                    && aligned(b.ld)
                    && aligned(a.off)
                    && aligned(b.off)
            }
            Layout::TN => {
                aligned(m)
                    && aligned(n)
                    && aligned(a.ld)
                    && aligned(b.ld)
                    && aligned(a.off)
                    && aligned(b.off)
            }
        };
        let flags = [
            Const::Bool("A_TRANS", a_trans),
            Const::Bool("B_TRANS", b_trans),
        ];
        let workgroup = [Const::U32("WX", t.bn / t.tn), Const::U32("WY", t.bm / t.tm)];
        let (kernel, consts, vec4) = match t.kernel {
            MatmulKernel::Shared => (
                "matmul",
                vec![
                    Const::U32("BM", t.bm),
                    Const::U32("BN", t.bn),
                    Const::U32("BK", t.bk),
                    Const::U32("TM", t.tm),
                    Const::U32("TN", t.tn),
                    flags[0],
                    flags[1],
                ],
                false,
            ),
            MatmulKernel::Vec4 if vec4_ok => ("matmul_vec4", [workgroup, flags].concat(), true),
            MatmulKernel::Direct | MatmulKernel::Vec4 => (
                "matmul_direct",
                [
                    workgroup.to_vec(),
                    vec![Const::U32("TM", t.tm), Const::U32("TN", t.tn)],
                    flags.to_vec(),
                ]
                .concat(),
                false,
            ),
        };
        // The vec4 kernel addresses A and B in vec4 units.
        let q = if vec4 { 4 } else { 1 };
        let p = Params::new()
            .u(u32_of("m", m)?)
            .u(u32_of("n", n)?)
            .u(u32_of("k", k)?)
            .u(u32_of("lda", a.ld / q)?)
            .u(u32_of("ldb", b.ld / q)?)
            .u(u32_of("ldc", c.ld)?)
            .u(u32_of("a offset", a.off / q)?)
            .u(u32_of("b offset", b.off / q)?)
            .u(u32_of("c offset", c.off)?)
            .u(accumulate as u32)
            .f(alpha);
        self.dispatch(
            kernel,
            &consts,
            &[&a.t.buf, &b.t.buf, &c.t.buf],
            p,
            (gx as u32, gy as u32, 1),
        )
    }
}

//! Recording kernel dispatches: uniform parameters, bind groups, grids within the per-dimension
//! workgroup limit, and batching into command buffers.

use super::Gpu;
use crate::error::ComputeError;
use crate::shaders::Const;
use wgpu::util::DeviceExt;

/// Uniform parameters of a kernel as 32-bit words, padded to 16 bytes.
#[derive(Default, Clone, Debug)]
pub struct Params(Vec<u32>);

impl Params {
    /// Empty parameters.
    pub fn new() -> Self {
        Params(Vec::new())
    }
    /// Appends a `u32`.
    pub fn u(mut self, v: u32) -> Self {
        self.0.push(v);
        self
    }
    /// Appends an `f32`.
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut w = self.0.clone();
        while w.is_empty() || !w.len().is_multiple_of(4) {
            w.push(0);
        }
        bytemuck::cast_slice(&w).to_vec()
    }
}

impl Gpu {
    /// A grid of at least `groups` workgroups laid out within the per-dimension limit.
    pub(crate) fn grid(&self, groups: u64) -> Result<(u32, u32, u32), ComputeError> {
        let max = self.limits().max_compute_workgroups_per_dimension as u64;
        let groups = groups.max(1);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(ComputeError::TooLarge {
                what: "dispatch".into(),
                bytes: groups,
                limit: max * max,
            });
        }
        Ok((x as u32, y as u32, 1))
    }

    /// A grid with one invocation per element of `n`, in workgroups of the elementwise size.
    pub(crate) fn elementwise_grid(&self, n: usize) -> Result<(u32, u32, u32), ComputeError> {
        self.grid(n.div_ceil(self.tiles().wg as usize) as u64)
    }

    /// The `WG` constant of elementwise kernels and row reductions.
    pub(crate) fn wg_consts(&self) -> [Const; 1] {
        [Const::U32("WG", self.tiles().wg)]
    }

    /// Records one dispatch of kernel `name` compiled with `consts`: storage buffers bound at
    /// 0.., the uniform parameters after them.
    pub(crate) fn dispatch(
        &self,
        name: &str,
        consts: &[Const],
        storage: &[&wgpu::Buffer],
        params: Params,
        grid: (u32, u32, u32),
    ) -> Result<(), ComputeError> {
        let pipeline = self.pipeline(name, consts)?;
        let ubuf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &params.bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: storage.len() as u32,
            resource: ubuf.as_entire_binding(),
        });
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.with_encoder(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        })
    }

    /// Runs `f` on the pending command encoder, submitting every few dozen dispatches.
    pub(crate) fn with_encoder(
        &self,
        f: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<(), ComputeError> {
        {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| ComputeError::Gpu("encoder poisoned".into()))?;
            let enc = p.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("tessera"),
                    })
            });
            f(enc);
        }
        let full = {
            let mut n = self
                .pending_count
                .lock()
                .map_err(|_| ComputeError::Gpu("counter poisoned".into()))?;
            *n += 1;
            *n >= self.dispatches_per_submit()
        };
        if full {
            self.flush();
        }
        Ok(())
    }
}

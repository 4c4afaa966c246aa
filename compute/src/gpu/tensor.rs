//! Tensors on the GPU: one storage buffer each, sized within the device's binding limit, with
//! upload and (async) download.

use super::Gpu;
use crate::error::ComputeError;
use wgpu::util::DeviceExt;

/// A dense row-major f32 (or u32) tensor in one storage buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) buf: wgpu::Buffer,
    shape: Vec<usize>,
}

impl Tensor {
    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// Bytes a tensor of `elems` floats occupies: whole vec4s, so kernels may bind it as
    /// `array<vec4<f32>>`.
    fn check_size(&self, what: &str, elems: usize) -> Result<u64, ComputeError> {
        let bytes = (elems.max(1).next_multiple_of(4) * 4) as u64;
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(ComputeError::TooLarge {
                what: what.to_string(),
                bytes,
                limit,
            });
        }
        Ok(bytes)
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor, ComputeError> {
        let n: usize = shape.iter().product();
        let size = self.check_size("tensor", n)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(Tensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    /// Uploads `data` (row-major, `shape`).
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor, ComputeError> {
        self.upload_words(bytemuck::cast_slice(data), shape)
    }

    /// Uploads u32 data (token ids, indices).
    pub fn upload_u32(&self, data: &[u32]) -> Result<Tensor, ComputeError> {
        self.upload_words(data, &[data.len()])
    }

    fn upload_words(&self, data: &[u32], shape: &[usize]) -> Result<Tensor, ComputeError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ComputeError::Shape(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        let bytes = self.check_size("tensor", n)?;
        let mut words = data.to_vec();
        words.resize(bytes as usize / 4, 0);
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&words),
                usage: USAGE,
            });
        Ok(Tensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    /// Overwrites a tensor's contents (after everything recorded so far has been submitted).
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<(), ComputeError> {
        if data.len() != t.len() {
            return Err(ComputeError::Shape(format!(
                "{} values for shape {:?}",
                data.len(),
                t.shape
            )));
        }
        // Submitted and written under one hold of the encoder's lock: no command recorded
        // before this call, on any thread sharing the device, can run after the write.
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| ComputeError::Gpu("encoder poisoned".into()))?;
        self.submit(&mut pending);
        if !data.is_empty() {
            self.queue
                .write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Records zero-filling of a tensor.
    pub fn clear(&self, t: &Tensor) -> Result<(), ComputeError> {
        self.with_encoder(|e| e.clear_buffer(&t.buf, 0, None))
    }

    /// Records a copy of `src` into `dst` (same element count).
    pub fn copy(&self, src: &Tensor, dst: &Tensor) -> Result<(), ComputeError> {
        if src.len() != dst.len() {
            return Err(ComputeError::Shape(format!(
                "copy {:?} into {:?}",
                src.shape, dst.shape
            )));
        }
        let bytes = (src.len() * 4) as u64;
        if bytes == 0 {
            return Ok(());
        }
        self.with_encoder(|e| e.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, 0, bytes))
    }

    /// Records a copy of `len` elements of `src` from element `from` into `dst` at element
    /// `to` (a row of a key/value cache, the last row of a hidden state).
    pub fn copy_region(
        &self,
        src: &Tensor,
        from: usize,
        dst: &Tensor,
        to: usize,
        len: usize,
    ) -> Result<(), ComputeError> {
        if from.saturating_add(len) > src.len() || to.saturating_add(len) > dst.len() {
            return Err(ComputeError::Shape(format!(
                "copy of {len} elements from {from} of {:?} to {to} of {:?}",
                src.shape, dst.shape
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let (from, to, bytes) = ((from * 4) as u64, (to * 4) as u64, (len * 4) as u64);
        self.with_encoder(|e| e.copy_buffer_to_buffer(&src.buf, from, &dst.buf, to, bytes))
    }

    /// Downloads a tensor's contents.
    pub async fn read(&self, t: &Tensor) -> Result<Vec<f32>, ComputeError> {
        let n = t.len();
        let size = (n.max(1) * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| e.copy_buffer_to_buffer(&t.buf, 0, &staging, 0, size))?;
        self.flush();
        self.map(&staging).await?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| ComputeError::Gpu(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view)[..n].to_vec()
        };
        staging.unmap();
        self.check()?;
        Ok(out)
    }
}

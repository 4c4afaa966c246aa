//! The GPU context: adapter and device setup under explicit limits, error capture, and the
//! pipeline cache. Builds for native (Vulkan/Metal/DX12, lavapipe without a GPU) and wasm32
//! (the browser's WebGPU).

mod choice;
mod dispatch;
mod pacing;
mod tensor;

pub use dispatch::Params;
pub use tensor::Tensor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::ComputeError;
use crate::tiles::Tiles;

/// How to open the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Limits to request. `None` means `wgpu::Limits::default()`: the WebGPU defaults that
    /// every browser grants (8 storage buffers per stage, 128 MiB per binding, 256 MiB buffers).
    pub limits: Option<wgpu::Limits>,
    /// Tile and workgroup sizes; `None` picks defaults for the adapter type.
    pub tiles: Option<Tiles>,
    /// Prefer a discrete GPU.
    pub high_performance: bool,
    /// Longest a command buffer should take, ms: the number of dispatches per submission adapts
    /// to it (see [`Gpu::dispatches_per_submit`]).
    pub submit_budget_ms: f64,
    /// With `limits` unset: start from the WebGPU defaults and raise the binding and buffer
    /// sizes to what the adapter supports (up to 1 GiB), never beyond it.
    pub raise_limits: bool,
    /// Open the adapter whose name contains this text (ignoring case; an exact name wins)
    /// instead of the one the platform prefers; [`Gpu::adapters`] lists those it chooses among.
    pub adapter: Option<String>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            limits: None,
            tiles: None,
            high_performance: true,
            submit_budget_ms: 50.0,
            raise_limits: false,
            adapter: None,
        }
    }
}

/// What the adapter is.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Backend (Vulkan, Metal, BrowserWebGpu, ...).
    pub backend: String,
    /// Discrete, integrated, CPU, ...
    pub device_type: String,
    /// Driver description.
    pub driver: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

fn summary_of(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

#[derive(Default)]
struct ErrorSlot {
    error: Option<String>,
    lost: Option<String>,
}

/// An open GPU device with its queue, limits and compiled kernels.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    tiles: Tiles,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    errors: Arc<Mutex<ErrorSlot>>,
    pending: Mutex<Option<wgpu::CommandEncoder>>,
    pending_count: Mutex<u32>,
    pacing: Arc<Mutex<pacing::Pacing>>,
}

impl Gpu {
    /// Opens the first suitable adapter. Fails with a clear error if there is none.
    pub async fn new(opts: GpuOptions) -> Result<Self, ComputeError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match &opts.adapter {
            Some(wanted) => {
                let mut all = instance.enumerate_adapters(wgpu::Backends::PRIMARY).await;
                let names: Vec<String> = all.iter().map(|a| summary_of(a).to_string()).collect();
                let i = choice::choose(&names, wanted).map_err(ComputeError::NoAdapter)?;
                all.swap_remove(i)
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: if opts.high_performance {
                        wgpu::PowerPreference::HighPerformance
                    } else {
                        wgpu::PowerPreference::LowPower
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    ComputeError::NoAdapter(format!(
                        "{e}. On Linux without a GPU install mesa-vulkan-drivers (lavapipe); in a browser enable WebGPU or use one that has it"
                    ))
                })?,
        };
        let info = adapter.get_info();
        let summary = summary_of(&adapter);
        let supported = adapter.limits();
        let wanted = match (&opts.limits, opts.raise_limits) {
            (Some(l), _) => l.clone(),
            (None, false) => wgpu::Limits::default(),
            (None, true) => {
                let d = wgpu::Limits::default();
                wgpu::Limits {
                    max_storage_buffer_binding_size: supported
                        .max_storage_buffer_binding_size
                        .min(1 << 30),
                    max_buffer_size: supported.max_buffer_size.min(1 << 30),
                    ..d
                }
            }
        };
        if !wanted.check_limits(&supported) {
            return Err(ComputeError::Device(format!(
                "adapter {summary} does not support the requested limits (max binding {} bytes, adapter {})",
                wanted.max_storage_buffer_binding_size, supported.max_storage_buffer_binding_size
            )));
        }
        let tiles = opts
            .tiles
            .unwrap_or_else(|| Tiles::for_device_type(info.device_type));
        tiles.validate(&wanted)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tessera"),
                required_features: wgpu::Features::empty(),
                required_limits: wanted.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| ComputeError::Device(e.to_string()))?;
        let errors = Arc::new(Mutex::new(ErrorSlot::default()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!("GPU error: {e}");
            if let Ok(mut s) = sink.lock() {
                s.error.get_or_insert_with(|| e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            tracing::warn!("GPU device lost: {reason:?} {msg}");
            if let Ok(mut s) = sink.lock() {
                s.lost.get_or_insert_with(|| format!("{reason:?}: {msg}"));
            }
        });
        tracing::info!("GPU adapter: {summary}");
        Ok(Gpu {
            device,
            queue,
            adapter: summary,
            limits: wanted,
            tiles,
            pipelines: Mutex::new(HashMap::new()),
            errors,
            pending: Mutex::new(None),
            pending_count: Mutex::new(0),
            pacing: pacing::Pacing::new(opts.submit_budget_ms),
        })
    }

    /// Every adapter this machine offers on the primary backends (Vulkan, Metal, DX12, the
    /// browser's WebGPU): what [`GpuOptions::adapter`] chooses among.
    pub async fn adapters() -> Vec<AdapterSummary> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let all = instance.enumerate_adapters(wgpu::Backends::PRIMARY).await;
        all.iter().map(summary_of).collect()
    }

    /// The adapter this device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The limits the device was created with (what kernels and chunking must respect).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Tile sizes in use.
    pub fn tiles(&self) -> &Tiles {
        &self.tiles
    }

    /// Largest tensor, in bytes, that one binding may hold.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Fails if the GPU reported an error or the device was lost since the last check.
    pub fn check(&self) -> Result<(), ComputeError> {
        let mut s = self
            .errors
            .lock()
            .map_err(|_| ComputeError::Gpu("error slot poisoned".into()))?;
        if let Some(l) = &s.lost {
            return Err(ComputeError::DeviceLost(l.clone()));
        }
        if let Some(e) = s.error.take() {
            return Err(ComputeError::Gpu(e));
        }
        Ok(())
    }

    /// Destroys the device (as a lost GPU would); every later call fails with `DeviceLost`.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            self.submit(&mut pending);
        }
    }

    /// Submits the encoder in `pending` (the locked [`Gpu::pending`]), if any. The lock is held
    /// through the submission, so that a write to a buffer from another thread sharing this
    /// device ([`Gpu::write`]) can never land in the queue between the encoder's taking and its
    /// submission, where it would run before the commands recorded ahead of it.
    pub(crate) fn submit(&self, pending: &mut Option<wgpu::CommandEncoder>) {
        let dispatches = self
            .pending_count
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or(0);
        if let Some(enc) = pending.take() {
            self.queue.submit([enc.finish()]);
            // Learn how long a batch takes from submission to completion.
            let (pacing, t0) = (self.pacing.clone(), pacing::now_ms());
            self.queue.on_submitted_work_done(move || {
                if let Ok(mut p) = pacing.lock() {
                    p.observe(dispatches, pacing::now_ms() - t0);
                }
            });
        }
    }

    /// Dispatches recorded before a submission, adapted so that one takes at most the
    /// submission budget ([`GpuOptions::submit_budget_ms`]).
    pub fn dispatches_per_submit(&self) -> u32 {
        self.pacing.lock().map_or(pacing::START, |p| p.batch)
    }

    /// The longest a submission took so far, ms.
    pub fn longest_submit_ms(&self) -> f64 {
        self.pacing.lock().map_or(0.0, |p| p.longest_ms)
    }

    /// Waits until the GPU has finished everything submitted (native); on the web this only
    /// submits, and reads wait instead.
    pub async fn finish(&self) -> Result<(), ComputeError> {
        self.flush();
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fence"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        self.map(&buf).await?;
        buf.unmap();
        self.check()
    }

    /// Waits until the GPU has finished everything submitted, on the web too (the queue's
    /// completion, not a read): what timing a kernel needs.
    pub async fn idle(&self) -> Result<(), ComputeError> {
        self.flush();
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ComputeError::Gpu(e.to_string()))?;
        if rx.await.is_err() {
            self.check()?;
            return Err(ComputeError::DeviceLost(
                "the queue's completion was cancelled".into(),
            ));
        }
        self.check()
    }

    pub(crate) async fn map(&self, buf: &wgpu::Buffer) -> Result<(), ComputeError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ComputeError::Gpu(e.to_string()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.check()?;
                Err(ComputeError::Gpu(format!("buffer map failed: {e}")))
            }
            Err(_) => {
                self.check()?;
                Err(ComputeError::DeviceLost("buffer map was cancelled".into()))
            }
        }
    }

    pub(crate) fn pipeline(
        &self,
        name: &str,
        consts: &[crate::shaders::Const],
    ) -> Result<wgpu::ComputePipeline, ComputeError> {
        let key = format!("{name}{consts:?}");
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| ComputeError::Gpu("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let src = crate::shaders::source(name, consts)
            .ok_or_else(|| ComputeError::Gpu(format!("unknown kernel {name}")))?;
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        self.check()?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

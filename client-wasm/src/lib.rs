//! The browser contributor: the worker crate's protocol session ([`Contributor`]) and GPU
//! replicas compiled to wasm32, running in a dedicated Web Worker so the page stays responsive,
//! speaking the same protocol as the native worker over the browser's WebSocket.
//!
//! The page's worker script (`web/worker.js`) keeps the identity seed in IndexedDB and calls
//! `run` (with the kernel tuning an earlier visit kept, see `tuned.rs`); the client reports to the page with `postMessage` (see [`report`]) and takes
//! `pause`, `resume`, `set_gpu_share` and `lose_device` from it.

pub mod admission;
#[cfg(target_arch = "wasm32")]
mod client;
pub mod report;
#[cfg(target_arch = "wasm32")]
mod socket;
#[cfg(target_arch = "wasm32")]
mod tuned;

#[cfg(target_arch = "wasm32")]
pub use client::{lose_device, pause, resume, run, set_gpu_share};

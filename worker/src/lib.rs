//! A contributor, independent of its transport: [`session::Session`] speaks the protocol
//! (handshake, signed messages, lease and weight assembly) and turns work into
//! [`backend::Job`]s; a backend runs them: [`backend::GpuState`] with [`replica::Replica`]
//! (whole-model leases) and [`pipeline::PipeReplica`] (micro-shards) on a GPU, or
//! [`cpu::CpuBackend`] on the plain-Rust reference model. [`contributor::Contributor`] is a
//! session with its GPU state. The native worker wraps it in a WebSocket client; the browser
//! client compiles the same code to wasm32.

pub mod admission;
pub mod backend;
pub mod calibrate;
pub mod contributor;
pub mod cpu;
mod download;
pub mod error;
pub mod heartbeat;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod pipeline;
pub mod replica;
pub mod session;
mod stats;

pub use contributor::{exchange, Contributor};
pub use error::WorkerError;

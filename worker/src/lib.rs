//! A contributor, independent of its transport: [`session::Contributor`] speaks the protocol
//! (handshake, signed messages, lease and weight assembly, work, outer steps) and
//! [`replica::Replica`] trains a whole-model lease on the GPU. The native worker wraps them in a
//! WebSocket client; the browser client compiles the same code to wasm32.

pub mod calibrate;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod pipeline;
pub mod replica;
pub mod session;

pub use error::WorkerError;

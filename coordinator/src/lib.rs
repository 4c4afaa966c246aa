//! Tessera's coordinator. [`core`] is a pure, I/O-free state machine of a training run:
//! inputs (connections, decoded messages, time) go in, actions (messages to send, connections to
//! close, contributions and checkpoints to persist) come out. Transport, storage and HTTP wrap
//! it; deterministic simulations drive it directly.

mod admin_http;
mod admin_page;
pub mod admin_request;
mod admin_token;
pub mod admission;
pub mod config;
mod connection;
pub mod core;
mod core_task;
pub mod data;
pub mod frame_guard;
pub mod gate;
pub mod http_limit;
pub mod idle;
pub mod listen;
mod metrics;
pub mod server;
mod shared;
pub mod status;
pub mod store;
pub mod tls;
pub mod web;

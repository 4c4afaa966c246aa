//! The browser contributor: the worker crate's protocol session and GPU replica compiled to
//! wasm32, running in a dedicated Web Worker. Its transport and page come with the browser
//! client; the compute it will run is already tested in Chromium (`compute/tests/browser.rs`).

//! Fuzz target for the frame decoder: no input may panic, and whatever decodes must re-encode
//! to a frame that decodes to the same message (compared as bytes: floats may be NaN).
//!
//! `cargo fuzz run decode_frame` from `protocol/` (cargo-fuzz; on a stable toolchain prefix
//! `RUSTC_BOOTSTRAP=1`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_protocol::{decode, encode, ToContributor, ToCoordinator, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode::<ToCoordinator>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        let back: ToCoordinator = decode(&again, MAX_FRAME_BYTES).expect("re-decodes");
        assert_eq!(encode(&back).expect("encodes"), again);
    }
    if let Ok(m) = decode::<ToContributor>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        let back: ToContributor = decode(&again, MAX_FRAME_BYTES).expect("re-decodes");
        assert_eq!(encode(&back).expect("encodes"), again);
    }
});

//! Fuzz target for the frame decoder: no input may panic, and whatever decodes must re-encode
//! to a frame that decodes to the same message.
//!
//! `cargo fuzz run decode_frame` from `protocol/` (cargo-fuzz; on a stable toolchain prefix
//! `RUSTC_BOOTSTRAP=1`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_protocol::{decode, encode, ToContributor, ToCoordinator, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode::<ToCoordinator>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        assert_eq!(
            decode::<ToCoordinator>(&again, MAX_FRAME_BYTES).expect("re-decodes"),
            m
        );
    }
    if let Ok(m) = decode::<ToContributor>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        assert_eq!(
            decode::<ToContributor>(&again, MAX_FRAME_BYTES).expect("re-decodes"),
            m
        );
    }
});

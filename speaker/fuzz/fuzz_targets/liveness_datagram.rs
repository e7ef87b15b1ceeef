//! Any datagram on the liveness port: decoding must not panic, and nothing without the key verifies.
#![no_main]

use ferrolb_speaker::model::liveness::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Only the key holder can produce a datagram that verifies; the fuzzer is not one.
    assert!(decode(b"the cluster key", data).is_err());
});

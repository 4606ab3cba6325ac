//! Fuzzes the router's request classification (phase 1 and the header reads of phase 2 and 3):
//! the model from a REST path or a gRPC message, the namespace from a header or the host, the
//! pinned revision, the chosen variant, the sticky key, an API key's ID. Any bytes must give an
//! answer or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(found) = ferry_router::fuzzing::classify_bytes(data) {
        assert!(!found.namespace.is_empty());
        if let Some(id) = found.key_id {
            assert_eq!(id.len(), 16);
        }
    }
});

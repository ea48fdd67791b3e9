//! Any message body: `decode` returns a message or a reason, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    let _ = vogeler_protocol::decode(body);
});

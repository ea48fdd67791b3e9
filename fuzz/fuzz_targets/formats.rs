//! Any plugin output, through every result format: a value or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|raw: &str| {
    for format in vogeler_plugins::Format::ALL {
        let _ = format.convert(raw);
    }
});

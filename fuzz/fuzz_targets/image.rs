#![no_main]
// Body and the properties it checks: crates/fuzzing/src/lib.rs, fn image.
libfuzzer_sys::fuzz_target!(|data: &[u8]| magpie_fuzzing::image(data));

#![no_main]
// Body and the properties it checks: crates/fuzzing/src/lib.rs, fn import_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| magpie_fuzzing::import_file(data));

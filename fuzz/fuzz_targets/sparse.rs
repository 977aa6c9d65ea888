#![no_main]
// Body and the properties it checks: crates/fuzzing/src/lib.rs, fn sparse.
libfuzzer_sys::fuzz_target!(|data: &[u8]| magpie_fuzzing::sparse(data));

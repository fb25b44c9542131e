//! libFuzzer entry point for [`mesh_fuzz::detect`] (`cargo xtask fuzz detect`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::detect::run(data));

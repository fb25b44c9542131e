//! libFuzzer entry point for [`mesh_fuzz::admission`] (`cargo xtask fuzz admission`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::admission::run(data));

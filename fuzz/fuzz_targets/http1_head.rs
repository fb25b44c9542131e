//! libFuzzer entry point for [`mesh_fuzz::http1_head`] (`cargo xtask fuzz http1_head`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::http1_head::run(data));

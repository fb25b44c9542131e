//! libFuzzer entry point for [`mesh_fuzz::client_hello`] (`cargo xtask fuzz client_hello`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::client_hello::run(data));

//! libFuzzer entry point for [`mesh_fuzz::policy`] (`cargo xtask fuzz policy`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::policy::run(data));

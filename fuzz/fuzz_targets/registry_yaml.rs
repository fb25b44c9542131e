//! libFuzzer entry point for [`mesh_fuzz::registry_yaml`] (`cargo xtask fuzz registry_yaml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::registry_yaml::run(data));

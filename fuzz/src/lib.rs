//! The mesh's fuzz targets: each module's `run` takes the fuzzer's bytes,
//! feeds them to the mesh's own code and asserts what must hold for every
//! input (a panic is a finding). `cargo xtask fuzz` runs them under
//! libFuzzer; `tests/replay.rs` replays the committed seeds and regression
//! inputs as a normal test.

pub mod admission;
pub mod client_hello;
pub mod detect;
pub mod http1_head;
pub mod policy;
pub mod registry_yaml;

/// A target's body: one input, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the `fuzz_targets/` binaries and the seed folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("detect", detect::run),
    ("client_hello", client_hello::run),
    ("http1_head", http1_head::run),
    ("registry_yaml", registry_yaml::run),
    ("policy", policy::run),
    ("admission", admission::run),
];

//! Logging set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber writing to stderr.
///
/// The filter comes from `env_var` (for example `MESH_LOG=debug`), falling back
/// to `default` (for example `info`). Safe to call more than once: later calls
/// are ignored, which keeps in-process tests that start several components quiet.
pub fn init(env_var: &str, default: &str) {
    let filter = EnvFilter::try_from_env(env_var).unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true).try_init();
}

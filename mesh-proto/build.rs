//! Compiles the .proto files with `protox` (pure Rust), so building the
//! workspace needs no system `protoc`.

use std::path::PathBuf;

const PROTOS: &[&str] = &["destination.proto", "identity.proto", "policy.proto", "workloads.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| dir.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&dir])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}

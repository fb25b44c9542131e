//! Link options of the proxy binary: it runs beside every workload, so its
//! resident size is paid once per pod.
//!
//! `-z pack-relative-relocs` stores the position-independent binary's
//! ≈20,000 relative relocations as a compact bitmap (`.relr.dyn`, a few KiB)
//! instead of 24-byte `.rela.dyn` entries (≈470 KiB), which the dynamic
//! loader reads in full at start-up, so they stayed resident. It needs
//! glibc ≥ 2.36 where the proxy runs (the loader refuses the binary with
//! "version `GLIBC_ABI_DT_RELR' not found" otherwise) and a linker that
//! knows the option (LLD, the Rust toolchain's default here, or GNU ld ≥
//! 2.38; older GNU ld warns and ignores it).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

//! `meshctl`: the mesh's command line.
//!
//! Today: `demo` (a whole mesh on this machine), `identity` (the mesh's CA:
//! init, join tokens, rotation, status) and `version`. The metrics parser in
//! [`prom`] is shared with the `stat` command to come.

mod demo;
mod identity;
mod prom;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Command line for the mesh.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "The mesh's command line.", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh on this machine and watch its golden metrics.
    ///
    /// Starts a control plane and the services web, books and authors with a
    /// proxy beside every replica, all on loopback (no root, no Kubernetes),
    /// sends traffic to web and shows per-service request rate, success rate,
    /// latency and mTLS share until --duration ends or Ctrl-C. Every proxy
    /// gets a certificate from the control plane and all meshed traffic is
    /// mTLS, unless --no-identity.
    Demo(demo::DemoArgs),
    /// Manage the mesh's identity directory: CA, join tokens, rotation.
    Identity(identity::IdentityArgs),
    /// Print meshctl's version.
    Version(VersionArgs),
    /// Run one demo app (started by `meshctl demo`).
    #[command(hide = true)]
    DemoApp(demo::apps::AppArgs),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences, for people.
    Human,
    /// JSON, for scripts.
    Json,
}

#[derive(Debug, Args)]
struct VersionArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Human)]
    output: Output,
}

fn version(args: &VersionArgs) {
    let v = env!("CARGO_PKG_VERSION");
    match args.output {
        Output::Human => println!("meshctl {v}"),
        Output::Json => println!("{}", serde_json::json!({ "meshctl": v })),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Identity(args) => identity::run(args),
        Command::Version(args) => {
            version(&args);
            Ok(())
        }
        Command::DemoApp(args) => demo::apps::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

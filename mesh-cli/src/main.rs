//! `meshctl`: the mesh's command line.
//!
//! Today: `demo` (a whole mesh on this machine), `identity` (the mesh's CA:
//! init, join tokens, rotation, status) and `version`; `stat`, `top`, `tap`
//! and `edges` ([`observe`]) read the proxies live. The metrics parser in
//! [`prom`] is shared by `demo` and `stat`.

mod check;
mod demo;
mod identity;
mod inject;
mod install;
mod observe;
mod policy;
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
    /// Install the mesh on a Kubernetes cluster (again: upgrade in place).
    ///
    /// Renders every object (CRDs, namespace, RBAC, the control plane, its
    /// identity Secret, the injector webhook) and applies it with server-side
    /// apply, then waits for the control plane. --dry-run prints the manifests.
    Install(install::InstallArgs),
    /// Check the cluster before install (--pre) or the installed mesh:
    /// one ✔/✘ line each, exit status 0 only when all pass.
    Check(check::CheckArgs),
    /// Remove exactly what `meshctl install` created (CRDs last).
    Uninstall(install::UninstallArgs),
    /// Add the proxy to Kubernetes manifests (file or stdin → stdout), offline.
    ///
    /// Every pod template (Deployments, StatefulSets, DaemonSets, ReplicaSets,
    /// Jobs, CronJobs, Pods; several documents or a List) gets exactly what
    /// the admission webhook would add; objects without one pass through.
    Inject(inject::InjectArgs),
    /// Remove what `meshctl inject` added (`inject | uninject` gives the input back).
    Uninject(inject::UninjectArgs),
    /// Explain traffic policy: `policy explain` shows the route, backends,
    /// retries, timeouts and authorization verdict for one request.
    Policy(policy::PolicyArgs),
    /// Golden metrics per workload or service over a window, from the proxies.
    ///
    /// Scrapes every proxy's /metrics twice, --window apart, and shows the
    /// traffic each workload (or service: workloads `<service>-<n>`)
    /// received: requests/s, success rate, p50/p95/p99 latency and mTLS
    /// share. Proxies are found through the control plane's admin port
    /// (/proxies) or named with --proxy. No Prometheus needed.
    Stat(observe::StatArgs),
    /// The most requested paths, live, from the proxies' taps.
    Top(observe::TopArgs),
    /// A live stream of requests as the proxies see them, filtered.
    Tap(observe::TapArgs),
    /// Who talks to whom: identities, request counts and mTLS per edge.
    Edges(observe::EdgesArgs),
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
        Command::Install(args) => install::install(args),
        Command::Check(args) => check::run(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Inject(args) => inject::inject(args),
        Command::Uninject(args) => inject::uninject(args),
        Command::Policy(args) => policy::run(args),
        Command::Stat(args) => observe::stat(args),
        Command::Top(args) => observe::top(args),
        Command::Tap(args) => observe::tap(args),
        Command::Edges(args) => observe::edges(args),
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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Catches a command line clap would refuse at run time (two options
    /// with one name, a bad default), which only shows when that subcommand runs.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

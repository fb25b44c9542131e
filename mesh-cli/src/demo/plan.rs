//! The demo's topology: which processes run, on which loopback ports, with
//! which flags, and the registry file that tells the control plane about them.

use super::apps::Role;
use super::mtls::DemoIdentity;
use super::ports::Ports;
use anyhow::{Context as _, bail};
use mesh_process::{Spec, signal};
use mesh_spec::{
    Authorization, AuthorizationRule, Backoff, Endpoint, Port, RegistryFile, Retry, RoutePolicy, RouteRule,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How long a proxy may drain on shutdown (meshctl kills it after ~5 s).
const PROXY_GRACE: &str = "2s";

/// A demo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The frontend; calls books and authors.
    Web,
    /// Books.
    Books,
    /// Authors; fails a small share of requests.
    Authors,
}

impl Service {
    /// Every service, in table order.
    pub const ALL: [Service; 3] = [Service::Web, Service::Books, Service::Authors];

    /// The service's name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Web => "web",
            Service::Books => "books",
            Service::Authors => "authors",
        }
    }

    /// The service's port in the registry.
    pub fn port(self) -> u16 {
        match self {
            Service::Web => 8080,
            Service::Books => 7001,
            Service::Authors => 7002,
        }
    }

    /// The mesh target proxies resolve: `books.default:7001`.
    pub fn target(self) -> String {
        format!("{}.default:{}", self.name(), self.port())
    }

    fn role(self) -> Role {
        match self {
            Service::Web => Role::Web,
            Service::Books => Role::Books,
            Service::Authors => Role::Authors,
        }
    }

    /// The services this one calls.
    pub fn upstreams(self) -> &'static [Service] {
        match self {
            Service::Web => &[Service::Books, Service::Authors],
            Service::Books | Service::Authors => &[],
        }
    }
}

/// The executables the demo runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `mesh-proxy`.
    pub proxy: PathBuf,
    /// `mesh-control`.
    pub control: PathBuf,
    /// This meshctl (for the demo apps).
    pub meshctl: PathBuf,
}

impl Binaries {
    /// Finds `mesh-proxy` and `mesh-control` next to the running meshctl.
    pub fn locate() -> anyhow::Result<Self> {
        let meshctl = std::env::current_exe().context("cannot tell where meshctl itself is")?;
        let dir = meshctl.parent().map(Path::to_path_buf).unwrap_or_default();
        let (proxy, control) = (dir.join("mesh-proxy"), dir.join("mesh-control"));
        let missing: Vec<String> =
            [&proxy, &control].iter().filter(|p| !p.is_file()).map(|p| p.display().to_string()).collect();
        if !missing.is_empty() {
            bail!(
                "meshctl demo runs the mesh's own binaries, which must sit next to meshctl, but {} {} missing.\n\
                 Build them all with `cargo xtask demo` or `cargo build --release` (or `cargo build --workspace --bins`),\n\
                 then run the meshctl from the same target directory.",
                missing.join(" and "),
                if missing.len() == 1 { "is" } else { "are" },
            );
        }
        Ok(Self { proxy, control, meshctl })
    }

    /// Symlinks the binaries into `dir`, so that every demo process's command
    /// line names the demo's directory (`pgrep -f` finds them all).
    pub fn link_into(&self, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let link = |target: &Path, name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("cannot link {} to {}", path.display(), target.display()))?;
            Ok(path)
        };
        Ok(Self {
            proxy: link(&self.proxy, "mesh-proxy")?,
            control: link(&self.control, "mesh-control")?,
            meshctl: link(&self.meshctl, "meshctl")?,
        })
    }
}

/// One replica: an app and its sidecar.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Its service.
    pub service: Service,
    /// `books-0`.
    pub name: String,
    /// Where the app listens.
    pub app: SocketAddr,
    /// The sidecar's inbound listener (the registry's endpoint).
    pub inbound: SocketAddr,
    /// The sidecar's admin server.
    pub admin: SocketAddr,
    /// The sidecar's local ports for the services the app calls.
    pub upstreams: Vec<(SocketAddr, Service)>,
}

/// The whole demo.
#[derive(Debug)]
pub struct Plan {
    /// The demo's own directory (binaries, registry, logs).
    pub dir: PathBuf,
    /// The executables, linked into `dir`.
    pub bins: Binaries,
    /// The control plane's gRPC API.
    pub control_grpc: SocketAddr,
    /// The control plane's admin server.
    pub control_admin: SocketAddr,
    /// The traffic generator's sidecar: admin server.
    pub traffic_admin: SocketAddr,
    /// The traffic generator's sidecar: local port for `web`.
    pub traffic_listen: SocketAddr,
    /// Every replica, services in table order.
    pub replicas: Vec<Replica>,
    /// Share of `authors` requests that fail.
    pub failure_rate: f64,
    /// The CA and join tokens; `None` runs the mesh in plaintext.
    pub identity: Option<DemoIdentity>,
    ports: Ports,
}

impl Plan {
    /// Lays out `replicas` replicas of each service on fresh ports.
    pub fn new(dir: PathBuf, bins: Binaries, replicas: usize, failure_rate: f64) -> anyhow::Result<Self> {
        let mut ports = Ports::default();
        let [control_grpc, control_admin, traffic_admin, traffic_listen] = take4(&mut ports)?;
        let mut plan = Plan {
            dir,
            bins,
            control_grpc,
            control_admin,
            traffic_admin,
            traffic_listen,
            replicas: Vec::new(),
            failure_rate,
            identity: None,
            ports,
        };
        for service in Service::ALL {
            for i in 0..replicas {
                let name = format!("{}-{i}", service.name());
                let r = plan.lay_out(service, name)?;
                plan.replicas.push(r);
            }
        }
        Ok(plan)
    }

    fn lay_out(&mut self, service: Service, name: String) -> anyhow::Result<Replica> {
        let ups = service.upstreams();
        let mut addrs = self.ports.take(3 + ups.len())?.into_iter();
        let mut next = || addrs.next().context("port allocation came up short");
        let (app, inbound, admin) = (next()?, next()?, next()?);
        let upstreams = ups.iter().map(|&s| Ok((next()?, s))).collect::<anyhow::Result<_>>()?;
        Ok(Replica { service, name, app, inbound, admin, upstreams })
    }

    /// New ports for the control plane (one of its ports was taken).
    pub fn rebind_control(&mut self) -> anyhow::Result<()> {
        let [a, b, _, _] = take4(&mut self.ports)?;
        (self.control_grpc, self.control_admin) = (a, b);
        Ok(())
    }

    /// New ports for the traffic generator's sidecar.
    pub fn rebind_traffic(&mut self) -> anyhow::Result<()> {
        let [a, b, _, _] = take4(&mut self.ports)?;
        (self.traffic_admin, self.traffic_listen) = (a, b);
        Ok(())
    }

    /// New ports for replica `i` (app and sidecar); rewrite the registry after.
    pub fn rebind_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(old) = self.replicas.get(i).cloned() else { bail!("no replica {i}") };
        let fresh = self.lay_out(old.service, old.name)?;
        self.replicas[i] = fresh;
        Ok(())
    }

    /// Where the logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The registry file the control plane watches.
    pub fn registry_path(&self) -> PathBuf {
        self.dir.join("registry.yaml")
    }

    /// The registry: each service with its replicas' inbound addresses.
    pub fn registry(&self) -> RegistryFile {
        let services = Service::ALL
            .iter()
            .map(|&service| mesh_spec::Service {
                ports: vec![Port { protocol: Some("http".into()), ..Port::new(service.port()) }],
                endpoints: self
                    .replicas
                    .iter()
                    .filter(|r| r.service == service)
                    .map(|r| Endpoint::address(r.inbound).label("app", service.name()).label("replica", &r.name))
                    .collect(),
                ..mesh_spec::Service::new(service.name())
            })
            .collect();
        // Resilience on show: authors fails a little on purpose; web's calls
        // to it are retried, so web stays near 100 % while authors' own
        // success rate shows its failures.
        let retries = RoutePolicy {
            name: "authors-retries".into(),
            service: Service::Authors.name().into(),
            rules: vec![RouteRule {
                name: Some("retry-5xx".into()),
                retries: Some(Retry {
                    attempts: Some(2),
                    on: vec!["5xx".into(), "connect-failure".into()],
                    backoff: Some(Backoff { base: Some("5ms".into()), max: Some("50ms".into()) }),
                    ..Retry::default()
                }),
                ..RouteRule::default()
            }],
            ..RoutePolicy::default()
        };
        // Zero trust on show (identity only: without it, no client can prove
        // who it is): only web may call books and authors, only the traffic
        // generator may call web.
        let authorizations = match self.identity {
            None => Vec::new(),
            Some(_) => [(Service::Books, "web"), (Service::Authors, "web"), (Service::Web, Self::TRAFFIC)]
                .into_iter()
                .map(|(service, caller)| Authorization {
                    name: format!("{}-authz", service.name()),
                    service: service.name().into(),
                    default: Some("deny".into()),
                    rules: vec![AuthorizationRule {
                        name: Some(format!("from-{caller}")),
                        service_accounts: vec![caller.into()],
                        ..AuthorizationRule::default()
                    }],
                    ..Authorization::default()
                })
                .collect(),
        };
        RegistryFile { services, routes: vec![retries], authorizations }
    }

    /// The registry file's text.
    pub fn registry_yaml(&self) -> String {
        let header = "# Written by `meshctl demo`: the demo's services and their endpoints.\n";
        format!("{header}{}", mesh_spec::to_yaml(&self.registry()))
    }

    /// Writes the registry atomically (the control plane may be reading it).
    pub fn write_registry(&self) -> anyhow::Result<()> {
        let path = self.registry_path();
        let tmp = self.dir.join(".registry.yaml.tmp");
        std::fs::write(&tmp, self.registry_yaml()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    /// `mesh-control` with the file registry (and, with identity, as the CA).
    pub fn control_spec(&self) -> Spec {
        let mut args: Vec<String> = [
            "--registry-file",
            &self.registry_path().display().to_string(),
            "--registry-poll",
            "200ms",
            "--grpc-addr",
            &self.control_grpc.to_string(),
            "--admin-addr",
            &self.control_admin.to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if let Some(id) = &self.identity {
            args.extend([
                "--identity-dir".to_string(),
                id.dir().display().to_string(),
                "--cert-ttl".to_string(),
                format!("{}ms", id.cert_ttl.as_millis()),
            ]);
        }
        spec("control plane", &self.bins.control, args, self.log("control"))
    }

    /// The workload name of the traffic generator's sidecar (and its service account).
    pub const TRAFFIC: &str = "traffic";

    /// Mints a fresh join token for `workload`'s proxy (before each start:
    /// a token is accepted once).
    pub fn write_token(&self, workload: &str, service_account: &str) -> anyhow::Result<()> {
        match &self.identity {
            Some(id) => id.write_token(workload, service_account),
            None => Ok(()),
        }
    }

    /// Mints every proxy's join token (start-up mints each proxy's own as it starts it).
    #[cfg(test)]
    pub fn write_tokens(&self) -> anyhow::Result<()> {
        let Some(id) = &self.identity else { return Ok(()) };
        for r in &self.replicas {
            id.write_token(&r.name, r.service.name())?;
        }
        id.write_token(Self::TRAFFIC, Self::TRAFFIC)
    }

    fn proxy_args(&self, workload: &str, admin: SocketAddr) -> Vec<String> {
        let cp = format!("http://{}", self.control_grpc);
        let mut args: Vec<String> =
            ["--workload", workload, "--control-plane", &cp, "--admin-addr", &admin.to_string()]
                .into_iter()
                .chain(["--shutdown-grace", PROXY_GRACE])
                .map(String::from)
                .collect();
        if let Some(id) = &self.identity {
            // Inbound stays strict (the default with identity): mTLS only.
            args.extend([
                "--identity-token-file".to_string(),
                id.token_file(workload).display().to_string(),
                "--trust-anchors".to_string(),
                id.anchors().display().to_string(),
            ]);
        }
        args
    }

    /// The traffic generator's sidecar: no inbound, one upstream to `web`.
    pub fn traffic_spec(&self) -> Spec {
        let mut args = self.proxy_args(Self::TRAFFIC, self.traffic_admin);
        args.extend(["--upstream".to_string(), format!("{}={}", self.traffic_listen, Service::Web.target())]);
        spec("traffic proxy", &self.bins.proxy, args, self.log("traffic-proxy"))
    }

    /// A replica's sidecar.
    pub fn proxy_spec(&self, r: &Replica) -> Spec {
        let mut args = self.proxy_args(&r.name, r.admin);
        args.extend(["--app".to_string(), r.app.to_string(), "--inbound-addr".to_string(), r.inbound.to_string()]);
        for (listen, service) in &r.upstreams {
            args.extend(["--upstream".to_string(), format!("{listen}={}", service.target())]);
        }
        spec(&format!("{} proxy", r.name), &self.bins.proxy, args, self.log(&format!("{}-proxy", r.name)))
    }

    /// A replica's app.
    pub fn app_spec(&self, r: &Replica) -> Spec {
        let role = match r.service.role() {
            Role::Web => "web",
            Role::Books => "books",
            Role::Authors => "authors",
        };
        let mut args: Vec<String> = ["demo-app", "--role", role, "--name", &r.name, "--listen", &r.app.to_string()]
            .into_iter()
            .map(String::from)
            .collect();
        for (listen, service) in &r.upstreams {
            args.extend([format!("--{}-url", service.name()), format!("http://{listen}")]);
        }
        if r.service == Service::Authors {
            args.extend(["--failure-rate".to_string(), self.failure_rate.to_string()]);
        }
        spec(&format!("{} app", r.name), &self.bins.meshctl, args, self.log(&r.name))
    }
}

fn take4(ports: &mut Ports) -> anyhow::Result<[SocketAddr; 4]> {
    let v = ports.take(4)?;
    v.try_into().map_err(|_| anyhow::anyhow!("port allocation came up short"))
}

/// A demo child: `name` names it in messages (`books-0 app`, `control
/// plane`). It gets SIGTERM when meshctl dies, and a process group of its
/// own, so a Ctrl-C in the terminal reaches only meshctl, which then stops
/// the children in order.
fn spec(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Spec {
    let spec = Spec::new(name, program, log)
        .args(args)
        .env("NO_COLOR", "1")
        .own_process_group(true)
        .death_signal(signal::SIGTERM);
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Errors without backtraces keep a log's last lines readable;
        // panics still follow RUST_BACKTRACE.
        return spec.env("RUST_LIB_BACKTRACE", "0");
    }
    spec
}

/// A spec's arguments as one line (for tests and messages).
#[cfg(test)]
fn arg_line(spec: &Spec) -> String {
    spec.get_args().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(replicas: usize) -> Plan {
        let bins =
            Binaries { proxy: "/x/mesh-proxy".into(), control: "/x/mesh-control".into(), meshctl: "/x/meshctl".into() };
        Plan::new(PathBuf::from("/tmp/demo"), bins, replicas, 0.02).expect("plan")
    }

    #[test]
    fn ports_are_distinct() {
        let p = plan(3);
        let mut all = vec![p.control_grpc, p.control_admin, p.traffic_admin, p.traffic_listen];
        for r in &p.replicas {
            all.extend([r.app, r.inbound, r.admin]);
            all.extend(r.upstreams.iter().map(|(a, _)| *a));
        }
        let n = all.len();
        assert_eq!(n, 4 + 9 * 3 + 3 * 2);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every port once");
    }

    #[test]
    fn rebinding_changes_ports_and_registry() {
        let mut p = plan(2);
        let before = p.registry_yaml();
        let old = p.replicas[2].clone();
        p.rebind_replica(2).expect("rebind");
        assert_eq!(p.replicas[2].name, old.name);
        assert_ne!(p.replicas[2].inbound, old.inbound);
        assert_ne!(p.registry_yaml(), before);
    }

    #[test]
    fn registry_lists_every_replica() {
        let mut p = plan(2);
        for identity in [false, true] {
            let run = tempfile::tempdir().expect("temp dir");
            if identity {
                p.identity = Some(DemoIdentity::create(run.path(), std::time::Duration::from_secs(90)).expect("id"));
            }
            let y = p.registry_yaml();
            let parsed = mesh_registry::file::parse(std::path::Path::new("demo.yaml"), &y)
                .unwrap_or_else(|e| panic!("the demo's registry must be valid: {e}\n{y}"));
            for r in &p.replicas {
                let service = parsed.services.iter().find(|s| s.key.name == r.service.name()).expect("service");
                assert_eq!(service.ports[0].port, r.service.port());
                let endpoint = service.endpoints.iter().find(|e| e.labels.get("replica") == Some(&r.name));
                let endpoint = endpoint.unwrap_or_else(|| panic!("no endpoint for {}:\n{y}", r.name));
                assert_eq!((endpoint.ip, endpoint.port), (r.inbound.ip(), Some(r.inbound.port())));
            }
            assert_eq!(parsed.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["authors-retries"]);
            assert_eq!(parsed.authorizations.len(), if identity { 3 } else { 0 }, "{y}");
        }
    }

    #[test]
    fn web_calls_through_its_sidecar() {
        let p = plan(1);
        let web = &p.replicas[0];
        let app = arg_line(&p.app_spec(web));
        let proxy = arg_line(&p.proxy_spec(web));
        for (listen, service) in &web.upstreams {
            assert!(app.contains(&format!("--{}-url http://{listen}", service.name())), "{app}");
            assert!(proxy.contains(&format!("--upstream {listen}={}", service.target())), "{proxy}");
        }
        assert!(proxy.contains(&format!("--app {} --inbound-addr {}", web.app, web.inbound)), "{proxy}");
        let authors = arg_line(&p.app_spec(&p.replicas[2]));
        assert!(authors.ends_with("--failure-rate 0.02"), "{authors}");
        assert!(!proxy.contains("--identity") && !arg_line(&p.control_spec()).contains("--identity"), "{proxy}");
        p.write_tokens().expect("no identity, no tokens");
    }

    #[test]
    fn with_identity_every_proxy_has_a_token_and_the_bundle() {
        let run = tempfile::tempdir().expect("temp dir");
        let mut p = plan(1);
        let id = DemoIdentity::create(run.path(), std::time::Duration::from_secs(90)).expect("identity");
        p.identity = Some(id.clone());
        p.write_tokens().expect("tokens");
        let control = arg_line(&p.control_spec());
        assert!(control.contains(&format!("--identity-dir {} --cert-ttl 90000ms", id.dir().display())), "{control}");
        let anchors = id.anchors().display().to_string();
        for (spec, workload, sa) in
            [(p.proxy_spec(&p.replicas[1]), "books-0", "books"), (p.traffic_spec(), "traffic", "traffic")]
        {
            let args = arg_line(&spec);
            let file = id.token_file(workload);
            assert!(args.contains(&format!("--identity-token-file {}", file.display())), "{args}");
            assert!(args.contains(&format!("--trust-anchors {anchors}")), "{args}");
            assert!(!args.contains("--inbound-mode"), "inbound stays strict: {args}");
            let token = std::fs::read_to_string(&file).expect("token file");
            let claims = mesh_identity::token::peek(&token).expect("a join token");
            assert_eq!(claims.sub, DemoIdentity::spiffe_id(sa));
        }
    }
}

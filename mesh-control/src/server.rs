//! Starting and stopping the control plane as one unit.

use crate::admin::Admin;
use crate::config::{Config, RegistryConfig};
use crate::destination::{DestinationMetrics, DestinationService};
use crate::identity::authority::{Authority, AuthorityMetrics};
use crate::identity::proof::{JoinTokens, ProofVerifier};
use crate::identity::token_review::{KubernetesProofs, ServiceAccountTokens};
use crate::identity::{self, IdentityMetrics, IdentityService};
use crate::metrics::RegistryMetrics;
use crate::policy::{PolicyMetrics, PolicyService};
use crate::registry::file::FileRegistry;
use crate::router::Router;
use crate::store::Store;
use crate::workloads::{Proxies, WorkloadsService};
use mesh_core::shutdown::{self, Shutdown, Trigger};
use mesh_identity::dir::IdentityDir;
use mesh_kube::identity::WorkloadReviewer;
use mesh_proto::destination::destination_server::DestinationServer;
use mesh_proto::identity::identity_server::IdentityServer;
use mesh_proto::policy::policy_server::PolicyServer;
use mesh_proto::workloads::workloads_server::WorkloadsServer;
use mesh_registry::file::FileError;
use mesh_registry::target::IdentityNaming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} for {what}: {source} (is another process using the port?)")]
    Bind {
        /// What the port is for.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registry could not be loaded.
    #[error("the registry was rejected; fix it and start again:\n{0}")]
    Registry(#[from] FileError),
    /// The Kubernetes API could not be reached or configured.
    #[error("the Kubernetes registry cannot start: {0}")]
    Kubernetes(#[from] mesh_kube::KubeError),
    /// The identity directory could not be loaded.
    #[error("the identity directory was rejected: {0}\n(create one with `meshctl identity init --dir DIR`)")]
    Identity(#[from] mesh_identity::dir::DirError),
    /// The control plane's own TLS could not be set up.
    #[error("cannot set up TLS for the gRPC API: {0}")]
    Tls(String),
    /// A configuration that cannot work (what is missing, and how to add it).
    #[error("{0}")]
    Config(String),
}

/// A running control plane. [`Control::shutdown`] stops it gracefully
/// (streams end, the leader Lease is released); dropping it aborts every
/// task first, as a crash would.
#[derive(Debug)]
pub struct Control {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    webhook_addr: Option<SocketAddr>,
    store: Store,
    // Dropped before `trigger` (fields drop in order): the tasks are aborted
    // before the shutdown signal could start their graceful paths.
    tasks: JoinSet<()>,
    trigger: Trigger,
}

impl Control {
    /// Binds every listener, loads the registry and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let (trigger, shutdown) = shutdown::channel();
        let store = Store::new(None);
        let mut metrics = prometheus_client::registry::Registry::default();
        let registry_metrics = RegistryMetrics::default();
        registry_metrics.register(&mut metrics);
        let destination_metrics = DestinationMetrics::default();
        destination_metrics.register(&mut metrics);
        let policy_metrics = PolicyMetrics::default();
        policy_metrics.register(&mut metrics);
        metrics.register_collector(Box::new(mesh_core::process::ProcessCollector));
        let listeners = mesh_core::listener::ListenerMetrics::default();
        listeners.register(&mut metrics);

        let grpc = bind("gRPC API", config.grpc_addr).await?;
        let admin = bind("admin", config.admin_addr).await?;
        let grpc_addr = local(&grpc, config.grpc_addr);
        let admin_addr = local(&admin, config.admin_addr);

        let mut tasks = JoinSet::new();
        let mut router = Router::default();
        let mut serving = None;
        let mut anchors_source = None;
        // One client for everything the control plane does in the cluster.
        let kube_client = match &config.registry {
            RegistryConfig::Kubernetes { kubeconfig, context } => {
                Some(mesh_kube::client::connect(kubeconfig.as_deref(), context.as_deref()).await?)
            }
            RegistryConfig::File { .. } => None,
        };
        if let Some(idc) = &config.identity {
            let authority_metrics = AuthorityMetrics::default();
            authority_metrics.register(&mut metrics);
            let authority = Authority::load(IdentityDir::new(&idc.dir), authority_metrics)?;
            let trust_domain = authority.current().trust_domain.clone();
            store.set_identity(Some(IdentityNaming { trust_domain }));
            let creds = identity::serving::credentials(&authority).map_err(|e| StartError::Tls(e.to_string()))?;
            let identity_metrics = IdentityMetrics::default();
            identity_metrics.register(&mut metrics);
            let join = JoinTokens::new(authority.clone());
            let proofs: Arc<dyn ProofVerifier> = match &kube_client {
                Some(client) => {
                    let reviewer = WorkloadReviewer::new(client.clone(), idc.token_audience.clone());
                    Arc::new(KubernetesProofs { join, service_accounts: ServiceAccountTokens::new(reviewer) })
                }
                None => Arc::new(join),
            };
            let svc = IdentityService::new(authority.clone(), proofs, idc.leaf_ttl, identity_metrics, shutdown.clone());
            router = router.add(IdentityServer::new(svc));
            tasks.spawn(identity::serving::run(authority.clone(), creds.clone(), shutdown.clone()));
            anchors_source = Some(authority.clone());
            tasks.spawn(authority.run(idc.poll_interval, shutdown.clone()));
            serving = Some(creds);
        }
        let webhook = match (&config.webhook, &serving, &anchors_source, &kube_client) {
            (None, ..) => None,
            (Some(wc), Some(creds), Some(authority), Some(client)) => {
                let listener = bind("injector webhook", wc.addr).await?;
                let addr = local(&listener, wc.addr);
                let webhook_metrics = crate::webhook::WebhookMetrics::default();
                webhook_metrics.register(&mut metrics);
                let authority = authority.clone();
                let identity: Arc<dyn Fn() -> crate::webhook::MeshIdentity + Send + Sync> = Arc::new(move || {
                    let current = authority.current();
                    crate::webhook::MeshIdentity {
                        anchors_pem: mesh_identity::pem::encode_certs(&current.anchors),
                        trust_domain: current.trust_domain.clone(),
                    }
                });
                let listener = mesh_core::listener::CountedListener::new(listener, listeners.listener("webhook"));
                tasks.spawn(crate::webhook::serve(
                    listener,
                    creds.clone(),
                    client.clone(),
                    wc.settings.clone(),
                    identity,
                    webhook_metrics,
                    shutdown.clone(),
                ));
                Some(addr)
            }
            (Some(_), None, ..) | (Some(_), _, None, _) => {
                return Err(StartError::Config(
                    "the injector webhook needs identity (its TLS certificate comes from the mesh's issuer): \
                     pass --identity-dir"
                        .into(),
                ));
            }
            (Some(_), ..) => {
                return Err(StartError::Config(
                    "the injector webhook needs the Kubernetes registry (it reads namespaces): pass --registry kubernetes"
                        .into(),
                ));
            }
        };
        if let RegistryConfig::File { path, poll_interval } = config.registry {
            let mut reg = FileRegistry::new(path, poll_interval, store.clone(), registry_metrics);
            reg.load_initial()?;
            tasks.spawn(reg.run(shutdown.clone()));
        }
        if let Some(client) = kube_client {
            let sink = Arc::new(store.clone());
            let collector = crate::registry::kubernetes::start(client, sink, shutdown.clone(), &mut tasks).await?;
            metrics.register_collector(Box::new(collector));
        }

        let ready = Arc::new(AtomicBool::new(false));
        let proxies = Proxies::default();
        let admin_state = Admin::new(metrics, ready.clone()).with_proxies(proxies.clone());
        let admin_settings = mesh_core::admin::Settings {
            header_read_timeout: config.timeouts.header_read,
            connections: listeners.listener("admin"),
        };
        tasks.spawn(mesh_core::admin::serve(admin, admin_state, shutdown.clone(), admin_settings));
        let destination = DestinationService::new(store.clone(), destination_metrics, shutdown.clone());
        router = router.add(DestinationServer::new(destination));
        let policy = PolicyService::new(store.clone(), policy_metrics, shutdown.clone());
        router = router.add(PolicyServer::new(policy));
        router = router.add(WorkloadsServer::new(WorkloadsService::new(proxies, shutdown.clone())));
        let accepts = listeners.listener("grpc");
        match serving {
            Some(creds) => {
                let incoming =
                    crate::tls::incoming(grpc, creds, accepts, config.timeouts.tls_handshake, shutdown.clone())
                        .map_err(|e| StartError::Tls(e.to_string()))?;
                tasks.spawn(serve_grpc(incoming, router, shutdown));
            }
            None => {
                let incoming =
                    crate::tls::plain_incoming(grpc, accepts, config.timeouts.tls_handshake, shutdown.clone());
                tasks.spawn(serve_grpc(incoming, router, shutdown));
            }
        }
        ready.store(true, Ordering::Release);
        tracing::info!(%grpc_addr, %admin_addr, "control plane serving");
        Ok(Self { grpc_addr, admin_addr, webhook_addr: webhook, store, tasks, trigger })
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The injector webhook's bound address, when it runs.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The store the APIs serve from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A handle that stops this control plane when triggered.
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Stops serving: closes listeners and open watch streams.
    pub async fn shutdown(mut self) {
        self.trigger.trigger();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
            self.tasks.abort_all();
        }
    }

    /// Waits until every task has ended (after a trigger).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

async fn serve_grpc<I, IO, IE>(incoming: I, router: Router, mut shutdown: Shutdown)
where
    I: futures_util::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .serve_with_incoming_shutdown(router, incoming, async move { shutdown.triggered().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

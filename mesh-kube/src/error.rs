//! The errors of talking to Kubernetes, each saying what to do about it.

use std::path::PathBuf;

/// What went wrong reaching or using the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A kubeconfig file that cannot be read or parsed.
    #[error(
        "cannot load kubeconfig {path}: {source}; pass --kubeconfig with a readable kubeconfig file or fix $KUBECONFIG"
    )]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A context that the kubeconfig does not have (or that is incomplete).
    #[error(
        "cannot use context {context:?} of {kubeconfig}: {source}; list the contexts with `kubectl config get-contexts` and pass one with --context"
    )]
    Context {
        /// The context asked for (or `current-context`).
        context: String,
        /// Where it was looked up.
        kubeconfig: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor an in-cluster service account.
    #[error(
        "no Kubernetes configuration found: {source}; pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account"
    )]
    NoConfig {
        /// Why.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The client could not be built from an otherwise valid configuration
    /// (for example unreadable certificate data).
    #[error("cannot build a Kubernetes client for {cluster}: {source}")]
    Client {
        /// The cluster URL.
        cluster: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Waiting for a condition took too long.
    #[error("{what}: not done after {seconds} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
    },
    /// Rendering a manifest failed.
    #[error("cannot render {what}: {message}")]
    Render {
        /// What.
        what: String,
        /// Why.
        message: String,
    },
}

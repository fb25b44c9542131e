//! A Kubernetes client from `--kubeconfig`/`--context`, `$KUBECONFIG`, or the
//! pod's service account, the way kubectl finds one.

use crate::error::KubeError;
use kube::config::{Config, KubeConfigOptions, Kubeconfig, KubeconfigError};
use std::path::Path;

/// Connects to the cluster:
///
/// - `kubeconfig` given: that file, with `context` or its current context;
/// - otherwise `$KUBECONFIG` (or `~/.kube/config`) with `context` when one
///   is given, else whatever kubectl would use, falling back to the pod's
///   in-cluster service account.
///
/// No request is sent: an unreachable server shows at the first call.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Client, KubeError> {
    let config = config(kubeconfig, context).await?;
    let cluster = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| KubeError::Client { cluster, source })
}

/// The configuration [`connect`] uses.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Config, KubeError> {
    let options = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let context_error = |kubeconfig: String, source: KubeconfigError| KubeError::Context {
        context: context.unwrap_or("current-context").to_string(),
        kubeconfig,
        source,
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.to_path_buf(), source })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| classify(source, path.display().to_string(), context_error))
        }
        (None, Some(_)) => {
            let from = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".to_string());
            Config::from_kubeconfig(&options).await.map_err(|source| classify(source, from, context_error))
        }
        (None, None) => Config::infer().await.map_err(|source| KubeError::NoConfig { source }),
    }
}

/// File problems name the file; everything else is about the context.
fn classify(
    source: KubeconfigError,
    file: String,
    context_error: impl Fn(String, KubeconfigError) -> KubeError,
) -> KubeError {
    match source {
        KubeconfigError::ReadConfig(..) | KubeconfigError::Parse(_) | KubeconfigError::FindPath => {
            KubeError::Kubeconfig { path: file.into(), source }
        }
        other => context_error(file, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: one
  cluster: {server: https://127.0.0.1:6443, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: abc}
contexts:
- name: first
  context: {cluster: one, user: admin}
current-context: first
";

    #[tokio::test]
    async fn errors_name_the_file_or_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.yaml");
        let err = connect(Some(&missing), None).await.err().expect("no such file").to_string();
        assert!(err.contains("nope.yaml") && err.contains("--kubeconfig"), "{err}");

        let file = dir.path().join("kubeconfig");
        std::fs::write(&file, KUBECONFIG).expect("write");
        let err = connect(Some(&file), Some("second")).await.err().expect("no such context").to_string();
        assert!(err.contains("\"second\"") && err.contains("kubeconfig") && err.contains("--context"), "{err}");

        let client = connect(Some(&file), Some("first")).await.expect("a client for an existing context");
        assert_eq!(client.default_namespace(), "default");
    }
}

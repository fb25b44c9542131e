//! SPIFFE IDs as the mesh uses them: one per (namespace, service account).

use std::fmt;
use std::str::FromStr;

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// A string that is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity {value:?}: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")]
pub struct InvalidSpiffeId {
    value: String,
    reason: &'static str,
}

impl SpiffeId {
    /// An identity from its parts; each must be a non-empty DNS-ish label.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, InvalidSpiffeId> {
        let id = Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        id.validate()?;
        Ok(id)
    }

    fn validate(&self) -> Result<(), InvalidSpiffeId> {
        let bad = |reason| InvalidSpiffeId { value: self.to_string(), reason };
        let ok_domain = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        };
        let ok_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        };
        if !ok_domain(&self.trust_domain) {
            return Err(bad("the trust domain must be lowercase letters, digits, '.' and '-'"));
        }
        if !ok_label(&self.namespace) || !ok_label(&self.service_account) {
            return Err(bad("namespace and service account must be lowercase letters, digits, '.' and '-'"));
        }
        Ok(())
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidSpiffeId { value: s.to_string(), reason };
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| bad("missing the spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(bad("the path must be /ns/<namespace>/sa/<service-account>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://mesh.local/ns/shop/sa/books".parse().expect("valid");
        assert_eq!((id.trust_domain(), id.namespace(), id.service_account()), ("mesh.local", "shop", "books"));
        assert_eq!(id.to_string(), "spiffe://mesh.local/ns/shop/sa/books");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "mesh.local/ns/a/sa/b",
            "spiffe://mesh.local/ns/a",
            "spiffe://mesh.local/ns/a/sa/b/c",
            "spiffe://Mesh/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://m/ns//sa/b",
            "spiffe://m/ns/a/sa/B C",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}

//! Schema pieces the mesh's CRDs share, named and validated the way the
//! Gateway API names and validates them (`HTTPRouteMatch`, `Duration`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS-1123 label (Service, ServiceAccount and Namespace names).
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The Gateway API's `Duration`: up to four number-unit pairs, like `10s`,
/// `500ms` or `1h30m` (GEP-2257).
pub const DURATION: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A SPIFFE ID.
pub const SPIFFE_ID: &str = r"^spiffe://[^/]+(/[^/]+)+$";

/// An IPv4 or IPv6 network, `address[/prefix]` (checked exactly when read).
pub const CIDR: &str = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$";

/// The only kind a mesh policy targets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceKind {
    /// A core `v1` Service.
    #[default]
    Service,
}

/// The Service a policy applies to, in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTargetRef {
    /// Always `Service`.
    pub kind: ServiceKind,
    /// The Service's name.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
}

/// The Service (and optionally one of its ports) a policy applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortTargetRef {
    /// Always `Service`.
    pub kind: ServiceKind,
    /// The Service's name.
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL))]
    pub name: String,
    /// One service port; every port when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// How a path is matched (Gateway API `PathMatchType`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// A prefix on `/`-separated segment boundaries.
    #[default]
    PathPrefix,
    /// An anchored regular expression (RE2 syntax).
    RegularExpression,
}

/// A path condition (Gateway API `HTTPPathMatch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'RegularExpression' || self.value.startsWith('/')", "message": "value must be an absolute path (start with '/')", "fieldPath": ".value"}
]))]
pub struct HttpPathMatch {
    /// How `value` is compared; `PathPrefix` when omitted.
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path, prefix or expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a header value is matched (Gateway API `HeaderMatchType`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HeaderMatchType {
    /// Equal to `value`.
    #[default]
    Exact,
    /// An anchored regular expression.
    RegularExpression,
}

/// A header condition (Gateway API `HTTPHeaderMatch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// How `value` is compared; `Exact` when omitted.
    #[serde(default, rename = "type")]
    pub type_: HeaderMatchType,
    /// The header's name (case-insensitive).
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"))]
    pub name: String,
    /// The value or expression.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

/// An HTTP method (Gateway API `HTTPMethod`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// Conditions on an HTTP request; all given must hold (Gateway API `HTTPRouteMatch`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Headers, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeaderMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
}

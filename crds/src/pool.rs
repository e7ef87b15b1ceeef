use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A set of addresses ferrolb may hand out to LoadBalancer Services.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    namespaced,
    doc = "An IPAddressPool: addresses ferrolb hands out to LoadBalancer Services (MetalLB-compatible).",
    status = "IPAddressPoolStatus",
    shortname = "ipp",
    category = "ferrolb",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(name = "Auto Assign", type_ = "boolean", json_path = ".spec.autoAssign"),
    printcolumn(name = "Avoid Buggy IPs", type_ = "boolean", json_path = ".spec.avoidBuggyIPs"),
    printcolumn(name = "Assigned v4", type_ = "integer", json_path = ".status.assignedIPv4"),
    printcolumn(name = "Available v4", type_ = "integer", json_path = ".status.availableIPv4"),
    printcolumn(name = "Assigned v6", type_ = "integer", json_path = ".status.assignedIPv6", priority = 1),
    printcolumn(name = "Available v6", type_ = "integer", json_path = ".status.availableIPv6", priority = 1),
    printcolumn(name = "Valid", type_ = "string", json_path = ".status.conditions[?(@.type==\"Valid\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// CIDRs ("192.168.10.0/24", "fc00::/112") and inclusive ranges ("192.168.9.1-192.168.9.5").
    #[schemars(length(min = 1, max = 1024), inner(length(min = 1, max = 100)))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(a, isCIDR(a) || (a.split('-').size() == 2 && isIP(a.split('-')[0].trim()) && isIP(a.split('-')[1].trim())))"
    ).message("each address must be a CIDR such as 192.168.10.0/24 or a range such as 192.168.9.1-192.168.9.5"))]
    pub addresses: Vec<String>,

    /// Whether Services without an explicit pool may get addresses from this pool.
    #[serde(default = "default_true")]
    pub auto_assign: Option<bool>,

    /// Skip IPv4 addresses ending in .0 and .255, which some old network equipment mishandles.
    #[serde(default)]
    #[serde(rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Which Services this pool prefers or is reserved for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

#[allow(clippy::unnecessary_wraps)] // serde's `default` must produce the field's type
fn default_true() -> Option<bool> {
    Some(true)
}

impl IPAddressPoolSpec {
    /// `autoAssign` with its default applied.
    pub fn auto_assign(&self) -> bool {
        self.auto_assign.unwrap_or(true)
    }
}

/// Pins a pool to a set of Services (MetalLB's `serviceAllocation`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; 0 or unset is tried last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,
    /// Namespaces whose Services this pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(length(max = 256), inner(length(max = 63)))]
    pub namespaces: Vec<String>,
    /// Label selectors over Namespaces whose Services this pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Label selectors over Services this pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller reports about a pool.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses held by at least one Service.
    #[serde(rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses held by at least one Service.
    #[serde(rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses still free (saturates at i64::MAX).
    #[serde(rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses still free (saturates at i64::MAX).
    #[serde(rename = "availableIPv6")]
    pub available_ipv6: i64,
    /// `Valid`, `Overlapping`, `Exhausted`: what the schema cannot check, reported instead of a webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

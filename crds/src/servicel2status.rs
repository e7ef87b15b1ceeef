use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Which node announces a Service's address, written by that node's speaker and owned by the Service.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceL2Status",
    namespaced,
    doc = "A ServiceL2Status: which node announces a Service's address (written by the speaker).",
    status = "ServiceL2StatusStatus",
    category = "ferrolb",
    printcolumn(name = "Allocated Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Service Name", type_ = "string", json_path = ".status.serviceName"),
    printcolumn(name = "Service Namespace", type_ = "string", json_path = ".status.serviceNamespace"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ServiceL2StatusSpec {}

/// The announcing node and where it answers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusStatus {
    /// Node that answers ARP for the Service's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("node is immutable"))]
    pub node: Option<String>,
    /// Name of the announced Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("serviceName is immutable"))]
    pub service_name: Option<String>,
    /// Namespace of the announced Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("serviceNamespace is immutable"))]
    pub service_namespace: Option<String>,
    /// Interfaces the address is answered on (every one, restricted by the L2Advertisement or not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
}

/// One announcing interface.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct InterfaceInfo {
    /// Interface name.
    pub name: String,
}

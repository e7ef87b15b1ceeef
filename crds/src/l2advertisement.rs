use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, KubeSchema, Resource};
use serde::{Deserialize, Serialize};

/// Which pools are announced over Layer 2, from which nodes and interfaces.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "L2Advertisement",
    root = "L2AdvertisementSchema",
    namespaced,
    doc = "An L2Advertisement: which pools are announced over Layer 2, from which nodes and interfaces.",
    status = "L2AdvertisementStatus",
    shortname = "l2adv",
    category = "ferrolb",
    printcolumn(name = "IPAddressPools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(
        name = "IPAddressPool Selectors",
        type_ = "string",
        json_path = ".spec.ipAddressPoolSelectors",
        priority = 10
    ),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(name = "Node Selectors", type_ = "string", json_path = ".spec.nodeSelectors", priority = 10),
    printcolumn(name = "Preferred Nodes", type_ = "string", json_path = ".spec.preferredNodeSelectors", priority = 10),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Pools announced by name; with no selector either, every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub ip_address_pools: Vec<String>,
    /// Pools announced by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Nodes allowed to announce; empty means every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces to answer ARP on; empty means every suitable interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 15)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub interfaces: Vec<String>,
    /// Services this advertisement applies to; empty means every Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Soft preferences among the nodes `nodeSelectors` allow: the node with the highest summed weight
    /// announces, the usual hash order breaks ties (MetalLB main's field; docs/design.md §4.3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_node_selectors: Vec<PreferredNodeSelector>,
}

/// A weighted preference for the nodes one selector matches.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct PreferredNodeSelector {
    /// Added to the score of every node the preference matches, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// The nodes that get the weight; an empty selector matches every node.
    pub preference: LabelSelector,
}

/// Kept empty, as in MetalLB.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct L2AdvertisementStatus {}

/// An L2Advertisement as stored: MetalLB's documented minimal form has no `spec` at all ("announce every pool
/// from every node"), which the derived type would refuse to read, so this one defaults it.
#[derive(Resource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[resource(inherit = L2AdvertisementSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2Advertisement {
    /// Always `metallb.io/v1beta1` when read from the API.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// Always `L2Advertisement` when read from the API.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What to announce; absent means everything.
    #[serde(default)]
    pub spec: L2AdvertisementSpec,
}

fn api_version() -> String {
    L2AdvertisementSchema::api_version(&()).into_owned()
}

fn kind() -> String {
    L2AdvertisementSchema::kind(&()).into_owned()
}

impl L2Advertisement {
    /// A new advertisement with the given name and spec.
    pub fn new(name: &str, spec: L2AdvertisementSpec) -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
            spec,
        }
    }
}

//! The plain inputs every subcommand decides from: the API objects as read, and the settings the controller and
//! speakers run with.

use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What ferrolb runs with, as far as the answers depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Only Services of this `loadBalancerClass` are ferrolb's (none: Services without a class).
    pub load_balancer_class: Option<String>,
    /// The speakers let nodes with the exclude label announce (`speaker.ignoreExcludeLB`).
    pub ignore_exclude_lb: bool,
    /// Label selector of the speaker pods (the DaemonSet's `spec.selector.matchLabels`); `None` without a
    /// DaemonSet: where speakers run is then not known.
    pub speaker_pod_selector: Option<String>,
}

impl Settings {
    /// The settings the speaker DaemonSet's container arguments give (chart values `loadBalancerClass`,
    /// `speaker.ignoreExcludeLB`); defaults when there is no such DaemonSet (speakers run some other way).
    pub fn from_daemonset(ds: Option<&DaemonSet>) -> Self {
        let args = ds
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.args.clone())
            .unwrap_or_default();
        Self {
            load_balancer_class: args
                .iter()
                .find_map(|a| a.strip_prefix("--load-balancer-class="))
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            ignore_exclude_lb: args.iter().any(|a| a == "--ignore-exclude-lb" || a == "--ignore-exclude-lb=true"),
            speaker_pod_selector: ds
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.selector.match_labels.as_ref())
                .filter(|labels| !labels.is_empty())
                .map(|labels| labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        }
    }
}

/// The API objects, read once.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Every Service.
    pub services: Vec<Service>,
    /// IPAddressPools of the configuration namespace.
    pub pools: Vec<IPAddressPool>,
    /// L2Advertisements of the configuration namespace.
    pub ads: Vec<L2Advertisement>,
    /// Every EndpointSlice.
    pub slices: Vec<EndpointSlice>,
    /// Every Node.
    pub nodes: Vec<Node>,
    /// Every Namespace (their labels feed `serviceAllocation.namespaceSelectors`).
    pub namespaces: Vec<Namespace>,
    /// ServiceL2Status objects of the configuration namespace.
    pub statuses: Vec<ServiceL2Status>,
    /// Events on the Service asked about (`why` only).
    pub events: Vec<Event>,
    /// The speaker pods (`why` only); `None` when unknown (no DaemonSet, or not readable).
    pub speaker_pods: Option<Vec<Pod>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_speaker_daemonsets_arguments_give_the_settings() {
        let ds: DaemonSet = serde_json::from_value(json!({"spec": {"selector": {"matchLabels": {
            "app.kubernetes.io/instance": "ferrolb", "app.kubernetes.io/component": "speaker"}}, "template": {"spec": {
            "containers": [{"name": "speaker", "args": ["--namespace=metallb-system", "--ignore-exclude-lb",
                "--load-balancer-class=example.com/l2"]}]}}}}))
        .expect("daemonset");
        let s = Settings::from_daemonset(Some(&ds));
        assert_eq!(s.load_balancer_class.as_deref(), Some("example.com/l2"));
        assert!(s.ignore_exclude_lb);
        assert_eq!(
            s.speaker_pod_selector.as_deref(),
            Some("app.kubernetes.io/component=speaker,app.kubernetes.io/instance=ferrolb")
        );
        assert_eq!(Settings::from_daemonset(None), Settings::default());
    }
}

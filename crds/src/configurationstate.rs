//! `ConfigurationState` (MetalLB v0.16): one object per component, saying whether the configuration it read is
//! usable, so `kubectl get configurationstates` and alerts written for MetalLB keep working (docs/design.md §7.6).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, KubeSchema, Resource};
use serde::{Deserialize, Serialize};

/// Label naming the kind of component an object reports for: `controller` or `speaker`.
pub const COMPONENT_LABEL: &str = "metallb.io/component-type";
/// Label naming the node a speaker's object reports for.
pub const NODE_LABEL: &str = "metallb.io/node-name";
/// Name of the controller's object.
pub const CONTROLLER_NAME: &str = "controller";
/// The controller's condition type (MetalLB's pool reconciler).
pub const CONTROLLER_CONDITION: &str = "poolReconcilerValid";
/// A speaker's condition type (MetalLB's config reconciler).
pub const SPEAKER_CONDITION: &str = "configReconcilerValid";
/// Field manager of the controller's condition (MetalLB's name for it).
pub const CONTROLLER_MANAGER: &str = "poolReconciler";
/// Field manager of a speaker's condition (MetalLB's name for it).
pub const SPEAKER_MANAGER: &str = "configReconciler";
/// Condition reason when the configuration is usable.
pub const REASON_RECONCILED: &str = "Reconciled";
/// Condition reason when it is not.
pub const REASON_CONFIGURATION_ERROR: &str = "ConfigurationError";

/// Name of a speaker's object.
pub fn speaker_name(node: &str) -> String {
    format!("speaker-{node}")
}

/// Status only, as in MetalLB; kube's derive needs a spec type, and crd_files removes it from the schema.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ConfigurationState",
    root = "ConfigurationStateSchema",
    namespaced,
    doc = "ConfigurationState reports whether a component's configuration is usable (one per controller and speaker).",
    status = "ConfigurationStateStatus",
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(name = "ErrorSummary", type_ = "string", json_path = ".status.errorSummary"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ConfigurationStateSpec {}

/// What a component found in the configuration.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStateStatus {
    /// `Valid`, `Invalid`, or `Unknown` before the component has said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Valid", "Invalid", "Unknown"]))]
    pub result: Option<String>,
    /// The messages of every failing condition, one per line; empty when the result is `Valid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_summary: Option<String>,
    /// One condition per reconciler of the component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A ConfigurationState as stored: MetalLB's objects have no `spec`, which the derived type would require.
#[derive(Resource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[resource(inherit = ConfigurationStateSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationState {
    /// Always `metallb.io/v1beta1`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// Always `ConfigurationState`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What the component found; absent until it has written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConfigurationStateStatus>,
}

fn api_version() -> String {
    ConfigurationStateSchema::api_version(&()).into_owned()
}

fn kind() -> String {
    ConfigurationStateSchema::kind(&()).into_owned()
}

impl ConfigurationState {
    /// A new, empty object with this name.
    pub fn new(name: &str) -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
            status: None,
        }
    }
}

/// The verdict MetalLB derives from the conditions: `Unknown` without any, `Invalid` (with the failing
/// messages joined by newlines) when one reports a configuration error, else `Valid`.
pub fn verdict(conditions: &[Condition]) -> (&'static str, String) {
    if conditions.is_empty() {
        return ("Unknown", String::new());
    }
    let failing: Vec<&str> = conditions
        .iter()
        .filter(|c| c.status == "False" && c.reason == REASON_CONFIGURATION_ERROR)
        .map(|c| c.message.as_str())
        .collect();
    if failing.is_empty() { ("Valid", String::new()) } else { ("Invalid", failing.join("\n")) }
}

/// The condition a component reports: `Reconciled` with an empty message, or `ConfigurationError` with
/// "configuration error: " and the problems found (MetalLB's wording).
pub fn condition(kind: &str, problems: &[String], now: k8s_openapi::jiff::Timestamp) -> Condition {
    let (status, reason, message) = if problems.is_empty() {
        ("True", REASON_RECONCILED, String::new())
    } else {
        ("False", REASON_CONFIGURATION_ERROR, format!("configuration error: {}", problems.join("; ")))
    };
    Condition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_follows_metallbs_rules() {
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        assert_eq!(verdict(&[]), ("Unknown", String::new()), "nobody has said yet");
        let ok = condition(CONTROLLER_CONDITION, &[], now);
        assert_eq!((ok.status.as_str(), ok.reason.as_str(), ok.message.as_str()), ("True", "Reconciled", ""));
        assert_eq!(verdict(std::slice::from_ref(&ok)), ("Valid", String::new()));
        let bad = condition(SPEAKER_CONDITION, &["pool \"a\": bad".into(), "pool \"b\": worse".into()], now);
        assert_eq!(bad.message, "configuration error: pool \"a\": bad; pool \"b\": worse");
        assert_eq!(verdict(&[ok, bad.clone()]), ("Invalid", bad.message.clone()));
        let other = Condition { reason: "SomethingElse".into(), ..bad };
        assert_eq!(verdict(&[other]).0, "Valid", "only ConfigurationError makes it Invalid");
    }
}

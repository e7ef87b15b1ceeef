//! Publishing Events, for the controller and the speaker.
//!
//! Not through kube's `Recorder`: it folds Events with the same reason into one series and keeps the first
//! note, which hides "(was …)" and every later refusal reason. ferrolb only emits on change, so there is
//! nothing to fold.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1 as events_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Something worth knowing happened (an address assigned, a node announcing).
    Normal,
    /// Something needs the user's attention (no address, nobody can announce).
    Warning,
}

impl EventKind {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}

/// What an Event says and who says it.
#[derive(Debug, Clone)]
pub struct EventSpec<'a> {
    /// Severity.
    pub kind: EventKind,
    /// Short CamelCase reason.
    pub reason: &'a str,
    /// The human message (cut to 1024 characters).
    pub note: String,
    /// Reporting controller, e.g. `ferrolb.io/controller`.
    pub controller: &'a str,
    /// Reporting instance (pod or node name).
    pub instance: &'a str,
}

/// Creates one `events.k8s.io/v1` Event about `regarding`.
pub async fn publish(client: &Client, regarding: ObjectReference, e: EventSpec<'_>) -> Result<(), kube::Error> {
    let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
    let now = Timestamp::now();
    // Named like client-go names Events: object name + a unique hex suffix (generateName may not end in '.').
    let unique = now.as_nanosecond().unsigned_abs();
    let event = events_v1::Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{unique:x}", regarding.name.clone().unwrap_or_default())),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(e.kind.as_str().into()),
        reason: Some(e.reason.into()),
        action: Some(e.reason.into()),
        note: Some(e.note.chars().take(1024).collect()),
        reporting_controller: Some(e.controller.into()),
        reporting_instance: Some(e.instance.chars().take(128).collect()),
        regarding: Some(regarding),
        ..events_v1::Event::default()
    };
    let api: Api<events_v1::Event> = Api::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), &event).await.map(|_| ())
}

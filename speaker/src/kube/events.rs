//! The speaker's one Event publisher: a queue and a task that publishes Events in the order they were said,
//! each tried a few times with backoff (an API hiccup does not lose a takeover or a warning), so the planner
//! never waits on the API server.

use crate::model::notices::{Notice, Subject};
use ferrolb_runtime::events::{EventKind, EventSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use std::time::Duration;
use tokio::sync::mpsc;

/// Tries per Event before it is given up (and logged).
const ATTEMPTS: u32 = 4;
/// Delay before the second try; doubled for each further one.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Where this speaker's Events go.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::UnboundedSender<Notice>,
}

impl Events {
    /// Starts the publisher for this node's speaker.
    pub fn spawn(client: Client, node: String) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<Notice>();
        tokio::spawn(async move {
            while let Some(notice) = pending.recv().await {
                publish(&client, &node, notice).await;
            }
        });
        Self { queue }
    }

    /// Logs a notice and, unless it is for the log only, queues its Event.
    pub fn tell(&self, notice: Notice) {
        let (reason, note) = (notice.reason, notice.note.as_str());
        match &notice.subject {
            Subject::Service { key, .. } if notice.warning => tracing::warn!(service = %key, reason, "{note}"),
            Subject::Service { key, .. } => tracing::info!(service = %key, reason, "{note}"),
            _ if notice.warning => tracing::warn!(reason, "{note}"),
            _ => tracing::info!(reason, "{note}"),
        }
        if !matches!(notice.subject, Subject::LogOnly) {
            let _ = self.queue.send(notice);
        }
    }
}

/// The object an Event is about; the Event goes into its namespace.
fn regarding(subject: &Subject, node: &str) -> Option<ObjectReference> {
    let (api_version, kind) = (
        Some("v1".to_string()),
        Some(String::from(match subject {
            Subject::Service { .. } => "Service",
            Subject::Node => "Node",
            Subject::LogOnly => return None,
        })),
    );
    Some(match subject {
        Subject::Service { key, uid } => ObjectReference {
            api_version,
            kind,
            name: Some(key.name.to_string()),
            namespace: Some(key.namespace.to_string()),
            uid: Some(uid.clone()),
            ..ObjectReference::default()
        },
        _ => ObjectReference {
            api_version,
            kind,
            name: Some(node.to_string()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        },
    })
}

async fn publish(client: &Client, node: &str, notice: Notice) {
    let Some(regarding) = regarding(&notice.subject, node) else { return };
    let kind = if notice.warning { EventKind::Warning } else { EventKind::Normal };
    let mut delay = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let event = EventSpec {
            kind,
            reason: notice.reason,
            note: notice.note.clone(),
            controller: "ferrolb.io/speaker",
            instance: node,
        };
        match ferrolb_runtime::events::publish(client, regarding.clone(), event).await {
            Ok(()) => return,
            Err(error) if attempt == ATTEMPTS => {
                tracing::warn!(%error, reason = notice.reason, attempts = ATTEMPTS, "cannot publish Event; giving up");
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

//! Leader election on a `coordination.k8s.io` Lease, so that of two replicas exactly one writes.
//!
//! The holder renews every `renew_every`; a replica takes over only when the lease has not been renewed for
//! `duration`. A holder that cannot renew for `renew_deadline` (< `duration`) gives up first, so two writers
//! never overlap (clock skew aside, as with client-go's leader election).

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;
use tokio::time::Instant;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Lease object name.
    pub name: String,
    /// Namespace of the lease.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How long the holder keeps trying to renew before it stops.
    pub renew_deadline: Duration,
    /// How often to renew or retry.
    pub renew_every: Duration,
}

/// Whether a lease held by someone else has expired at `now` (pure).
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else { return true };
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.checked_add(SignedDuration::from_secs(seconds)).is_ok_and(|until| until < now)
}

/// Whether anyone may take the lease at `now`: released by its holder (no holder) or expired (pure).
pub fn free(spec: &LeaseSpec, now: Timestamp) -> bool {
    spec.holder_identity.as_deref().is_none_or(str::is_empty) || expired(spec, now)
}

/// Tries once to take or keep the lease; `Ok(true)` while we hold it.
pub async fn try_acquire(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool> {
    let now = Timestamp::now();
    let seconds = i32::try_from(s.duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(s.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(s.identity.as_str());
    if !ours && !free(spec, now) {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(s.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // `replace` carries the resourceVersion we read: if another replica wrote in between, we get 409 and lose.
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: &Client, s: &LeaseSettings) -> Api<Lease> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    // A standby wakes as soon as the lease changes, so when a leader stops cleanly and releases it, the
    // standby takes over at once, not a replacement replica that is only starting (it would win a plain poll).
    let config = watcher::Config::default().fields(&format!("metadata.name={}", s.name));
    let mut changes = std::pin::pin!(watcher(api.clone(), config).default_backoff());
    loop {
        match try_acquire(&api, s).await {
            Ok(true) => return api,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the lease"),
        }
        tokio::select! {
            () = tokio::time::sleep(s.renew_every) => {}
            _ = changes.next() => {}
        }
    }
}

/// Renews the lease until renewal fails for longer than the deadline; then returns the error.
pub async fn hold(api: Api<Lease>, s: LeaseSettings) -> Error {
    let mut last_renewed = Instant::now();
    loop {
        tokio::time::sleep(s.renew_every).await;
        match try_acquire(&api, &s).await {
            Ok(true) => last_renewed = Instant::now(),
            Ok(false) => return Error::LostLease(format!("{}: another replica holds it", s.name)),
            Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
        }
        if last_renewed.elapsed() > s.renew_deadline {
            return Error::LostLease(format!("{}: not renewed for {:?}", s.name, s.renew_deadline));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration() {
        let t = |s: i64| Timestamp::from_second(s).expect("time");
        let spec =
            LeaseSpec { renew_time: Some(MicroTime(t(100))), lease_duration_seconds: Some(15), ..LeaseSpec::default() };
        assert!(!expired(&spec, t(110)));
        assert!(!expired(&spec, t(115)));
        assert!(expired(&spec, t(116)));
        assert!(expired(&LeaseSpec::default(), t(0)), "never renewed");
    }

    #[test]
    fn a_released_lease_is_free_at_once_and_a_held_one_only_once_expired() {
        let t = |s: i64| Timestamp::from_second(s).expect("time");
        let held = LeaseSpec {
            holder_identity: Some("ferrolb-controller-a".into()),
            renew_time: Some(MicroTime(t(100))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!free(&held, t(101)));
        assert!(free(&held, t(116)));
        let released = LeaseSpec { holder_identity: None, ..held.clone() };
        assert!(free(&released, t(101)), "a clean stop hands the lease over without waiting");
        let emptied = LeaseSpec { holder_identity: Some(String::new()), ..held };
        assert!(free(&emptied, t(101)));
    }
}

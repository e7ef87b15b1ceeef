//! What the controller writes, computed purely: a Service's desired ingress and pool annotation, and a pool's
//! status. The I/O layer compares these with what is stored and writes only differences.

use crate::allocator::{Assignment, PoolUsage};
use crate::pool::PoolProblem;
use ferrolb_crds::IPAddressPoolStatus;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::net::IpAddr;

pub use ferrolb_crds::service::{current_ingress, current_pool};

/// Writes needed to make a Service show `assignment` (or nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceWrites {
    /// New `status.loadBalancer.ingress`, when it differs.
    pub ingress: Option<Vec<IpAddr>>,
    /// New `metallb.io/ip-allocated-from-pool` (`Some(None)` removes it), when it differs.
    pub pool_annotation: Option<Option<String>>,
}

impl ServiceWrites {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.pool_annotation.is_none()
    }
}

/// Compares a Service with what it should show.
pub fn service_writes(svc: &Service, assignment: Option<&Assignment>) -> ServiceWrites {
    let want_ips = assignment.map(|a| a.ips.clone()).unwrap_or_default();
    let want_pool = assignment.map(|a| a.pool.clone());
    ServiceWrites {
        ingress: (current_ingress(svc) != want_ips).then_some(want_ips),
        pool_annotation: (current_pool(svc) != want_pool.as_deref()).then_some(want_pool),
    }
}

fn saturating_i64(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    // The transition time moves only when the status flips, as Kubernetes conventions require.
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: kind.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// A pool's status from its usage (valid pools) or its problems (invalid ones).
pub fn pool_status(
    usage: Option<PoolUsage>,
    problems: &[PoolProblem],
    generation: Option<i64>,
    old: Option<&IPAddressPoolStatus>,
    now: &Time,
) -> IPAddressPoolStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let u = usage.unwrap_or_default();
    let valid = problems.is_empty() && usage.is_some();
    let overlapping: Vec<String> =
        problems.iter().filter(|p| matches!(p, PoolProblem::Overlapping { .. })).map(ToString::to_string).collect();
    let message = if valid {
        "the pool is in use".to_string()
    } else {
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    };
    let reason = match problems.first() {
        None => "Valid",
        Some(PoolProblem::Overlapping { .. }) => "Overlapping",
        Some(PoolProblem::BadSelector { .. }) => "InvalidSelector",
        Some(_) => "InvalidAddresses",
    };
    let total = u.assigned_v4 + u.available_v4 + u.assigned_v6 + u.available_v6;
    let exhausted = valid && total > 0 && u.available_v4 == 0 && u.available_v6 == 0;
    let conditions = vec![
        condition("Valid", valid, reason, message, generation, old_conditions, now),
        condition(
            "Overlapping",
            !overlapping.is_empty(),
            if overlapping.is_empty() { "NoOverlap" } else { "Overlapping" },
            if overlapping.is_empty() { "no address is in another pool".into() } else { overlapping.join("; ") },
            generation,
            old_conditions,
            now,
        ),
        condition(
            "Exhausted",
            exhausted,
            if exhausted { "NoFreeAddress" } else { "FreeAddresses" },
            if exhausted {
                "every address is assigned; Services asking this pool stay pending".into()
            } else {
                format!("{} IPv4 and {} IPv6 addresses free", u.available_v4, u.available_v6)
            },
            generation,
            old_conditions,
            now,
        ),
    ];
    IPAddressPoolStatus {
        assigned_ipv4: saturating_i64(u.assigned_v4),
        assigned_ipv6: saturating_i64(u.assigned_v6),
        available_ipv4: saturating_i64(u.available_v4),
        available_ipv6: saturating_i64(u.available_v6),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::AddrRange;
    use k8s_openapi::jiff::Timestamp;

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("service")
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("time"))
    }

    #[test]
    fn no_writes_when_the_service_already_shows_its_assignment() {
        let s = svc(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations: {metallb.io/ip-allocated-from-pool: p}\nstatus: {loadBalancer: {ingress: [{ip: 10.0.0.1}]}}\n",
        );
        let a = Assignment { pool: "p".into(), ips: vec!["10.0.0.1".parse().expect("ip")] };
        assert!(service_writes(&s, Some(&a)).is_empty());
        let moved = Assignment { pool: "q".into(), ips: vec!["10.0.0.2".parse().expect("ip")] };
        let w = service_writes(&s, Some(&moved));
        assert_eq!(w.ingress, Some(vec!["10.0.0.2".parse().expect("ip")]));
        assert_eq!(w.pool_annotation, Some(Some("q".into())));
        let cleared = service_writes(&s, None);
        assert_eq!((cleared.ingress, cleared.pool_annotation), (Some(vec![]), Some(None)));
    }

    #[test]
    fn pool_status_counts_and_conditions() {
        let usage = PoolUsage { assigned_v4: 3, available_v4: 0, assigned_v6: 0, available_v6: 0 };
        let s = pool_status(Some(usage), &[], Some(2), None, &at(100));
        assert_eq!((s.assigned_ipv4, s.available_ipv4), (3, 0));
        let get = |s: &IPAddressPoolStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned().expect(t);
        assert_eq!(get(&s, "Valid").status, "True");
        assert_eq!(get(&s, "Exhausted").status, "True");
        assert_eq!(get(&s, "Overlapping").status, "False");
        // Same state later: transition times are kept, so the status is equal and nothing is written.
        assert_eq!(pool_status(Some(usage), &[], Some(2), Some(&s), &at(200)), s);
        let freed = PoolUsage { available_v4: 1, assigned_v4: 2, ..usage };
        let s2 = pool_status(Some(freed), &[], Some(2), Some(&s), &at(300));
        assert_eq!(get(&s2, "Exhausted").last_transition_time, at(300));
        assert_eq!(get(&s2, "Valid").last_transition_time, at(100));
    }

    #[test]
    fn overlapping_pool_is_invalid_and_says_with_whom() {
        let r = AddrRange::parse("10.0.0.0/24").expect("range");
        let p = PoolProblem::Overlapping { ours: r, other: "first".into(), theirs: r };
        let s = pool_status(None, &[p], None, None, &at(1));
        let valid = s.conditions.iter().find(|c| c.type_ == "Valid").expect("valid");
        assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", "Overlapping"));
        assert!(valid.message.contains("overlap pool \"first\""), "{}", valid.message);
        assert_eq!(s.available_ipv4, 0);
    }
}

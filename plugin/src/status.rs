//! `status`: per Service address, the Service, its pool, the node announcing it and on which interfaces, and
//! since when, from the `ServiceL2Status` objects the speakers write (docs/design.md §2.4) and the Services.

use crate::table;
use ferrolb_crds::ServiceL2Status;
use ferrolb_crds::service::{current_ingress, current_pool, is_managed};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use std::net::IpAddr;

/// One address as announced from one node (or by nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The address.
    pub ip: IpAddr,
    /// `namespace/name` of the Service.
    pub service: String,
    /// Pool it came from (the Service's `metallb.io/ip-allocated-from-pool`), `-` when not recorded.
    pub pool: String,
    /// The node answering for it, from its ServiceL2Status; `None` when no node reports it.
    pub node: Option<String>,
    /// Interfaces it is answered on.
    pub interfaces: Vec<String>,
    /// When that node started announcing it (the ServiceL2Status' creation).
    pub since: Option<Timestamp>,
}

/// Rows by address, then Service, then node (pure). Every address of a ferrolb Service is listed, announced or
/// not; one row per announcing node (normally one; more while two nodes both report, e.g. during a partition).
pub fn rows(services: &[Service], statuses: &[ServiceL2Status], load_balancer_class: Option<&str>) -> Vec<Row> {
    let mut rows = Vec::new();
    for svc in services.iter().filter(|s| is_managed(s, load_balancer_class)) {
        let (ns, name) =
            (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
        let reports: Vec<&ServiceL2Status> = statuses
            .iter()
            .filter(|st| {
                st.status.as_ref().is_some_and(|s| {
                    s.service_namespace.as_deref() == Some(&ns) && s.service_name.as_deref() == Some(&name)
                })
            })
            .collect();
        for ip in current_ingress(svc) {
            let base = Row {
                ip,
                service: format!("{ns}/{name}"),
                pool: current_pool(svc).unwrap_or("-").to_string(),
                node: None,
                interfaces: Vec::new(),
                since: None,
            };
            // Every address of a Service is answered by one node (docs/design.md §4.3), so its report covers them all.
            if reports.is_empty() {
                rows.push(base);
                continue;
            }
            for st in &reports {
                let s = st.status.as_ref();
                rows.push(Row {
                    node: s.and_then(|s| s.node.clone()),
                    interfaces: s.map(|s| s.interfaces.iter().map(|i| i.name.clone()).collect()).unwrap_or_default(),
                    since: st.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    ..base.clone()
                });
            }
        }
    }
    rows.sort_by(|a, b| (a.ip, &a.service, &a.node).cmp(&(b.ip, &b.service, &b.node)));
    rows
}

/// The table `status` prints, ages relative to `now`.
pub fn render(rows: &[Row], now: Timestamp) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let since = match r.since {
                Some(t) => format!("{t} ({} ago)", table::age(now.as_second() - t.as_second())),
                None => "-".into(),
            };
            let interfaces = if r.interfaces.is_empty() { "-".to_string() } else { r.interfaces.join(",") };
            vec![
                r.ip.to_string(),
                r.service.clone(),
                r.pool.clone(),
                r.node.clone().unwrap_or_else(|| "<none>".into()),
                interfaces,
                since,
            ]
        })
        .collect();
    table::render(&["ADDRESS", "SERVICE", "POOL", "NODE", "INTERFACES", "SINCE"], &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, ips: &[&str], class: Option<&str>) -> Service {
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
                "annotations": {"metallb.io/ip-allocated-from-pool": "lab"}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": class},
            "status": {"loadBalancer": {"ingress": ingress}}}))
        .expect("service")
    }

    fn report(ns: &str, name: &str, node: &str, created: &str) -> ServiceL2Status {
        serde_json::from_value(json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status",
            "metadata": {"name": format!("l2-x-{node}"), "creationTimestamp": created}, "spec": {},
            "status": {"node": node, "serviceName": name, "serviceNamespace": ns,
                "interfaces": [{"name": "eth0"}, {"name": "eth1"}]}}))
        .expect("status")
    }

    #[test]
    fn every_address_is_listed_with_the_node_that_reports_it_or_none() {
        let services = [
            service("kube-system", "dns", &["198.19.0.2"], None),
            service("default", "web", &["198.19.0.1", "2001:db8::1"], None),
            service("default", "theirs", &["198.19.0.9"], Some("other.io/lb")),
        ];
        let statuses = [
            report("kube-system", "dns", "node-2", "2026-03-01T10:00:00Z"),
            report("default", "dns", "node-9", "2026-03-01T10:00:00Z"),
        ];
        let rows = rows(&services, &statuses, None);
        let summary: Vec<(String, &str, Option<&str>)> =
            rows.iter().map(|r| (r.ip.to_string(), r.service.as_str(), r.node.as_deref())).collect();
        assert_eq!(
            summary,
            [
                ("198.19.0.1".to_string(), "default/web", None),
                ("198.19.0.2".to_string(), "kube-system/dns", Some("node-2")),
                ("2001:db8::1".to_string(), "default/web", None),
            ],
            "another class's Service is not listed; a report for a same-named Service elsewhere is not this one's"
        );
        assert_eq!(rows[1].interfaces, ["eth0", "eth1"]);
        let now: Timestamp = "2026-03-01T10:05:30Z".parse().expect("time");
        let text = render(&rows, now);
        let dns = text.lines().find(|l| l.starts_with("198.19.0.2")).expect("dns row");
        assert!(dns.contains("kube-system/dns") && dns.contains("node-2") && dns.contains("eth0,eth1"), "{text}");
        assert!(dns.ends_with("2026-03-01T10:00:00Z (5m30s ago)"), "{dns}");
        assert!(text.lines().any(|l| l.starts_with("198.19.0.1") && l.contains("<none>")), "{text}");
    }
}

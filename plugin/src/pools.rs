//! `pools`: per IPAddressPool, addresses total, in use and free, as the controller leader writes them to the
//! pool's status (docs/design.md §3.11), with its Valid condition.

use crate::table;
use ferrolb_crds::IPAddressPool;

/// One pool's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Pool name.
    pub pool: String,
    /// Usable addresses, both families (saturating: an IPv6 pool can hold more than `i64::MAX`).
    pub total: i64,
    /// Addresses held by Services (a shared address counts once).
    pub in_use: i64,
    /// Addresses free.
    pub free: i64,
    /// `True`, or `False: <reason>: <message>`, or `unknown` before the controller wrote a status.
    pub valid: String,
}

/// Rows by pool name (pure).
pub fn rows(pools: &[IPAddressPool]) -> Vec<Row> {
    let mut rows: Vec<Row> = pools
        .iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let Some(s) = &p.status else {
                return Row { pool: name, total: 0, in_use: 0, free: 0, valid: "unknown".into() };
            };
            let in_use = s.assigned_ipv4.saturating_add(s.assigned_ipv6);
            let free = s.available_ipv4.saturating_add(s.available_ipv6);
            let valid = match s.conditions.iter().find(|c| c.type_ == "Valid") {
                Some(c) if c.status == "True" => "True".to_string(),
                Some(c) => format!("{}: {}: {}", c.status, c.reason, c.message),
                None => "unknown".into(),
            };
            Row { pool: name, total: in_use.saturating_add(free), in_use, free, valid }
        })
        .collect();
    rows.sort_by(|a, b| a.pool.cmp(&b.pool));
    rows
}

/// The table `pools` prints.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r.pool.clone(), r.total.to_string(), r.in_use.to_string(), r.free.to_string(), r.valid.clone()])
        .collect();
    table::render(&["POOL", "TOTAL", "IN USE", "FREE", "VALID"], &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(name: &str, status: serde_json::Value) -> IPAddressPool {
        serde_json::from_value(json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name}, "spec": {"addresses": ["198.19.0.0/24"]}, "status": status}))
        .expect("pool")
    }

    #[test]
    fn counts_add_both_families_and_the_valid_condition_is_quoted() {
        let cond = |status: &str, reason: &str| {
            json!([{"type": "Valid", "status": status, "reason": reason, "message": "overlaps pool lab",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        };
        let lab = pool(
            "lab",
            json!({"assignedIPv4": 3, "availableIPv4": 251, "assignedIPv6": 1,
            "availableIPv6": i64::MAX, "conditions": cond("True", "Valid")}),
        );
        let other = pool(
            "b-other",
            json!({"assignedIPv4": 0, "availableIPv4": 0, "assignedIPv6": 0,
            "availableIPv6": 0, "conditions": cond("False", "Overlapping")}),
        );
        let rows = rows(&[lab, other, pool("new", json!(null))]);
        assert_eq!(rows.iter().map(|r| r.pool.as_str()).collect::<Vec<_>>(), ["b-other", "lab", "new"]);
        assert_eq!((rows[1].total, rows[1].in_use, rows[1].free), (i64::MAX, 4, i64::MAX), "saturates");
        assert_eq!(rows[0].valid, "False: Overlapping: overlaps pool lab");
        assert_eq!(rows[2].valid, "unknown", "no status yet");
        let text = render(&rows[..1]);
        assert!(text.starts_with("POOL      TOTAL   IN USE   FREE   VALID\nb-other   0"), "{text}");
    }
}

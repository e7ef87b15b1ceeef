//! Service annotation keys. MetalLB moved from `metallb.universe.tf/` to `metallb.io/` in v0.14.9 and still
//! reads both; so do we, and the new key wins when both are set.

use std::collections::BTreeMap;

/// The current prefix.
pub const PREFIX: &str = "metallb.io/";
/// The legacy prefix, still common in manifests (the user's among them).
pub const LEGACY_PREFIX: &str = "metallb.universe.tf/";

/// An annotation known under both prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation {
    /// Key under `metallb.io/`.
    pub key: &'static str,
    /// Key under `metallb.universe.tf/`.
    pub legacy_key: &'static str,
}

/// Allocate from this pool (also works when the pool has `autoAssign: false`).
pub const ADDRESS_POOL: Annotation =
    Annotation { key: "metallb.io/address-pool", legacy_key: "metallb.universe.tf/address-pool" };
/// Comma-separated requested addresses, at most one per family.
pub const LOAD_BALANCER_IPS: Annotation =
    Annotation { key: "metallb.io/loadBalancerIPs", legacy_key: "metallb.universe.tf/loadBalancerIPs" };
/// Sharing key: Services with the same key may share an address when their ports do not clash.
pub const ALLOW_SHARED_IP: Annotation =
    Annotation { key: "metallb.io/allow-shared-ip", legacy_key: "metallb.universe.tf/allow-shared-ip" };
/// Written by the controller: the pool the address came from (only the new key is written).
pub const IP_ALLOCATED_FROM_POOL: Annotation =
    Annotation { key: "metallb.io/ip-allocated-from-pool", legacy_key: "metallb.universe.tf/ip-allocated-from-pool" };

/// Every annotation ferrolb reads or writes.
pub const ALL: [Annotation; 4] = [ADDRESS_POOL, LOAD_BALANCER_IPS, ALLOW_SHARED_IP, IP_ALLOCATED_FROM_POOL];

impl Annotation {
    /// The value under the new key, else under the legacy key.
    pub fn get<'a>(&self, annotations: &'a BTreeMap<String, String>) -> Option<&'a str> {
        annotations.get(self.key).or_else(|| annotations.get(self.legacy_key)).map(String::as_str)
    }

    /// Whether the value was found only under the legacy key (worth a deprecation hint to the user).
    pub fn only_legacy(&self, annotations: &BTreeMap<String, String>) -> bool {
        !annotations.contains_key(self.key) && annotations.contains_key(self.legacy_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_prefixes_share_the_suffix() {
        for a in ALL {
            assert_eq!(a.key.strip_prefix(PREFIX), a.legacy_key.strip_prefix(LEGACY_PREFIX));
            assert!(a.key.starts_with(PREFIX) && a.legacy_key.starts_with(LEGACY_PREFIX));
        }
    }

    #[test]
    fn new_key_wins_over_legacy() {
        let mut m = BTreeMap::new();
        m.insert(ALLOW_SHARED_IP.legacy_key.to_string(), "old".to_string());
        assert_eq!(ALLOW_SHARED_IP.get(&m), Some("old"));
        assert!(ALLOW_SHARED_IP.only_legacy(&m));
        m.insert(ALLOW_SHARED_IP.key.to_string(), "new".to_string());
        assert_eq!(ALLOW_SHARED_IP.get(&m), Some("new"));
        assert!(!ALLOW_SHARED_IP.only_legacy(&m));
        assert_eq!(ADDRESS_POOL.get(&m), None);
    }
}

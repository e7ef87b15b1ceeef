//! Why a Service gets no address: one variant per rule, each message says what the user can change.

use crate::keys::{Family, PortKey, ServiceKey};
use std::net::IpAddr;

/// Why a Service gets no address; every message says what the user can change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Both ways of requesting an address are used.
    #[error("both spec.loadBalancerIP and the metallb.io/loadBalancerIPs annotation are set; keep only one")]
    BothRequestStyles,
    /// A requested address does not parse.
    #[error("requested address {value:?} is not an IP address")]
    BadRequestedIp {
        /// As written.
        value: String,
    },
    /// More than one requested address per family.
    #[error("at most one requested address per family may be given, got {requested:?}")]
    TooManyRequested {
        /// What was asked.
        requested: Vec<IpAddr>,
    },
    /// A requested address of a family the Service does not have.
    #[error("requested address {ip} does not match the Service's IP families {families:?}")]
    RequestedFamilyMismatch {
        /// The address.
        ip: IpAddr,
        /// The Service's families.
        families: Vec<Family>,
    },
    /// RequireDualStack on a single-family Service.
    #[error("ipFamilyPolicy is RequireDualStack but the Service has only one IP family (not enough cluster IPs)")]
    NotEnoughFamilies,
    /// RequireDualStack with only one requested address.
    #[error("ipFamilyPolicy is RequireDualStack, so request one IPv4 and one IPv6 address, or none")]
    RequireDualStackNeedsTwo,
    /// A requested address is in no usable pool.
    #[error("requested address {ip} is not in any usable IPAddressPool")]
    RequestedIpNotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// The requested addresses come from different pools.
    #[error("requested addresses must come from one pool, but {a} is in {pool_a:?} and {b} in {pool_b:?}")]
    RequestedIpsInDifferentPools {
        /// First address.
        a: IpAddr,
        /// Its pool.
        pool_a: String,
        /// Second address.
        b: IpAddr,
        /// Its pool.
        pool_b: String,
    },
    /// A requested address outside the pool named by `address-pool`.
    #[error("requested address {ip} is not in IPAddressPool {pool:?} named by the address-pool annotation")]
    RequestedIpNotInNamedPool {
        /// The address.
        ip: IpAddr,
        /// The named pool.
        pool: String,
    },
    /// `address-pool` names no pool.
    #[error("IPAddressPool {pool:?} named by the address-pool annotation does not exist")]
    UnknownPool {
        /// The name.
        pool: String,
    },
    /// `address-pool` names a pool whose configuration is invalid.
    #[error("IPAddressPool {pool:?} named by the address-pool annotation is not usable: {why}")]
    UnusablePool {
        /// The name.
        pool: String,
        /// Its problems.
        why: String,
    },
    /// The pool is being deleted while Services still hold its addresses: they keep them, nobody gets a new one.
    #[error(
        "IPAddressPool {pool:?} is being deleted: it hands out no new address (the Services holding its addresses keep them until they let go)"
    )]
    PoolDeleting {
        /// The name.
        pool: String,
    },
    /// The pool's `serviceAllocation` excludes this Service.
    #[error("IPAddressPool {pool:?} is reserved by its serviceAllocation for other namespaces or Services")]
    PoolNotAllowed {
        /// The pool.
        pool: String,
    },
    /// The address is held by a Service that has no sharing key, or this Service has none.
    #[error(
        "{ip} is already used by {holder}; to share it, both Services need the same metallb.io/allow-shared-ip annotation"
    )]
    NotShared {
        /// The address.
        ip: IpAddr,
        /// A current holder.
        holder: ServiceKey,
    },
    /// Both have sharing keys, but different ones.
    #[error("{ip} is used by {holder} with allow-shared-ip {theirs:?}, which differs from this Service's {ours:?}")]
    SharingKeyMismatch {
        /// The address.
        ip: IpAddr,
        /// A current holder.
        holder: ServiceKey,
        /// Holder's key.
        theirs: String,
        /// Our key.
        ours: String,
    },
    /// externalTrafficPolicy/selector mismatch.
    #[error(
        "{ip} is used by {holder}; a Service with externalTrafficPolicy: Local shares an address only with Local Services that have the same selector"
    )]
    BackendMismatch {
        /// The address.
        ip: IpAddr,
        /// A current holder.
        holder: ServiceKey,
    },
    /// A `(protocol, port)` clash on a shared address.
    #[error("port {port} already used by {holder} on {ip}")]
    PortInUse {
        /// The clashing port.
        port: PortKey,
        /// Who has it.
        holder: ServiceKey,
        /// On which address.
        ip: IpAddr,
    },
    /// The named pool has no free address of a wanted family.
    #[error("no free {family} address left in IPAddressPool {pool:?}")]
    PoolExhausted {
        /// The pool.
        pool: String,
        /// The family missing.
        family: Family,
    },
    /// No pool may serve this Service automatically.
    #[error(
        "no IPAddressPool with autoAssign serves namespace {namespace:?} (pools with a serviceAllocation may be reserved for others)"
    )]
    NoEligiblePool {
        /// The Service's namespace.
        namespace: String,
    },
    /// Every eligible pool is full for the wanted families.
    #[error("no free {families:?} address in any eligible IPAddressPool ({pools:?})")]
    NoFreeAddress {
        /// Pools tried, in order.
        pools: Vec<String>,
        /// Families wanted.
        families: Vec<Family>,
    },
}

impl Refusal {
    /// Every value of [`Self::reason`], so a gauge can show each at 0 before any Service is refused.
    pub const REASONS: [&'static str; 12] = [
        "bad_request",
        "requested_ip_not_in_pool",
        "requested_ips_in_different_pools",
        "unknown_pool",
        "unusable_pool",
        "pool_not_allowed",
        "pool_deleting",
        "address_in_use",
        "port_in_use",
        "pool_exhausted",
        "no_eligible_pool",
        "no_free_address",
    ];

    /// A short label for the metric `ferrolb_pending_services{reason}`: what kind of change would help (the
    /// Service's own request, the pools, or sharing), coarser than the message, so the label set stays small.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BothRequestStyles
            | Self::BadRequestedIp { .. }
            | Self::TooManyRequested { .. }
            | Self::RequestedFamilyMismatch { .. }
            | Self::NotEnoughFamilies
            | Self::RequireDualStackNeedsTwo => "bad_request",
            Self::RequestedIpNotInPool { .. } | Self::RequestedIpNotInNamedPool { .. } => "requested_ip_not_in_pool",
            Self::RequestedIpsInDifferentPools { .. } => "requested_ips_in_different_pools",
            Self::UnknownPool { .. } => "unknown_pool",
            Self::UnusablePool { .. } => "unusable_pool",
            Self::PoolNotAllowed { .. } => "pool_not_allowed",
            Self::PoolDeleting { .. } => "pool_deleting",
            Self::NotShared { .. } | Self::SharingKeyMismatch { .. } | Self::BackendMismatch { .. } => "address_in_use",
            Self::PortInUse { .. } => "port_in_use",
            Self::PoolExhausted { .. } => "pool_exhausted",
            Self::NoEligiblePool { .. } => "no_eligible_pool",
            Self::NoFreeAddress { .. } => "no_free_address",
        }
    }
}

/// Pending Services per reason label (pure): every label of [`Refusal::REASONS`] present, 0 when none.
pub fn pending_by_reason<'a>(reasons: impl IntoIterator<Item = &'a str>) -> std::collections::BTreeMap<&'a str, i64> {
    let mut out: std::collections::BTreeMap<&str, i64> = Refusal::REASONS.iter().map(|r| (*r, 0)).collect();
    for reason in reasons {
        *out.entry(reason).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_label_is_listed_and_pending_services_are_counted_per_label() {
        let ip: IpAddr = "198.19.0.1".parse().expect("ip");
        let holder = ServiceKey::new("default", "a");
        let samples = [
            Refusal::BothRequestStyles,
            Refusal::RequestedIpNotInPool { ip },
            Refusal::RequestedIpNotInNamedPool { ip, pool: "p".into() },
            Refusal::RequestedIpsInDifferentPools { a: ip, pool_a: "p".into(), b: ip, pool_b: "q".into() },
            Refusal::UnknownPool { pool: "p".into() },
            Refusal::UnusablePool { pool: "p".into(), why: "x".into() },
            Refusal::PoolNotAllowed { pool: "p".into() },
            Refusal::PoolDeleting { pool: "p".into() },
            Refusal::NotShared { ip, holder: holder.clone() },
            Refusal::PortInUse { port: PortKey { protocol: "TCP".into(), port: 53 }, holder, ip },
            Refusal::PoolExhausted { pool: "p".into(), family: Family::V4 },
            Refusal::NoEligiblePool { namespace: "default".into() },
            Refusal::NoFreeAddress { pools: vec!["p".into()], families: vec![Family::V4] },
        ];
        for r in &samples {
            assert!(Refusal::REASONS.contains(&r.reason()), "{r:?} has an unlisted label {}", r.reason());
        }
        let labels: std::collections::BTreeSet<&str> = samples.iter().map(Refusal::reason).collect();
        assert_eq!(labels.len(), Refusal::REASONS.len(), "every listed label is reachable");
        let counted = pending_by_reason([samples[1].reason(), samples[2].reason(), samples[10].reason()]);
        assert_eq!(counted["requested_ip_not_in_pool"], 2);
        assert_eq!(counted["pool_exhausted"], 1);
        assert_eq!(counted["port_in_use"], 0, "present at 0, so an alert sees the series");
        assert_eq!(counted.len(), Refusal::REASONS.len());
    }
}

//! Pool protection: an IPAddressPool whose addresses Services hold carries a finalizer, so that deleting it — by
//! mistake, or with its CRD when another chart is uninstalled — waits until no Service holds one of them, as a
//! PersistentVolumeClaim in use waits for its pods (docs/design.md §3.10). Meanwhile the pool hands out nothing
//! new ([`crate::pool::PoolConfig::deleting`]) and its Services keep their addresses. Pure.

use std::net::IpAddr;

/// The finalizer the controller keeps on a pool while Services hold its addresses.
pub const FINALIZER: &str = "ferrolb.io/addresses-in-use";

/// How many holders a Warning names before it counts the rest.
const NAMED: usize = 5;

/// The finalizers a pool should carry, given its current ones: ours while its addresses are `in_use`, not after.
/// `None` when they are right already (nothing to write). A pool being `deleting` gets no finalizer it lacks
/// (the API server refuses new finalizers then): someone removed ours to let it go.
pub fn finalizers(current: &[String], in_use: bool, deleting: bool) -> Option<Vec<String>> {
    let has = current.iter().any(|f| f == FINALIZER);
    match (in_use, has) {
        (true, false) if deleting => None,
        (true, false) => Some(current.iter().cloned().chain([FINALIZER.to_string()]).collect()),
        (false, true) => Some(current.iter().filter(|f| *f != FINALIZER).cloned().collect()),
        _ => None,
    }
}

/// What the Warning on a pool being deleted says: that it stays, and who holds its addresses (sorted, at most
/// five named).
pub fn held_while_deleting(pool: &str, holders: &[(String, Vec<IpAddr>)]) -> String {
    let mut named: Vec<String> = holders
        .iter()
        .take(NAMED)
        .map(|(service, ips)| {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("{service} ({})", ips.join(", "))
        })
        .collect();
    if holders.len() > NAMED {
        named.push(format!("and {} more", holders.len() - NAMED));
    }
    format!(
        "IPAddressPool {pool:?} is being deleted but {} Service(s) hold its addresses: {}. They keep them and are \
         still answered; the pool hands out no new address and goes away once the last one lets go (or remove the \
         finalizer {FINALIZER} to give them up now)",
        holders.len(),
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_is_added_while_in_use_and_removed_after_leaving_others_alone() {
        let other = "example.com/keep".to_string();
        assert_eq!(finalizers(&[], true, false), Some(vec![FINALIZER.to_string()]));
        let both = vec![other.clone(), FINALIZER.to_string()];
        assert_eq!(finalizers(std::slice::from_ref(&other), true, false), Some(both.clone()));
        assert_eq!(finalizers(&both, true, false), None, "already there");
        assert_eq!(finalizers(&both, true, true), None, "kept while deleting");
        assert_eq!(finalizers(&both, false, true), Some(vec![other.clone()]), "let go once nobody holds it");
        assert_eq!(finalizers(&[FINALIZER.to_string()], false, false), Some(vec![]));
        assert_eq!(finalizers(std::slice::from_ref(&other), true, true), None, "removed by hand: not put back");
        assert_eq!(finalizers(&[other], false, false), None, "not ours to remove");
    }

    #[test]
    fn the_warning_names_the_holders_and_counts_the_rest() {
        let ip: IpAddr = "198.19.0.1".parse().expect("ip");
        let holders: Vec<(String, Vec<IpAddr>)> = (0..7).map(|i| (format!("ns/svc-{i}"), vec![ip])).collect();
        let note = held_while_deleting("lab", &holders);
        assert!(note.contains("7 Service(s)") && note.contains("ns/svc-0 (198.19.0.1)"), "{note}");
        assert!(note.contains("ns/svc-4") && !note.contains("ns/svc-5") && note.contains("and 2 more"), "{note}");
    }
}

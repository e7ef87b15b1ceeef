//! Property tests of the election: every speaker with the same view picks the same owner, there is exactly one
//! owner per address, a node leaving moves only its own addresses, a node joining takes only addresses to
//! itself, and addresses spread over the nodes.

use ferrolb_speaker::model::election::{owner, score};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn names() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-z]{1,3}-[0-9]{1,2}", 1..12).prop_map(|s| s.into_iter().collect())
}

fn addresses() -> impl Strategy<Value = Vec<IpAddr>> {
    proptest::collection::vec(any::<[u8; 4]>().prop_map(IpAddr::from), 1..40)
}

fn owners<'a>(ips: &[IpAddr], nodes: &'a [String]) -> BTreeMap<IpAddr, &'a str> {
    ips.iter().filter_map(|ip| owner(*ip, nodes.iter().map(String::as_str)).map(|o| (*ip, o))).collect()
}

proptest! {
    #[test]
    fn order_of_the_view_does_not_matter(nodes in names(), ips in addresses(), seed in any::<u64>()) {
        let mut shuffled = nodes.clone();
        // A deterministic shuffle: each speaker may list nodes in any order.
        shuffled.sort_by_key(|n| score(n, IpAddr::from(seed.to_be_bytes()[..4].try_into().unwrap_or([0; 4]))));
        prop_assert_eq!(owners(&ips, &nodes), owners(&ips, &shuffled));
    }

    #[test]
    fn exactly_one_owner_and_it_is_a_candidate(nodes in names(), ips in addresses()) {
        let o = owners(&ips, &nodes);
        prop_assert_eq!(o.len(), ips.iter().collect::<std::collections::BTreeSet<_>>().len());
        for owner in o.values() {
            prop_assert!(nodes.iter().any(|n| n == owner));
        }
        prop_assert_eq!(owner(ips[0], std::iter::empty()), None);
    }

    #[test]
    fn a_leaving_node_moves_only_its_addresses(nodes in names(), ips in addresses(), leaver in any::<prop::sample::Index>()) {
        let before = owners(&ips, &nodes);
        let gone = leaver.get(&nodes).clone();
        let rest: Vec<String> = nodes.iter().filter(|n| **n != gone).cloned().collect();
        let after = owners(&ips, &rest);
        for (ip, was) in &before {
            if *was != gone {
                prop_assert_eq!(after.get(ip), Some(was), "{} moved although its owner stayed", ip);
            }
        }
    }

    #[test]
    fn a_joining_node_takes_addresses_only_to_itself(nodes in names(), ips in addresses(), newcomer in "[A-Z]{4}") {
        let before = owners(&ips, &nodes);
        let mut more = nodes.clone();
        more.push(newcomer.clone());
        for (ip, now) in owners(&ips, &more) {
            prop_assert!(now == newcomer || before.get(&ip) == Some(&now));
        }
    }
}

#[test]
fn addresses_spread_over_the_nodes() {
    let nodes: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
    let ips: Vec<IpAddr> = (0..3000u32).map(|i| IpAddr::from((0xC613_0000u32 + i).to_be_bytes())).collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for o in owners(&ips, &nodes).values() {
        *count.entry(o).or_default() += 1;
    }
    for (node, n) in &count {
        assert!((900..=1100).contains(n), "{node} owns {n} of 3000 addresses: {count:?}");
    }
}

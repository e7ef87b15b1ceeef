//! Solicited-node multicast groups joined through the speaker's own code on a real (namespaced) interface: more
//! groups than one socket can hold. Needs root (a network namespace), so it runs with the lab suites in
//! `make test`, not in `make check`.

use ferrolb_speaker::datapath::groups::Groups;
use ferrolb_speaker::wire::ndp;
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

const INSIDE: &str = "FERROLB_TEST_IN_NETNS";

/// Solicited-node groups of `ip` joined on `interface`, read from the kernel (`/proc/net/igmp6`).
fn kernel_groups(interface: &str) -> BTreeSet<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/igmp6").expect("igmp6");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&interface)).then(|| u128::from_str_radix(f.get(2)?, 16).ok()).flatten()
        })
        .map(Ipv6Addr::from)
        .filter(|g| g.segments()[..6] == [0xff02, 0, 0, 0, 0, 1])
        .collect()
}

/// More groups than one socket's option memory holds (2,340 here), in a network namespace of its own (the
/// test re-runs itself under `unshare --net`, so no interface of the machine is touched; needs root, as the
/// lab does).
#[test]
fn groups_beyond_one_sockets_memory_are_all_joined_and_left_again() {
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().expect("test binary");
        let name = "groups_beyond_one_sockets_memory_are_all_joined_and_left_again";
        // Captured, so the inner run's "test result" line is not counted as a second test.
        let inner = std::process::Command::new("unshare")
            .arg("--net")
            .arg(exe)
            .args(["--exact", name, "--nocapture"])
            .env(INSIDE, "1")
            .output()
            .expect("unshare");
        assert!(
            inner.status.success(),
            "the test failed inside its network namespace:\n{}{}",
            String::from_utf8_lossy(&inner.stdout),
            String::from_utf8_lossy(&inner.stderr)
        );
        return;
    }
    for args in [&["link", "add", "va", "type", "veth", "peer", "name", "vb"][..], &["link", "set", "va", "up"]] {
        let ok = std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    }
    // Not /sys/class/net: sysfs shows the namespace it was mounted in, not this one.
    let index = pnet_datalink::interfaces().into_iter().find(|i| i.name == "va").expect("va").index;
    let own = kernel_groups("va");
    let mut groups = Groups::new(index);
    let addresses: BTreeSet<Ipv6Addr> =
        (1..=3000u128).map(|i| Ipv6Addr::from(0x2001_0db8_0019_0000_0000_0000_0000_0000 | i)).collect();
    let failed = groups.set(&addresses);
    assert!(failed.is_empty(), "{} joins failed, first {:?}", failed.len(), failed.first());
    let want: BTreeSet<Ipv6Addr> = addresses.iter().map(|ip| ndp::solicited_node(*ip)).collect();
    assert_eq!(kernel_groups("va").difference(&own).count(), want.difference(&own).count());
    let few: BTreeSet<Ipv6Addr> = addresses.iter().take(10).copied().collect();
    assert!(groups.set(&few).is_empty());
    let left: BTreeSet<Ipv6Addr> = kernel_groups("va").difference(&own).copied().collect();
    let few_groups: BTreeSet<Ipv6Addr> = few.iter().map(|ip| ndp::solicited_node(*ip)).collect();
    assert_eq!(left, few_groups.difference(&own).copied().collect(), "the rest were left");
}

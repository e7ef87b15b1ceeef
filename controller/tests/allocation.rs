//! One test per allocation rule of docs/design.md §3, plus the user's seed scenario at API level.

use ferrolb_controller::service::ServiceIntent;
use ferrolb_controller::{Allocator, Family, PoolConfig, PortKey, Refusal, ServiceKey};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, ServiceAllocation};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn spec(addresses: &[&str]) -> IPAddressPoolSpec {
    IPAddressPoolSpec {
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        auto_assign: Some(true),
        avoid_buggy_ips: false,
        service_allocation: None,
    }
}

fn pool(name: &str, spec: IPAddressPoolSpec) -> PoolConfig {
    PoolConfig::from_spec(name, &spec).expect("valid test pool")
}

fn allocator(pools: Vec<PoolConfig>) -> Allocator {
    let mut a = Allocator::new();
    a.set_pools(pools, BTreeMap::new());
    a
}

fn svc(name: &str, ports: &[i32]) -> ServiceIntent {
    ServiceIntent::simple("default", name, ports)
}

fn shared(name: &str, key: &str, ports: &[(&str, i32)]) -> ServiceIntent {
    let mut s = svc(name, &[]);
    s.sharing_key = Some(key.to_string());
    s.ports = ports.iter().map(|(p, n)| PortKey { protocol: p.to_string(), port: *n }).collect();
    s
}

fn got(a: &mut Allocator, s: &ServiceIntent) -> Vec<IpAddr> {
    a.allocate(s).unwrap_or_else(|r| panic!("{} refused: {r}", s.key)).assignment.ips
}

// --- the user's scenario, manifests unchanged ---------------------------------------------------------------

fn seed(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seed_intents(name: &str) -> Vec<ServiceIntent> {
    seed(name)
        .split("\n---\n")
        .map(|doc| {
            let svc: Service = serde_yaml::from_str(doc).expect("seed Service parses");
            ServiceIntent::from_service(&svc, &BTreeMap::new()).expect("seed Service is valid")
        })
        .collect()
}

fn seed_allocator() -> Allocator {
    let p: IPAddressPool = serde_yaml::from_str(&seed("ipaddresspool.yaml")).expect("seed pool");
    allocator(vec![pool("default", p.spec)])
}

#[test]
fn seed_web_then_dns_get_the_first_two_addresses() {
    let mut a = seed_allocator();
    let web = &seed_intents("web-svc-lb.yaml")[0];
    let dns = &seed_intents("dns-svc-lb.yaml")[0];
    assert_eq!(got(&mut a, web), [ip("172.17.255.1")]);
    assert_eq!(got(&mut a, dns), [ip("172.17.255.2")], "one Service with TCP/53 and UDP/53 needs one address");
    assert_eq!(a.assignment(&dns.key).map(|x| x.pool.as_str()), Some("default"));
}

#[test]
fn seed_shared_ip_services_share_dot_10_and_a_clashing_third_is_refused() {
    let mut a = seed_allocator();
    let [tcp, udp] = <[ServiceIntent; 2]>::try_from(seed_intents("shared-ip.yaml")).expect("two Services");
    assert_eq!(got(&mut a, &tcp), [ip("172.17.255.10")]);
    assert_eq!(got(&mut a, &udp), [ip("172.17.255.10")]);
    let mut third = tcp.clone();
    third.key = ServiceKey::new("kube-system", "dns-svc-tcp-2");
    let refusal = a.allocate(&third).expect_err("TCP/53 clashes");
    assert_eq!(refusal.to_string(), "port TCP/53 already used by kube-system/dns-svc-tcp on 172.17.255.10");
    assert!(a.assignment(&third.key).is_none());
    assert_eq!(a.holders(ip("172.17.255.10")).count(), 2, "the two sharing Services are undisturbed");
    assert_eq!(a.pool_usage("default").map(|u| (u.assigned_v4, u.available_v4)), Some((1, 254)));
}

// --- 1. requested addresses --------------------------------------------------------------------------------

#[test]
fn requested_address_is_given_and_must_lie_in_a_pool() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/24"]))]);
    let mut s = svc("s", &[80]);
    s.requested = vec![ip("10.0.0.77")];
    assert_eq!(got(&mut a, &s), [ip("10.0.0.77")]);
    let mut out = svc("out", &[80]);
    out.requested = vec![ip("192.0.2.1")];
    assert_eq!(a.allocate(&out), Err(Refusal::RequestedIpNotInPool { ip: ip("192.0.2.1") }));
}

#[test]
fn requested_address_may_come_from_a_pool_without_auto_assign() {
    let mut manual = spec(&["10.9.0.0/30"]);
    manual.auto_assign = Some(false);
    let mut a = allocator(vec![pool("manual", manual)]);
    let mut s = svc("s", &[80]);
    assert!(matches!(a.allocate(&s), Err(Refusal::NoEligiblePool { .. })), "never picked automatically");
    s.requested = vec![ip("10.9.0.2")];
    assert_eq!(got(&mut a, &s), [ip("10.9.0.2")]);
}

#[test]
fn requested_address_must_match_the_named_pool() {
    let mut a = allocator(vec![pool("a", spec(&["10.0.0.0/30"])), pool("b", spec(&["10.0.1.0/30"]))]);
    let mut s = svc("s", &[80]);
    s.requested = vec![ip("10.0.0.1")];
    s.pool = Some("b".into());
    assert_eq!(a.allocate(&s), Err(Refusal::RequestedIpNotInNamedPool { ip: ip("10.0.0.1"), pool: "b".into() }));
}

#[test]
fn requested_address_in_use_without_sharing_is_refused_with_the_holder() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let first = svc("first", &[80]);
    assert_eq!(got(&mut a, &first), [ip("10.0.0.0")]);
    let mut second = svc("second", &[443]);
    second.requested = vec![ip("10.0.0.0")];
    let r = a.allocate(&second).expect_err("not shared");
    assert_eq!(
        r.to_string(),
        "10.0.0.0 is already used by default/first; to share it, both Services need the same metallb.io/allow-shared-ip annotation"
    );
}

// --- 2. the address-pool annotation ------------------------------------------------------------------------

#[test]
fn named_pool_is_used_even_without_auto_assign_and_unknown_names_are_explained() {
    let mut manual = spec(&["10.9.0.0/31"]);
    manual.auto_assign = Some(false);
    let mut a = allocator(vec![pool("auto", spec(&["10.0.0.0/24"])), pool("manual", manual)]);
    a.set_pools(
        vec![
            pool("auto", spec(&["10.0.0.0/24"])),
            pool("manual", {
                let mut m = spec(&["10.9.0.0/31"]);
                m.auto_assign = Some(false);
                m
            }),
        ],
        BTreeMap::from([("broken".to_string(), "address \"x\": not a valid CIDR".to_string())]),
    );
    let mut s = svc("s", &[80]);
    s.pool = Some("manual".into());
    assert_eq!(got(&mut a, &s), [ip("10.9.0.0")]);
    s.pool = Some("nope".into());
    assert_eq!(a.allocate(&s), Err(Refusal::UnknownPool { pool: "nope".into() }));
    s.pool = Some("broken".into());
    let r = a.allocate(&s).expect_err("invalid pool");
    assert!(r.to_string().contains("is not usable: address \"x\""), "{r}");
    let mut t = svc("t", &[80]);
    t.pool = Some("manual".into());
    assert_eq!(got(&mut a, &t), [ip("10.9.0.0")], "freed when s moved away");
    let mut u = svc("u", &[80]);
    u.pool = Some("manual".into());
    assert_eq!(got(&mut a, &u), [ip("10.9.0.1")]);
    let mut v = svc("v", &[80]);
    v.pool = Some("manual".into());
    assert_eq!(a.allocate(&v), Err(Refusal::PoolExhausted { pool: "manual".into(), family: Family::V4 }));
}

// --- 3. serviceAllocation ----------------------------------------------------------------------------------

fn pinned(addresses: &[&str], priority: Option<i32>, namespaces: &[&str]) -> IPAddressPoolSpec {
    let mut s = spec(addresses);
    s.service_allocation = Some(ServiceAllocation {
        priority,
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        ..ServiceAllocation::default()
    });
    s
}

#[test]
fn pinned_pools_go_by_priority_with_zero_last_then_general_pools() {
    let mut a = allocator(vec![
        pool("general", spec(&["10.0.0.0/24"])),
        pool("zero", pinned(&["10.1.0.0/31"], Some(0), &["team"])),
        pool("ten", pinned(&["10.2.0.0/31"], Some(10), &["team"])),
        pool("five", pinned(&["10.3.0.0/31"], Some(5), &["team"])),
    ]);
    let team = |n: &str| ServiceIntent::simple("team", n, &[80]);
    let order: Vec<IpAddr> = (0..7).map(|i| got(&mut a, &team(&format!("s{i}")))[0]).collect();
    let expect = ["10.3.0.0", "10.3.0.1", "10.2.0.0", "10.2.0.1", "10.1.0.0", "10.1.0.1", "10.0.0.0"];
    assert_eq!(order, expect.map(ip));
    assert_eq!(
        got(&mut a, &svc("other-ns", &[80])),
        [ip("10.0.0.1")],
        "pinned pools are reserved for their namespaces"
    );
}

#[test]
fn namespace_and_service_selectors_choose_who_may_use_a_pinned_pool() {
    let mut by_label = spec(&["10.5.0.0/30"]);
    by_label.service_allocation = Some(ServiceAllocation {
        priority: Some(1),
        namespace_selectors: vec![LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".to_string(), "prod".to_string())])),
            ..LabelSelector::default()
        }],
        service_selectors: vec![LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..LabelSelector::default()
        }],
        ..ServiceAllocation::default()
    });
    let mut a = allocator(vec![pool("prod-web", by_label), pool("general", spec(&["10.0.0.0/24"]))]);
    let mut s = ServiceIntent::simple("shop", "web", &[80]);
    s.namespace_labels.insert("tier".into(), "prod".into());
    s.labels.insert("app".into(), "web".into());
    assert_eq!(got(&mut a, &s), [ip("10.5.0.0")]);
    let mut db = s.clone();
    db.key = ServiceKey::new("shop", "db");
    db.labels.insert("app".into(), "db".into());
    assert_eq!(got(&mut a, &db), [ip("10.0.0.0")], "service selector does not match");
    let mut dev = s.clone();
    dev.key = ServiceKey::new("dev", "web");
    dev.namespace_labels.insert("tier".into(), "dev".into());
    assert_eq!(got(&mut a, &dev), [ip("10.0.0.1")], "namespace selector does not match");
    dev.pool = Some("prod-web".into());
    assert_eq!(a.allocate(&dev), Err(Refusal::PoolNotAllowed { pool: "prod-web".into() }));
}

/// MetalLB's e2e cases "with namespace and namespace labels", "with service label" and "with namespace and
/// service label": two one-address pools chosen by different criteria at priorities 10 and 20, and a third
/// without priority; three Services take the priority-10 pool, then the priority-20 one, then the third.
#[test]
fn pools_chosen_by_namespace_name_labels_or_service_labels_rank_by_priority_alone() {
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
        ..LabelSelector::default()
    };
    let by = |address: &str, priority: Option<i32>, allocation: ServiceAllocation| {
        let mut s = spec(&[address]);
        s.service_allocation = Some(ServiceAllocation { priority, ..allocation });
        s
    };
    let in_ns = || ServiceAllocation { namespaces: vec!["e2e".into()], ..ServiceAllocation::default() };
    let ns_labelled =
        || ServiceAllocation { namespace_selectors: vec![selector("foo1", "bar1")], ..ServiceAllocation::default() };
    let svc_labelled =
        || ServiceAllocation { service_selectors: vec![selector("test", "e2e")], ..ServiceAllocation::default() };
    let user = |name: &str| {
        let mut s = ServiceIntent::simple("e2e", name, &[80]);
        s.namespace_labels.insert("foo1".into(), "bar1".into());
        s.labels.insert("test".into(), "e2e".into());
        s
    };
    let cases = [
        (
            "namespace (20) and namespace labels (10), then a general pool",
            vec![
                pool("ns-20", by("10.5.0.0/32", Some(20), in_ns())),
                pool("ns-label-10", by("10.10.0.0/32", Some(10), ns_labelled())),
                pool("general", spec(&["10.20.0.0/32"])),
            ],
        ),
        (
            "service labels (20 and 10), then a namespace pool without priority",
            vec![
                pool("svc-label-20", by("10.5.0.0/32", Some(20), svc_labelled())),
                pool("svc-label-10", by("10.10.0.0/32", Some(10), svc_labelled())),
                pool("ns-no-priority", by("10.20.0.0/32", None, in_ns())),
            ],
        ),
        (
            "namespace (20) and service labels (10), then a namespace pool without priority",
            vec![
                pool("ns-20", by("10.5.0.0/32", Some(20), in_ns())),
                pool("svc-label-10", by("10.10.0.0/32", Some(10), svc_labelled())),
                pool("ns-no-priority", by("10.20.0.0/32", None, in_ns())),
            ],
        ),
    ];
    for (what, pools) in cases {
        let mut a = allocator(pools);
        let order: Vec<IpAddr> = (1..=3).map(|i| got(&mut a, &user(&format!("svc{i}")))[0]).collect();
        assert_eq!(order, ["10.10.0.0", "10.5.0.0", "10.20.0.0"].map(ip), "{what}");
    }
}

// --- 4. autoAssign pools in stable order ---------------------------------------------------------------------

#[test]
fn auto_assign_pools_are_taken_by_name_and_non_auto_pools_skipped() {
    let mut off = spec(&["10.0.0.0/30"]);
    off.auto_assign = Some(false);
    let mut a =
        allocator(vec![pool("b", spec(&["10.2.0.0/31"])), pool("a-off", off), pool("c", spec(&["10.3.0.0/31"]))]);
    let ips: Vec<IpAddr> = (0..4).map(|i| got(&mut a, &svc(&format!("s{i}"), &[80]))[0]).collect();
    assert_eq!(ips, ["10.2.0.0", "10.2.0.1", "10.3.0.0", "10.3.0.1"].map(ip));
    let r = a.allocate(&svc("s4", &[80])).expect_err("full");
    assert_eq!(r, Refusal::NoFreeAddress { pools: vec!["b".into(), "c".into()], families: vec![Family::V4] });
    assert!(r.to_string().contains("no free [V4] address"), "{r}");
}

// --- 5. inside a pool: lowest free, or lowest shareable -----------------------------------------------------

#[test]
fn lowest_free_address_and_reuse_after_release() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.10-10.0.0.12", "10.0.0.1-10.0.0.1"]))]);
    let ips: Vec<IpAddr> = ["a", "b", "c", "d"].iter().map(|n| got(&mut a, &svc(n, &[80]))[0]).collect();
    assert_eq!(ips, ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.1"].map(ip), "ranges in listed order");
    assert_eq!(a.release(&ServiceKey::new("default", "b")).map(|x| x.ips), Some(vec![ip("10.0.0.11")]));
    assert_eq!(got(&mut a, &svc("e", &[80])), [ip("10.0.0.11")]);
}

#[test]
fn a_service_that_may_share_takes_the_lowest_shareable_address() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/29"]))]);
    assert_eq!(got(&mut a, &svc("plain", &[80])), [ip("10.0.0.0")]);
    assert_eq!(got(&mut a, &shared("dns-tcp", "k", &[("TCP", 53)])), [ip("10.0.0.1")]);
    assert_eq!(got(&mut a, &svc("plain2", &[80])), [ip("10.0.0.2")]);
    assert_eq!(got(&mut a, &shared("dns-udp", "k", &[("UDP", 53)])), [ip("10.0.0.1")], "shares rather than takes .3");
    assert_eq!(got(&mut a, &shared("dns-tcp-2", "k", &[("TCP", 53)])), [ip("10.0.0.3")], "port clash: next free");
    assert_eq!(got(&mut a, &shared("other-key", "j", &[("TCP", 8080)])), [ip("10.0.0.4")]);
}

#[test]
fn avoid_buggy_ips_never_hands_out_dot_zero_or_dot_255() {
    let mut s = spec(&["10.0.0.254-10.0.1.1"]);
    s.avoid_buggy_ips = true;
    let mut a = allocator(vec![pool("p", s)]);
    assert_eq!(got(&mut a, &svc("a", &[80])), [ip("10.0.0.254")]);
    assert_eq!(got(&mut a, &svc("b", &[80])), [ip("10.0.1.1")]);
    assert!(a.allocate(&svc("c", &[80])).is_err());
    let mut req = svc("req", &[80]);
    req.requested = vec![ip("10.0.1.0")];
    assert_eq!(a.allocate(&req), Err(Refusal::RequestedIpNotInPool { ip: ip("10.0.1.0") }));
}

// --- sharing rules ------------------------------------------------------------------------------------------

#[test]
fn sharing_needs_the_same_non_empty_key() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let mut x = shared("x", "one", &[("TCP", 80)]);
    x.requested = vec![ip("10.0.0.1")];
    got(&mut a, &x);
    let mut y = shared("y", "two", &[("TCP", 81)]);
    y.requested = vec![ip("10.0.0.1")];
    let r = a.allocate(&y).expect_err("different keys");
    assert!(matches!(r, Refusal::SharingKeyMismatch { .. }), "{r}");
    y.sharing_key = None;
    assert!(matches!(a.allocate(&y), Err(Refusal::NotShared { .. })));
    y.sharing_key = Some("one".into());
    assert_eq!(got(&mut a, &y), [ip("10.0.0.1")]);
}

#[test]
fn local_services_share_only_with_local_services_of_the_same_selector() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let mut local = shared("local", "k", &[("TCP", 80)]);
    local.backend_key = "app=web".into();
    local.requested = vec![ip("10.0.0.2")];
    got(&mut a, &local);
    let mut cluster = shared("cluster", "k", &[("TCP", 81)]);
    cluster.requested = vec![ip("10.0.0.2")];
    assert!(matches!(a.allocate(&cluster), Err(Refusal::BackendMismatch { .. })), "Local never shares with Cluster");
    let mut other_sel = cluster.clone();
    other_sel.backend_key = "app=db".into();
    assert!(matches!(a.allocate(&other_sel), Err(Refusal::BackendMismatch { .. })));
    let mut same = cluster.clone();
    same.backend_key = "app=web".into();
    assert_eq!(got(&mut a, &same), [ip("10.0.0.2")]);
}

#[test]
fn a_sole_holder_may_change_its_sharing_key_and_ports() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let mut s = shared("s", "old", &[("TCP", 80)]);
    let before = got(&mut a, &s);
    s.sharing_key = Some("new".into());
    s.ports.insert(PortKey { protocol: "TCP".into(), port: 443 });
    let outcome = a.allocate(&s).expect("still valid");
    assert_eq!((outcome.assignment.ips, outcome.changed), (before, false));
    assert!(outcome.sharing_changed, "new terms: a refused sharer must be reconsidered");
    assert!(!a.allocate(&s).expect("same again").sharing_changed, "the same terms again change nothing");
}

/// MetalLB's "reconsider sharing" case: a Service refused because the holder of its requested address uses
/// another key fits once the holder takes its key; the holder's outcome says so, which is what makes the
/// controller retry refused Services although no address was freed.
#[test]
fn a_holder_changing_its_terms_says_so_and_the_refused_sharer_then_fits() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let mut holder = shared("holder", "one", &[("TCP", 80)]);
    holder.requested = vec![ip("10.0.0.1")];
    assert!(!a.allocate(&holder).expect("first").sharing_changed, "a first allocation changes no terms");
    let mut sharer = shared("sharer", "two", &[("UDP", 53)]);
    sharer.requested = vec![ip("10.0.0.1")];
    assert!(matches!(a.allocate(&sharer), Err(Refusal::SharingKeyMismatch { .. })));
    holder.sharing_key = Some("two".into());
    let outcome = a.allocate(&holder).expect("the holder keeps its address");
    assert_eq!((outcome.assignment.ips.as_slice(), outcome.changed), ([ip("10.0.0.1")].as_slice(), false));
    assert!(outcome.sharing_changed);
    assert_eq!(got(&mut a, &sharer), [ip("10.0.0.1")], "the retried sharer gets the address");
}

#[test]
fn a_port_clash_after_an_update_moves_only_the_updated_service() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"]))]);
    let x = shared("x", "k", &[("TCP", 80)]);
    let mut y = shared("y", "k", &[("TCP", 81)]);
    assert_eq!(got(&mut a, &x), got(&mut a, &y));
    y.ports.insert(PortKey { protocol: "TCP".into(), port: 80 });
    let outcome = a.allocate(&y).expect("moves to a free address");
    assert_eq!((outcome.assignment.ips, outcome.changed), (vec![ip("10.0.0.1")], true));
    assert_eq!(a.assignment(&x.key).map(|x| x.ips.clone()), Some(vec![ip("10.0.0.0")]));
}

// --- restart, pool changes, release ------------------------------------------------------------------------

#[test]
fn restoring_before_allocating_keeps_every_address() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/29"]))]);
    let mut old = svc("old", &[80]);
    a.restore(&old, &[ip("10.0.0.5")]).expect("restores");
    assert_eq!(got(&mut a, &svc("new", &[80])), [ip("10.0.0.0")]);
    let mut grabbing = svc("grabbing", &[81]);
    grabbing.requested = vec![ip("10.0.0.5")];
    assert!(matches!(a.allocate(&grabbing), Err(Refusal::NotShared { .. })));
    let outcome = a.allocate(&old).expect("keeps");
    assert_eq!((outcome.assignment.ips, outcome.changed), (vec![ip("10.0.0.5")], false));
    old.requested = vec![ip("10.0.0.6")];
    let outcome = a.allocate(&old).expect("moves to the newly requested address");
    assert_eq!((outcome.assignment.ips, outcome.changed), (vec![ip("10.0.0.6")], true));
}

#[test]
fn restore_refuses_an_address_outside_every_pool() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/29"]))]);
    let s = svc("s", &[80]);
    assert_eq!(a.restore(&s, &[ip("10.9.9.9")]), Err(Refusal::RequestedIpNotInPool { ip: ip("10.9.9.9") }));
    assert_eq!(got(&mut a, &s), [ip("10.0.0.0")], "then allocated anew");
}

#[test]
fn shrinking_or_deleting_a_pool_reassigns_its_services() {
    let mut a = allocator(vec![pool("a", spec(&["10.0.0.0/30"])), pool("b", spec(&["10.1.0.0/30"]))]);
    let names = ["s0", "s1", "s2", "s3", "s4"];
    for n in names {
        got(&mut a, &svc(n, &[80]));
    }
    assert_eq!(a.assignment(&ServiceKey::new("default", "s4")).map(|x| x.pool.as_str()), Some("b"));
    let dropped =
        a.set_pools(vec![pool("a", spec(&["10.0.0.0/31"])), pool("b", spec(&["10.1.0.0/30"]))], BTreeMap::new());
    let dropped: Vec<String> = dropped.iter().map(|(k, _)| k.name.to_string()).collect();
    assert_eq!(dropped, ["s2", "s3"]);
    for n in names {
        got(&mut a, &svc(n, &[80]));
    }
    assert_eq!(a.assignment(&ServiceKey::new("default", "s2")).map(|x| x.pool.as_str()), Some("b"));
    let dropped = a.set_pools(vec![pool("b", spec(&["10.1.0.0/30"]))], BTreeMap::new());
    assert_eq!(dropped.len(), 2, "pool a deleted");
    let refused: Vec<_> = names.iter().filter(|n| a.allocate(&svc(n, &[80])).is_err()).collect();
    assert_eq!(refused.len(), 1, "four addresses for five Services");
    assert_eq!(a.pool_usage("b").map(|u| (u.assigned_v4, u.available_v4)), Some((4, 0)));
    assert_eq!(a.pool_usage("a"), None);
}

#[test]
fn narrowing_service_allocation_moves_services_it_no_longer_allows() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/30"])), pool("q", spec(&["10.1.0.0/30"]))]);
    let s = ServiceIntent::simple("team", "s", &[80]);
    assert_eq!(got(&mut a, &s), [ip("10.0.0.0")]);
    a.set_pools(
        vec![pool("p", pinned(&["10.0.0.0/30"], Some(1), &["other"])), pool("q", spec(&["10.1.0.0/30"]))],
        BTreeMap::new(),
    );
    let outcome = a.allocate(&s).expect("moves");
    assert_eq!((outcome.assignment.ips, outcome.changed), (vec![ip("10.1.0.0")], true));
}

// --- dual-stack --------------------------------------------------------------------------------------------

fn stack(name: &str, families: &[Family], require: bool) -> ServiceIntent {
    let mut s = svc(name, &[80]);
    s.families = families.to_vec();
    s.require_all_families = require;
    s
}

#[test]
fn dual_stack_policies() {
    let dual = || pool("dual", spec(&["10.0.0.0/30", "fc00::/126"]));
    let v4 = || pool("v4", spec(&["10.1.0.0/30"]));
    let mut a = allocator(vec![v4(), dual()]);
    assert_eq!(got(&mut a, &stack("single6", &[Family::V6], false)), [ip("fc00::")]);
    assert_eq!(
        got(&mut a, &stack("prefer", &[Family::V6, Family::V4], false)),
        [ip("10.0.0.0"), ip("fc00::1")],
        "a pool with both families wins; IPv4 is listed first"
    );
    assert_eq!(got(&mut a, &stack("require", &[Family::V4, Family::V6], true)).len(), 2);

    let mut only_v4 = allocator(vec![v4()]);
    assert_eq!(got(&mut only_v4, &stack("prefer", &[Family::V4, Family::V6], false)), [ip("10.1.0.0")]);
    let r = only_v4.allocate(&stack("require", &[Family::V4, Family::V6], true)).expect_err("no IPv6 anywhere");
    assert!(matches!(r, Refusal::NoFreeAddress { .. }), "{r}");

    // PreferDualStack gets the missing family later, from the same pool, without moving the first one.
    only_v4.set_pools(vec![pool("v4", spec(&["10.1.0.0/30", "fc00:1::/126"]))], BTreeMap::new());
    let outcome = only_v4.allocate(&stack("prefer", &[Family::V4, Family::V6], false)).expect("extended");
    assert_eq!(outcome.assignment.ips, [ip("10.1.0.0"), ip("fc00:1::")]);
    assert!(outcome.changed);
}

#[test]
fn pool_usage_counts_shared_addresses_once() {
    let mut a = allocator(vec![pool("p", spec(&["10.0.0.0/28", "fc00::/120"]))]);
    got(&mut a, &shared("a", "k", &[("TCP", 1)]));
    got(&mut a, &shared("b", "k", &[("TCP", 2)]));
    got(&mut a, &stack("v6", &[Family::V6], false));
    let u = a.pool_usage("p").expect("pool");
    assert_eq!((u.assigned_v4, u.available_v4, u.assigned_v6, u.available_v6), (1, 15, 1, 255));
}

/// A pool being deleted while in use (docs/design.md §3.10): its Services keep their addresses, across a pool
/// change and a restart, and nobody gets a new one from it — automatically, by name, by requested address or by
/// sharing; another pool still serves.
#[test]
fn a_pool_being_deleted_keeps_its_holders_and_hands_out_nothing() {
    let mut a = allocator(vec![pool("old", spec(&["198.19.0.1-198.19.0.9"]))]);
    let holder = shared("holder", "k", &[("TCP", 80)]);
    assert_eq!(got(&mut a, &holder), [ip("198.19.0.1")]);
    let deleting = PoolConfig { deleting: true, ..pool("old", spec(&["198.19.0.1-198.19.0.9"])) };
    let lost = a.set_pools(vec![deleting.clone(), pool("new", spec(&["198.19.1.1-198.19.1.9"]))], BTreeMap::new());
    assert!(lost.is_empty(), "nothing taken away: {lost:?}");
    assert_eq!(got(&mut a, &holder), [ip("198.19.0.1")], "the holder keeps its address on reconcile");
    assert_eq!(got(&mut a, &svc("fresh", &[80])), [ip("198.19.1.1")], "new Services go to the other pool");
    let mut named = svc("named", &[80]);
    named.pool = Some("old".into());
    assert_eq!(a.allocate(&named).err(), Some(Refusal::PoolDeleting { pool: "old".into() }));
    let mut requested = svc("requested", &[80]);
    requested.requested = vec![ip("198.19.0.5")];
    assert_eq!(a.allocate(&requested).err(), Some(Refusal::PoolDeleting { pool: "old".into() }));
    let mut sharer = shared("sharer", "k", &[("TCP", 81)]);
    sharer.requested = vec![ip("198.19.0.1")];
    assert_eq!(a.allocate(&sharer).err(), Some(Refusal::PoolDeleting { pool: "old".into() }), "no new sharer");
    // Only the deleting pool left: nothing new anywhere, the holder still keeps its address.
    a.set_pools(vec![deleting], BTreeMap::new());
    assert!(a.allocate(&svc("late", &[80])).is_err());
    assert_eq!(got(&mut a, &holder), [ip("198.19.0.1")]);
}

// --- MetalLB's e2e cases in e2etest/l2tests/assignment.go, over the pure allocator -------------------------

/// "with only priority": a `serviceAllocation` with a priority and no selector serves everyone, higher
/// priority (lower number) first.
#[test]
fn a_priority_alone_orders_pools_for_every_service() {
    let mut a = allocator(vec![
        pool("test-priority-pool-1", pinned(&["192.168.5.0/32"], Some(20), &[])),
        pool("test-priority-pool-2", pinned(&["192.168.10.0/32"], Some(10), &[])),
    ]);
    assert_eq!(got(&mut a, &svc("svc-1", &[80])), [ip("192.168.10.0")], "priority 10 first");
    assert_eq!(got(&mut a, &svc("svc-2", &[80])), [ip("192.168.5.0")], "then priority 20");
}

/// "Should prefer primary ip ipv4/ipv6 family among single-stack pools": PreferDualStack with only single-stack
/// pools gets one address, of the Service's first family.
#[test]
fn prefer_dual_stack_without_a_dual_stack_pool_takes_its_primary_family() {
    let v4 = || pool("test-ns-ipv4-pool", spec(&["192.168.10.100/32"]));
    let v6 = || pool("test-ns-ipv6-pool", spec(&["fc00:f853:ccd:e799::/124"]));
    let mut a = allocator(vec![v6(), v4()]);
    assert_eq!(got(&mut a, &stack("v4-first", &[Family::V4, Family::V6], false)), [ip("192.168.10.100")]);
    let mut b = allocator(vec![v4(), v6()]);
    assert_eq!(got(&mut b, &stack("v6-first", &[Family::V6, Family::V4], false)), [ip("fc00:f853:ccd:e799::")]);
}

/// "Single-stack pool should assign based on svc changes between PreferDualStack and RequireDualStack": the same
/// Service loses its address when it requires both families, and gets one again when it prefers them.
#[test]
fn one_service_switching_between_prefer_and_require_dual_stack() {
    let mut a = allocator(vec![pool("test-ns-dualstack-pool", spec(&["192.168.10.100/32"]))]);
    let prefer = stack("svc-test-ns-pool-1", &[Family::V4, Family::V6], false);
    assert_eq!(got(&mut a, &prefer), [ip("192.168.10.100")]);
    let require = stack("svc-test-ns-pool-1", &[Family::V4, Family::V6], true);
    let refusal = a.allocate(&require).expect_err("no IPv6 anywhere");
    assert!(matches!(refusal, Refusal::NoFreeAddress { .. }), "{refusal}");
    assert_eq!(a.assignment(&ServiceKey::new("default", "svc-test-ns-pool-1")), None, "its address is given back");
    assert_eq!(got(&mut a, &prefer), [ip("192.168.10.100")], "prefer again: the address again");
}

/// "Svc assigned from single-stack pool should not jump to dual-stack pool when it's available".
#[test]
fn a_single_stack_address_stays_when_a_dual_stack_pool_appears() {
    let v4 = || pool("test-ns-ipv4-pool", spec(&["192.168.10.100/32"]));
    let mut a = allocator(vec![v4()]);
    let prefer = stack("svc-test-ns-pool-1", &[Family::V4, Family::V6], false);
    assert_eq!(got(&mut a, &prefer), [ip("192.168.10.100")]);
    let dual = pool("test-ns-dualstack-pool", spec(&["192.168.11.100/32", "fc00:f853:ccd:e800::/124"]));
    assert!(a.set_pools(vec![v4(), dual], BTreeMap::new()).is_empty(), "nothing taken away");
    let outcome = a.allocate(&prefer).expect("kept");
    assert_eq!(outcome.assignment.ips, [ip("192.168.10.100")], "no jump to the dual-stack pool");
    assert!(!outcome.changed);
}

/// "When current dualstack pool becomes single-stack, svc should pick another dualstack pool if possible".
#[test]
fn a_dual_stack_pool_turning_single_stack_moves_the_service_to_another_dual_stack_pool() {
    let first = |addresses: &[&str]| pool("test-ns-dualstack-pool-to-edit", spec(addresses));
    let dual = || pool("test-ns-dualstack-pool", spec(&["192.168.11.100/32", "fc00:f853:ccd:e800::/124"]));
    let mut a = allocator(vec![first(&["192.168.10.100/32", "fc00:f853:ccd:e799::/124"])]);
    let prefer = stack("svc-test-ns-pool-1", &[Family::V4, Family::V6], false);
    let original = got(&mut a, &prefer);
    assert_eq!(original, [ip("192.168.10.100"), ip("fc00:f853:ccd:e799::")]);
    a.set_pools(vec![first(&["192.168.10.100/32", "fc00:f853:ccd:e799::/124"]), dual()], BTreeMap::new());
    assert_eq!(got(&mut a, &prefer), original, "a new dual-stack pool alone moves nothing");
    let lost = a.set_pools(vec![first(&["fc00:f853:ccd:e799::/124"]), dual()], BTreeMap::new());
    assert_eq!(lost.len(), 1, "its IPv4 address left the pool: {lost:?}");
    assert_eq!(got(&mut a, &prefer), [ip("192.168.11.100"), ip("fc00:f853:ccd:e800::")], "both from the other pool");
    assert_eq!(
        a.assignment(&ServiceKey::new("default", "svc-test-ns-pool-1")).map(|x| x.pool.as_str()),
        Some("test-ns-dualstack-pool")
    );
}

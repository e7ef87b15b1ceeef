//! The plan: what this node announces, computed purely from a snapshot of the API state, this node's
//! interfaces and its view of the peers' liveness — the speaker's desired state. The announcer makes it so,
//! the reporter tells the cluster; neither decides anything.

use crate::model::claim::Handover;
use crate::model::diagnose::{self, Cause, Problem};
use crate::model::digest::{ServiceDigest, SliceDigest};
use crate::model::election::{self, Advertisement, Decision, NodeFacts, Policy, ServiceFacts};
use crate::model::facts;
use crate::model::interfaces::{self, InterfaceInfo};
use crate::model::membership::{Membership, Verdict};
use ferrolb_crds::service::ServiceKey;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Who is planning: this node and the settings every speaker shares.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// This node's name.
    pub node: &'a str,
    /// Only Services of this class (none: only Services without a class).
    pub load_balancer_class: Option<&'a str>,
    /// Who may announce.
    pub policy: Policy,
}

/// The API state a plan is made from: the watch caches' contents at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every Service, digested.
    pub services: Vec<Arc<ServiceDigest>>,
    /// Every EndpointSlice, digested.
    pub slices: Vec<Arc<SliceDigest>>,
    /// Every Node.
    pub nodes: Vec<Arc<Node>>,
    /// L2Advertisements of the configuration namespace.
    pub ads: Vec<Arc<L2Advertisement>>,
    /// IPAddressPools of the configuration namespace.
    pub pools: Vec<Arc<IPAddressPool>>,
    /// The nodes a speaker of this release runs on ([`facts::speaker_nodes`]); `None` when not known (no
    /// permission to list pods, not listed yet): then every node may run one, as before speakers were
    /// discovered.
    pub speaker_nodes: Option<BTreeSet<String>>,
}

/// A Service this node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The Service's uid (names its ServiceL2Status).
    pub uid: Arc<str>,
    /// Addresses announced.
    pub ips: BTreeSet<IpAddr>,
    /// Interfaces they are announced on (one copy per set of interfaces, shared by every Service and address on it).
    pub interfaces: Interfaces,
}

/// A set of interface names, shared: thousands of addresses are answered on the same one or two interfaces.
pub type Interfaces = Arc<BTreeSet<String>>;

/// What this node should announce: per address the interfaces, per Service `(namespace, name)` a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcements {
    /// Address → interfaces answering for it.
    pub per_ip: BTreeMap<IpAddr, Interfaces>,
    /// Service → what is announced for it.
    pub services: BTreeMap<ServiceKey, Announced>,
    /// Service → why nobody may announce some of its addresses (every speaker sees the same).
    pub unannounced: BTreeMap<ServiceKey, Problem>,
    /// Service → its addresses this node won but cannot answer for.
    pub failed: BTreeMap<ServiceKey, Problem>,
    /// This node is the one that tells users about `unannounced`.
    pub reporter: bool,
    /// From whom the addresses this node is to answer are taken (nodes judged dead that would own them if they
    /// were alive): the claim rules confirm each such node once instead of probing every address
    /// (docs/design.md §6.5).
    pub handover: Handover,
}

/// A Service as the election sees it, derived from the API state alone.
#[derive(Debug, Clone)]
struct PreparedService {
    key: ServiceKey,
    uid: Arc<str>,
    facts: ServiceFacts,
    ips: Vec<IpAddr>,
    /// Shared by every Service the same advertisements apply to.
    applicable: Arc<[Advertisement]>,
}

/// The half of a plan that depends only on the API state: node facts (liveness from `Ready`, speakers from the
/// speaker pods), and per managed
/// Service its endpoint facts, addresses and applicable advertisements. It is the expensive half (every
/// Service, every EndpointSlice, every selector), so the speaker keeps it until the API state changes and a
/// liveness change — a failover — only runs [`decide`].
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    nodes: Vec<NodeFacts>,
    services: Vec<PreparedService>,
}

impl Prepared {
    /// Managed Services with an address and a known pool.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// The election order for a Service's addresses as these facts stand: every eligible node with its
    /// preference weight, the owner first (what `kubectl ferrolb why` shows). `None` when the Service is not
    /// prepared (no address, no known pool, not ours).
    pub fn election_order(&self, key: &ServiceKey, policy: election::Policy) -> Option<(IpAddr, Vec<(&str, u64)>)> {
        let svc = self.services.iter().find(|s| &s.key == key)?;
        let first = *svc.ips.first()?;
        let mut ranks: Vec<election::Rank<'_>> = self
            .nodes
            .iter()
            .filter(|n| election::eligibility(n, &svc.facts, &svc.applicable, policy).is_ok())
            .map(|n| election::rank(n, first, &svc.applicable))
            .collect();
        ranks.sort();
        Some((first, ranks.into_iter().map(|r| (r.name(), r.preference())).collect()))
    }
}

/// Derives the API half of a plan from one snapshot (pure).
pub fn prepare(me: &Me<'_>, s: &Snapshot) -> Prepared {
    // The pool of an address is the one the controller recorded on the Service, so speaker and controller
    // agree even where pools overlap (the controller sets the newer one aside), and nothing is parsed here.
    let pools: HashMap<String, &IPAddressPool> = s.pools.iter().map(|p| (p.name_any(), p.as_ref())).collect();
    let ad_refs: Vec<&L2Advertisement> = s.ads.iter().map(AsRef::as_ref).collect();
    let ads = facts::parse_advertisements(&ad_refs);
    let slices_of = facts::slices_by_service(s.slices.iter().map(AsRef::as_ref));
    // With thousands of Services most have the same endpoint nodes and advertisements: one copy each.
    let mut node_sets = facts::NodeSets::default();
    let mut applicable_lists: HashMap<Vec<usize>, Arc<[Advertisement]>> = HashMap::new();
    let services = s
        .services
        .iter()
        .filter(|svc| svc.is_managed(me.load_balancer_class))
        .filter_map(|svc| {
            let pool = svc.pool.as_deref().and_then(|name| pools.get(name))?;
            let own_slices = slices_of.get(&svc.key).map(Vec::as_slice).unwrap_or_default();
            let applicable = applicable_lists
                .entry(facts::applying(pool, &svc.labels, &ads))
                .or_insert_with_key(|which| {
                    which.iter().filter_map(|i| ads.get(*i)).map(|a| a.advertisement.clone()).collect()
                })
                .clone();
            Some(PreparedService {
                facts: facts::service_facts(svc, own_slices, &mut node_sets),
                uid: svc.uid.clone(),
                applicable,
                ips: svc.ingress.clone(),
                key: svc.key.clone(),
            })
        })
        .collect();
    let nodes = s
        .nodes
        .iter()
        .map(|n| {
            let mut node = facts::node_facts(n);
            node.has_speaker = facts::has_speaker(&node.name, s.speaker_nodes.as_ref());
            node
        })
        .collect();
    Prepared { nodes, services }
}

/// What this node announces, from the API half of a plan, this node's interfaces and its view of the peers'
/// liveness at `now` (pure: every speaker deciding from the same inputs agrees).
pub fn decide(
    me: &Me<'_>,
    prepared: &Prepared,
    interfaces: &[InterfaceInfo],
    membership: &Membership,
    heard_long_enough: bool,
    now: Instant,
) -> Announcements {
    // The nodes judged dead first-hand, as they would be alive: who held what until now.
    let mut judged_dead: Vec<NodeFacts> = Vec::new();
    let nodes: Vec<NodeFacts> = prepared
        .nodes
        .iter()
        .map(|facts| {
            let mut facts = facts.clone();
            // First-hand liveness wins. A speaker never heard from counts by its Node's Ready condition only while
            // we have not been listening long enough to have heard it; after that it is not running (crashed at
            // start, or no speaker on that node), and electing it would leave its addresses unanswered.
            match membership.verdict(&facts.name, now) {
                Verdict::Alive => facts.speaker_alive = true,
                Verdict::Dead => {
                    judged_dead.push(NodeFacts { speaker_alive: true, ..facts.clone() });
                    facts.speaker_alive = false;
                }
                Verdict::Unknown if heard_long_enough => facts.speaker_alive = false,
                Verdict::Unknown => {}
            }
            facts
        })
        .collect();
    let dead_names: Vec<Arc<str>> = judged_dead.iter().map(|n| Arc::from(n.name.as_str())).collect();
    let my_facts = nodes.iter().find(|n| n.name == me.node);
    let mut out = Announcements {
        reporter: diagnose::reporter(&nodes) == Some(me.node),
        handover: Handover { dead: dead_names.iter().cloned().collect(), ..Handover::default() },
        ..Default::default()
    };
    let mut sets = InterfaceSets::default();
    for svc in &prepared.services {
        let (mut nobody, mut failed): (Vec<Cause>, Vec<Cause>) = (Vec::new(), Vec::new());
        // Every address of a Service goes to one node, elected on its first address (docs/design.md §4.1): the
        // two addresses of a dual-stack Service are answered by the same node, as with MetalLB, and Services
        // sharing an address still agree on its node.
        let Some(&first) = svc.ips.first() else { continue };
        for &ip in &svc.ips {
            match election::decide(first, &svc.facts, &nodes, &svc.applicable, me.policy) {
                Decision::Nobody(why) => {
                    nobody.push((ip, why.label(), diagnose::explain(&why)));
                    continue;
                }
                Decision::Owner(owner) if owner == me.node => {}
                Decision::Owner(_) => continue,
            }
            let mine =
                my_facts.map_or(election::Rank::new(me.node, 0, first), |n| election::rank(n, first, &svc.applicable));
            if let Some(from) = held_until_now(first, svc, &judged_dead, mine, me) {
                out.handover.from.insert(ip, dead_names[from].clone());
            }
            let allowed = my_facts.map(|n| election::allowed_interfaces(n, &svc.applicable)).unwrap_or_default();
            let family = interfaces::Family::of(ip);
            if let Some(why) = interfaces::why_unusable(interfaces, &allowed, family) {
                failed.push((ip, why.label(), why.describe()));
                continue;
            }
            let usable = interfaces::usable(interfaces, &allowed, family);
            let on: BTreeSet<String> = interfaces::for_address(&usable, ip).iter().map(|i| i.name.clone()).collect();
            let per_ip = match out.per_ip.get(&ip) {
                // Services sharing the address: answered on every interface any of them is.
                Some(already) => already.union(&on).cloned().collect(),
                None => on.clone(),
            };
            out.per_ip.insert(ip, sets.intern(per_ip));
            let entry = out.services.entry(svc.key.clone()).or_insert_with(|| Announced {
                uid: svc.uid.clone(),
                ips: BTreeSet::new(),
                interfaces: Interfaces::default(),
            });
            entry.ips.insert(ip);
            if !on.is_subset(&entry.interfaces) {
                entry.interfaces = sets.intern(entry.interfaces.union(&on).cloned().collect());
            }
        }
        if !nobody.is_empty() {
            out.unannounced.insert(svc.key.clone(), diagnose::nobody(&svc.uid, &nobody));
        }
        if !failed.is_empty() {
            out.failed.insert(svc.key.clone(), diagnose::announce_failed(&svc.uid, me.node, &failed));
        }
    }
    out
}

/// One shared copy of each set of interfaces a plan names.
#[derive(Default)]
struct InterfaceSets(BTreeSet<Interfaces>);

impl InterfaceSets {
    fn intern(&mut self, set: BTreeSet<String>) -> Interfaces {
        if let Some(shared) = self.0.get(&set) {
            return shared.clone();
        }
        let shared = Arc::new(set);
        self.0.insert(shared.clone());
        shared
    }
}

/// Which of `judged_dead` (as if alive) would own the Service's addresses instead of this node, which the
/// election gave them to: the node they are taken from. Only those nodes can outrank this node, so this costs
/// one score per node judged dead, not a second election.
fn held_until_now(
    first: IpAddr,
    svc: &PreparedService,
    judged_dead: &[NodeFacts],
    mine: election::Rank<'_>,
    me: &Me<'_>,
) -> Option<usize> {
    judged_dead
        .iter()
        .enumerate()
        .filter(|(_, n)| election::eligibility(n, &svc.facts, &svc.applicable, me.policy).is_ok())
        .map(|(i, n)| (election::rank(n, first, &svc.applicable), i))
        .filter(|(rank, _)| *rank < mine)
        .min()
        .map(|(_, i)| i)
}

/// What this node announces, from one snapshot of the API state, this node's interfaces and its view of
/// the peers' liveness at `now`: [`decide`] over [`prepare`].
pub fn plan(
    me: &Me<'_>,
    s: &Snapshot,
    interfaces: &[InterfaceInfo],
    membership: &Membership,
    heard_long_enough: bool,
    now: Instant,
) -> Announcements {
    decide(me, &prepare(me, s), interfaces, membership, heard_long_enough, now)
}

/// What this node reports as announced: the plan's Services, narrowed to the addresses it actually answers for
/// (an address another node's MAC still answers for is held back, docs/design.md §6.5).
pub fn answered_only(
    planned: &BTreeMap<ServiceKey, Announced>,
    answering: &BTreeSet<IpAddr>,
) -> BTreeMap<ServiceKey, Announced> {
    planned
        .iter()
        .filter_map(|(key, a)| {
            let ips: BTreeSet<_> = a.ips.intersection(answering).copied().collect();
            (!ips.is_empty()).then(|| (key.clone(), Announced { ips, ..a.clone() }))
        })
        .collect()
}

/// The Services answered for, per address, each in key order (MetalLB's `metallb_speaker_announced`). The keys
/// are shared, so a speaker answering for thousands holds no second copy of their names.
pub fn by_address(answered: &BTreeMap<ServiceKey, Announced>) -> BTreeMap<IpAddr, Vec<ServiceKey>> {
    let mut out: BTreeMap<IpAddr, Vec<ServiceKey>> = BTreeMap::new();
    for (key, a) in answered {
        for ip in &a.ips {
            out.entry(*ip).or_default().push(key.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::membership::Config;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    fn node(name: &str, labels: Value) -> Arc<Node> {
        obj(json!({"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn service(name: &str, ip: &str, pool: Option<&str>) -> Arc<ServiceDigest> {
        let annotations = pool.map_or(json!({}), |p| json!({"metallb.io/ip-allocated-from-pool": p}));
        digested(
            crate::model::digest::service,
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "annotations": annotations},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}),
        )
    }

    fn digested<K: serde::de::DeserializeOwned, D>(digest: fn(&K) -> D, object: Value) -> Arc<D> {
        Arc::new(digest(&serde_json::from_value(object).expect("object")))
    }

    fn slice(service: &str, ready_on: &[&str]) -> Arc<SliceDigest> {
        let endpoints: Vec<Value> = ready_on
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({"addresses": [format!("198.18.17.{}", i + 2)], "nodeName": n,
                "conditions": {"ready": true}})
            })
            .collect();
        digested(
            crate::model::digest::endpoint_slice,
            json!({"metadata": {"name": format!("{service}-x"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints}),
        )
    }

    fn snapshot(services: Vec<Arc<ServiceDigest>>, slices: Vec<Arc<SliceDigest>>, exclude: &[&str]) -> Snapshot {
        let label = |n: &str| {
            if exclude.contains(&n) {
                json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""})
            } else {
                json!({})
            }
        };
        Snapshot {
            services,
            slices,
            nodes: ["node-1", "node-2", "node-3"].iter().map(|n| node(n, label(n))).collect(),
            ads: vec![obj(json!({"metadata": {"name": "l2", "namespace": "metallb-system"}}))],
            pools: vec![obj(json!({"metadata": {"name": "lab", "namespace": "metallb-system"},
                "spec": {"addresses": ["198.19.0.0/24"]}}))],
            speaker_nodes: None,
        }
    }

    fn eth0() -> Vec<InterfaceInfo> {
        vec![InterfaceInfo {
            name: "eth0".into(),
            index: 2,
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: true,
            ipv4: vec![("198.18.0.11".parse().expect("ip"), 24)],
            ipv6: vec![("2001:db8:18::11".parse().expect("ip"), 64)],
            excluded: false,
        }]
    }

    fn plan_on(node: &str, s: &Snapshot, policy: Policy) -> Announcements {
        let me = Me { node, load_balancer_class: None, policy };
        plan(
            &me,
            s,
            &eth0(),
            &Membership::new(node, Config::new(Duration::from_millis(350)), Instant::now()),
            false,
            Instant::now(),
        )
    }

    const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

    #[test]
    fn exactly_the_elected_node_plans_the_address_on_its_interface() {
        let s = snapshot(vec![service("dns", "198.19.0.1", Some("lab"))], vec![slice("dns", &["node-1"])], &[]);
        let ip: IpAddr = "198.19.0.1".parse().expect("ip");
        let owner = election::owner(ip, NODES).expect("owner");
        for n in NODES {
            let a = plan_on(n, &s, Policy::default());
            if n == owner {
                assert_eq!(a.per_ip.get(&ip), Some(&Arc::new(BTreeSet::from(["eth0".to_string()]))));
                let announced = &a.services[&ServiceKey::new("default", "dns")];
                assert_eq!(&*announced.uid, "uid-dns");
            } else {
                assert!(a.per_ip.is_empty(), "{n} must not announce");
            }
            assert!(a.unannounced.is_empty() && a.failed.is_empty());
        }
    }

    /// The speaker keeps one preparation while only liveness changes: deciding on it must give what a full plan
    /// gives, also when the liveness view moves the address.
    #[test]
    fn a_kept_preparation_decides_like_a_full_plan_when_liveness_changes() {
        let services: Vec<_> =
            (1..=20).map(|i| service(&format!("s{i}"), &format!("198.19.0.{i}"), Some("lab"))).collect();
        let slices: Vec<_> = (1..=20).map(|i| slice(&format!("s{i}"), &NODES)).collect();
        let s = snapshot(services, slices, &[]);
        for n in NODES {
            let me = Me { node: n, load_balancer_class: None, policy: Policy::default() };
            let prepared = prepare(&me, &s);
            assert_eq!(prepared.services(), 20);
            let membership = Membership::new(n, Config::new(Duration::from_millis(350)), Instant::now());
            let now = Instant::now();
            // Not listening long enough: peers count by Ready (alive). Long enough, never heard: dead, so this
            // node owns every address.
            let by_ready = decide(&me, &prepared, &eth0(), &membership, false, now);
            let alone = decide(&me, &prepared, &eth0(), &membership, true, now);
            assert_eq!(by_ready, plan(&me, &s, &eth0(), &membership, false, now));
            assert_eq!(alone, plan(&me, &s, &eth0(), &membership, true, now));
            assert_eq!(alone.per_ip.len(), 20, "{n} alone owns every address");
            assert!(by_ready.per_ip.len() < 20, "with live peers {n} owns only its share");
        }
    }

    /// Sixty Services with endpoints on every node.
    fn sixty_services() -> Snapshot {
        let services: Vec<_> =
            (1..=60).map(|i| service(&format!("s{i}"), &format!("198.19.0.{i}"), Some("lab"))).collect();
        let slices: Vec<_> = (1..=60).map(|i| slice(&format!("s{i}"), &NODES)).collect();
        snapshot(services, slices, &[])
    }

    /// A liveness message from `node`.
    fn said(node: &str, counter: u64, kind: crate::model::liveness::Kind) -> crate::model::liveness::Message {
        crate::model::liveness::Message {
            kind,
            node: node.into(),
            incarnation: 1,
            counter,
            macs: vec![],
            legacy: false,
        }
    }

    /// node-1's view at `t0` with node-2 and node-3 heard.
    fn all_heard(t0: Instant) -> Membership {
        use crate::model::liveness::Kind;
        let mut m = Membership::new("node-1", Config::new(Duration::from_millis(200)), t0);
        m.receive(&said("node-2", 1, Kind::Alive), t0).expect("node-2 heard");
        m.receive(&said("node-3", 1, Kind::Alive), t0).expect("node-3 heard");
        m
    }

    /// An address taken from a node judged dead names that node (the one owner the claim rules confirm for all
    /// its addresses); an address nobody dead would own names nobody, and is probed on its own.
    #[test]
    fn addresses_taken_from_a_node_judged_dead_name_it() {
        use crate::model::liveness::{Kind, Subject};
        let s = sixty_services();
        let me = Me { node: "node-1", load_balancer_class: None, policy: Policy::default() };
        let t0 = Instant::now();
        let mut membership = all_heard(t0);
        let before_verdict = membership.clone();
        let verdict = Kind::Dead(Subject { node: "node-2".into(), incarnation: 1, counter: 1 });
        membership.receive(&said("node-3", 2, verdict), t0 + Duration::from_millis(900)).expect("verdict");
        let now = t0 + Duration::from_millis(1000);
        let a = plan(&me, &s, &eth0(), &membership, true, now);
        assert_eq!(a.handover.dead, BTreeSet::from([Arc::from("node-2")]));
        let mut taken = 0;
        for ip in a.per_ip.keys() {
            let held_by = election::owner(*ip, NODES).expect("owner");
            let from = a.handover.from.get(ip).map(AsRef::as_ref);
            assert_eq!(from, (held_by != "node-1").then_some(held_by), "{ip}");
            taken += usize::from(from.is_some());
        }
        assert!(taken > 0 && taken < a.per_ip.len(), "some taken from node-2, some held all along: {taken}");
        assert!(a.handover.from.keys().all(|ip| a.per_ip.contains_key(ip)));
        // Nobody judged dead: nothing is taken from anyone.
        let alive = plan(&me, &s, &eth0(), &before_verdict, false, t0);
        assert!(alive.handover.from.is_empty() && alive.handover.dead.is_empty());
    }

    #[test]
    fn both_addresses_of_a_dual_stack_service_go_to_one_node_and_need_an_interface_of_their_family() {
        let dual = digested(
            crate::model::digest::service,
            json!({"metadata": {"name": "dns", "namespace": "default", "uid": "uid-dns",
                "annotations": {"metallb.io/ip-allocated-from-pool": "lab"}},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.1"}, {"ip": "2001:db8:19::1"}]}}}),
        );
        let s = snapshot(vec![dual], vec![slice("dns", &NODES)], &[]);
        let (v4, v6): (IpAddr, IpAddr) = ("198.19.0.1".parse().expect("ip"), "2001:db8:19::1".parse().expect("ip"));
        assert_ne!(election::owner(v4, NODES), election::owner(v6, NODES), "elected one by one, these two would part");
        let owners: Vec<&str> =
            NODES.iter().copied().filter(|n| !plan_on(n, &s, Policy::default()).per_ip.is_empty()).collect();
        assert_eq!(owners.len(), 1, "one node announces: {owners:?}");
        let a = plan_on(owners[0], &s, Policy::default());
        assert_eq!(a.per_ip.keys().copied().collect::<Vec<_>>(), [v4, v6]);
        let without_ipv6: Vec<InterfaceInfo> =
            eth0().into_iter().map(|i| InterfaceInfo { ipv6: vec![], ..i }).collect();
        let me = Me { node: owners[0], load_balancer_class: None, policy: Policy::default() };
        let membership = Membership::new(owners[0], Config::new(Duration::from_millis(350)), Instant::now());
        let a = plan(&me, &s, &without_ipv6, &membership, false, Instant::now());
        assert_eq!(a.per_ip.keys().copied().collect::<Vec<_>>(), [v4], "IPv4 still answered");
        let note = &a.failed[&ServiceKey::new("default", "dns")].note;
        assert!(note.contains("2001:db8:19::1") && note.contains("IPv6 address"), "{note}");
    }

    #[test]
    fn a_ready_node_without_a_speaker_is_never_elected_even_before_liveness_settles() {
        let services: Vec<_> =
            (1..=20).map(|i| service(&format!("s{i}"), &format!("198.19.0.{i}"), Some("lab"))).collect();
        let slices: Vec<_> = (1..=20).map(|i| slice(&format!("s{i}"), &NODES)).collect();
        let mut s = snapshot(services, slices, &[]);
        let owned_by = |s: &Snapshot, n: &str| plan_on(n, s, Policy::default()).per_ip.len();
        assert!(owned_by(&s, "node-2") > 0, "unknown speakers: node-2 counts by Ready and owns its share");
        s.speaker_nodes = Some(BTreeSet::from(["node-1".to_string(), "node-3".to_string()]));
        assert_eq!(owned_by(&s, "node-2"), 0, "node-2 runs no speaker");
        assert_eq!(owned_by(&s, "node-1") + owned_by(&s, "node-3"), 20, "the two speakers share every address");
        // The only speaker's node is labelled out: nobody announces, and the note names each node's reason.
        let mut excluded =
            snapshot(vec![service("dns", "198.19.0.1", Some("lab"))], vec![slice("dns", &NODES)], &["node-1"]);
        excluded.speaker_nodes = Some(BTreeSet::from(["node-1".to_string()]));
        let a = plan_on("node-1", &excluded, Policy::default());
        assert!(a.per_ip.is_empty() && a.reporter);
        let note = &a.unannounced[&ServiceKey::new("default", "dns")].note;
        assert!(note.contains("node-2, node-3: no ferrolb speaker runs there"), "{note}");
    }

    #[test]
    fn an_address_without_the_controllers_pool_annotation_is_not_announced_yet() {
        let s = snapshot(vec![service("dns", "198.19.0.1", None)], vec![slice("dns", &["node-1"])], &[]);
        assert!(NODES.iter().all(|n| plan_on(n, &s, Policy::default()).per_ip.is_empty()));
    }

    #[test]
    fn nobody_announces_without_endpoints_or_eligible_nodes_and_the_reporter_says_why() {
        let s = snapshot(vec![service("dns", "198.19.0.1", Some("lab"))], vec![], &[]);
        let a = plan_on("node-1", &s, Policy::default());
        assert!(a.per_ip.is_empty());
        assert!(a.reporter, "the lowest-named live speaker reports");
        let note = &a.unannounced[&ServiceKey::new("default", "dns")].note;
        assert!(note.contains("no ready endpoints"), "{note}");

        let excluded =
            snapshot(vec![service("dns", "198.19.0.1", Some("lab"))], vec![slice("dns", &["node-1"])], &NODES);
        let a = plan_on("node-2", &excluded, Policy::default());
        assert!(a.per_ip.is_empty() && !a.reporter);
        let note = &a.unannounced[&ServiceKey::new("default", "dns")].note;
        assert!(note.contains("ignoreExcludeLB"), "{note}");
        let knob = Policy { ignore_exclude_label: true };
        let planned: usize = NODES.iter().map(|n| plan_on(n, &excluded, knob).per_ip.len()).sum();
        assert_eq!(planned, 1, "with the knob one node announces");
    }

    #[test]
    fn trimming_the_node_cache_changes_no_plan() {
        let services = vec![
            service("dns", "198.19.0.1", Some("lab")),
            service("web", "198.19.0.2", Some("lab")),
            service("lonely", "198.19.0.3", Some("lab")),
        ];
        let slices = vec![slice("dns", &["node-1", "node-3"]), slice("web", &["node-2"])];
        let full = snapshot(services, slices, &["node-2"]);
        fn trimmed_all<K: Clone>(objects: &[Arc<K>], trim: fn(&mut K)) -> Vec<Arc<K>> {
            objects
                .iter()
                .map(|o| {
                    let mut o = (**o).clone();
                    trim(&mut o);
                    Arc::new(o)
                })
                .collect()
        }
        let trimmed_copy = |mut s: Snapshot| {
            s.nodes = trimmed_all(&s.nodes, crate::kube::trim::node);
            s
        };
        let trimmed = trimmed_copy(full.clone());
        for n in NODES {
            for policy in [Policy::default(), Policy { ignore_exclude_label: true }] {
                assert_eq!(plan_on(n, &trimmed, policy), plan_on(n, &full, policy), "{n} {policy:?}");
            }
        }
    }
}

//! What one planner pass costs at a failover, by number of Services, beside 1 Service in the same run: the pure
//! halves of a plan (`prepare` on an API change, `decide` on every wake) over 3 nodes, with every peer alive and
//! with one peer judged dead (the pass a liveness verdict triggers, which starts a takeover).
//!
//! Also the heap each of the plan's structures holds per Service (a counting allocator; the digests are what the
//! watch caches keep, the preparation is kept between passes, the announcements' services are kept as what was
//! said and what the status writer wants).
//!
//! Run: `cargo bench -p ferrolb-speaker --bench plan_scale`. `FERROLB_PLAN_SIZES` (default `1,1000,10000`)
//! and `FERROLB_PLAN_ROUNDS` (default 20; the median is printed) change the run.

use ferrolb_speaker::model::digest::{self, ServiceDigest, SliceDigest};
use ferrolb_speaker::model::election::Policy;
use ferrolb_speaker::model::interfaces::InterfaceInfo;
use ferrolb_speaker::model::liveness::{Kind, Message, Subject};
use ferrolb_speaker::model::membership::{Config, Membership};
use ferrolb_speaker::model::plan::{self, Me, Snapshot};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts allocations (the `stats_alloc` crate), for the heap each structure holds per Service.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes `f`'s result holds on the heap (allocated and not freed while making it).
fn held<T>(f: impl FnOnce() -> T) -> (isize, T) {
    let region = Region::new(ALLOCATOR);
    let out = f();
    let change = region.change();
    (change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated, out)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// `n` UDP Services with one address each from one /16 pool, each with a ready endpoint on every node.
fn snapshot(n: usize) -> Snapshot {
    let nodes = ["node-1", "node-2", "node-3"];
    let services: Vec<Arc<ServiceDigest>> = (0..n)
        .map(|i| {
            let ip = format!("198.19.{}.{}", i / 250, i % 250 + 1);
            Arc::new(digest::service(&object(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench", "uid": format!("uid-{i}"),
                    "annotations": {"metallb.io/ip-allocated-from-pool": "bench"}},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 53, "protocol": "UDP"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))))
        })
        .collect();
    let slices: Vec<Arc<SliceDigest>> = (0..n)
        .map(|i| {
            let endpoints: Vec<Value> = nodes
                .iter()
                .enumerate()
                .map(|(k, node)| {
                    json!({"addresses": [format!("198.18.{}.{}", k + 1, i % 250 + 1)],
                    "nodeName": node, "conditions": {"ready": true}})
                })
                .collect();
            Arc::new(digest::endpoint_slice(&object(json!({
                "metadata": {"name": format!("svc-{i}-x"), "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4", "endpoints": endpoints}))))
        })
        .collect();
    Snapshot {
        services,
        slices,
        nodes: nodes
            .iter()
            .map(|n| {
                Arc::new(object(json!({"metadata": {"name": n},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}})))
            })
            .collect(),
        ads: vec![Arc::new(object(json!({"metadata": {"name": "l2", "namespace": "metallb-system"}})))],
        pools: vec![Arc::new(object(json!({"metadata": {"name": "bench", "namespace": "metallb-system"},
            "spec": {"addresses": ["198.19.0.0/16"]}})))],
        speaker_nodes: None,
    }
}

fn eth0() -> Vec<InterfaceInfo> {
    vec![InterfaceInfo {
        name: "eth0".into(),
        index: 2,
        mac: Some([2, 0, 0, 0, 0, 1]),
        up: true,
        ipv4: vec![("198.19.255.254".parse().expect("ip"), 16)],
        ipv6: vec![],
        excluded: false,
    }]
}

/// node-1's view: node-2 and node-3 heard; with `node_2_dead`, node-3 has since declared node-2 dead.
fn membership(t0: Instant, node_2_dead: bool) -> Membership {
    let said = |node: &str, counter: u64, kind: Kind| Message {
        kind,
        node: node.into(),
        incarnation: 1,
        counter,
        macs: vec![],
        legacy: false,
    };
    let mut m = Membership::new("node-1", Config::new(Duration::from_millis(200)), t0);
    m.receive(&said("node-2", 1, Kind::Alive), t0).expect("node-2 heard");
    m.receive(&said("node-3", 1, Kind::Alive), t0).expect("node-3 heard");
    if node_2_dead {
        let verdict = Kind::Dead(Subject { node: "node-2".into(), incarnation: 1, counter: 1 });
        m.receive(&said("node-3", 2, verdict), t0 + Duration::from_millis(50)).expect("verdict heard");
    }
    m
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn timed<T>(rounds: u64, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let out = f();
        runs.push(started.elapsed());
        last = Some(out);
    }
    (median(runs), last.expect("at least one round"))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FERROLB_PLAN_SIZES")
        .unwrap_or_else(|_| "1,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = env_or("FERROLB_PLAN_ROUNDS", 20).max(1);
    let me = Me { node: "node-1", load_balancer_class: None, policy: Policy::default() };
    let interfaces = eth0();
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(100);
    let (alive, one_dead) = (membership(t0, false), membership(t0, true));
    println!("## One planner pass on node-1 of 3 (median of {rounds} rounds)\n");
    println!(
        "| Services | prepare (ms) | decide, all alive (ms) | decide, node-2 dead (ms) | addresses owned, node-2 dead | taken from node-2 |"
    );
    println!("|---|---|---|---|---|---|");
    let mut reference: Option<Duration> = None;
    let mut rows = Vec::new();
    let largest = sizes.iter().copied().max().unwrap_or(1);
    for n in sizes {
        let s = snapshot(n);
        let (prepare, prepared) = timed(rounds, || plan::prepare(&me, &s));
        let (decide_alive, _) = timed(rounds, || plan::decide(&me, &prepared, &interfaces, &alive, true, now));
        let (decide_dead, out) = timed(rounds, || plan::decide(&me, &prepared, &interfaces, &one_dead, true, now));
        println!(
            "| {n} | {} | {} | {} | {} | {} |",
            ms(prepare),
            ms(decide_alive),
            ms(decide_dead),
            out.per_ip.len(),
            out.handover.from.len()
        );
        reference.get_or_insert(decide_dead);
        rows.push((n, decide_dead));
    }
    println!("\n## Heap held per Service (bytes), from the difference between the largest size and 1 Service\n");
    println!("| structure | bytes per Service |");
    println!("|---|---|");
    let sized = |n: usize| {
        let (digests, s) = held(|| snapshot(n));
        let (prepared_bytes, prepared) = held(|| plan::prepare(&me, &s));
        let (announced, out) = held(|| plan::decide(&me, &prepared, &interfaces, &one_dead, true, now));
        let (services, _) = held(|| out.services.clone());
        let (per_ip, _) = held(|| out.per_ip.clone());
        [digests, prepared_bytes, announced, services, per_ip]
    };
    let (small, large) = (sized(1), sized(largest));
    let names = [
        "digests (Services + EndpointSlices, as cached)",
        "preparation (kept between passes)",
        "one decision, node-2 dead (plan of a pass)",
        "  its services map (kept as said, wanted by the status writer)",
        "  its per-address interfaces (the announcer's desired state)",
    ];
    for (name, (a, b)) in names.iter().zip(small.iter().zip(large)) {
        println!("| {name} | {:.0} |", (b - a) as f64 / (largest - 1).max(1) as f64);
    }
    if let Some(reference) = reference {
        println!("\nThe pass a death verdict triggers (decide, node-2 dead), against the first row:");
        for (n, d) in rows {
            println!("  {n:>6} Services: {:.1}x", d.as_secs_f64() / reference.as_secs_f64().max(1e-9));
        }
    }
}

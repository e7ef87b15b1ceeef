//! The speaker under load, in the lab (3 nodes, chart installed, speakers on chart tokens):
//! - ARP reply latency of the speaker (userspace, raw socket) beside the kernel's own responder (a node's
//!   InternalIP), measured from the host namespace in the same run: p50 / p99;
//! - speaker RSS with 1,000 announced addresses (1,000 LoadBalancer Services);
//! - ownership changes while both cores are busy for FERROLB_STRESS_SECS (default 300) — must be 0.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench speaker_load`

use ferrolb_tests::harness::{TestLab, create_yaml, ingress};
use ferrolb_tests::lab::lifecycle;
use futures::StreamExt;
use std::time::{Duration, Instant};

const SERVICES: usize = 1000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

fn rtts(lab: &TestLab, exe: &str, target: &str) -> Vec<f64> {
    let out = lab.cli(&["exec", "host", "--", exe, "arping", target, "--rtt", "--count", "300"]);
    let mut v: Vec<f64> = serde_json::from_slice::<Vec<f64>>(&out.stdout).unwrap_or_default();
    v.sort_by(f64::total_cmp);
    v
}

fn takeovers(lab: &TestLab) -> usize {
    let state = lab.state();
    state
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(state.log(&format!("speaker {}", n.name))).unwrap_or_default())
        .map(|log| log.matches("took ownership").count() + log.matches("no longer the owner").count())
        .sum()
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let exe = lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first").display().to_string();
    let lab = TestLab::start(&exe, "flbl", 3, false);
    let client = lab.admin().await;
    let setup = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.0/22], avoidBuggyIPs: true}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: load}\n";
    create_yaml(&client, setup).await.expect("setup");
    for n in 1..=3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{n}, namespace: load, labels: {{app: web}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: web, image: lab/web}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    println!("creating {SERVICES} LoadBalancer Services with ready endpoints on all three nodes");
    futures::stream::iter(0..SERVICES)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            async move {
                let svc = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i:04}, namespace: load}}\nspec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, selector: {{app: web}}, ports: [{{port: 80}}]}}\n");
                create_yaml(&client, &svc).await.expect("service");
            }
        })
        .await;
    let started = Instant::now();
    let vip = loop {
        if let Some(ip) = ingress(&client, "load", "web-0999").await.into_iter().next() {
            break ip;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Wait until every speaker has settled (no ownership change for 10 s).
    let mut last = (takeovers(&lab), Instant::now());
    while last.1.elapsed() < Duration::from_secs(10) && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = takeovers(&lab);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let state = lab.state();
    let owned: Vec<(String, usize)> = state
        .nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(state.log(&format!("speaker {}", n.name))).unwrap_or_default();
            (n.name.clone(), log.matches("took ownership").count() - log.matches("no longer the owner").count())
        })
        .collect();
    println!("announced addresses per node: {owned:?}");
    for p in state.procs.iter().filter(|p| p.role.starts_with("speaker ")) {
        println!("{:<16} RSS {:>6.1} MiB", p.role, rss_mib(p.pid));
    }
    let controller = state.procs.iter().find(|p| p.role == "controller-0").map_or(0, |p| p.pid);
    println!("{:<16} RSS {:>6.1} MiB (for comparison)", "controller-0", rss_mib(controller));

    let speaker = rtts(&lab, &exe, &vip);
    let kernel = rtts(&lab, &exe, "198.18.0.12");
    let line = |name: &str, v: &[f64]| {
        println!(
            "{name:<34} n={:<4} p50 {:>7.0} µs  p99 {:>7.0} µs",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 99.0)
        );
    };
    line(&format!("ARP reply, ferrolb speaker ({vip})"), &speaker);
    line("ARP reply, kernel (198.18.0.12)", &kernel);
    println!("speaker / kernel p50: {:.2}x", percentile(&speaker, 50.0) / percentile(&kernel, 50.0));

    let secs: u64 = std::env::var("FERROLB_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    println!("both cores busy for {secs} s (two spinning threads at normal priority) ...");
    let before = takeovers(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let changes = takeovers(&lab) - before;
    println!("ownership changes during {secs} s with both cores busy: {changes} (must be 0)");
}

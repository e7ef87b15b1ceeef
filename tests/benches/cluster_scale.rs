//! The speakers' liveness cost as the cluster grows, in the process lab (every node a namespace with its own
//! speaker process): for 3, 12 and 40 nodes (`FERROLB_SCALE_SIZES`), one Service, printed side by side with the
//! ratio to the smallest size of the same run:
//! - each speaker's CPU while nothing changes (share of one core over `FERROLB_IDLE_SECS`, default 20);
//! - liveness datagrams received per node per second (an nftables counter on UDP 7946 in every node namespace);
//! - the hard-kill outage of the Service seen from the `host` namespace, UDP every 10 ms
//!   (`FERROLB_SCALE_TRIALS`, default 3).
//!
//! The speakers of this commit send heartbeats to three watchers on a ring (docs/design.md §5.2); to compare with
//! the all-to-all design, run the same command on a commit before it. Asserts nothing.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench cluster_scale`

use ferrolb_tests::harness::{TestLab, create_yaml, ingress};
use ferrolb_tests::lab::lifecycle;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COUNTER_TABLE: &str = "flbscale";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // Fields 14 and 15 of /proc/<pid>/stat (utime, stime), counted after the command name: 12 and 13.
    let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

fn netns(namespace: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", namespace]).args(args).output().expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts UDP datagrams to the liveness port arriving in a node's namespace.
fn count_liveness(namespace: &str) {
    let rules = format!(
        "table inet {COUNTER_TABLE} {{\n  chain input {{\n    type filter hook input priority -10;\n    udp dport 7946 counter\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{namespace}-{COUNTER_TABLE}.nft"));
    std::fs::write(&file, rules).expect("rules file");
    netns(namespace, &["nft", "-f", &file.display().to_string()]);
}

fn liveness_packets(namespace: &str) -> u64 {
    let listing = netns(namespace, &["nft", "list", "table", "inet", COUNTER_TABLE]);
    listing.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A UDP DNS Service with backends on the first three nodes; returns its address once it answers.
async fn service(lab: &TestLab) -> String {
    let client = lab.admin().await;
    let setup = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.254]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n";
    create_yaml(&client, setup).await.expect("pool");
    for n in 1..=3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: dns-{n}, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: dns, image: lab/dns}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    let dns = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed/dns-svc-lb.yaml"),
    )
    .expect("seed");
    create_yaml(&client, &dns).await.expect("dns");
    let mut vip = String::new();
    for _ in 0..600 {
        if let Some(ip) = ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().next() {
            vip = ip;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..600 {
        if lab.probe("host", "udp", &format!("{vip}:53"), 500).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vip
}

/// One hard kill of the Service's owner while the host probes it; the longest gap in ms.
async fn hard_kill(lab: &TestLab, exe: &str, vip: &str) -> f64 {
    let target = format!("{vip}:53");
    // The lab's echo answers with the node's name first.
    let Ok(answer) = lab.probe("host", "udp", &target, 2000) else { return f64::NAN };
    let Some(owner) = answer.split_whitespace().next().map(str::to_string) else { return f64::NAN };
    let prober = Command::new(exe)
        .args(["--name", &lab.name, "--dir"])
        .arg(&lab.dir)
        .args(["exec", "host", "--", exe, "prober", "udp", &target, "--duration-ms", "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prober");
    tokio::time::sleep(Duration::from_millis(700)).await;
    lab.ok(&["kill", &owner]);
    let out = prober.wait_with_output().expect("prober output");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_default();
    lab.ok(&["revive", &owner]);
    for _ in 0..300 {
        if lab.probe("host", "udp", &target, 500).is_ok_and(|a| a.split_whitespace().next() == Some(owner.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report["max_gap_ms"].as_f64().unwrap_or(f64::NAN)
}

struct Row {
    nodes: usize,
    cpu_percent: f64,
    datagrams_per_node_s: f64,
    outages: Vec<f64>,
}

async fn measure(exe: &str, nodes: usize, idle: Duration, trials: u64) -> Row {
    let lab = TestLab::start(exe, "flbs", nodes, false);
    let vip = service(&lab).await;
    // Let start-up (hellos, the first plans) pass before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let state = lab.state();
    for node in &state.nodes {
        count_liveness(&node.netns);
    }
    let speakers: Vec<i32> = state.procs.iter().filter(|p| p.role.starts_with("speaker ")).map(|p| p.pid).collect();
    let (cpu_before, started) = (speakers.iter().map(|p| cpu_seconds(*p)).sum::<f64>(), Instant::now());
    tokio::time::sleep(idle).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = speakers.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
    let packets: u64 = state.nodes.iter().map(|n| liveness_packets(&n.netns)).sum();
    let mut outages = Vec::new();
    for _ in 0..trials {
        outages.push(hard_kill(&lab, exe, &vip).await);
    }
    lab.down();
    Row {
        nodes,
        cpu_percent: 100.0 * cpu / elapsed / speakers.len().max(1) as f64,
        datagrams_per_node_s: packets as f64 / elapsed / nodes as f64,
        outages,
    }
}

#[tokio::main]
async fn main() {
    let exe = lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first").display().to_string();
    let sizes: Vec<usize> = std::env::var("FERROLB_SCALE_SIZES")
        .unwrap_or_else(|_| "3,12,40".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(env_or("FERROLB_IDLE_SECS", 20));
    let trials = env_or("FERROLB_SCALE_TRIALS", 3);
    let mut rows = Vec::new();
    for n in sizes {
        eprintln!("{n} nodes: bringing up the lab");
        let row = measure(&exe, n, idle, trials).await;
        eprintln!(
            "{n} nodes: {:.2} % CPU per speaker, {:.0} datagrams/node/s, outages {:?}",
            row.cpu_percent, row.datagrams_per_node_s, row.outages
        );
        rows.push(row);
    }
    let Some(base) = rows.first() else { return };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "| nodes | speaker CPU idle (% of a core, each) | liveness datagrams received /node/s | hard-kill outage, UDP (ms) | ratios to {} nodes (CPU, datagrams, median outage) |",
        base.nodes
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.0} | {} | {:.2}×, {:.2}×, {:.2}× |",
            r.nodes,
            r.cpu_percent,
            r.datagrams_per_node_s,
            r.outages.iter().map(|o| format!("{o:.0}")).collect::<Vec<_>>().join(", "),
            r.cpu_percent / base.cpu_percent,
            r.datagrams_per_node_s / base.datagrams_per_node_s,
            median(&r.outages) / median(&base.outages)
        );
    }
}

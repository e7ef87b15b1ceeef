//! Client-observed failover in the lab: a prober in the `host` namespace sends UDP and opens TCP to the user's
//! DNS Service every 10 ms while the owner node is hard-killed (SIGKILL + heartbeats stopped + link down) or its
//! speaker stopped gracefully (SIGTERM). Reference in the same run: hard kills with the speakers' liveness
//! protocol off, i.e. the Node Ready fallback that lease/Node-based detection gives (the lab's node grace is
//! 6 s; real clusters default to 40 s). Prints p50 / p99 / max per case; asserts nothing about time.
//!
//! IPv6 beside IPv4, same run and same kills: a dual-stack Service (one IPv4 and one IPv6 address, answered by
//! one node) is probed on both addresses while its owner is hard-killed.
//!
//! With FERROLB_BENCH_KUBELETS=1 the same hard kills are then repeated on a lab of real nodes (containerd +
//! kubelet + kube-proxy in nftables mode, ferrolb as the chart's pods and CoreDNS pods on every node, from
//! `make images`; FERROLB_BENCH_KUBELETS=only skips the process lab). Each kill there is measured twice at once:
//! by the echo prober on the address's witness port 7, which kube-proxy leaves alone, so it sees the moment
//! the address's packets reach a live node (the figure the process lab prints), and by a DNS client asking the
//! user's Service on port 53 every 10 ms (a new source port per query, as a resolver does), which also waits
//! for kube-proxy to stop sending queries to the dead node's CoreDNS pod. Both are printed, with their ratio.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench failover`
//! Trials: FERROLB_TRIALS (default 20), FERROLB_REFERENCE_TRIALS (default 5).

use ferrolb_tests::harness::{TestLab, create_yaml, eventually, ingress, is_ready, pods};
use ferrolb_tests::lab::{lifecycle, realnode};
use std::process::{Command, Stdio};
use std::time::Duration;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (percentile(&v, 50.0), percentile(&v, 99.0), v.last().copied().unwrap_or(f64::NAN));
    println!("{name:<44} n={:<3} p50 {p50:>8.0} ms   p99 {p99:>8.0} ms   max {max:>8.0} ms", v.len());
    p50
}

struct Trial {
    udp_ms: f64,
    tcp_ms: f64,
}

fn gap(output: std::process::Output) -> f64 {
    let text = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
    v["max_gap_ms"].as_f64().unwrap_or(f64::NAN)
}

/// One kill of the node answering `targets` (addresses of one owner), probing UDP and TCP 53 on each; one
/// [`Trial`] per target, in order.
async fn trial(lab: &TestLab, exe: &str, targets: &[&str], graceful: bool, window_ms: u64) -> Vec<Trial> {
    let at = |ip: &str| std::net::SocketAddr::new(ip.parse().expect("ip"), 53).to_string();
    let owner = lab.probe("host", "tcp", &at(targets[0]), 2000).expect("owner answers");
    let prober = |proto: &str, target: &str| {
        Command::new(exe)
            .args(["--name", &lab.name, "--dir"])
            .arg(&lab.dir)
            .args(["exec", "host", "--", exe, "prober", proto, &at(target), "--duration-ms", &window_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("prober")
    };
    let probers: Vec<_> = targets.iter().map(|t| (prober("udp", t), prober("tcp", t))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    if graceful {
        let state = lab.state();
        let pid = state.speaker(&owner).expect("speaker").pid;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    } else {
        lab.ok(&["kill", &owner]);
    }
    let results = probers
        .into_iter()
        .map(|(udp, tcp)| Trial {
            udp_ms: gap(udp.wait_with_output().expect("udp prober")),
            tcp_ms: gap(tcp.wait_with_output().expect("tcp prober")),
        })
        .collect();
    lab.ok(&["revive", &owner]);
    // Let ownership settle back (and the revived node's heartbeats be heard) before the next trial; a real
    // node first restarts containerd, its kubelet and the speaker pod.
    for _ in 0..300 {
        if lab.probe("host", "tcp", &at(targets[0]), 500).as_deref() == Ok(owner.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    results
}

/// A dual-stack DNS Service on the same backends as the user's; returns its IPv4 and IPv6 addresses once both
/// answer.
async fn dual_stack_service(lab: &TestLab) -> (String, String) {
    let client = lab.admin().await;
    let dual = "apiVersion: v1\nkind: Service\nmetadata: {name: dns-dual, namespace: kube-system}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {k8s-app: kube-dns}\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]\n";
    create_yaml(&client, dual).await.expect("dual-stack Service");
    let mut ips = Vec::new();
    for _ in 0..300 {
        ips = ingress(&client, "kube-system", "dns-dual").await;
        if ips.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ips.len(), 2, "dns-dual got {ips:?}");
    for ip in &ips {
        let at = std::net::SocketAddr::new(ip.parse().expect("ip"), 53).to_string();
        for _ in 0..300 {
            if lab.probe("host", "tcp", &at, 500).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (ips[0].clone(), ips[1].clone())
}

/// The user's DNS Service on a backend pod per node; returns its address once `answer_port` answers TCP from
/// the host (53 where the echo server serves the Service's port, the witness port under kube-proxy).
async fn dns_service(lab: &TestLab, backend_image: &str, answer_port: u16) -> String {
    let client = lab.admin().await;
    let setup = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.254, 2001:db8:19::1-2001:db8:19::ff]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n";
    create_yaml(&client, setup).await.expect("pool");
    for n in 1..=3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: dns-{n}, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: dns, image: {backend_image}}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    let dns = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed/dns-svc-lb.yaml"),
    )
    .expect("seed");
    create_yaml(&client, &dns).await.expect("dns");
    let mut vip = String::new();
    for _ in 0..300 {
        if let Some(ip) = ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().next() {
            vip = ip;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the backends are Ready nobody announces: wait for an answer before measuring.
    for _ in 0..300 {
        if lab.probe("host", "tcp", &format!("{vip}:{answer_port}"), 500).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    vip
}

#[tokio::main]
async fn main() {
    let exe = lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first").display().to_string();
    let trials = env_or("FERROLB_TRIALS", 20);
    match std::env::var("FERROLB_BENCH_KUBELETS").as_deref() {
        Ok("only") => {
            real_nodes(&exe, trials, None).await;
            return;
        }
        Ok(_) => {
            let h = process_lab(&exe, trials).await;
            real_nodes(&exe, trials, Some(h)).await;
        }
        Err(_) => {
            process_lab(&exe, trials).await;
        }
    }
}

/// The process lab's cases; returns the hard-kill UDP p50.
async fn process_lab(exe: &str, trials: usize) -> f64 {
    let exe = exe.to_string();
    let lab = TestLab::start(&exe, "flbf", 3, false);
    let vip = dns_service(&lab, "lab/dns", 53).await;
    let reference_trials = env_or("FERROLB_REFERENCE_TRIALS", 5);
    println!("user's DNS Service at {vip}; probing UDP and TCP 53 every 10 ms from the host namespace");

    let mut hard = Vec::new();
    for i in 0..trials {
        let t = trial(&lab, &exe, &[&vip], false, 3000).await.remove(0);
        eprintln!("hard kill {:>2}/{trials}: udp {:>6.0} ms, tcp {:>6.0} ms", i + 1, t.udp_ms, t.tcp_ms);
        hard.push(t);
    }
    let mut graceful = Vec::new();
    for i in 0..trials {
        let t = trial(&lab, &exe, &[&vip], true, 2500).await.remove(0);
        eprintln!("graceful  {:>2}/{trials}: udp {:>6.0} ms, tcp {:>6.0} ms", i + 1, t.udp_ms, t.tcp_ms);
        graceful.push(t);
    }
    let (dual4, dual6) = dual_stack_service(&lab).await;
    println!("dual-stack Service at {dual4} and {dual6}; both probed through each kill of their owner");
    let (mut hard4, mut hard6) = (Vec::new(), Vec::new());
    for i in 0..trials {
        let mut t = trial(&lab, &exe, &[&dual4, &dual6], false, 3000).await;
        let (v4, v6) = (t.remove(0), t.remove(0));
        eprintln!(
            "dual-stack hard kill {:>2}/{trials}: IPv4 udp {:>6.0} tcp {:>6.0} ms, IPv6 udp {:>6.0} tcp {:>6.0} ms",
            i + 1,
            v4.udp_ms,
            v4.tcp_ms,
            v6.udp_ms,
            v6.tcp_ms
        );
        hard4.push(v4);
        hard6.push(v6);
    }

    // Reference: the same hard kills with the liveness protocol off (Node Ready fallback only).
    let mut state = lab.state();
    state.speaker_gossip = false;
    state.save().expect("state");
    for node in ["node-1", "node-2", "node-3"] {
        let pid = state.speaker(node).expect("speaker").pid;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        lifecycle::start_speaker(&mut state, node).await.expect("restart speaker");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut reference = Vec::new();
    for i in 0..reference_trials {
        let t = trial(&lab, &exe, &[&vip], false, 15000).await.remove(0);
        eprintln!("reference {:>2}/{reference_trials}: udp {:>6.0} ms, tcp {:>6.0} ms", i + 1, t.udp_ms, t.tcp_ms);
        reference.push(t);
    }

    println!();
    let h = summary("hard kill, UDP outage", hard.iter().map(|t| t.udp_ms).collect());
    summary("hard kill, TCP outage", hard.iter().map(|t| t.tcp_ms).collect());
    summary("graceful stop (SIGTERM), UDP outage", graceful.iter().map(|t| t.udp_ms).collect());
    summary("graceful stop (SIGTERM), TCP outage", graceful.iter().map(|t| t.tcp_ms).collect());
    let d4 = summary("dual-stack, hard kill, IPv4 UDP outage", hard4.iter().map(|t| t.udp_ms).collect());
    summary("dual-stack, hard kill, IPv4 TCP outage", hard4.iter().map(|t| t.tcp_ms).collect());
    let d6 = summary("dual-stack, hard kill, IPv6 UDP outage", hard6.iter().map(|t| t.udp_ms).collect());
    summary("dual-stack, hard kill, IPv6 TCP outage", hard6.iter().map(|t| t.tcp_ms).collect());
    let r = summary("reference: Node Ready fallback, UDP outage", reference.iter().map(|t| t.udp_ms).collect());
    summary("reference: Node Ready fallback, TCP outage", reference.iter().map(|t| t.tcp_ms).collect());
    println!("\nhard-kill UDP p50: reference / ferrolb = {:.1}x", r / h);
    println!("dual-stack hard-kill UDP p50: IPv6 / IPv4 = {:.2}x", d6 / d4);

    lab.down();
    h
}

/// One real-node kill measured at once by the echo probers (witness port) and the DNS client (port 53).
struct RealTrial {
    echo_udp_ms: f64,
    echo_tcp_ms: f64,
    dns_ms: f64,
    dns_lost: f64,
}

/// Real nodes with kube-proxy: the user's DNS Service served by CoreDNS on every node; `process_udp_p50` is
/// the process lab's hard-kill figure of this run, when it ran.
async fn real_nodes(exe: &str, trials: usize, process_udp_p50: Option<f64>) {
    let real = TestLab::start_with(exe, "flbfk", 3, &["--kubelets", "--kube-proxy"]);
    let client = real.admin().await;
    let witness_port = ferrolb_tests::lab::node::WITNESS_PORT;
    let vip = dns_service(&real, realnode::DNS_IMAGE, witness_port).await;
    let witness = format!("{vip}:{witness_port}");
    eventually("every CoreDNS pod Ready", Duration::from_secs(120), || async {
        (ready_dns_pods(&client).await == 3).then_some(())
    })
    .await;
    let dns = format!("{vip}:53");
    println!(
        "\nreal nodes (containerd + kubelet + kube-proxy nftables, ferrolb as the chart's pods, CoreDNS on each node): {vip}"
    );
    println!("each kill measured at once: echo prober on {witness} (UDP and TCP) and a DNS client on {dns}");
    let window_ms = 10_000;
    let mut results = Vec::new();
    for i in 0..trials {
        let owner = real.probe("host", "tcp", &witness, 2000).expect("the owner's echo answers");
        let probers = [
            real.start_prober("udp", &witness, window_ms),
            real.start_prober("tcp", &witness, window_ms),
            real.start_prober("dns", &dns, window_ms),
        ];
        real.ok(&["kill", &owner]);
        let [udp, tcp, dns_client] = probers.map(|p| p.report());
        let t = RealTrial {
            echo_udp_ms: udp["max_gap_ms"].as_f64().unwrap_or(f64::NAN),
            echo_tcp_ms: tcp["max_gap_ms"].as_f64().unwrap_or(f64::NAN),
            dns_ms: dns_client["max_gap_ms"].as_f64().unwrap_or(f64::NAN),
            dns_lost: dns_client["sent"].as_f64().unwrap_or(f64::NAN) - dns_client["answered"].as_f64().unwrap_or(0.0),
        };
        eprintln!(
            "real-node hard kill {:>2}/{trials} of {owner}: echo udp {:>5.0} ms, tcp {:>5.0} ms; DNS client {:>5.0} ms ({} of {} queries unanswered)",
            i + 1,
            t.echo_udp_ms,
            t.echo_tcp_ms,
            t.dns_ms,
            t.dns_lost,
            dns_client["sent"],
        );
        results.push(t);
        real.ok(&["revive", &owner]);
        // Settled: the owner answers again and every CoreDNS pod is Ready, so the next kill starts from the
        // same state (a revived node restarts containerd, its kubelet, the speaker and its CoreDNS pod).
        eventually("the revived owner answering and every CoreDNS pod Ready", Duration::from_secs(120), || async {
            let back = real.probe("host", "tcp", &witness, 500).as_deref() == Ok(owner.as_str());
            (back && ready_dns_pods(&client).await == 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    println!();
    let echo = summary("real nodes: hard kill, echo UDP outage", results.iter().map(|t| t.echo_udp_ms).collect());
    summary("real nodes: hard kill, echo TCP outage", results.iter().map(|t| t.echo_tcp_ms).collect());
    let dns_p50 = summary("real nodes: hard kill, DNS-client outage", results.iter().map(|t| t.dns_ms).collect());
    let mut lost: Vec<f64> = results.iter().map(|t| t.dns_lost).collect();
    lost.sort_by(f64::total_cmp);
    // The queries beyond the outage are those kube-proxy still sent to the dead node's CoreDNS pod until its
    // Node was marked NotReady (the lab's grace period is 6 s; a real cluster's default is 40 s).
    println!(
        "{:<44} n={:<3} p50 {:>8.0}      max {:>8.0}      (of ~{} queries in {} s)",
        "real nodes: DNS queries unanswered per kill",
        lost.len(),
        percentile(&lost, 50.0),
        lost.last().copied().unwrap_or(f64::NAN),
        window_ms / 10,
        window_ms / 1000
    );
    println!("hard-kill p50 on real nodes: DNS client / echo UDP = {:.2}x", dns_p50 / echo);
    if let Some(h) = process_udp_p50 {
        println!("hard-kill echo UDP p50: real nodes / process lab = {:.2}x", echo / h);
    }
    real.down();
}

/// CoreDNS pods Ready (the bench runs one per node).
async fn ready_dns_pods(client: &kube::Client) -> usize {
    pods(client, "kube-system", "k8s-app=kube-dns").await.iter().filter(|p| is_ready(p)).count()
}

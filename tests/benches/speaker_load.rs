//! The speaker under load, in the lab (3 nodes, chart installed, speakers on chart tokens):
//! - ARP reply latency of the speaker (userspace, raw socket) beside the kernel's own responder (a node's
//!   InternalIP), measured from the host namespace in the same run: p50 / p99;
//! - speaker and controller RSS with 1 Service and with N, and their own (anonymous) memory per Service added;
//! - ownership changes while both cores are busy for FERROLB_STRESS_SECS (default 300) — must be 0;
//! - with FERROLB_SERVICES=N (default 1,000): the speakers' idle CPU (nothing changes but node heartbeats),
//!   their planning time per wake (`ferrolb_speaker_plan_seconds`), and the hard-kill failover of one probed
//!   Service with N present (FERROLB_FAILOVER_TRIALS, default 5), beside the same Service's failover measured in
//!   the same run before the other N - 1 were created (the 1-Service reference; the ratio of the p50s is printed).
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench speaker_load`
//! (`FERROLB_KEEP_LOGS=DIR` keeps the speakers' and the controller's logs after the failover trials;
//! `FERROLB_SPEAKER_BINARY=PATH` runs that speaker build instead, e.g. `make images`' static
//! `target/x86_64-unknown-linux-gnu/release/ferrolb-speaker`, the one the image ships).
//! To compare with an older speaker, run the same command on that commit: the figures are absolute.

use ferrolb_tests::harness::{TestLab, create_yaml, ingress};
use ferrolb_tests::lab::lifecycle;
use futures::StreamExt;
use std::time::{Duration, Instant};

/// A speaker's `ferrolb_speaker_plan_seconds` (sum, count), scraped inside its node's namespace.
fn plan_stats(lab: &TestLab, state: &ferrolb_tests::lab::State, node: &str) -> (f64, f64) {
    let port = state.speaker(node).and_then(|p| p.port);
    let Some(port) = port else { return (f64::NAN, f64::NAN) };
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = lab.cli(&["exec", node, "--", "curl", "-s", "--max-time", "5", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    let value =
        |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    (
        value("ferrolb_speaker_plan_seconds_sum").unwrap_or(f64::NAN),
        value("ferrolb_speaker_plan_seconds_count").unwrap_or(f64::NAN),
    )
}

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

/// One `/proc/<pid>/status` memory line (`VmRSS`, `RssAnon`, `RssFile`) in MiB.
fn status_mib(pid: i32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// RSS split into the process's own memory (anonymous: heap, stacks) and file-backed pages (the mapped binary and
/// libraries, shared with every other process mapping the same file).
fn rss_line(pid: i32) -> String {
    format!(
        "RSS {:>6.1} MiB = own (anonymous) {:>5.1} MiB + mapped files {:>5.1} MiB",
        status_mib(pid, "VmRSS"),
        status_mib(pid, "RssAnon"),
        status_mib(pid, "RssFile")
    )
}

/// The speakers and the controller running now, by role (killed processes stay in the lab's list: the newest of
/// each role is the running one).
fn running(state: &ferrolb_tests::lab::State) -> Vec<(String, i32)> {
    let roles = state.nodes.iter().map(|n| format!("speaker {}", n.name)).chain(["controller-0".to_string()]);
    roles.filter_map(|role| state.procs.iter().rev().find(|p| p.role == role).map(|p| (role, p.pid))).collect()
}

/// Service `web-NNNN` of the load namespace. The first one created gets the pool's first address, inside the
/// host's static route (198.19.0.0/24), so the prober reaches it.
fn web_service(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i:04}, namespace: load}}\nspec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
    )
}

/// Waits until the lab's processes (control plane, controller, speakers) together use less than a quarter of a
/// core over two seconds (idle, with heartbeats, they use well under that), at most `QUIET_WAIT`; returns how long that took. After a revived node takes its addresses
/// back, thousands of status writes and Events keep the API server busy for a while; a trial started then would
/// measure a failover on a saturated machine, and the 1-Service reference never sees one. Every trial, with 1
/// Service or N, starts from a quiet lab.
fn wait_until_quiet(lab: &TestLab) -> Duration {
    const QUIET_WAIT: Duration = Duration::from_secs(120);
    let started = Instant::now();
    let pids: Vec<i32> = lab.state().procs.iter().map(|p| p.pid).collect();
    let total = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    while started.elapsed() < QUIET_WAIT {
        let before = total();
        std::thread::sleep(Duration::from_secs(2));
        if total() - before < 0.5 {
            break;
        }
    }
    started.elapsed()
}

/// Hard-kills the node answering `vip` `trials` times (reviving it in between) while a prober connects over TCP
/// every 10 ms, each from a quiet lab; prints each client-seen outage and a summary, and returns the outages (ms),
/// sorted.
fn hard_kills(lab: &TestLab, exe: &str, vip: &str, trials: u64, services: usize) -> Vec<f64> {
    let target = format!("{vip}:80");
    // The owner must answer before it can be killed (the first Service may still be being announced).
    for _ in 0..600 {
        if lab.probe("host", "tcp", &target, 500).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut gaps = Vec::new();
    for trial in 1..=trials {
        let waited = wait_until_quiet(lab);
        let owner = lab.probe("host", "tcp", &target, 2000).expect("owner answers");
        let prober = std::process::Command::new(exe)
            .args(["--name", &lab.name, "--dir"])
            .arg(&lab.dir)
            .args(["exec", "host", "--", exe, "prober", "tcp", &target, "--duration-ms", "4000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("prober");
        std::thread::sleep(Duration::from_millis(700));
        lab.ok(&["kill", &owner]);
        let out = prober.wait_with_output().expect("prober");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let gap = report["max_gap_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "hard kill {trial}/{trials} of {owner} with {services} Services: TCP outage {gap:.0} ms (lab quiet after {:.0?})",
            waited
        );
        gaps.push(gap);
        lab.ok(&["revive", &owner]);
        for _ in 0..300 {
            if lab.probe("host", "tcp", &target, 500).as_deref() == Ok(owner.as_str()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    gaps.sort_by(f64::total_cmp);
    println!(
        "hard-kill TCP outage with {services} Services: n={} p50 {:.0} ms  max {:.0} ms",
        gaps.len(),
        percentile(&gaps, 50.0),
        gaps.last().copied().unwrap_or(f64::NAN)
    );
    gaps
}

#[tokio::main]
async fn main() {
    let exe = lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first").display().to_string();
    // FERROLB_SPEAKER_BINARY: run another speaker build on every node, e.g. the static one `make images` ships.
    let speaker_binary = std::env::var("FERROLB_SPEAKER_BINARY").ok();
    let flags: Vec<&str> = speaker_binary.iter().flat_map(|path| ["--speaker-binary", path.as_str()]).collect();
    let lab = TestLab::start_with(&exe, "flbl", 3, &flags);
    let client = lab.admin().await;
    let services = usize::try_from(env_or("FERROLB_SERVICES", 1000)).unwrap_or(1000).max(1);
    let setup = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.0/18], avoidBuggyIPs: true}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: load}\n";
    create_yaml(&client, setup).await.expect("setup");
    for n in 1..=3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{n}, namespace: load, labels: {{app: web}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: web, image: lab/web}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    // The reference first: the same Service, the same lab, alone.
    create_yaml(&client, &web_service(0)).await.expect("service");
    let vip = loop {
        if let Some(ip) = ingress(&client, "load", "web-0000").await.into_iter().next() {
            break ip;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Memory with one Service, before any kill (a revived speaker starts afresh): the idle RSS and the base the
    // per-Service figure is taken from.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let one_service_own: Vec<(String, f64)> = running(&lab.state())
        .into_iter()
        .map(|(role, pid)| {
            println!("{role:<16} with 1 Service: {}", rss_line(pid));
            (role, status_mib(pid, "RssAnon"))
        })
        .collect();
    let trials = env_or("FERROLB_FAILOVER_TRIALS", 5);
    let alone = hard_kills(&lab, &exe, &vip, trials, 1);
    println!("creating {} more LoadBalancer Services with ready endpoints on all three nodes", services - 1);
    futures::stream::iter(1..services)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            async move {
                create_yaml(&client, &web_service(i)).await.expect("service");
            }
        })
        .await;
    let started = Instant::now();
    let last = format!("web-{:04}", services - 1);
    loop {
        if !ingress(&client, "load", &last).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all {services} addressed after {:.1?}", started.elapsed());
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
    let now_running = running(&state);
    let speakers: Vec<(String, i32)> = now_running.iter().filter(|(r, _)| r.starts_with("speaker")).cloned().collect();
    let own_mib = |pid: i32| status_mib(pid, "RssAnon");
    for (role, pid) in &now_running {
        println!("{role:<16} with {services} Services: {}", rss_line(*pid));
    }
    // Own memory per Service: what the process's anonymous memory grew by from one Service to N, per Service
    // added. The base is the mean of the one-Service readings (a speaker killed in the reference trials was
    // restarted, so a per-process base would not be its own).
    for (prefix, goal) in [("speaker", 4.0), ("controller", 3.0)] {
        let base: Vec<f64> =
            one_service_own.iter().filter(|(r, _)| r.starts_with(prefix)).map(|(_, mib)| *mib).collect();
        let base = base.iter().sum::<f64>() / base.len().max(1) as f64;
        for (role, pid) in now_running.iter().filter(|(r, _)| r.starts_with(prefix)) {
            let per = (own_mib(*pid) - base) * 1024.0 / (services.saturating_sub(1).max(1)) as f64;
            println!("{role:<16} own memory per Service: {per:.2} KiB (goal: at most {goal} KiB)");
        }
    }

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

    let window = Duration::from_secs(20);
    let cpu_before: Vec<f64> = state
        .nodes
        .iter()
        .map(|n| {
            speakers
                .iter()
                .find(|(r, _)| *r == format!("speaker {}", n.name))
                .map_or(f64::NAN, |(_, pid)| cpu_seconds(*pid))
        })
        .collect();
    let plans_before: Vec<(f64, f64)> = state.nodes.iter().map(|n| plan_stats(&lab, &state, &n.name)).collect();
    tokio::time::sleep(window).await;
    for (node, cpu_before) in state.nodes.iter().zip(cpu_before) {
        let role = format!("speaker {}", node.name);
        let Some((_, pid)) = speakers.iter().find(|(r, _)| *r == role) else { continue };
        let share = (cpu_seconds(*pid) - cpu_before) / window.as_secs_f64() * 100.0;
        println!("{role:<16} idle CPU {share:>5.1} % of a core over {window:?} (nothing changes but heartbeats)");
    }
    for (node, (sum0, count0)) in state.nodes.iter().zip(plans_before) {
        let (sum, count) = plan_stats(&lab, &state, &node.name);
        let wakes = count - count0;
        let mean_ms = if wakes > 0.0 { (sum - sum0) / wakes * 1000.0 } else { f64::NAN };
        let lifetime_ms = sum / count * 1000.0;
        println!(
            "speaker {:<8} plan per wake: {mean_ms:.2} ms over {wakes:.0} wakes in the window; {lifetime_ms:.2} ms over all {count:.0} (while Services were created too)",
            node.name
        );
    }

    let crowded = hard_kills(&lab, &exe, &vip, trials, services);
    println!(
        "hard-kill TCP outage p50, {services} Services / 1 Service: {:.2}x (goal: at most 1.1x)",
        percentile(&crowded, 50.0) / percentile(&alone, 50.0)
    );
    // The lab's logs go with the lab; FERROLB_KEEP_LOGS=DIR keeps a copy to read the takeovers' timelines.
    if let Ok(dir) = std::env::var("FERROLB_KEEP_LOGS") {
        let state = lab.state();
        let _ = std::fs::create_dir_all(&dir);
        for role in state.nodes.iter().map(|n| format!("speaker {}", n.name)).chain(["controller".to_string()]) {
            let copied = std::fs::copy(state.log(&role), format!("{dir}/{}.log", role.replace(' ', "-")));
            println!("log of {role} kept in {dir}: {}", if copied.is_ok() { "yes" } else { "no" });
        }
    }

    let secs = env_or("FERROLB_STRESS_SECS", 300);
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

//! Who answers ARP while the speakers' liveness channel misbehaves, ferrolb beside real MetalLB (`metallb::VERSION`) in the same
//! run. Faults, on port 7946 of every node (nftables inside the node namespaces; the kernel has no netem): UDP and
//! TCP blocked for FERROLB_BLOCK_SECS (60) then healed (watched FERROLB_HEAL_SECS, 60), 15 % and 30 % random loss
//! of UDP for FERROLB_LOSS_SECS (120) each, and (ferrolb only: libfaketime cannot step a Go binary, which reads the clock
//! through the vDSO) one speaker's wall clock stepped back 60 s. Three Services; each address is asked for from the
//! `host` namespace every 100 ms. Printed per fault and system: ownership changes (the single answering MAC
//! differs from the previous one), time with several MACs answering, time with none. Asserts nothing.
//!
//! For ferrolb, the speakers' own counts are printed beside each loss phase too: takeovers (addresses that changed
//! hands) and probes sent (each false verdict of death costs probes the owner answers; docs/design.md §5.5).
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench faults`
//! (~14 min; MetalLB is built once with `go install`, about 3 min, into /var/cache/ferrolb). `make soak` runs it
//! with FERROLB_LOSS_SECS=300, the long statistical loss phases tests/tests/faults.rs keeps short (~26 min).

use ferrolb_tests::harness::{
    TestLab, arpwatch, create_yaml, eventually, ingress, metric_sum, speaker_metrics, total_takeovers,
};
use ferrolb_tests::lab::lifecycle;
use ferrolb_tests::metallb;
use std::time::Duration;

const INTERVAL_MS: u64 = 100;

fn secs(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What all addresses went through during one fault.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    changes: u64,
    several_ms: u64,
    unanswered_ms: u64,
    last_several_ms: u64,
}

fn watch_all(lab: &TestLab, vips: &[String], seconds: u64) -> Outcome {
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            vips.iter().map(|ip| s.spawn(move || arpwatch(lab, ip, INTERVAL_MS, seconds * 1000))).collect();
        handles.into_iter().map(|h| h.join().expect("arpwatch")).collect()
    });
    reports.iter().fold(Outcome::default(), |o, r| Outcome {
        changes: o.changes + r.changes,
        several_ms: o.several_ms + r.several * INTERVAL_MS,
        unanswered_ms: o.unanswered_ms + r.unanswered * INTERVAL_MS,
        last_several_ms: o.last_several_ms.max(r.last_several_ms),
    })
}

/// A pool, a backend pod on every node and three Services; returns their addresses once each is answered.
async fn workload(lab: &TestLab) -> Vec<String> {
    let client = lab.admin().await;
    let setup = ferrolb_tests::harness::LAB_POOL;
    create_yaml(&client, setup).await.expect("pool");
    for n in 1..=3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{n}, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    let mut vips = Vec::new();
    for n in 1..=3 {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{n}, namespace: default}}\nspec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        create_yaml(&client, &svc).await.expect("service");
        let name = format!("web-{n}");
        let ip = eventually(&format!("an address for {name}"), Duration::from_secs(60), || async {
            ingress(&client, "default", &name).await.into_iter().next()
        })
        .await;
        vips.push(ip);
    }
    // Settled: every address answered by exactly one MAC for 5 s in a row.
    for _ in 0..60 {
        let o = watch_all(lab, &vips, 5);
        if o.changes == 0 && o.several_ms == 0 && o.unanswered_ms == 0 {
            return vips;
        }
    }
    panic!("the addresses never settled on one answerer each");
}

fn row(fault: &str, system: &str, o: Outcome) {
    println!(
        "{fault:<28} {system:<16} changes {:>4}   several answering {:>7.1} s   none answering {:>7.1} s",
        o.changes,
        o.several_ms as f64 / 1000.0,
        o.unanswered_ms as f64 / 1000.0
    );
}

/// Probes sent by every node's ferrolb speaker so far.
fn probes(lab: &TestLab) -> f64 {
    lab.state()
        .nodes
        .iter()
        .map(|n| metric_sum(&speaker_metrics(lab, &n.name), "ferrolb_speaker_arp_probes_total"))
        .sum()
}

/// Runs every fault on one system; `clock_step` restarts that node's speaker under libfaketime first (ferrolb
/// only, as are the speakers' own counters it prints).
async fn faults(system: &str, lab: &TestLab, vips: &[String], clock_step: Option<&str>) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let (block, heal, loss) =
        (secs("FERROLB_BLOCK_SECS", 60), secs("FERROLB_HEAL_SECS", 60), secs("FERROLB_LOSS_SECS", 120));
    // Blocked for both protocols: memberlist falls back to TCP when UDP fails (ferrolb uses UDP only).
    lab.ok(&["fault", "all", "--loss-percent", "100", "--tcp"]);
    let blocked = watch_all(lab, vips, block);
    lab.ok(&["fault", "all", "--clear"]);
    row("7946 blocked (UDP+TCP)", system, blocked);
    out.push(("blocked".to_string(), blocked));
    let healed = watch_all(lab, vips, heal);
    row("after healing", system, healed);
    println!(
        "{:<28} {system:<16} last sample with several answering: {:.1} s after healing",
        "",
        healed.last_several_ms as f64 / 1000.0
    );
    out.push(("healed".to_string(), healed));
    for pct in [15, 30] {
        let counted = clock_step.map(|_| (total_takeovers(lab), probes(lab)));
        lab.ok(&["fault", "all", "--loss-percent", &pct.to_string()]);
        let lossy = watch_all(lab, vips, loss);
        lab.ok(&["fault", "all", "--clear"]);
        row(&format!("{pct} % loss on UDP 7946"), system, lossy);
        if let Some((takeovers, probes_before)) = counted {
            println!(
                "{:<28} {system:<16} speakers counted {} takeovers, sent {} probes in {loss} s",
                "",
                total_takeovers(lab) - takeovers,
                probes(lab) - probes_before
            );
        }
        out.push((format!("{pct}% loss"), lossy));
        // Let any straggling effect of the fault end before the next one.
        watch_all(lab, vips, 5);
    }
    if let Some(node) = clock_step {
        let clock = lab.restart_speaker_with_fake_clock(node);
        // The restart itself moves its addresses away and back; measure after that.
        tokio::time::sleep(Duration::from_secs(10)).await;
        std::fs::write(&clock, "-60s\n").expect("step the clock");
        let stepped = watch_all(lab, vips, 30);
        row("one clock stepped back 60 s", system, stepped);
        out.push(("clock".to_string(), stepped));
    }
    out
}

#[tokio::main]
async fn main() {
    let exe = lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first").display().to_string();
    println!("faults on UDP 7946 of all 3 nodes; 3 addresses asked for every {INTERVAL_MS} ms from the host namespace");

    let ours = {
        let lab = TestLab::start(&exe, "flbz", 3, false);
        let vips = workload(&lab).await;
        println!("ferrolb: addresses {vips:?}");
        faults("ferrolb", &lab, &vips, Some("node-1")).await
    };

    let theirs = match metallb::ensure_built() {
        Ok(binaries) => {
            let lab = TestLab::start(&exe, "mlbq", 3, true);
            let running = metallb::start(&lab, &exe, &binaries).await.expect("MetalLB starts");
            let vips = workload(&lab).await;
            println!("MetalLB {}: addresses {vips:?}", metallb::VERSION);
            let rows = faults(&format!("MetalLB {}", metallb::VERSION), &lab, &vips, None).await;
            println!(
                "{:<28} MetalLB: not run (Go reads the clock through the vDSO; libfaketime cannot step it)",
                "one clock stepped back 60 s"
            );
            drop(running);
            rows
        }
        Err(e) => {
            println!("MetalLB not run: {e}");
            Vec::new()
        }
    };

    println!("\nsummary (ownership changes / seconds with several answering), same run:");
    for (fault, o) in &ours {
        let reference = theirs.iter().find(|(f, _)| f == fault).map(|(_, m)| *m);
        match reference {
            Some(m) => println!(
                "{fault:<12} ferrolb {:>3} / {:>6.1} s    MetalLB {:>3} / {:>6.1} s",
                o.changes,
                o.several_ms as f64 / 1000.0,
                m.changes,
                m.several_ms as f64 / 1000.0
            ),
            None => println!(
                "{fault:<12} ferrolb {:>3} / {:>6.1} s    MetalLB n/a",
                o.changes,
                o.several_ms as f64 / 1000.0
            ),
        }
    }
}

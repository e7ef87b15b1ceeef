//! The liveness protocol at 100, 1,000 and 5,000 speakers, in the deterministic simulation
//! (`ferrolb_speaker::simulation`: the real state machines, a simulated network, a virtual clock), beside the
//! all-to-all design it replaced, in the same run:
//! - datagrams sent and received per speaker per second (no loss);
//! - how long after a hard kill every surviving speaker holds the victim dead (p50 / p99 / max);
//! - wrong verdicts (a speaker coming to hold a live one dead) and wrong convictions (verdicts declared about
//!   live speakers) under 15 % and 30 % random loss of liveness datagrams;
//! - the heap one speaker holds for its view of N speakers (a counting allocator).
//!
//! Above 1,000 speakers the ring starts warm (as if every start-up hello had been answered; see
//! `Setup::warm_start`); the rows up to 1,000 simulate the hellos.
//!
//! Run: `cargo bench -p ferrolb-speaker --bench liveness_scale`. `FERROLB_SIM_SIZES` (default
//! `100,1000,5000`), `FERROLB_SIM_LOSS_SECS` (simulated seconds of each loss run, default 300) and
//! `FERROLB_SIM_MESH_MAX` (largest all-to-all run simulated, default 1000; larger ones print the exact
//! 20·(N−1) instead, as a simulation would need 20·N² events per second) change the run.

use ferrolb_speaker::model::liveness::{Kind, Message};
use ferrolb_speaker::model::membership::{Config, Membership, Ring};
use ferrolb_speaker::simulation::{Design, Report, Setup, simulate};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts allocations (the `stats_alloc` crate), for the heap a speaker's view holds.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
}

/// The heap one speaker holds for its view of `n` speakers, each heard once with one MAC.
fn memory_per_speaker(n: usize) -> isize {
    let names: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("node-{i:05}"))).collect();
    let region = Region::new(ALLOCATOR);
    let now = Instant::now();
    let mut m = Membership::new("node-00000", Config::new(Duration::from_millis(200)), now);
    let _ = m.set_ring(Arc::new(Ring::new(names.iter().cloned())));
    for (i, name) in names.iter().enumerate().skip(1) {
        let msg = Message {
            kind: Kind::Alive,
            node: name.to_string(),
            incarnation: 1,
            counter: 1,
            macs: vec![[2, 0, 0, 0, (i >> 8) as u8, i as u8]],
            legacy: false,
        };
        let _ = m.receive(&msg, now);
    }
    let _ = m.tick(now);
    let change = region.change();
    let used = change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated;
    drop(m);
    used
}

fn row(design: &str, n: usize, r: &Report, wall: Duration) {
    println!(
        "| {design} | {n} | {:.1} | {:.1} | {} | {} / {} / {} | {} | {:.1} s |",
        r.sent_per_node_s,
        r.received_per_node_s,
        r.max_received_in_a_second,
        ms(r.detection_percentile(50.0)),
        ms(r.detection_percentile(99.0)),
        ms(r.detection.last().copied()),
        r.never_learned,
        wall.as_secs_f64()
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FERROLB_SIM_SIZES")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let loss_secs = env_or("FERROLB_SIM_LOSS_SECS", 300);
    let mesh_max = env_or("FERROLB_SIM_MESH_MAX", 1000) as usize;
    let detect_secs = Duration::from_secs(10);
    println!("## No loss, 3 hard kills in {} simulated seconds (0.1–1 ms one-way delay)\n", detect_secs.as_secs());
    println!(
        "| design | speakers | sent /speaker/s | received /speaker/s | max received in 1 s | detection p50 / p99 / max (ms) | never learned | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let started = Instant::now();
        let ring = simulate(Setup { kills: 3, warm_start: n > 1000, ..Setup::new(Design::Ring, n, detect_secs) });
        row("ring of 3 watchers", n, &ring, started.elapsed());
        if n <= mesh_max {
            let started = Instant::now();
            let mesh = simulate(Setup { kills: 3, ..Setup::new(Design::AllToAll, n, Duration::from_secs(3)) });
            row("all-to-all (before)", n, &mesh, started.elapsed());
            println!(
                "|  | ratio all-to-all / ring | {:.1}× | {:.1}× | | | | |",
                mesh.sent_per_node_s / ring.sent_per_node_s,
                mesh.received_per_node_s / ring.received_per_node_s
            );
        } else {
            let each = 20.0 * (n as f64 - 1.0);
            println!("| all-to-all (before), computed | {n} | {each:.0} | {each:.0} | | | | |");
        }
    }
    println!("\n## Random loss of liveness datagrams, {loss_secs} simulated seconds, nobody killed\n");
    println!(
        "| design | speakers | loss | wrong convictions | wrong verdicts (speakers misled) | sent /speaker/s | received /speaker/s | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for loss in [0.15, 0.30] {
            let setup =
                |design| Setup { loss, warm_start: n > 1000, ..Setup::new(design, n, Duration::from_secs(loss_secs)) };
            let started = Instant::now();
            let r = simulate(setup(Design::Ring));
            println!(
                "| ring of 3 watchers | {n} | {:.0} % | {} | {} | {:.1} | {:.1} | {:.1} s |",
                loss * 100.0,
                r.wrong_convictions,
                r.wrong_verdicts,
                r.sent_per_node_s,
                r.received_per_node_s,
                started.elapsed().as_secs_f64()
            );
            // The mesh costs 20·N² events per simulated second: simulated at the smallest size only, for the ratio.
            if n == sizes[0] && n <= mesh_max {
                let started = Instant::now();
                let m = simulate(setup(Design::AllToAll));
                println!(
                    "| all-to-all (before) | {n} | {:.0} % | {} | {} | {:.1} | {:.1} | {:.1} s |",
                    loss * 100.0,
                    m.wrong_convictions,
                    m.wrong_verdicts,
                    m.sent_per_node_s,
                    m.received_per_node_s,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!("\n## Heap one speaker holds for its liveness view\n");
    println!("| speakers | bytes | bytes per peer |");
    println!("|---|---|---|");
    for &n in &sizes {
        let bytes = memory_per_speaker(n);
        println!("| {n} | {bytes} | {:.0} |", bytes as f64 / n as f64);
    }
}

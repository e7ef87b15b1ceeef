//! The liveness protocol at 100, 1,000 and 5,000 speakers, in the deterministic simulation
//! (`ferrolb_speaker::simulation`: the real state machines, a simulated network, a virtual clock), beside the
//! all-to-all design it replaced, in the same run:
//! - datagrams sent and received per speaker per second (no loss);
//! - how long after a hard kill every surviving speaker holds the victim dead (p50 / p99 / max), and how long
//!   until each of the victim's addresses is answered again by the survivor the claim state machines give it to;
//! - wrong verdicts (a speaker coming to hold a live one dead) and wrong convictions (verdicts declared about
//!   live speakers) under 15 % and 30 % random loss of liveness datagrams, and what they cost on the ARP
//!   segment: probes, and addresses taken from a live owner (the goal is none);
//! - the heap one speaker holds for its view of N speakers (a counting allocator).
//!
//! Above 1,000 speakers the ring starts warm (as if every start-up hello had been answered; see
//! `Setup::warm_start`); the rows up to 1,000 simulate the hellos.
//!
//! Run: `cargo bench -p ferrolb-speaker --bench liveness_scale`. `FERROLB_SIM_SIZES` (default
//! `100,1000,5000`), `FERROLB_SIM_LOSS_SECS` (simulated seconds of each loss run, default 300) and
//! `FERROLB_SIM_MESH_MAX` (largest all-to-all run simulated, default 1000; larger ones print the exact
//! 20·(N−1) instead, as a simulation would need 20·N² events per second) and `FERROLB_SIM_LOSSES` (default
//! `0.15,0.30`; one level per process lets two run side by side on two cores) change the run.

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

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((p / 100.0) * last as f64).round() as usize).copied()
}

fn row(design: &str, n: usize, r: &Report, wall: Duration) {
    let retaken = &r.claims.retaken;
    println!(
        "| {design} | {n} | {:.1} | {:.1} | {} | {} / {} / {} | {} | {} / {} / {} ({} addresses) | {} | {:.1} s |",
        r.sent_per_node_s,
        r.received_per_node_s,
        r.max_received_in_a_second,
        ms(r.detection_percentile(50.0)),
        ms(r.detection_percentile(99.0)),
        ms(r.detection.last().copied()),
        r.never_learned,
        ms(percentile(retaken, 50.0)),
        ms(percentile(retaken, 99.0)),
        ms(retaken.last().copied()),
        retaken.len(),
        r.claims.never_retaken,
        wall.as_secs_f64()
    );
}

fn loss_row(design: &str, n: usize, loss: f64, r: &Report, wall: Duration) {
    println!(
        "| {design} | {n} | {:.0} % | {} | {} | {:.4} | {} | {} | {:.1} | {:.1} | {:.1} s |",
        loss * 100.0,
        r.wrong_convictions,
        r.wrong_verdicts,
        r.claims.probes_per_node_s,
        r.claims.wrong_takeovers,
        r.claims.released_by_live,
        r.sent_per_node_s,
        r.received_per_node_s,
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
    let losses: Vec<f64> = std::env::var("FERROLB_SIM_LOSSES")
        .unwrap_or_else(|_| "0.15,0.30".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let detect_secs = Duration::from_secs(10);
    // Ten addresses per speaker in the kill runs, so that each kill hands over a few to time.
    let per_speaker = 10;
    println!(
        "## No loss, 3 hard kills in {} simulated seconds (0.1–1 ms one-way delay, {per_speaker} addresses per speaker)\n",
        detect_secs.as_secs()
    );
    println!(
        "| design | speakers | sent /speaker/s | received /speaker/s | max received in 1 s | detection p50 / p99 / max (ms) | never learned | victim's addresses answered again p50 / p99 / max (ms) | never answered again | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let started = Instant::now();
        let ring = simulate(Setup {
            kills: 3,
            warm_start: n > 1000,
            addresses: n * per_speaker,
            ..Setup::new(Design::Ring, n, detect_secs)
        });
        row("ring of 3 watchers", n, &ring, started.elapsed());
        if n <= mesh_max {
            let started = Instant::now();
            let mesh = simulate(Setup {
                kills: 3,
                addresses: n * per_speaker,
                ..Setup::new(Design::AllToAll, n, Duration::from_secs(3))
            });
            row("all-to-all (before)", n, &mesh, started.elapsed());
            println!(
                "|  | ratio all-to-all / ring | {:.1}× | {:.1}× | | | | | | |",
                mesh.sent_per_node_s / ring.sent_per_node_s,
                mesh.received_per_node_s / ring.received_per_node_s
            );
        } else {
            let each = 20.0 * (n as f64 - 1.0);
            println!("| all-to-all (before), computed | {n} | {each:.0} | {each:.0} | | | | | | |");
        }
    }
    println!(
        "\n## Random loss of liveness datagrams, {loss_secs} simulated seconds, nobody killed, one address per speaker\n"
    );
    println!(
        "| design | speakers | loss | wrong convictions | wrong verdicts (speakers misled) | ARP probes /speaker/s | addresses taken from a live owner | addresses a live owner gave up | sent /speaker/s | received /speaker/s | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for &loss in &losses {
            let setup =
                |design| Setup { loss, warm_start: n > 1000, ..Setup::new(design, n, Duration::from_secs(loss_secs)) };
            let started = Instant::now();
            let r = simulate(setup(Design::Ring));
            loss_row("ring of 3 watchers", n, loss, &r, started.elapsed());
            // The mesh costs 20·N² events per simulated second: simulated at the smallest size only, for the ratio.
            if n == sizes[0] && n <= mesh_max {
                let started = Instant::now();
                let m = simulate(setup(Design::AllToAll));
                loss_row("all-to-all (before)", n, loss, &m, started.elapsed());
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

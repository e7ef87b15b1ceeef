//! Fills one /16 with 50,000 Services and prints the mean time per allocation for the first and the last
//! 5,000, beside a naive first-free scan (what MetalLB does: walk the pool from its first address) run in the
//! same invocation. Not a test: it reports numbers, it asserts nothing about time.
//!
//! Run: `cargo bench -p ferrolb-controller --bench fill_pool`

use ferrolb_controller::service::ServiceIntent;
use ferrolb_controller::{Allocator, PoolConfig};
use ferrolb_crds::IPAddressPoolSpec;
use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SERVICES: usize = 50_000;
const WINDOW: usize = 5_000;

/// The reference: per allocation, walk the pool from its first address to the first one not in use.
fn naive_first_free(used: &mut HashSet<u32>, first: u32, last: u32) -> Option<u32> {
    let ip = (first..=last).find(|ip| !used.contains(ip))?;
    used.insert(ip);
    Some(ip)
}

fn report(name: &str, times: &[Duration]) -> (f64, f64) {
    let mean_us = |w: &[Duration]| w.iter().map(Duration::as_secs_f64).sum::<f64>() / w.len() as f64 * 1e6;
    let (first, last) = (mean_us(&times[..WINDOW]), mean_us(&times[times.len() - WINDOW..]));
    println!(
        "{name:<22} first 5k: {first:>9.3} µs/alloc   last 5k: {last:>9.3} µs/alloc   last/first: {:>7.2}x",
        last / first
    );
    (first, last)
}

fn main() {
    let spec = IPAddressPoolSpec {
        addresses: vec!["10.20.0.0/16".into()],
        auto_assign: Some(true),
        avoid_buggy_ips: false,
        service_allocation: None,
    };
    let pool = PoolConfig::from_spec("bench", &spec).expect("valid pool");
    let mut allocator = Allocator::new();
    allocator.set_pools(vec![pool], BTreeMap::new());
    let intents: Vec<ServiceIntent> =
        (0..SERVICES).map(|i| ServiceIntent::simple("bench", &format!("svc-{i}"), &[80])).collect();

    println!("filling 10.20.0.0/16 with {SERVICES} Services, then the same with a naive first-free scan");
    let mut ours = Vec::with_capacity(SERVICES);
    for intent in &intents {
        let start = Instant::now();
        let outcome = allocator.allocate(black_box(intent));
        ours.push(start.elapsed());
        assert!(outcome.is_ok(), "the /16 holds 65,536 addresses");
    }
    let mut used = HashSet::new();
    let mut naive = Vec::with_capacity(SERVICES);
    let (first, last) = (u32::from_be_bytes([10, 20, 0, 0]), u32::from_be_bytes([10, 20, 255, 255]));
    for _ in 0..SERVICES {
        let start = Instant::now();
        black_box(naive_first_free(&mut used, first, last));
        naive.push(start.elapsed());
    }
    let (of, ol) = report("ferrolb allocator", &ours);
    let (nf, nl) = report("naive first-free scan", &naive);
    println!("naive/ferrolb on the last 5k: {:.1}x   (on the first 5k: {:.1}x)", nl / ol, nf / of);
    let total = |t: &[Duration]| t.iter().sum::<Duration>();
    println!("total fill time: ferrolb {:.3?}, naive {:.3?}", total(&ours), total(&naive));
}

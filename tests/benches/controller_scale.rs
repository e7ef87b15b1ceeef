//! 5,000 LoadBalancer Services created at once against the lab's real API server: how long until every one
//! has an address, beside how long the API server alone took to accept the creates (the reference, same run);
//! the controller's peak RSS beside kube-apiserver's; and how long a restarted controller takes to restore all
//! 5,000 and serve a new Service. Not a test: it prints numbers and asserts nothing about time.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench controller_scale`

use ferrolb_tests::harness::{TestLab, create_yaml, ingress};
use ferrolb_tests::lab::{State, lifecycle};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::{Api, Client};
use std::time::{Duration, Instant};

const SERVICES: usize = 5_000;
const IN_FLIGHT: usize = 16;

fn peak_rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib =
        status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn pid_of(state: &State, role: &str) -> i32 {
    state.procs.iter().rev().find(|p| p.role == role).map_or(0, |p| p.pid)
}

async fn addressed(client: &Client) -> usize {
    let api: Api<Service> = Api::namespaced(client.clone(), "scale");
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| !i.is_empty())
        })
        .count()
}

#[tokio::main]
async fn main() {
    let exe = ferrolb_tests::lab::lifecycle::sibling_binary("ferrolb-lab").expect("build the binaries first");
    let lab = TestLab::start(&exe.display().to_string(), "flbb", 1, false);
    let client = lab.admin().await;
    let pool = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: scale, namespace: metallb-system}\nspec: {addresses: [10.200.0.0/16]}\n";
    create_yaml(&client, pool).await.expect("pool");
    create_yaml(&client, "apiVersion: v1\nkind: Namespace\nmetadata: {name: scale}\n").await.expect("namespace");

    println!("creating {SERVICES} LoadBalancer Services, {IN_FLIGHT} requests in flight");
    let started = Instant::now();
    let client2 = client.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let n = addressed(&client2).await;
            if n == SERVICES {
                return started.elapsed();
            }
            // Listing 5,000 Services is itself load on the API server: poll gently (resolution 0.5 s).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    futures::stream::iter(0..SERVICES)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let client = client.clone();
            async move {
                let yaml = format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: s-{i:05}, namespace: scale}}\nspec: {{type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{{port: 80}}]}}\n"
                );
                create_yaml(&client, &yaml).await.expect("create");
            }
        })
        .await;
    let created = started.elapsed();
    let all_addressed = watcher.await.expect("watcher");
    let state = lab.state();
    let controller_rss = peak_rss_mib(pid_of(&state, "controller-0"));
    let apiserver_rss = peak_rss_mib(pid_of(&state, "kube-apiserver"));
    println!("API server accepted all creates (reference): {:>8.2?}", created);
    println!(
        "all {SERVICES} Services had an address:       {:>8.2?}  ({:.2}x the reference, {:.2?} after the last create)",
        all_addressed,
        all_addressed.as_secs_f64() / created.as_secs_f64(),
        all_addressed.saturating_sub(created)
    );
    println!("peak RSS: ferrolb-controller {controller_rss:.1} MiB, kube-apiserver {apiserver_rss:.1} MiB (reference)");

    // Restart: SIGKILL, let the lease go, start again; time until a new Service is served (all restored first).
    let mut state = lab.state();
    let pid = pid_of(&state, "controller-0");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "metallb-system");
    let _ = leases.delete("ferrolb-controller", &Default::default()).await;
    let restart = Instant::now();
    lifecycle::start_controller(&mut state, 0).await.expect("restart");
    create_yaml(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: after-restart, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n")
        .await
        .expect("marker");
    while ingress(&client, "default", "after-restart").await.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restored = restart.elapsed();
    let unchanged = addressed(&client).await;
    println!("restart with {SERVICES} Services: new Service served after {restored:.2?}; {unchanged} still addressed");
    let state = lab.state();
    println!("peak RSS after restart: ferrolb-controller {:.1} MiB", peak_rss_mib(pid_of(&state, "controller-0")));
}

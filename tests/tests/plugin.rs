//! kubectl-ferrolb against the lab: `why` prints the reason the controller's and the speaker's Warning Events
//! carry, `status` matches the ServiceL2Status objects, `pools` the pools' usage, and errors have their exit codes.
//! Needs root (it brings up a lab) and `cargo build --workspace --bins` (it runs the plugin binary).

use ferrolb_crds::ServiceL2Status;
use ferrolb_tests::harness::{TestLab, create_yaml, eventually, ingress, metric_sum, wait_event};
use ferrolb_tests::lab::lifecycle::sibling_binary;
use kube::Api;
use kube::api::ListParams;
use std::process::Output;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

/// Runs the plugin as a user would, against the lab's admin kubeconfig.
fn plugin(lab: &TestLab, args: &[&str]) -> Output {
    let binary = sibling_binary("kubectl-ferrolb").expect("kubectl-ferrolb built");
    std::process::Command::new(binary)
        .args(args)
        .arg("--kubeconfig")
        .arg(lab.state().kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl-ferrolb runs")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "kubectl-ferrolb failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `reason:` lines of a `why` answer.
fn reasons(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("reason: ")).map(str::to_string).collect()
}

/// The lab controller's /metrics (it listens on the machine's loopback).
fn scrape_controller(lab: &TestLab) -> String {
    use std::io::{Read, Write};
    let port = lab.state().procs.iter().rev().find(|p| p.role == "controller-0").and_then(|p| p.port);
    let Some(mut stream) = port.and_then(|port| std::net::TcpStream::connect(("127.0.0.1", port)).ok()) else {
        return String::new();
    };
    let mut body = String::new();
    if stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_ok() {
        let _ = stream.read_to_string(&mut body);
    }
    body
}

/// A table's rows as whitespace-separated cells, header left out.
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines().skip(1).map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_status_and_pools_agree_with_the_events_statuses_and_pool_usage() {
    let lab = TestLab::start(EXE, "flbp", 2, false);
    let client = lab.admin().await;
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    let web = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: default, labels: {app: web}}\nspec: {nodeName: node-1, containers: [{name: c, image: lab/x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}\n";
    create_yaml(&client, web).await.expect("web");

    // Pending: a requested address outside every pool. `why` says what the AllocationFailed Event says.
    let outside = "apiVersion: v1\nkind: Service\nmetadata: {name: outside, namespace: default}\nspec: {type: LoadBalancer, loadBalancerIP: 10.99.0.1, selector: {app: web}, ports: [{port: 81}]}\n";
    create_yaml(&client, outside).await.expect("outside");
    let event = wait_event(&client, "default", "outside", "is not in any usable IPAddressPool").await;
    assert_eq!(event.reason.as_deref(), Some("AllocationFailed"));
    let why = stdout(&plugin(&lab, &["why", "outside", "-n", "default"]));
    assert_eq!(reasons(&why), [event.message.clone().expect("message")], "{why}");
    assert!(why.starts_with("default/outside: no address\n"), "{why}");
    assert_eq!(stdout(&plugin(&lab, &["why", "default/outside"])), why, "NAMESPACE/NAME is the same Service");
    // The alert's series counts it under its reason.
    eventually("ferrolb_pending_services to count outside", Duration::from_secs(30), || async {
        let text = scrape_controller(&lab);
        let pending = metric_sum(&text, "ferrolb_pending_services{reason=\"requested_ip_not_in_pool\"}");
        (pending == 1.0 && metric_sum(&text, "ferrolb_pending_services") == 1.0).then_some(())
    })
    .await;

    // Announced by nobody: no endpoints. `why` says what the speakers' NoEligibleNode Event says.
    let lonely = "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: default}\nspec: {type: LoadBalancer, selector: {app: nobody}, ports: [{port: 9090}]}\n";
    create_yaml(&client, lonely).await.expect("lonely");
    let event = wait_event(&client, "default", "lonely", "nobody announces").await;
    assert_eq!(event.reason.as_deref(), Some("NoEligibleNode"));
    let why = stdout(&plugin(&lab, &["why", "lonely"]));
    assert_eq!(reasons(&why), [event.message.clone().expect("message")], "{why}");

    // status: one row per address, matching the ServiceL2Status objects the speakers wrote.
    let web_ip = eventually("an address for web", Duration::from_secs(30), || async {
        ingress(&client, "default", "web").await.into_iter().next()
    })
    .await;
    let lonely_ip = ingress(&client, "default", "lonely").await.into_iter().next().expect("lonely's address");
    let statuses: Api<ServiceL2Status> = Api::namespaced(client.clone(), "metallb-system");
    let reported = eventually("web's ServiceL2Status", Duration::from_secs(30), || async {
        let list = statuses.list(&ListParams::default().labels("metallb.io/service-name=web")).await.ok()?;
        let s = list.items.first()?.status.clone()?;
        Some((s.node?, s.interfaces.iter().map(|i| i.name.clone()).collect::<Vec<_>>().join(",")))
    })
    .await;
    let rows = table(&stdout(&plugin(&lab, &["status"])));
    let web_rows: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == "default/web").collect();
    assert_eq!(web_rows.len(), 1, "{rows:?}");
    assert_eq!(web_rows[0][..5], [web_ip.clone(), "default/web".into(), "lab".into(), reported.0, reported.1]);
    let lonely_row = rows.iter().find(|r| r[1] == "default/lonely").expect("lonely listed");
    assert_eq!(lonely_row[..4], [lonely_ip, "default/lonely".into(), "lab".into(), "<none>".into()]);
    assert!(rows.iter().all(|r| r[1] != "default/outside"), "no address, no row: {rows:?}");

    // pools: what the pool's usage is — 254 addresses, web's and lonely's in use.
    let rows = eventually("pools to count both Services", Duration::from_secs(30), || async {
        let rows = table(&stdout(&plugin(&lab, &["pools"])));
        (rows.first()?.get(2).map(String::as_str) == Some("2")).then_some(rows)
    })
    .await;
    assert_eq!(rows, [["lab", "254", "2", "252", "True"]]);

    // Errors say what is wrong, with their own exit codes.
    let missing = plugin(&lab, &["why", "nope"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Service default/nope not found"));
    let cluster_ip = plugin(&lab, &["why", "kubernetes"]);
    assert_eq!(cluster_ip.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&cluster_ip.stderr).contains("is of type ClusterIP, not LoadBalancer"));
    let binary = sibling_binary("kubectl-ferrolb").expect("built");
    let no_config = std::process::Command::new(&binary)
        .args(["pools", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .expect("runs");
    assert_eq!(no_config.status.code(), Some(3), "{}", String::from_utf8_lossy(&no_config.stderr));
    let help = std::process::Command::new(&binary).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(["status", "why", "pools"].iter().all(|c| help.contains(c)), "{help}");
}

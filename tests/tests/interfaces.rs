//! Which NICs answer (docs/design.md §4.4), on a lab whose nodes have two NICs on two bridges (`up
//! --second-lan`): `eth0` on the first LAN, `eth1` on the second, and the `host` namespace on both, so ARP is
//! asked on either segment and each answer names the node and the NIC it came from. L2Advertisement
//! `interfaces`, two advertisements for one pool, a NIC without an IPv4 address, NICs plugged and unplugged
//! while the speaker runs (netlink), the exclusion list from the chart value, and ServiceL2Status naming the
//! interfaces. Needs root.

use ferrolb_crds::ServiceL2Status;
use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{TestLab, create_yaml, eventually, ingress, metric_sum, speaker_metrics, wait_event};
use ferrolb_tests::lab::{lifecycle, net};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// Every MAC of every node namespace, as `node-N/<interface>`.
fn node_nic_macs(lab: &TestLab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in lab.state().nodes {
        let text = Command::new("ip").args(["-n", &n.netns, "-o", "link", "show"]).output().expect("ip link").stdout;
        for line in String::from_utf8_lossy(&text).lines() {
            let name = line.split(": ").nth(1).and_then(|s| s.split('@').next()).unwrap_or_default();
            if let Some(mac) = line.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()) {
                out.insert(mac.to_string(), format!("{}/{name}", n.name));
            }
        }
    }
    out
}

/// Who answers ARP for `ip` when the `host` namespace asks on its `iface` (`eth0`: first LAN, `eth1`: second), as
/// `node-N/<interface>`.
fn answers(lab: &TestLab, ip: &str, iface: &str) -> Vec<String> {
    let macs = node_nic_macs(lab);
    let exe = env!("CARGO_BIN_EXE_ferrolb-lab");
    let out = lab.cli(&["exec", "host", "--", exe, "arping", ip, "--iface", iface, "--count", "3", "--wait-ms", "300"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|mac| macs.get(mac).cloned().unwrap_or_else(|| format!("unknown {mac}")))
        .collect()
}

/// Waits until exactly `want` answer for `ip` on the host's `iface`.
async fn wait_answers(lab: &TestLab, ip: &str, iface: &str, want: &[String]) {
    let what = format!("ARP for {ip} asked on the host's {iface} answered by exactly {want:?}");
    eventually(&what, Duration::from_secs(60), || async { (answers(lab, ip, iface) == want).then_some(()) }).await;
}

/// The (node, interfaces) of every ServiceL2Status of a default-namespace Service.
async fn statuses(client: &kube::Client, service: &str) -> Vec<(String, Vec<String>)> {
    let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), "metallb-system");
    let selector = format!("metallb.io/service-name={service}");
    let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else { return Vec::new() };
    list.items
        .into_iter()
        .filter_map(|s| {
            let status = s.status?;
            Some((status.node?, status.interfaces.into_iter().map(|i| i.name).collect()))
        })
        .collect()
}

/// Waits until the Service's only ServiceL2Status names `node` and exactly these interfaces.
async fn wait_status(client: &kube::Client, service: &str, node: &str, interfaces: &[&str]) {
    let want = vec![(node.to_string(), interfaces.iter().map(ToString::to_string).collect::<Vec<_>>())];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = statuses(client, service).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "ServiceL2Status of {service}: want {want:?}, got {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a UDP 53 Service taking its address from `pool`, and returns the address and the elected node (every
/// node has a ready endpoint and every advertisement here selects every node).
async fn service(client: &kube::Client, name: &str, pool: &str) -> (String, String) {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{metallb.io/address-pool: {pool}}}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: dns}}\n  ports: [{{port: 53, protocol: UDP}}]\n"
    );
    create_yaml(client, &yaml).await.expect("Service");
    let ip = eventually(&format!("an address for {name}"), Duration::from_secs(30), || async {
        ingress(client, "default", name).await.into_iter().next()
    })
    .await;
    let owner = election::owner(ip.parse().expect("ip"), NODES).expect("owner").to_string();
    (ip, owner)
}

fn at(node: &str, nic: &str) -> Vec<String> {
    vec![format!("{node}/{nic}")]
}

/// Rescans of `node`'s speaker triggered by netlink notifications, from its metrics.
fn netlink_rescans(lab: &TestLab, node: &str) -> f64 {
    metric_sum(&speaker_metrics(lab, node), "ferrolb_speaker_interface_rescans_total{reason=\"netlink\"}")
}

/// Waits until `node`'s speaker reports `n` addresses it won but cannot announce for lack of a named interface.
async fn wait_announce_failed(lab: &TestLab, node: &str, n: f64) {
    let series = "ferrolb_speaker_announce_failed_addresses{reason=\"not_in_advertisement\"}";
    eventually(&format!("{node}: {series} = {n}"), Duration::from_secs(30), || async {
        (metric_sum(&speaker_metrics(lab, node), series) == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_choose_the_nics_that_answer_and_nics_may_come_and_go() {
    let lab = TestLab::start_with(EXE, "flbif", 3, &["--second-lan"]);
    let client = lab.admin().await;
    let pools = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: second, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.9], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: second, namespace: metallb-system}\nspec: {ipAddressPools: [second], interfaces: [eth1]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: both, namespace: metallb-system}\nspec: {addresses: [198.19.0.10-198.19.0.19], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: both-first, namespace: metallb-system}\nspec: {ipAddressPools: [both], interfaces: [eth0]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: both-second, namespace: metallb-system}\nspec: {ipAddressPools: [both], interfaces: [eth1]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: plugged, namespace: metallb-system}\nspec: {addresses: [198.19.0.20-198.19.0.29], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: plugged, namespace: metallb-system}\nspec: {ipAddressPools: [plugged], interfaces: [eth2]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: any, namespace: metallb-system}\nspec: {addresses: [198.19.0.30-198.19.0.39], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: any, namespace: metallb-system}\nspec: {ipAddressPools: [any]}\n";
    create_yaml(&client, pools).await.expect("pools and advertisements");
    for node in NODES {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: dns-{node}, namespace: default, labels: {{app: dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }

    // interfaces: [eth1]: answered on the second segment only, by the elected node's eth1; the status and the
    // nodeAssigned Event name eth1.
    let (second_ip, second_owner) = service(&client, "second", "second").await;
    wait_answers(&lab, &second_ip, "eth1", &at(&second_owner, "eth1")).await;
    assert_eq!(answers(&lab, &second_ip, "eth0"), Vec::<String>::new(), "silent on the first segment");
    wait_status(&client, "second", &second_owner, &["eth1"]).await;
    let told = format!("announcing from node \"{second_owner}\" with protocol \"layer2\": {second_ip} on eth1");
    wait_event(&client, "default", "second", &told).await;

    // Two advertisements for one pool, one per NIC: the union answers, each segment from its own NIC.
    let (both_ip, both_owner) = service(&client, "both", "both").await;
    wait_answers(&lab, &both_ip, "eth0", &at(&both_owner, "eth0")).await;
    wait_answers(&lab, &both_ip, "eth1", &at(&both_owner, "eth1")).await;
    wait_status(&client, "both", &both_owner, &["eth0", "eth1"]).await;

    // The advertisement changes its mind: the address moves to eth0 and the existing status object says so.
    let ads: Api<ferrolb_crds::L2Advertisement> = Api::namespaced(client.clone(), "metallb-system");
    let patch = serde_json::json!({"spec": {"interfaces": ["eth0"]}});
    ads.patch("second", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    wait_answers(&lab, &second_ip, "eth0", &at(&second_owner, "eth0")).await;
    wait_answers(&lab, &second_ip, "eth1", &[]).await;
    wait_status(&client, "second", &second_owner, &["eth0"]).await;

    // No advertisement names an interface: every usable NIC answers, here both.
    let (any_ip, any_owner) = service(&client, "any", "any").await;
    wait_answers(&lab, &any_ip, "eth0", &at(&any_owner, "eth0")).await;
    wait_answers(&lab, &any_ip, "eth1", &at(&any_owner, "eth1")).await;

    // interfaces: [eth2], which no node has yet: the elected node says it cannot announce. Its speaker is
    // restarted with the safety-net rescan at an hour, so from now on only a netlink notification can make it
    // read its interfaces again within the bounds below.
    let (plugged_ip, plugged_owner) = service(&client, "plugged", "plugged").await;
    lab.ok(&["restart-speaker", &plugged_owner, "--env", "FERROLB_INTERFACE_RESCAN_SECS=3600"]);
    wait_announce_failed(&lab, &plugged_owner, 1.0).await;
    let failed = format!("node {plugged_owner} was elected for {plugged_ip} but cannot announce");
    let event = wait_event(&client, "default", "plugged", &failed).await;
    assert_eq!(event.reason.as_deref(), Some("announceFailed"), "MetalLB's reason, for its users' alerts");
    // Having said so (the metric and the Event), nobody answers for it on either segment.
    wait_answers(&lab, &plugged_ip, "eth0", &[]).await;
    wait_answers(&lab, &plugged_ip, "eth1", &[]).await;
    let before = netlink_rescans(&lab, &plugged_owner);

    // A NIC plugged in at run time, on the second segment, with no IPv4 address at all: named, it answers.
    let state = lab.state();
    let owner_ns = state.node(&plugged_owner).expect("owner").netns.clone();
    let index = NODES.iter().position(|n| *n == plugged_owner).expect("index") + 1;
    net::add_nic(&state.lan_netns(), &owner_ns, net::SECOND_BRIDGE, &format!("x{index}"), "eth2", None)
        .expect("plug eth2");
    let v4 = Command::new("ip").args(["-n", &owner_ns, "-4", "-o", "addr", "show", "dev", "eth2"]).output();
    assert_eq!(String::from_utf8_lossy(&v4.expect("ip addr").stdout).trim(), "", "eth2 has no IPv4 address");
    wait_answers(&lab, &plugged_ip, "eth1", &at(&plugged_owner, "eth2")).await;
    wait_status(&client, "plugged", &plugged_owner, &["eth2"]).await;
    wait_announce_failed(&lab, &plugged_owner, 0.0).await;
    assert!(netlink_rescans(&lab, &plugged_owner) > before, "the rescan came from a netlink notification");
    let log = std::fs::read_to_string(state.log(&format!("speaker {plugged_owner}"))).unwrap_or_default();
    assert!(log.lines().any(|l| l.contains("eth2 added") && l.contains("netlink")), "no netlink rescan logged");

    // Unplugged: silent at once, and the node says again that it cannot announce.
    net::remove_nic(&owner_ns, "eth2").expect("unplug eth2");
    wait_answers(&lab, &plugged_ip, "eth1", &[]).await;
    wait_announce_failed(&lab, &plugged_owner, 1.0).await;

    // The exclusion list is the chart's value: with eth1 excluded, the advertisement that names no interface
    // answers on eth0 only, while one that names eth1 still answers there (naming beats excluding).
    let mut state = lab.state();
    let sets = ["speaker.excludeInterfaces={^lo$,^kube-ipvs.*,^eth1$}".to_string()];
    lifecycle::install_chart(&state, &sets).expect("helm upgrade");
    (state.controller_args, state.speaker_args) = lifecycle::chart_args(&state).expect("chart args");
    assert!(
        state.speaker_args.iter().any(|a| a == "--exclude-interfaces=^lo$ ^kube-ipvs.* ^eth1$"),
        "{:?}",
        state.speaker_args
    );
    state.save().expect("state");
    for node in NODES {
        lab.ok(&["restart-speaker", node]);
    }
    wait_answers(&lab, &any_ip, "eth0", &at(&any_owner, "eth0")).await;
    wait_answers(&lab, &any_ip, "eth1", &[]).await;
    wait_answers(&lab, &both_ip, "eth1", &at(&both_owner, "eth1")).await;
    wait_status(&client, "any", &any_owner, &["eth0"]).await;
}

/// A pattern that is not a regular expression stops the speaker before it does anything, naming the pattern.
#[test]
fn a_bad_exclusion_pattern_is_refused_at_start() {
    let speaker = lifecycle::sibling_binary("ferrolb-speaker").expect("built");
    let out = Command::new(speaker)
        .args(["--node", "n", "--exclude-interfaces", "^eth0$ ^(docker"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"^(docker\"") && stderr.contains("not a valid regular expression"), "{stderr}");
    assert!(stderr.contains("speaker.excludeInterfaces"), "names the chart value: {stderr}");
}

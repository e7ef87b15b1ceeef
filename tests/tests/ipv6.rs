//! IPv6 and dual-stack in the lab (docs/design.md §6.6): the lab runs a dual-stack API server and
//! kube-controller-manager, every namespace has an address in 2001:db8:18::/64 beside its IPv4 one, and the
//! `host` namespace routes the IPv6 pool on-link as it does the IPv4 one. Neighbour solicitations come from the
//! host's kernel and from `ferrolb-lab arping`; nothing here is simulated. Needs root.

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, create_yaml, eventually, ingress, metric_sum, node_macs, speaker_metrics,
    wait_answered_by, wait_event,
};
use kube::Api;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// `ip:port` as a socket address (brackets for IPv6).
fn at(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().expect("ip"), port).to_string()
}

/// Asserts that `ip` answers UDP and TCP 53 from the `host` namespace, served by `node`.
fn assert_served_by(lab: &TestLab, ip: &str, node: &str) {
    assert_eq!(lab.probe("host", "udp", &at(ip, 53), 2000), Ok(format!("{node} probe")), "UDP 53 to {ip}");
    assert_eq!(lab.probe("host", "tcp", &at(ip, 53), 2000), Ok(node.to_string()), "TCP 53 to {ip}");
}

/// The node whose MAC the `host` namespace's neighbour cache holds for `ip` (without asking the network).
fn host_neighbour(lab: &TestLab, ip: &str) -> Option<String> {
    let host = lab.state().host_netns();
    let out = Command::new("ip").args(["-n", &host, "neigh", "show", ip]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mac = text.split("lladdr ").nth(1)?.split_whitespace().next()?.to_string();
    node_macs(lab).get(&mac).cloned()
}

/// Whether `node`'s eth0 has joined the IPv6 multicast `group` (exactly; ff02::1:ff00:1 is a prefix of ff02::1:ff00:12).
fn joined(lab: &TestLab, node: &str, group: &str) -> bool {
    let ns = lab.state().node(node).expect("node").netns.clone();
    let out = Command::new("ip").args(["-n", &ns, "-6", "maddr", "show", "dev", "eth0"]).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().nth(1) == Some(group))
}

/// Waits for one address of the Service, or of each family with `count` 2; returns them as written.
async fn addresses(client: &kube::Client, namespace: &str, name: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} address(es) for {namespace}/{name}"), Duration::from_secs(30), || async {
        let got = ingress(client, namespace, name).await;
        (got.len() == count).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_and_ipv6_services_are_answered_by_one_node_and_move_together() {
    let lab = TestLab::start(EXE, "flb6", 3, false);
    let client = lab.admin().await;
    let config = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: dual, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.50, 2001:db8:19::1-2001:db8:19::50]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: dual, namespace: metallb-system}\nspec: {ipAddressPools: [dual]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pinned6, namespace: metallb-system}\nspec: {addresses: ['2001:db8:19::100/124'], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: pinned6, namespace: metallb-system}\nspec:\n  ipAddressPools: [pinned6]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}]\n";
    create_yaml(&client, config).await.expect("pools and advertisements");
    // DNS pods on node-1 and node-3; one pod on node-2 for the Local Service. The lab's pods are dual-stack.
    for (pod, node, app) in [("dns-a", "node-1", "dns"), ("dns-b", "node-3", "dns"), ("local-1", "node-2", "local6")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &yaml).await.expect("pod");
    }

    // PreferDualStack from a dual-stack pool: one address per family, both answered by one node, the one the
    // election gives the first (IPv4) address.
    let dual = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {app: dns}\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]\n";
    create_yaml(&client, dual).await.expect("dual-stack Service");
    let ips = addresses(&client, "default", "dns", 2).await;
    let parsed: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().expect("ip")).collect();
    assert!(parsed[0].is_ipv4() && parsed[1].is_ipv6(), "one address per family, IPv4 first: {ips:?}");
    let (v4, v6) = (ips[0].clone(), ips[1].clone());
    let owner = election::owner(parsed[0], NODES).expect("owner").to_string();
    wait_answered_by(&lab, &v6, &[&owner]).await;
    assert_eq!(answering_nodes(&lab, &v4), [owner.as_str()], "the same node answers ARP for {v4}");
    assert_served_by(&lab, &v4, &owner);
    assert_served_by(&lab, &v6, &owner);
    let told = format!("announcing from node \"{owner}\" with protocol \"layer2\": {v4}, {v6} on eth0");
    wait_event(&client, "default", "dns", &told).await;
    let metrics = speaker_metrics(&lab, &owner);
    let announced = format!(
        "metallb_speaker_announced{{ip=\"{v6}\",node=\"{owner}\",protocol=\"layer2\",service=\"default/dns\"}} 1"
    );
    assert!(metrics.lines().any(|l| l == announced), "{announced} missing from:\n{metrics}");
    assert!(metric_sum(&metrics, &format!("metallb_layer2_responses_sent{{ip=\"{v6}\"}}")) > 0.0, "{metrics}");
    assert!(metric_sum(&metrics, "ferrolb_speaker_ndp_advertisements_total") > 0.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "ferrolb_speaker_ndp_group_join_failures_total"), 0.0, "{metrics}");
    // The owner joined the address's solicited-node group on eth0 (the NIC filter and MLD snooping need it).
    let group = ferrolb_speaker::wire::ndp::solicited_node(v6.parse().expect("v6")).to_string();
    assert!(joined(&lab, &owner, &group), "{group} not joined on {owner}'s eth0");
    for other in NODES.iter().filter(|n| **n != owner) {
        assert!(!joined(&lab, other, &group), "{other} joined {group} without owning it");
    }

    // IPv6 only: works the same.
    let v6_only = "apiVersion: v1\nkind: Service\nmetadata: {name: dns6, namespace: default}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {app: dns}\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]\n";
    create_yaml(&client, v6_only).await.expect("IPv6 Service");
    let only = addresses(&client, "default", "dns6", 1).await.remove(0);
    assert!(only.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()), "{only}");
    let only_owner = election::owner(only.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &only, &[&only_owner]).await;
    assert_served_by(&lab, &only, &only_owner);

    // externalTrafficPolicy: Local holds for IPv6: only node-2 has the endpoint.
    let local = "apiVersion: v1\nkind: Service\nmetadata: {name: local6, namespace: default}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  externalTrafficPolicy: Local\n  selector: {app: local6}\n  ports: [{port: 53, protocol: UDP}]\n";
    create_yaml(&client, local).await.expect("Local Service");
    let local_ip = addresses(&client, "default", "local6", 1).await.remove(0);
    wait_answered_by(&lab, &local_ip, &["node-2"]).await;

    // An advertisement's nodeSelectors hold for IPv6: the pinned pool is announced from node-1 only.
    let pinned = "apiVersion: v1\nkind: Service\nmetadata: {name: pinned6, namespace: default, annotations: {metallb.io/address-pool: pinned6}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {app: dns}\n  ports: [{port: 53, protocol: UDP}]\n";
    create_yaml(&client, pinned).await.expect("pinned Service");
    let pinned_ip = addresses(&client, "default", "pinned6", 1).await.remove(0);
    assert!(pinned_ip.starts_with("2001:db8:19::10"), "{pinned_ip} from the pinned pool");
    wait_answered_by(&lab, &pinned_ip, &["node-1"]).await;

    // A shared IPv6 address (MetalLB's "sharing the same ip › IPV6"): two Services, one address, one answerer.
    let shared = |name: &str, protocol: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{metallb.io/allow-shared-ip: v6, metallb.io/loadBalancerIPs: '2001:db8:19::40'}}}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {{app: dns}}\n  ports: [{{port: 53, protocol: {protocol}}}]\n"
        )
    };
    create_yaml(&client, &shared("shared6-udp", "UDP")).await.expect("first sharer");
    create_yaml(&client, &shared("shared6-tcp", "TCP")).await.expect("second sharer");
    for name in ["shared6-udp", "shared6-tcp"] {
        assert_eq!(addresses(&client, "default", name, 1).await, ["2001:db8:19::40"], "{name}");
    }
    let shared_owner = election::owner("2001:db8:19::40".parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, "2001:db8:19::40", &[&shared_owner]).await;
    assert_served_by(&lab, "2001:db8:19::40", &shared_owner);

    // Naming an autoAssign pool works as naming any other (MetalLB's "requesting a specific pool › IPV6
    // (autoAssign true)"), and the Service says which pool it came from.
    let named = "apiVersion: v1\nkind: Service\nmetadata: {name: named6, namespace: default, annotations: {metallb.io/address-pool: dual}}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {app: dns}\n  ports: [{port: 53, protocol: UDP}]\n";
    create_yaml(&client, named).await.expect("named Service");
    let named_ip = addresses(&client, "default", "named6", 1).await.remove(0);
    assert!(named_ip.starts_with("2001:db8:19::"), "{named_ip} from the dual pool");
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    eventually("named6 says it came from the dual pool", Duration::from_secs(30), || async {
        let annotations = services.get("named6").await.ok()?.metadata.annotations?;
        (annotations.get("metallb.io/ip-allocated-from-pool").map(String::as_str) == Some("dual")).then_some(())
    })
    .await;
    let named_owner = election::owner(named_ip.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &named_ip, &[&named_owner]).await;

    // A hard kill of the owner moves both addresses to one other node, and the host's neighbour cache follows
    // from the unsolicited advertisement and gratuitous ARP alone: the host sends nothing meanwhile.
    assert_eq!(host_neighbour(&lab, &v6).as_deref(), Some(owner.as_str()), "the host learnt {v6} from traffic");
    assert_eq!(host_neighbour(&lab, &v4).as_deref(), Some(owner.as_str()), "the host learnt {v4} from traffic");
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(parsed[0], rest.iter().copied()).expect("next owner").to_string();
    lab.ok(&["kill", &owner]);
    eventually("the host's cache moved to the new owner for both addresses", Duration::from_secs(30), || async {
        let moved = host_neighbour(&lab, &v6).as_deref() == Some(next.as_str())
            && host_neighbour(&lab, &v4).as_deref() == Some(next.as_str());
        moved.then_some(())
    })
    .await;
    let metrics = speaker_metrics(&lab, &next);
    assert!(metric_sum(&metrics, "ferrolb_speaker_unsolicited_advertisements_total") > 0.0, "{metrics}");
    assert_eq!(answering_nodes(&lab, &v6), [next.as_str()], "exactly one MAC answers for {v6}");
    assert_eq!(answering_nodes(&lab, &v4), [next.as_str()], "exactly one MAC answers for {v4}");
    assert_served_by(&lab, &v6, &next);
    assert_served_by(&lab, &v4, &next);

    assert!(joined(&lab, &next, &group), "the new owner joined {group}");

    // Revived: both come back to the election's choice, and the node that gave the address up left its group.
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &v6, &[&owner]).await;
    wait_answered_by(&lab, &v4, &[&owner]).await;
    eventually(&format!("{next} to leave {group}"), Duration::from_secs(30), || async {
        (!joined(&lab, &next, &group) && joined(&lab, &owner, &group)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_ipv6_only_cluster_speakers_hear_each_other_over_ipv6_and_fail_over_by_it() {
    let lab = TestLab::start_with(EXE, "flb6o", 3, &["--ipv6-nodes"]);
    let client = lab.admin().await;
    let config = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: v6, namespace: metallb-system}\nspec: {addresses: ['2001:db8:19::/120']}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: v6, namespace: metallb-system}\n";
    create_yaml(&client, config).await.expect("pool");
    for (pod, node) in [("dns-a", "node-1"), ("dns-b", "node-2"), ("dns-c", "node-3")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default, labels: {{app: dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &yaml).await.expect("pod");
    }
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: dns6, namespace: default}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {app: dns}\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]\n";
    create_yaml(&client, svc).await.expect("Service");
    let ip = addresses(&client, "default", "dns6", 1).await.remove(0);
    let owner = election::owner(ip.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &ip, &[&owner]).await;
    assert_served_by(&lab, &ip, &owner);
    // The Nodes carry no IPv4 address, so every heartbeat a speaker heard came over IPv6.
    let state = lab.state();
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    for n in NODES {
        let node = nodes.get(n).await.expect("node");
        let internal: Vec<String> = node
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        assert!(internal.iter().all(|a| a.contains(':')) && !internal.is_empty(), "{n}: {internal:?}");
    }
    for n in NODES {
        let log = std::fs::read_to_string(state.log(&format!("speaker {n}"))).unwrap_or_default();
        for peer in NODES.iter().filter(|p| **p != n) {
            assert!(log.contains(&format!("node={peer} verdict=Alive")), "{n} never heard {peer}:\n{log}");
        }
    }
    // A hard kill is seen by liveness (not the Node Ready fallback) and the address moves.
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(ip.parse().expect("ip"), rest.iter().copied()).expect("next").to_string();
    lab.ok(&["kill", &owner]);
    wait_answered_by(&lab, &ip, &[&next]).await;
    for n in &rest {
        let detected = metric_sum(&speaker_metrics(&lab, n), "ferrolb_speaker_failure_detection_seconds_count");
        assert!(detected >= 1.0, "{n} did not detect {owner}'s death over the liveness channel");
    }
    assert_served_by(&lab, &ip, &next);
}

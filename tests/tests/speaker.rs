//! ferrolb-speaker in the lab: real raw sockets in node namespaces, real ARP from the `host` namespace, the
//! user's DNS Service answering over TCP and UDP through the on-link static route, and failover.
//! Needs root. Liveness is the Node Ready fallback for now, so a hard failure takes about the lab's node grace
//! period (6 s) to move an address; the test waits with a bound and asserts behaviour, not time.

use ferrolb_crds::L2AdvertisementSchema;
use ferrolb_crds::ServiceL2Status;
use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, assert_dns_served_by, create_yaml, eventually, ingress, metric_sum, seed,
    speaker_metrics, wait_answered_by, wait_event,
};
use k8s_openapi::api::core::v1::{Event, Node};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

/// The lab controller's /metrics (it listens on the machine's loopback).
fn scrape_controller(lab: &TestLab) -> String {
    use std::io::{Read, Write};
    let state = lab.state();
    let port =
        state.procs.iter().rev().find(|p| p.role == "controller-0").and_then(|p| p.port).expect("controller port");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("controller metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

/// Waits until the ServiceL2Status objects of a kube-system Service name exactly these nodes.
async fn wait_status_nodes(client: &kube::Client, service: &str, nodes: &[&str]) {
    let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), "metallb-system");
    let what = format!("ServiceL2Status of {service} naming {nodes:?}");
    eventually(&what, Duration::from_secs(30), || async {
        let list = api.list(&ListParams::default().labels(&format!("metallb.io/service-name={service}"))).await.ok()?;
        let mut got: Vec<String> = list.items.iter().filter_map(|s| s.status.as_ref()?.node.clone()).collect();
        got.sort();
        (got == nodes).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_answers_and_the_users_dns_service_works_through_the_static_route() {
    let lab = TestLab::start(EXE, "flbs", 3, false);
    let client = lab.admin().await;
    let nodes = ["node-1", "node-2", "node-3"];
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    // kube-dns pods on two nodes, so the Service has ready endpoints.
    for (pod, node) in [("dns-a", "node-1"), ("dns-b", "node-3")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: dns, image: lab/dns}}]}}\n"
        );
        create_yaml(&client, &yaml).await.expect("pod");
    }

    // The user's DNS Service, manifest unchanged: one address, TCP and UDP 53.
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    let vip = eventually("an address for dns-svc-lb", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().next()
    })
    .await;
    assert_eq!(vip, "198.19.0.1");
    let ip: IpAddr = vip.parse().expect("ip");
    let owner = election::owner(ip, nodes).expect("an owner").to_string();
    wait_answered_by(&lab, &vip, &[&owner]).await;
    assert_dns_served_by(&lab, &vip, &owner);
    // "Which node announces this IP?": a ServiceL2Status and an Event say so.
    wait_status_nodes(&client, "dns-svc-lb", &[&owner]).await;
    let told = format!("announcing from node \"{owner}\" with protocol \"layer2\": {vip} on eth0");
    let event = wait_event(&client, "kube-system", "dns-svc-lb", &told).await;
    assert_eq!(event.reason.as_deref(), Some("nodeAssigned"), "MetalLB's reason");
    // MetalLB's series, scraped from the running speaker and controller, by name and labels.
    let speaker = speaker_metrics(&lab, &owner);
    let announced = format!(
        "metallb_speaker_announced{{ip=\"{vip}\",node=\"{owner}\",protocol=\"layer2\",service=\"kube-system/dns-svc-lb\"}} 1"
    );
    assert!(speaker.lines().any(|l| l == announced), "{announced} missing from:\n{speaker}");
    for counter in
        ["metallb_layer2_requests_received", "metallb_layer2_responses_sent", "metallb_layer2_gratuitous_sent"]
    {
        let series = format!("{counter}{{ip=\"{vip}\"}}");
        assert!(metric_sum(&speaker, &series) > 0.0, "{series} missing or 0 in:\n{speaker}");
    }
    eventually("MetalLB's allocator gauges: 1 of 254 in use", Duration::from_secs(30), || async {
        let controller = scrape_controller(&lab);
        let in_use = metric_sum(&controller, "metallb_allocator_addresses_in_use_total{pool=\"lab\"}");
        let total = metric_sum(&controller, "metallb_allocator_addresses_total{pool=\"lab\"}");
        (in_use == 1.0 && total == 254.0).then_some(())
    })
    .await;

    // A shared address has one responder for all its Services.
    let shared = seed("shared-ip.yaml").replace("172.17.255.10", "198.19.0.10");
    create_yaml(&client, &shared).await.expect("shared");
    eventually("both shared Services on .10", Duration::from_secs(30), || async {
        let a = ingress(&client, "kube-system", "dns-svc-tcp").await;
        let b = ingress(&client, "kube-system", "dns-svc-udp").await;
        (a == ["198.19.0.10"] && b == a).then_some(())
    })
    .await;
    let shared_owner = election::owner("198.19.0.10".parse().expect("ip"), nodes).expect("owner").to_string();
    wait_answered_by(&lab, "198.19.0.10", &[&shared_owner]).await;

    // externalTrafficPolicy: Local is announced only from a node with a ready endpoint.
    let local = "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: kube-system}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {k8s-app: local-only}\n  ports: [{port: 8080}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: local-1, namespace: kube-system, labels: {k8s-app: local-only}}\nspec: {nodeName: node-2, containers: [{name: c, image: lab/x}]}\n";
    create_yaml(&client, local).await.expect("local");
    let local_ip = eventually("an address for local", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "local").await.into_iter().next()
    })
    .await;
    wait_answered_by(&lab, &local_ip, &["node-2"]).await;

    // No endpoints: not announced at all.
    let lonely = "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: default}\nspec: {type: LoadBalancer, selector: {app: nobody}, ports: [{port: 9090}]}\n";
    create_yaml(&client, lonely).await.expect("lonely");
    let lonely_ip = eventually("an address for lonely", Duration::from_secs(30), || async {
        ingress(&client, "default", "lonely").await.into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(answering_nodes(&lab, &lonely_ip), Vec::<String>::new(), "no endpoints: nobody answers");
    // ...and one speaker says why, on the Service, in the Service's namespace.
    wait_event(
        &client,
        "default",
        "lonely",
        &format!("nobody announces {lonely_ip}: the Service has no ready endpoints"),
    )
    .await;

    // The exclude label takes a node out; NetworkUnavailable too.
    let node_api: Api<Node> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {election::EXCLUDE_LABEL: ""}}});
    node_api.patch(&owner, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
    let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(ip, rest.iter().copied()).expect("owner").to_string();
    wait_answered_by(&lab, &vip, &[&next]).await;
    let unlabel = json!({"metadata": {"labels": {election::EXCLUDE_LABEL: null}}});
    node_api.patch(&owner, &PatchParams::default(), &Patch::Merge(&unlabel)).await.expect("unlabel");
    wait_answered_by(&lab, &vip, &[&owner]).await;
    // Every node labelled (a kubeadm single-node cluster, three times over): nobody answers, and the Service
    // says why and which chart value helps, instead of silence.
    for n in nodes {
        node_api.patch(n, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
    }
    wait_answered_by(&lab, &vip, &[]).await;
    let why = format!(
        "nobody announces {vip}: all 3 nodes are not eligible (label {}); set speaker.ignoreExcludeLB=true",
        election::EXCLUDE_LABEL
    );
    wait_event(&client, "kube-system", "dns-svc-lb", &why).await;
    for n in nodes {
        node_api.patch(n, &PatchParams::default(), &Patch::Merge(&unlabel)).await.expect("unlabel");
    }
    wait_answered_by(&lab, &vip, &[&owner]).await;

    // NetworkUnavailable=True takes a node out, like the exclude label; False brings it back.
    let unavailable = |status: &str| {
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": status, "reason": "Test",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    node_api.patch_status(&owner, &PatchParams::default(), &Patch::Strategic(unavailable("True"))).await.expect("cond");
    wait_answered_by(&lab, &vip, &[&next]).await;
    node_api
        .patch_status(&owner, &PatchParams::default(), &Patch::Strategic(unavailable("False")))
        .await
        .expect("cond");
    wait_answered_by(&lab, &vip, &[&owner]).await;

    // An L2Advertisement's nodeSelectors: a pool announced from node-3 only.
    let selected = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pinned, namespace: metallb-system}\nspec: {addresses: [198.19.1.1-198.19.1.10], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: pinned, namespace: metallb-system}\nspec:\n  ipAddressPools: [pinned]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-3}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: pinned, namespace: kube-system, annotations: {metallb.io/address-pool: pinned}}\nspec: {type: LoadBalancer, selector: {k8s-app: kube-dns}, ports: [{port: 8053, protocol: UDP}]}\n";
    // The "lab" L2Advertisement (no pool list) applies to every pool; narrow it so only "pinned" speaks for it.
    let ads = ApiResource::erase::<L2AdvertisementSchema>(&());
    let lab_ad: Api<DynamicObject> = Api::namespaced_with(client.clone(), "metallb-system", &ads);
    let only_lab = json!({"spec": {"ipAddressPools": ["lab"]}});
    lab_ad.patch("lab", &PatchParams::default(), &Patch::Merge(&only_lab)).await.expect("narrow the lab ad");
    create_yaml(&client, selected).await.expect("pinned pool");
    let pinned_ip = eventually("an address for pinned", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "pinned").await.into_iter().next()
    })
    .await;
    wait_answered_by(&lab, &pinned_ip, &["node-3"]).await;

    // Liveness datagrams forged without the key ("owner is leaving") move nothing, and are seen and rejected.
    let state = lab.state();
    for n in &state.nodes {
        let to = format!("{}:7946", n.ip);
        lab.ok(&["exec", "host", "--", EXE, "gossip-forge", "--node", &owner, "--to", &to, "--kind", "leaving"]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(answering_nodes(&lab, &vip), [owner.as_str()], "a forged 'leaving' moved the address");
    let witness = state.nodes.iter().find(|n| n.name != owner).expect("another node");
    let log = std::fs::read_to_string(state.log(&format!("speaker {}", witness.name))).unwrap_or_default();
    assert!(
        log.contains("rejected a liveness datagram") && log.contains("bad_tag"),
        "forgery not seen by {}",
        witness.name
    );

    // Graceful stop (SIGTERM): the speaker says it is leaving, so its address moves without waiting.
    let speaker = state.procs.iter().rev().find(|p| p.role == format!("speaker {owner}")).expect("speaker").pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(speaker), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    wait_answered_by(&lab, &vip, &[&next]).await;
    let log = std::fs::read_to_string(state.log(&format!("speaker {}", witness.name))).unwrap_or_default();
    assert!(log.contains(&format!("node={owner} verdict=Dead")), "peers learnt of the leave");
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;

    // The owner's speaker crashes while its node stays Ready: the address moves. A speaker started after the
    // crash (it never heard the dead one) must not elect it either, or nobody would answer.
    let state = lab.state();
    let pid_of =
        |node: &str| state.procs.iter().rev().find(|p| p.role == format!("speaker {node}")).expect("speaker").pid;
    let signal = |pid: i32, sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal");
    signal(pid_of(&owner), nix::sys::signal::Signal::SIGKILL);
    wait_answered_by(&lab, &vip, &[&next]).await;
    signal(pid_of(&next), nix::sys::signal::Signal::SIGTERM);
    eventually("next's speaker to stop", Duration::from_secs(10), || async {
        (!ferrolb_tests::lab::control_plane::alive(pid_of(&next))).then_some(())
    })
    .await;
    lab.ok(&["revive", &next]);
    wait_answered_by(&lab, &vip, &[&next]).await;
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;

    // Hard failure of the owner: another node answers and the host's traffic resumes.
    lab.ok(&["kill", &owner]);
    wait_answered_by(&lab, &vip, &[&next]).await;
    let resumed = eventually("UDP 53 answered again", Duration::from_secs(30), || async {
        lab.probe("host", "udp", &format!("{vip}:53"), 500).ok()
    })
    .await;
    assert_eq!(resumed, format!("{next} probe"));
    // The new owner says so, and removes the dead owner's stale status object.
    wait_status_nodes(&client, "dns-svc-lb", &[&next]).await;
    let told = format!("announcing from node \"{next}\" with protocol \"layer2\": {vip} on eth0");
    wait_event(&client, "kube-system", "dns-svc-lb", &told).await;

    // Revived: ownership returns to the hash's choice and stays there.
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;
    for _ in 0..3 {
        assert_eq!(answering_nodes(&lab, &vip), [owner.as_str()], "ownership settled without flapping");
    }

    // kube-proxy IPVS without strictARP (the VIPs sit on kube-ipvs0 and arp_ignore is 0): reported loudly.
    let netns = lab.state().node("node-1").expect("node-1").netns.clone();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let before = events.list(&ListParams::default().fields("involvedObject.name=node-1")).await.expect("events");
    assert!(
        !before.items.iter().any(|e| e.reason.as_deref() == Some("StrictARPDisabled")),
        "no warning while strictARP is in effect"
    );
    for iface in ["all", "eth0"] {
        ferrolb_tests::lab::net::sysctl(&netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "0").expect("sysctl");
    }
    eventually("a StrictARPDisabled Event on node-1", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default().fields("involvedObject.name=node-1")).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("StrictARPDisabled")).then_some(())
    })
    .await;
    for iface in ["all", "eth0"] {
        ferrolb_tests::lab::net::sysctl(&netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "1").expect("sysctl");
    }
}

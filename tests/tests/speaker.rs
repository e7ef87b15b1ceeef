//! ferrolb-speaker in the lab: real raw sockets in node namespaces, real ARP from the `host` namespace, the
//! user's DNS Service answering over TCP and UDP through the on-link static route, and failover.
//! Needs root. One test per behaviour, each on a fresh 3-node lab with the user's DNS Service (`up` takes
//! seconds; one on 12 nodes with speakers on 3, `speaker.nodeSelector`), one lab at a time; the tests wait with a
//! bound and assert behaviour, not time.

use ferrolb_crds::L2AdvertisementSchema;
use ferrolb_crds::ServiceL2Status;
use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, assert_dns_served_by, create_yaml, eventually, ingress, metric_sum, node_macs,
    one_lab_at_a_time, pools_api, seed, speaker_metrics, wait_answered_by, wait_event,
};
use ferrolb_tests::lab::net;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const LAB: &str = "flbs";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// The chart's `speaker.gossipPort`.
const LIVENESS_PORT: u16 = 7946;

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

/// The user's DNS Service on a fresh lab.
struct Dns {
    lab: TestLab,
    client: kube::Client,
    /// Its address (198.19.0.1).
    vip: String,
    /// The election's owner of `vip`, answering for it.
    owner: String,
    /// Who owns `vip` when `owner` is out.
    next: String,
}

/// A 3-node lab with the lab pool, kube-dns pods on node-1 and node-3, and the user's DNS Service (manifest
/// unchanged: one address, TCP and UDP 53) answered by its election owner.
async fn dns_lab() -> Dns {
    dns_lab_with(&[]).await
}

/// The same, brought up with extra `up` flags (chart values).
async fn dns_lab_with(flags: &[&str]) -> Dns {
    let lab = TestLab::start_with(EXE, LAB, 3, flags);
    let client = lab.admin().await;
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    // kube-dns pods on two nodes, so the Service has ready endpoints.
    for (pod, node) in [("dns-a", "node-1"), ("dns-b", "node-3")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: dns, image: lab/dns}}]}}\n"
        );
        create_yaml(&client, &yaml).await.expect("pod");
    }
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    let vip = eventually("an address for dns-svc-lb", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().next()
    })
    .await;
    assert_eq!(vip, "198.19.0.1");
    let ip: IpAddr = vip.parse().expect("ip");
    let owner = election::owner(ip, NODES).expect("an owner").to_string();
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(ip, rest.iter().copied()).expect("owner").to_string();
    wait_answered_by(&lab, &vip, &[&owner]).await;
    Dns { lab, client, vip, owner, next }
}

/// The pid of `node`'s speaker process (the newest one).
fn speaker_pid(lab: &TestLab, node: &str) -> i32 {
    lab.state().speaker(node).expect("speaker").pid
}

/// The HTTP status of `node`'s speaker's `/readyz` (process-mode lab), as curl prints it.
fn readyz(lab: &TestLab, node: &str) -> String {
    let state = lab.state();
    let port = state.speaker(node).and_then(|p| p.port);
    let url = format!("http://127.0.0.1:{}/readyz", port.expect("speaker port"));
    let out =
        lab.cli(&["exec", node, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &url]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_answers_and_the_users_dns_service_works_through_the_static_route() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, vip, owner, .. } = dns_lab().await;
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
    // Only the owner exports the address's series (MetalLB: "no metrics on the other speakers").
    for other in NODES.iter().filter(|n| **n != owner) {
        let theirs = speaker_metrics(&lab, other);
        let line = format!("ip=\"{vip}\"");
        assert!(!theirs.lines().any(|l| l.starts_with("metallb_speaker_announced") && l.contains(&line)), "{other}");
    }
    // The Service deleted: its ServiceL2Status goes, the owner's series for the address go, the pool is empty.
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    services.delete("dns-svc-lb", &Default::default()).await.expect("delete the Service");
    wait_status_nodes(&client, "dns-svc-lb", &[]).await;
    eventually("the owner's series for the address gone", Duration::from_secs(30), || async {
        let speaker = speaker_metrics(&lab, &owner);
        let label = format!("ip=\"{vip}\"");
        (!speaker.lines().any(|l| l.starts_with("metallb_speaker_announced") && l.contains(&label))).then_some(())
    })
    .await;
    eventually("the allocator gauge back to 0 in use", Duration::from_secs(30), || async {
        let controller = scrape_controller(&lab);
        (metric_sum(&controller, "metallb_allocator_addresses_in_use_total{pool=\"lab\"}") == 0.0).then_some(())
    })
    .await;
}

/// `speaker.garpRefreshSeconds`: the owner re-announces its address on its own (both gratuitous forms), with
/// nobody asking and no takeover; no other node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_re_announces_its_address_every_refresh_period() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, vip, owner, .. } = dns_lab_with(&["--set", "speaker.garpRefreshSeconds=1"]).await;
    assert!(
        lab.state().speaker_args.iter().any(|a| a == "--garp-refresh-secs=1"),
        "the chart value reaches the speakers"
    );
    // The takeover's own burst ends 2.2 s after the takeover (docs/design.md §6.2), which happened before the
    // owner answered; what the host hears after that comes from the refresh alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exe = EXE.to_string();
    let out = lab.cli(&["exec", "host", "--", &exe, "garp-listen", &vip, "--duration-ms", "3500"]);
    assert!(out.status.success(), "garp-listen: {}", String::from_utf8_lossy(&out.stderr));
    let macs = node_macs(&lab);
    let senders: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|mac| macs.get(mac).cloned().unwrap_or_else(|| format!("unknown {mac}")))
        .collect();
    println!("gratuitous ARP for {vip} heard in 3.5 s with a 1 s refresh: {senders:?}");
    assert!(senders.len() >= 4, "at least two refreshes of both forms: {senders:?}");
    assert!(senders.iter().all(|s| *s == owner), "only the owner re-announces: {senders:?}");
}

/// A shared address has one responder for all its Services; `externalTrafficPolicy: Local` is announced only
/// from a node with a ready endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_address_has_one_responder_and_a_local_policy_service_answers_from_its_endpoints_node() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, .. } = dns_lab().await;
    let shared = seed("shared-ip.yaml").replace("172.17.255.10", "198.19.0.10");
    create_yaml(&client, &shared).await.expect("shared");
    eventually("both shared Services on .10", Duration::from_secs(30), || async {
        let a = ingress(&client, "kube-system", "dns-svc-tcp").await;
        let b = ingress(&client, "kube-system", "dns-svc-udp").await;
        (a == ["198.19.0.10"] && b == a).then_some(())
    })
    .await;
    let shared_owner = election::owner("198.19.0.10".parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, "198.19.0.10", &[&shared_owner]).await;

    let local = "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: kube-system}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {k8s-app: local-only}\n  ports: [{port: 8080}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: local-1, namespace: kube-system, labels: {k8s-app: local-only}}\nspec: {nodeName: node-2, containers: [{name: c, image: lab/x}]}\n";
    create_yaml(&client, local).await.expect("local");
    let local_ip = eventually("an address for local", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "local").await.into_iter().next()
    })
    .await;
    wait_answered_by(&lab, &local_ip, &["node-2"]).await;
}

/// No endpoints: not announced at all, and one speaker says why, on the Service, in the Service's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_is_not_announced_and_says_why() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, .. } = dns_lab().await;
    let lonely = "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: default}\nspec: {type: LoadBalancer, selector: {app: nobody}, ports: [{port: 9090}]}\n";
    create_yaml(&client, lonely).await.expect("lonely");
    let lonely_ip = eventually("an address for lonely", Duration::from_secs(30), || async {
        ingress(&client, "default", "lonely").await.into_iter().next()
    })
    .await;
    // The speakers decided (their Event says so) before "nobody answers" is judged.
    wait_event(
        &client,
        "default",
        "lonely",
        &format!("nobody announces {lonely_ip}: the Service has no ready endpoints"),
    )
    .await;
    assert_eq!(answering_nodes(&lab, &lonely_ip), Vec::<String>::new(), "no endpoints: nobody answers");
}

/// The exclude label takes a node out, and every node labelled makes the Service say why and which chart value
/// helps; NetworkUnavailable=True takes a node out too, False brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exclude_label_and_network_unavailable_take_a_node_out() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, vip, owner, next, .. } = dns_lab().await;
    let node_api: Api<Node> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {election::EXCLUDE_LABEL: ""}}});
    node_api.patch(&owner, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
    wait_answered_by(&lab, &vip, &[&next]).await;
    let unlabel = json!({"metadata": {"labels": {election::EXCLUDE_LABEL: null}}});
    node_api.patch(&owner, &PatchParams::default(), &Patch::Merge(&unlabel)).await.expect("unlabel");
    wait_answered_by(&lab, &vip, &[&owner]).await;
    // Every node labelled (a kubeadm single-node cluster, three times over): nobody answers, and the Service
    // says why and which chart value helps, instead of silence.
    for n in NODES {
        node_api.patch(n, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
    }
    wait_answered_by(&lab, &vip, &[]).await;
    let why = format!(
        "nobody announces {vip}: all 3 nodes are not eligible (label {}); set speaker.ignoreExcludeLB=true",
        election::EXCLUDE_LABEL
    );
    wait_event(&client, "kube-system", "dns-svc-lb", &why).await;
    for n in NODES {
        node_api.patch(n, &PatchParams::default(), &Patch::Merge(&unlabel)).await.expect("unlabel");
    }
    wait_answered_by(&lab, &vip, &[&owner]).await;

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
}

/// An L2Advertisement's nodeSelectors: a pool announced from node-3 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertisements_node_selectors_pin_its_pool_to_the_selected_node() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, .. } = dns_lab().await;
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
}

/// Liveness datagrams forged without the key ("owner is leaving") move nothing, and are seen and rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_leaving_datagrams_are_rejected_and_move_nothing() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, vip, owner, .. } = dns_lab().await;
    let state = lab.state();
    let bad_tag = "ferrolb_speaker_gossip_rejects_total{reason=\"bad_tag\"}";
    for n in &state.nodes {
        let to = format!("{}:7946", n.ip);
        lab.ok(&["exec", "host", "--", EXE, "gossip-forge", "--node", &owner, "--to", &to, "--kind", "leaving"]);
    }
    // Every speaker decided about its forgery (counted it as rejected) before the owner is checked.
    for n in &state.nodes {
        eventually(&format!("{} rejecting the forgery", n.name), Duration::from_secs(10), || async {
            (metric_sum(&speaker_metrics(&lab, &n.name), bad_tag) >= 1.0).then_some(())
        })
        .await;
    }
    assert_eq!(answering_nodes(&lab, &vip), [owner.as_str()], "a forged 'leaving' moved the address");
    let witness = state.nodes.iter().find(|n| n.name != owner).expect("another node");
    let log = std::fs::read_to_string(state.log(&format!("speaker {}", witness.name))).unwrap_or_default();
    assert!(
        log.contains("rejected a liveness datagram") && log.contains("bad_tag"),
        "forgery not seen by {}",
        witness.name
    );
}

/// Graceful stop (SIGTERM): the speaker says it is leaving, so its address moves without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_stopped_gracefully_says_so_and_its_address_moves() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, vip, owner, next, .. } = dns_lab().await;
    signal(speaker_pid(&lab, &owner), nix::sys::signal::Signal::SIGTERM);
    wait_answered_by(&lab, &vip, &[&next]).await;
    let state = lab.state();
    let witness = state.nodes.iter().find(|n| n.name != owner).expect("another node");
    let log = std::fs::read_to_string(state.log(&format!("speaker {}", witness.name))).unwrap_or_default();
    assert!(log.contains(&format!("node={owner} verdict=Dead")), "peers learnt of the leave");
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;
}

/// MetalLB's memberlist uses the liveness port too: a ferrolb speaker that starts while a MetalLB speaker on its
/// node still holds it (a switch from one to the other) says so and waits, rather than exiting into a kubelet's
/// growing back-off, and starts the protocol (and takes its address back) once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_waits_for_its_liveness_port_while_another_process_holds_it() {
    use std::io::{BufRead, BufReader};
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, vip, owner, next, .. } = dns_lab().await;
    let pid = speaker_pid(&lab, &owner);
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    eventually("the owner's speaker to stop", Duration::from_secs(10), || async {
        (!ferrolb_tests::lab::control_plane::alive(pid)).then_some(())
    })
    .await;
    wait_answered_by(&lab, &vip, &[&next]).await;
    // A stand-in for memberlist: a UDP socket on the port (both families) in the owner's namespace.
    let hold = format!(
        "import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', {LIVENESS_PORT})); print('bound', flush=True); sys.stdin.read()"
    );
    let mut holder = std::process::Command::new(EXE)
        .args(["--name", &lab.name, "--dir"])
        .arg(&lab.dir)
        .args(["exec", &owner, "--", "python3", "-c", &hold])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("port holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout")).read_line(&mut line).expect("holder says");
    assert_eq!(line.trim(), "bound", "the port is held");
    lab.ok(&["revive", &owner]);
    let log = lab.state().log(&format!("speaker {owner}"));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the speaker to say its port is in use", Duration::from_secs(30), || async {
        read().contains("liveness port in use").then_some(())
    })
    .await;
    let waiting = speaker_pid(&lab, &owner);
    assert!(ferrolb_tests::lab::control_plane::alive(waiting), "it waits rather than exits");
    assert_eq!(answering_nodes(&lab, &vip), [next.as_str()], "the address stays answered meanwhile");
    assert_eq!(readyz(&lab, &owner), "503", "not ready while it waits, so a rolling update waits too");
    drop(holder.stdin.take());
    let _ = holder.wait();
    eventually("the protocol to start once the port is free", Duration::from_secs(30), || async {
        read().contains("liveness port free").then_some(())
    })
    .await;
    eventually("ready once the port is bound", Duration::from_secs(30), || async {
        (readyz(&lab, &owner) == "200").then_some(())
    })
    .await;
    wait_answered_by(&lab, &vip, &[&owner]).await;
    assert_eq!(speaker_pid(&lab, &owner), waiting, "the same process, never restarted");
}

/// The pool of an address in use is deleted (by mistake, or with its CRD): the controller's finalizer keeps the
/// pool, a Warning on it names the holder, and the address stays allocated and answered by its owner; once the
/// Service is gone, so is the pool (docs/design.md §3.10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pool_in_use_stays_and_its_address_stays_answered() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, vip, owner, .. } = dns_lab().await;
    let pools = pools_api(&client);
    wait_protected(&pools, "lab").await;
    pools.delete("lab", &kube::api::DeleteParams::default()).await.expect("delete pool");
    wait_event(&client, "metallb-system", "lab", &format!("kube-system/dns-svc-lb ({vip})")).await;
    // A minute of the deleted pool: every ARP sample (one each 500 ms) answered by the owner alone.
    let watched = ferrolb_tests::harness::arpwatch(&lab, &vip, 500, 60_000);
    let owner_mac = ferrolb_tests::harness::node_macs(&lab)
        .into_iter()
        .find_map(|(mac, node)| (node == owner).then_some(mac))
        .expect("owner's MAC");
    println!("60 s after the pool's deletion: {watched:?}");
    assert!(watched.samples >= 100, "the asker ran for the minute: {watched:?}");
    assert_eq!((watched.unanswered, watched.several), (0, 0), "always answered, by one MAC");
    assert_eq!(watched.macs.keys().collect::<Vec<_>>(), [&owner_mac], "by the owner's");
    assert_kept_then_released(&lab, &client, &vip, &owner).await;
    eventually("the pool gone with its last holder", Duration::from_secs(30), || async {
        pools.get_opt("lab").await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Waits until the controller protects pool `name` (its finalizer), i.e. it has seen an address of it in use.
async fn wait_protected(pools: &Api<DynamicObject>, name: &str) {
    eventually("the pool protected while in use", Duration::from_secs(30), || async {
        let pool = pools.get(name).await.ok()?;
        pool.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "ferrolb.io/addresses-in-use").then_some(())
    })
    .await;
}

/// After its pool was deleted: the DNS Service still holds `vip` and `owner` still answers it (sampled five
/// times); then the Service is deleted, so the pool's last address is released.
async fn assert_kept_then_released(lab: &TestLab, client: &kube::Client, vip: &str, owner: &str) {
    for _ in 0..5 {
        assert_eq!(ingress(client, "kube-system", "dns-svc-lb").await, [vip], "the address is kept");
        assert_eq!(answering_nodes(lab, vip), [owner], "and answered by its owner");
    }
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "kube-system")
        .delete("dns-svc-lb", &kube::api::DeleteParams::default())
        .await
        .expect("delete Service");
}

/// `helm uninstall` of a MetalLB whose chart templates its CRDs deletes the IPAddressPool CRD, and with it every
/// pool: the pool in use stays (its finalizer holds the CRD in Terminating), the Service keeps its address and its
/// owner answers; once the last holder is gone the pool and the CRD go, and a re-installed CRD works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_crd_deleted_while_in_use_keeps_the_address_answered() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, vip, owner, .. } = dns_lab().await;
    let pools = pools_api(&client);
    wait_protected(&pools, "lab").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("ipaddresspools.metallb.io", &kube::api::DeleteParams::default()).await.expect("delete CRD");
    // Evidence that the deletion reached the pool and the controller decided: its Warning naming the holder.
    wait_event(&client, "metallb-system", "lab", &format!("kube-system/dns-svc-lb ({vip})")).await;
    let crd = crds.get("ipaddresspools.metallb.io").await.expect("the CRD waits for its pools");
    assert!(crd.metadata.deletion_timestamp.is_some(), "the CRD is terminating");
    assert_kept_then_released(&lab, &client, &vip, &owner).await;
    eventually("the CRD gone with its last pool", Duration::from_secs(120), || async {
        crds.get_opt("ipaddresspools.metallb.io").await.ok()?.is_none().then_some(())
    })
    .await;
    // Re-installed (as `helm install` would): the controller's watch recovers and allocates from a new pool.
    let files = ferrolb_crds::crd_files().expect("CRDs");
    let (_, crd_yaml) = files.iter().find(|(name, _)| name.starts_with("ipaddresspools.")).expect("pool CRD");
    create_yaml(&client, crd_yaml).await.expect("re-create the CRD");
    eventually("the pool created on the new CRD", Duration::from_secs(30), || async {
        let pool_only = ferrolb_tests::harness::LAB_POOL.split("\n---").next().unwrap_or_default();
        create_yaml(&client, pool_only).await.ok()
    })
    .await;
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("DNS Service again");
    eventually("the DNS Service addressed from the new pool", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().find(|a| a.starts_with("198.19.0."))
    })
    .await;
}

/// The owner's speaker crashes while its node stays Ready: the address moves. A speaker started after the
/// crash (it never heard the dead one) must not elect it either, or nobody would answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_speaker_on_a_ready_node_is_replaced_even_by_a_peer_that_never_heard_it() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, vip, owner, next, .. } = dns_lab().await;
    signal(speaker_pid(&lab, &owner), nix::sys::signal::Signal::SIGKILL);
    wait_answered_by(&lab, &vip, &[&next]).await;
    let next_pid = speaker_pid(&lab, &next);
    signal(next_pid, nix::sys::signal::Signal::SIGTERM);
    eventually("next's speaker to stop", Duration::from_secs(10), || async {
        (!ferrolb_tests::lab::control_plane::alive(next_pid)).then_some(())
    })
    .await;
    lab.ok(&["revive", &next]);
    wait_answered_by(&lab, &vip, &[&next]).await;
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;
}

/// Hard failure of the owner: another node answers, the host's traffic resumes, the new owner says so; revived,
/// ownership returns to the hash's choice and stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_failure_moves_the_address_and_revival_brings_it_back() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, vip, owner, next, .. } = dns_lab().await;
    // The owner's status object exists first, so its removal below is the new owner's doing.
    wait_status_nodes(&client, "dns-svc-lb", &[&owner]).await;
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

    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;
    for _ in 0..3 {
        assert_eq!(answering_nodes(&lab, &vip), [owner.as_str()], "ownership settled without flapping");
    }
}

/// kube-proxy IPVS without strictARP (the VIPs sit on kube-ipvs0 and arp_ignore is 0): reported loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipvs_without_strict_arp_is_reported_on_the_node() {
    let _serial = one_lab_at_a_time().await;
    let Dns { lab, client, .. } = dns_lab().await;
    let netns = lab.state().node("node-1").expect("node-1").netns.clone();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    // node-1's speaker has read its interfaces (the same pass checks arp_ignore) and found strictARP in effect.
    eventually("node-1's speaker to have checked strictARP", Duration::from_secs(30), || async {
        let metrics = speaker_metrics(&lab, "node-1");
        (metric_sum(&metrics, "ferrolb_speaker_interface_rescans_total") >= 1.0
            && metrics.lines().any(|l| l == "ferrolb_speaker_strict_arp_missing 0"))
        .then_some(())
    })
    .await;
    let before = events.list(&ListParams::default().fields("involvedObject.name=node-1")).await.expect("events");
    assert!(
        !before.items.iter().any(|e| e.reason.as_deref() == Some("StrictARPDisabled")),
        "no warning while strictARP is in effect"
    );
    for iface in ["all", "eth0"] {
        ferrolb_tests::lab::net::sysctl(&netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "0").expect("sysctl");
    }
    // arp_ignore changes raise no netlink notification: the speaker reads the sysctls on its 5 s tick. The bound
    // is well below the 60 s interface rescan (speaker --interface-rescan-secs), so a speaker that checked only
    // on rescans would fail here most of the time.
    eventually("a StrictARPDisabled Event on node-1", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default().fields("involvedObject.name=node-1")).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("StrictARPDisabled")).then_some(())
    })
    .await;
    for iface in ["all", "eth0"] {
        ferrolb_tests::lab::net::sysctl(&netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "1").expect("sysctl");
    }
}

/// `speaker.nodeSelector` on 3 of 12 nodes (`up --speaker-nodes 3`): heartbeats reach only the nodes that run a
/// speaker (an nftables counter on the liveness port in every node namespace), and every address goes to one
/// of the three, also addresses whose owner among all twelve Ready nodes would be a node without a speaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_speakers_on_three_of_twelve_nodes_heartbeats_and_addresses_stay_among_them() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start_with(EXE, LAB, 12, &["--speaker-nodes", "3"]);
    let state = lab.state();
    let speakers = ["node-1", "node-2", "node-3"];
    let running: Vec<String> =
        state.procs.iter().filter_map(|p| p.role.strip_prefix("speaker ").map(String::from)).collect();
    assert_eq!(running, speakers, "the chart's nodeSelector places the speakers");
    for node in &state.nodes {
        net::count_udp(&node.netns, LIVENESS_PORT).expect("count liveness datagrams");
    }
    let client = lab.admin().await;
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    let backend = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: default, labels: {app: web}}\nspec: {nodeName: node-12, containers: [{name: c, image: lab/x}]}\n";
    create_yaml(&client, backend).await.expect("pod");
    let all: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut away = 0;
    for i in 1..=3 {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i}, namespace: default}}\nspec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        create_yaml(&client, &svc).await.expect("service");
        let ip = eventually(&format!("an address for web-{i}"), Duration::from_secs(30), || async {
            ingress(&client, "default", &format!("web-{i}")).await.into_iter().next()
        })
        .await;
        let addr: IpAddr = ip.parse().expect("ip");
        let owner = election::owner(addr, speakers).expect("owner");
        if !speakers.contains(&election::owner(addr, all.iter().copied()).expect("owner among all")) {
            away += 1;
        }
        wait_answered_by(&lab, &ip, &[owner]).await;
    }
    assert!(away > 0, "no address would have gone to a node without a speaker: the test proves nothing");
    // Heartbeats flow between the three; counted again from here, after every speaker has long listed the pods
    // (until then a speaker sends to every Node, by design).
    for node in &state.nodes {
        net::counted_udp(&node.netns, true).expect("reset");
    }
    let heard = eventually("heartbeats counted at every speaker's node", Duration::from_secs(30), || async {
        let counts: Vec<u64> =
            state.nodes[..3].iter().map(|n| net::counted_udp(&n.netns, false).expect("count")).collect();
        counts.iter().all(|c| *c >= 40).then_some(counts)
    })
    .await;
    let unheard: Vec<u64> =
        state.nodes[3..].iter().map(|n| net::counted_udp(&n.netns, false).expect("count")).collect();
    println!("liveness datagrams counted: speaker nodes {heard:?}, the other nine {unheard:?}");
    assert_eq!(unheard, [0; 9], "nodes without a speaker hear no heartbeat");
}

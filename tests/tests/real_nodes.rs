//! The chart under real kubelets: containerd and a kubelet per node namespace, kube-scheduler, and the
//! Deployment/ReplicaSet/DaemonSet controllers, so `helm install` runs ferrolb as pods from the images
//! `make images` built. The user's scenario, served by the speaker pods; node, pod and leader failures;
//! `helm upgrade` and `helm uninstall`; and a single node labelled the way minikube/kubeadm label it. Each test
//! brings up its own lab (about 16 s for 3 real nodes), one at a time.
//! Needs root and `make images`. Timings are printed, never asserted.

use ferrolb_crds::{ConfigurationState, IPAddressPool};
use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, Watch, address_conflict_events, answering_nodes, apply_users_services, create_yaml, eventually, ingress,
    is_ready, lb_addresses, one_lab_at_a_time, pods, seed, wait_answered_by, wait_event, wait_ingress, watched_while,
};
use ferrolb_tests::lab::{lifecycle, realnode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NS: &str = "metallb-system";

const SPEAKERS: &str = "app.kubernetes.io/component=speaker";
const CONTROLLERS: &str = "app.kubernetes.io/component=controller";

/// CoreDNS pods (the lab's image, serving `lab.example`) on `nodes`, labelled `k8s-app: <app>` as the user's
/// Services select them, so the DNS Service has ready endpoints that answer through kube-proxy.
async fn backends(client: &kube::Client, app: &str, nodes: &[&str]) {
    for (i, node) in nodes.iter().enumerate() {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{i}, namespace: kube-system, labels: {{k8s-app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: coredns, image: {}}}]}}\n",
            realnode::DNS_IMAGE
        );
        create_yaml(client, &yaml).await.expect("backend pod");
    }
    let selector = format!("k8s-app={app}");
    eventually(&format!("{app} backends Ready"), Duration::from_secs(60), || async {
        let list = pods(client, "kube-system", &selector).await;
        (list.len() == nodes.len() && list.iter().all(is_ready)).then_some(())
    })
    .await;
}

/// `/proc/<pid>/status` of every process running the image's speaker (`/ferrolb-speaker`, as the kubelet started
/// it; the process-mode speakers run from `target/` and are not matched).
fn speaker_process_status() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).next() != Some(b"/ferrolb-speaker".as_slice()) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            found.push((pid, status));
        }
    }
    found
}

/// The value of one `Key:\tvalue` line of `/proc/<pid>/status`.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in /proc status:\n{status}"))
}

/// Runs `work` while a real DNS client on the host (queries to port 53, answered by the CoreDNS pods through
/// kube-proxy) and the ARP asker watch `vip` (see [`watched_while`]); returns the client's longest gap in ms and
/// every ARP sample.
fn watched_dns_while<F, Fut>(lab: &TestLab, vip: &str, work: F) -> (f64, ferrolb_tests::lab::arping::WatchReport)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let watch = Watch { ip: vip.to_string(), protocol: "dns", port: 53 };
    let seen = watched_while(lab, &[watch], work).pop().expect("one watch");
    (seen.outage_ms, seen.arp)
}

/// Prints what a roll of the chart's pods cost the host's client and ARP asker, with the alarms counted, and
/// asserts the alarms are zero: never two answerers, no `AddressConflict` Event, no stranger conflict on any node
/// (a restarted speaker must not take its peers for strangers).
async fn assert_no_alarm(
    lab: &TestLab,
    client: &kube::Client,
    what: &str,
    outage_ms: f64,
    arp: &ferrolb_tests::lab::arping::WatchReport,
) {
    let conflicts = address_conflict_events(client).await;
    let strangers: Vec<(String, f64)> = NODES
        .iter()
        .map(|n| (n.to_string(), pod_speaker_metric(lab, n, "ferrolb_speaker_stranger_conflicts_total")))
        .collect();
    println!(
        "{what}: longest DNS-client outage {outage_ms:.0} ms; ARP samples {} ({} unanswered, {} with two answerers, MACs {:?}); AddressConflict Events {}; stranger conflicts per node {strangers:?}",
        arp.samples,
        arp.unanswered,
        arp.several,
        arp.macs,
        conflicts.len()
    );
    assert_eq!(arp.several, 0, "{what}: never two answerers");
    assert!(conflicts.is_empty(), "{what}: no AddressConflict for the cluster's own speakers: {conflicts:?}");
    assert!(strangers.iter().all(|(_, n)| *n == 0.0), "{what}: no speaker took a peer for a stranger: {strangers:?}");
}

/// The sum of one metric on `node`'s speaker pod (host network, port 7473). Panics when the speaker does not
/// export it, so an unreachable speaker never reads as 0.
fn pod_speaker_metric(lab: &TestLab, node: &str, name: &str) -> f64 {
    let out = lab.cli(&["exec", node, "--", "curl", "-s", "--max-time", "5", "http://127.0.0.1:7473/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(name), "{node}'s speaker exports no {name}");
    ferrolb_tests::harness::metric_sum(&text, name)
}

const LAB_POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.254]}\n";

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// Runs kubectl against the lab as its admin; panics with its error output unless it succeeds.
fn kubectl(lab: &TestLab, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", lab.state().kubeconfig())
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 3-node lab of real nodes with the chart installed (pods Ready), one at a time.
fn real_lab() -> TestLab {
    let started = Instant::now();
    let lab = TestLab::start_with(EXE, "flbk", 3, &["--kubelets", "--kube-proxy"]);
    println!("real-node lab (3 nodes, chart installed, pods Ready) up in {:.1?}", started.elapsed());
    lab
}

/// The user's scenario on a real-node lab: their manifests unchanged, then the pool swapped for the lab's range
/// with kube-dns backends on node-1 and node-3. Returns the DNS Service's address and its owner, answering.
async fn users_scenario(lab: &TestLab, client: &kube::Client) -> (String, IpAddr, String) {
    let nodes = NODES;
    // The user's manifests, unchanged: .1, .2 and the shared .10.
    apply_users_services(client).await;
    create_yaml(client, &seed("shared-ip.yaml")).await.expect("shared");
    wait_ingress(client, "kube-system", "dns-svc-tcp", &["172.17.255.10"]).await;
    wait_ingress(client, "kube-system", "dns-svc-udp", &["172.17.255.10"]).await;

    // Packets may only use the lab's range: swap the pool, as the demo does; the DNS Service moves to it.
    create_yaml(client, LAB_POOL).await.expect("lab pool");
    let pools = Api::<IPAddressPool>::namespaced(client.clone(), NS);
    pools.delete("default", &DeleteParams::default()).await.expect("delete");
    // Its addresses are in use, so the pool stays until they are released (docs/design.md §3.10); taking the
    // controller's finalizer off renumbers now, as MetalLB does on a deletion (gone already if it had none yet).
    let unprotect = serde_json::json!({"metadata": {"finalizers": null}});
    if let Err(e) = pools.patch("default", &PatchParams::default(), &Patch::Merge(&unprotect)).await {
        println!("finalizer not removed ({e}): the pool had none yet");
    }
    backends(client, "kube-dns", &["node-1", "node-3"]).await;
    let vip = eventually("dns-svc-lb on the lab pool", Duration::from_secs(30), || async {
        ingress(client, "kube-system", "dns-svc-lb").await.into_iter().find(|a| a.starts_with("198.19.0."))
    })
    .await;
    let ip: IpAddr = vip.parse().expect("ip");
    let owner = election::owner(ip, nodes).expect("an owner").to_string();
    wait_answered_by(lab, &vip, &[&owner]).await;
    assert_dns_served_by_pods_through(lab, &vip, &owner);
    wait_event(
        client,
        "kube-system",
        "dns-svc-lb",
        &format!("announcing from node \"{owner}\" with protocol \"layer2\": {vip}"),
    )
    .await;

    (vip, ip, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_under_real_kubelets_and_serves_the_users_scenario() {
    let _serial = one_lab_at_a_time().await;
    let lab = real_lab();
    let client = lab.admin().await;
    let nodes = NODES;
    assert!(lab.state().procs.iter().all(|p| !p.role.starts_with("speaker") && !p.role.starts_with("controller")));

    // helm install → 2 controller pods and one hostNetwork speaker pod per node, from the built images.
    let controllers = pods(&client, NS, CONTROLLERS).await;
    assert_eq!(controllers.len(), 2, "two controller replicas");
    assert!(controllers.iter().all(is_ready));
    let speakers = pods(&client, NS, SPEAKERS).await;
    let mut speaker_nodes: Vec<String> = speakers.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    speaker_nodes.sort();
    assert_eq!(speaker_nodes, nodes, "one speaker pod per node");
    for pod in &speakers {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.host_network, Some(true));
        assert!(is_ready(pod));
        let status = pod.status.as_ref().expect("status");
        let image = &status.container_statuses.as_ref().expect("container statuses")[0].image;
        assert!(image.contains("ferrolb/speaker:"), "speaker runs the built image, got {image}");
        // Non-root (docs/design.md §9.1): the pod asks for user 65532, and the runtime must honour it.
        let pod_context = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_context.run_as_user, Some(65532), "speaker pod's user");
        assert_eq!(pod_context.run_as_non_root, Some(true));
    }
    // The running processes: user 65532 and exactly CAP_NET_RAW (bit 13) effective, gained through the
    // binary's file capability under no_new_privs. A pod that answers ARP without it could not open its socket.
    let processes = speaker_process_status();
    assert_eq!(processes.len(), nodes.len(), "one /ferrolb-speaker process per node: {processes:?}");
    for (pid, status) in &processes {
        let uid = status_field(status, "Uid");
        let cap_eff = status_field(status, "CapEff");
        println!("speaker pid {pid}: Uid {uid}, CapEff {cap_eff}, NoNewPrivs {}", status_field(status, "NoNewPrivs"));
        assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "real, effective, saved, fs uid");
        assert_eq!(u64::from_str_radix(cap_eff, 16).expect("hex"), 1 << 13, "CapEff is CAP_NET_RAW alone");
        assert_eq!(status_field(status, "NoNewPrivs"), "1", "allowPrivilegeEscalation: false holds");
    }

    // ConfigurationState (MetalLB v0.16): the leader controller and every speaker report Valid, each object
    // owned by the Pod that writes it (so it goes with the Pod, as MetalLB's do).
    let states: Api<ConfigurationState> = Api::namespaced(client.clone(), NS);
    let owners = eventually("every ConfigurationState Valid and owned by its Pod", Duration::from_secs(60), || async {
        let list = states.list(&Default::default()).await.ok()?.items;
        let owned: Vec<(String, String)> = list
            .iter()
            .filter(|o| o.status.as_ref().and_then(|s| s.result.as_deref()) == Some("Valid"))
            .filter_map(|o| {
                let owner = o.metadata.owner_references.as_ref()?.iter().find(|r| r.kind == "Pod")?;
                Some((o.metadata.name.clone()?, owner.name.clone()))
            })
            .collect();
        (owned.len() == nodes.len() + 1).then_some(owned)
    })
    .await;
    for (object, pod) in &owners {
        let expected = match object.strip_prefix("speaker-") {
            Some(node) => speakers.iter().find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)),
            None => controllers.iter().find(|p| p.metadata.name.as_deref() == Some(pod.as_str())),
        };
        assert_eq!(expected.and_then(|p| p.metadata.name.as_deref()), Some(pod.as_str()), "{object} owned by {pod}");
    }

    // `kubectl logs` and `kubectl exec` reach the kubelets (the API server's egress goes through the lab agent's
    // CONNECT proxy into the node namespaces, docs/lab.md §6): a speaker's own log, and a command in its container.
    let speaker_pod = speakers[0].metadata.name.clone().expect("pod name");
    let logs = kubectl(&lab, &["logs", "-n", NS, &speaker_pod]);
    assert!(logs.contains("ready: caches synced and liveness port bound"), "kubectl logs {speaker_pod}:\n{logs}");
    let version = kubectl(&lab, &["exec", "-n", NS, &speaker_pod, "--", "/ferrolb-speaker", "--version"]);
    assert!(version.starts_with("ferrolb-speaker "), "kubectl exec: {version}");
    println!("kubectl logs {speaker_pod}: {} lines; kubectl exec: {}", logs.lines().count(), version.trim());

    let (vip, ip, owner) = users_scenario(&lab, &client).await;

    // Pods are dual-stack (docs/lab.md §2): an IPv6-only Service gets the kube-dns pods' IPv6 addresses as its
    // endpoints, and its owner answers neighbour solicitations for its address.
    let v6 = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab6, namespace: metallb-system}\nspec: {addresses: ['2001:db8:19::1-2001:db8:19::9']}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: dns6, namespace: kube-system}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {k8s-app: kube-dns}\n  ports: [{port: 53, protocol: UDP}]\n";
    create_yaml(&client, v6).await.expect("IPv6 pool and Service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let endpoints = eventually("dns6's IPv6 endpoints on both kube-dns pods", Duration::from_secs(60), || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=dns6")).await.ok()?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|s| s.address_type == "IPv6")
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;
    assert!(
        endpoints.iter().all(|a| a.starts_with("2001:db8:18:")),
        "pod addresses from the nodes' ranges: {endpoints:?}"
    );
    let v6_vip = eventually("an IPv6 address for dns6", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns6").await.into_iter().next()
    })
    .await;
    let v6_owner = election::owner(v6_vip.parse().expect("ip"), nodes).expect("owner").to_string();
    wait_answered_by(&lab, &v6_vip, &[&v6_owner]).await;
    println!("dns6 {v6_vip}: endpoints {endpoints:?}, answered by {v6_owner}");

    // Hard kill of the owner node: the address moves to one other node, measured by a prober on the host.
    let report = lab.probe_while("udp", &witness(&vip), 4000, || {
        lab.ok(&["kill", &owner]);
    });
    println!("hard kill of {owner} under real kubelets: longest UDP outage {} ms ({report})", report["max_gap_ms"]);
    assert_eq!(report["first"].as_str(), Some(owner.as_str()), "the prober started on the owner");
    let survivors: Vec<&str> = nodes.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(ip, survivors.iter().copied()).expect("next owner").to_string();
    wait_answered_by(&lab, &vip, &[&next]).await;
    assert_eq!(report["last"].as_str(), Some(next.as_str()), "the prober ends on the new owner");

    // Revive: the kubelet comes back and restarts the speaker pod; the address returns and stays.
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &vip, &[&owner]).await;
}

/// `curl` from the `host` namespace: the body, or the error.
fn curl(lab: &TestLab, url: &str) -> Result<String, String> {
    let out = lab.cli(&["exec", "host", "--", "curl", "-sS", "--max-time", "3", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `dig` from the `host` namespace (one try, 2 s), with extra arguments; its short answer, or the error.
/// `<vip>:7`, the echo server's witness port, which kube-proxy leaves alone: it names the node the address's
/// packets reach, while Service ports go to the pods.
fn witness(vip: &str) -> String {
    std::net::SocketAddr::new(vip.parse().expect("ip"), ferrolb_tests::lab::node::WITNESS_PORT).to_string()
}

/// The user's check through the static route: `owner` receives the address's packets (the witness port, UDP
/// and TCP), and `dig` over UDP and over TCP is answered by the CoreDNS pods behind kube-proxy.
fn assert_dns_served_by_pods_through(lab: &TestLab, vip: &str, owner: &str) {
    assert_eq!(lab.probe("host", "udp", &witness(vip), 2000), Ok(format!("{owner} probe")), "UDP reaches {owner}");
    assert_eq!(lab.probe("host", "tcp", &witness(vip), 2000), Ok(owner.to_string()), "TCP reaches {owner}");
    let answer = |args: &[&str]| {
        // kube-proxy may take a moment to program a new endpoint: a few tries, each a real query.
        (0..20).find_map(|_| {
            dig(lab, vip, args).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(500));
                None
            })
        })
    };
    assert_eq!(answer(&["web.lab.example"]).as_deref(), Some("198.19.0.2"), "dig over UDP through {vip}");
    assert_eq!(answer(&["+tcp", "web.lab.example"]).as_deref(), Some("198.19.0.2"), "dig over TCP through {vip}");
}

fn dig(lab: &TestLab, server: &str, args: &[&str]) -> Result<String, String> {
    let at = format!("@{server}");
    let mut all = vec!["exec", "host", "--", "dig", at.as_str(), "+short", "+time=2", "+tries=1"];
    all.extend_from_slice(args);
    let out = lab.cli(&all);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !text.is_empty() && !text.starts_with(";;") { Ok(text) } else { Err(text) }
}

/// Issue 22's data path, with a real kube-proxy (nftables mode) on every node: the user's DNS and web
/// Services, their manifests unchanged, are served by real pods (CoreDNS; busybox httpd) through the static
/// route, `dig` over UDP and TCP and `curl` as the user runs them. A hard kill of the DNS address's owner is
/// measured by a DNS client asking every 10 ms. With `externalTrafficPolicy: Local` only the node with the web
/// pod may announce, and the pod sees the host's own address as the client, in its answer and in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_services_are_served_by_real_pods_through_kube_proxy() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start_with(EXE, "flbkp", 3, &["--kubelets", "--kube-proxy"]);
    let client = lab.admin().await;
    assert!(lab.state().procs.iter().any(|p| p.role == "kube-proxy node-1"), "kube-proxy runs on the nodes");
    // The chart's pods (Ready, or `up` would have failed) reached the API server through kube-proxy alone: the
    // `kubernetes` Service's endpoint is the address the nodes' API relays answer on, and no lab DNAT exists.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .expect("the kubernetes Service's EndpointSlices");
    let endpoints: Vec<String> =
        list.items.iter().flat_map(|s| &s.endpoints).flat_map(|e| e.addresses.clone()).collect();
    assert_eq!(endpoints, [realnode::API_ENDPOINT_IP], "the API server advertises the relays' address");
    let tables = lab.ok(&["exec", "node-1", "--", "nft", "list", "tables"]);
    assert!(!tables.contains("ferrolb-lab"), "no lab DNAT beside kube-proxy:\n{tables}");
    // Packets may only use the lab's range: the lab pool with the user's own advertisement, then their web
    // Service unchanged, and one web pod on node-2.
    create_yaml(&client, LAB_POOL).await.expect("lab pool");
    create_yaml(&client, &seed("l2advertisement.yaml")).await.expect("advertisement");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: node-2, containers: [{{name: web, image: {}, ports: [{{containerPort: 8000}}]}}]}}\n",
        realnode::WEB_IMAGE
    );
    create_yaml(&client, &pod).await.expect("web pod");
    for (i, node) in ["node-1", "node-3"].iter().enumerate() {
        let dns = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: coredns-{i}, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: coredns, image: {}}}]}}\n",
            realnode::DNS_IMAGE
        );
        create_yaml(&client, &dns).await.expect("CoreDNS pod");
    }
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("the user's DNS Service");
    create_yaml(&client, &seed("web-svc-lb.yaml")).await.expect("the user's web Service");
    eventually("the CoreDNS pods Ready", Duration::from_secs(60), || async {
        let list = pods(&client, "kube-system", "k8s-app=kube-dns").await;
        (list.len() == 2 && list.iter().all(is_ready)).then_some(())
    })
    .await;
    eventually("the web pod Ready", Duration::from_secs(60), || async {
        pods(&client, "default", "app=web").await.iter().all(is_ready).then_some(())
    })
    .await;
    let vip = eventually("web-svc-lb on the lab pool", Duration::from_secs(30), || async {
        ingress(&client, "default", "web-svc-lb").await.into_iter().next()
    })
    .await;
    let owner = election::owner(vip.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &vip, &[&owner]).await;
    let url = format!("http://{vip}/");
    let body = eventually("the web pod answers through kube-proxy", Duration::from_secs(30), || async {
        curl(&lab, &url).ok()
    })
    .await;
    println!("curl {url} (Cluster, announced by {owner}): {body}");
    assert!(body.starts_with("web pod web-0 saw client "), "{body}");

    // Local: the address moves to node-2, the only node with a ready endpoint, and the client's address is kept.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let local = serde_json::json!({"spec": {"externalTrafficPolicy": "Local"}});
    services.patch("web-svc-lb", &PatchParams::default(), &Patch::Merge(&local)).await.expect("Local");
    wait_answered_by(&lab, &vip, &["node-2"]).await;
    let body = eventually("the web pod answers with the host as client", Duration::from_secs(30), || async {
        curl(&lab, &url).ok().filter(|b| b.ends_with("saw client 198.18.0.1"))
    })
    .await;
    println!("curl {url} (Local, announced by node-2): {body}");
    let log = kubectl(&lab, &["logs", "-n", "default", "web-0"]);
    assert!(log.contains("198.18.0.1"), "the web pod's log names the host as the client:\n{log}");

    let dns_vip = eventually("dns-svc-lb on the lab pool", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns-svc-lb").await.into_iter().next()
    })
    .await;
    let dns_owner = election::owner(dns_vip.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &dns_vip, &[&dns_owner]).await;
    // The user's check, literally: dig over UDP and over TCP through the static route, answered by CoreDNS.
    let udp = eventually("dig over UDP answered", Duration::from_secs(30), || async {
        dig(&lab, &dns_vip, &["web.lab.example"]).ok()
    })
    .await;
    assert_eq!(udp, "198.19.0.2", "the zone's record over UDP");
    assert_eq!(dig(&lab, &dns_vip, &["+tcp", "web.lab.example"]), Ok("198.19.0.2".to_string()), "and over TCP");
    let server = dig(&lab, &dns_vip, &["CH", "TXT", "hostname.bind"]).expect("CH TXT hostname.bind");
    assert!(server == "\"coredns-0\"" || server == "\"coredns-1\"", "answered by a CoreDNS pod: {server}");
    println!("dig @{dns_vip} (announced by {dns_owner}): web.lab.example {udp} over UDP and TCP, from {server}");

    // An IPv6-only Service, answered by the dual-stack CoreDNS pods over IPv6 through kube-proxy.
    let v6 = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab6, namespace: metallb-system}\nspec: {addresses: ['2001:db8:19::1-2001:db8:19::9']}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: dns6, namespace: kube-system}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  selector: {k8s-app: kube-dns}\n  ports: [{name: dns-udp, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]\n";
    create_yaml(&client, v6).await.expect("IPv6 pool and Service");
    let v6_vip = eventually("an IPv6 address for dns6", Duration::from_secs(30), || async {
        ingress(&client, "kube-system", "dns6").await.into_iter().next()
    })
    .await;
    let v6_owner = election::owner(v6_vip.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &v6_vip, &[&v6_owner]).await;
    let over_v6 = eventually("dig over IPv6 answered", Duration::from_secs(30), || async {
        dig(&lab, &v6_vip, &["web.lab.example"]).ok()
    })
    .await;
    assert_eq!(over_v6, "198.19.0.2", "the IPv6-only Service is served by the CoreDNS pods");
    println!("dig @{v6_vip} (IPv6 only, announced by {v6_owner}): web.lab.example {over_v6}");

    // A hard kill of the owner, measured at once by a real DNS client (CH TXT hostname.bind every 10 ms) and
    // by the echo prober on the address's witness port, which kube-proxy leaves alone: it names the node the
    // address's packets reach.
    let witness = witness(&dns_vip);
    let mut report = serde_json::Value::Null;
    let echo = lab.probe_while("udp", &witness, 9000, || {
        report = lab.probe_while("dns", &format!("{dns_vip}:53"), 6000, || {
            lab.ok(&["kill", &dns_owner]);
        });
    });
    println!(
        "hard kill of {dns_owner}: longest DNS-client outage {} ms, echo prober on {witness} {} ms (same kill)\n  dns: {report}\n  echo: {echo}",
        report["max_gap_ms"], echo["max_gap_ms"]
    );
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != dns_owner).collect();
    let next = election::owner(dns_vip.parse().expect("ip"), survivors.iter().copied()).expect("next").to_string();
    wait_answered_by(&lab, &dns_vip, &[&next]).await;
    assert!(report["last"].as_str().is_some_and(|s| s.starts_with("coredns-")), "answered after the kill: {report}");
    assert_eq!(echo["first"], dns_owner.as_str(), "the echo prober first reached the owner: {echo}");
    assert_eq!(echo["last"], next.as_str(), "and after the kill the elected survivor: {echo}");
    assert_eq!(
        eventually("dig answered by the survivors", Duration::from_secs(30), || async {
            dig(&lab, &dns_vip, &["web.lab.example"]).ok()
        })
        .await,
        "198.19.0.2"
    );
}

/// Deleting the owner's speaker pod: the DaemonSet makes a new one, the address comes back without flapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_speaker_pod_is_replaced_and_its_address_returns_without_flapping() {
    let _serial = one_lab_at_a_time().await;
    let lab = real_lab();
    let client = lab.admin().await;
    let (vip, _, owner) = users_scenario(&lab, &client).await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let old = pods(&client, NS, SPEAKERS)
        .await
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(owner.as_str()))
        .expect("speaker on owner");
    let old_uid = old.metadata.uid.clone();
    pod_api.delete(old.metadata.name.as_deref().expect("name"), &DeleteParams::default()).await.expect("delete pod");
    eventually("a new Ready speaker pod on the owner", Duration::from_secs(60), || async {
        pods(&client, NS, SPEAKERS)
            .await
            .into_iter()
            .find(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(owner.as_str())
                    && p.metadata.uid != old_uid
                    && is_ready(p)
            })
            .map(|_| ())
    })
    .await;
    wait_answered_by(&lab, &vip, &[&owner]).await;
    for _ in 0..5 {
        assert_eq!(answering_nodes(&lab, &vip), std::slice::from_ref(&owner), "no flapping after the pod came back");
    }
}

/// Deleting the leader controller pod: the standby takes the Lease and serves new Services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_controller_takes_the_lease_when_the_leader_pod_is_deleted() {
    let _serial = one_lab_at_a_time().await;
    let lab = real_lab();
    let client = lab.admin().await;
    users_scenario(&lab, &client).await;
    let controllers = pods(&client, NS, CONTROLLERS).await;
    assert_eq!(controllers.len(), 2, "two controller replicas");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    let leader = eventually("a controller leader", Duration::from_secs(30), || async {
        leases.get_opt("ferrolb-controller").await.ok().flatten().and_then(holder)
    })
    .await;
    pod_api.delete(&leader, &DeleteParams::default()).await.expect("delete leader pod");
    let standby = eventually("the standby holding the Lease", Duration::from_secs(60), || async {
        let now = leases.get_opt("ferrolb-controller").await.ok().flatten().and_then(holder)?;
        (now != leader && controllers.iter().any(|p| p.metadata.name.as_deref() == Some(now.as_str()))).then_some(now)
    })
    .await;
    println!("controller leader {leader} deleted; {standby} took over");
    create_yaml(&client, &seed("web-svc-lb.yaml").replace("name: web-svc-lb", "name: web-after-failover"))
        .await
        .expect("new service");
    eventually("the new leader serves a new Service", Duration::from_secs(30), || async {
        (!ingress(&client, "default", "web-after-failover").await.is_empty()).then_some(())
    })
    .await;
}

/// helm upgrade with a changed value keeps the gossip Secret and every address; helm uninstall leaves the user's
/// pools and Services (and their addresses) in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_keeps_key_and_addresses_and_uninstall_leaves_the_users_objects() {
    let _serial = one_lab_at_a_time().await;
    let lab = real_lab();
    let client = lab.admin().await;
    let (vip, _, owner) = users_scenario(&lab, &client).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let key_before = secrets.get("ferrolb-gossip").await.expect("gossip secret").data;
    let before = lb_addresses(&client).await;
    let state = lab.state();
    // The upgrade rolls every speaker and controller pod (their arguments change) while a DNS client and an ARP
    // asker on the host watch the address.
    let (outage_ms, arp) = watched_dns_while(&lab, &vip, || async {
        lifecycle::install_chart(&state, &["controller.logFormat=json".into(), "speaker.logFormat=json".into()])
            .expect("helm upgrade");
        realnode::wait_chart_ready(&state, Duration::from_secs(180)).await.expect("rolled out");
    });
    assert_no_alarm(&lab, &client, "helm upgrade rolling 3 speakers and 2 controllers", outage_ms, &arp).await;
    assert_eq!(secrets.get("ferrolb-gossip").await.expect("gossip secret").data, key_before, "gossip key kept");
    let after = lb_addresses(&client).await;
    assert_eq!(after, before, "every address kept across helm upgrade");
    wait_answered_by(&lab, &vip, &[&owner]).await;

    // helm uninstall leaves the user's pools and Services (and their addresses) in place.
    lifecycle::uninstall_chart(&state).expect("helm uninstall");
    eventually("ferrolb's pods gone", Duration::from_secs(60), || async {
        (pods(&client, NS, "app.kubernetes.io/name=ferrolb").await.is_empty()).then_some(())
    })
    .await;
    let pools = Api::<IPAddressPool>::namespaced(client.clone(), NS).list(&ListParams::default()).await.expect("pools");
    assert_eq!(pools.items.len(), 1, "the lab pool survives helm uninstall");
    let remaining = lb_addresses(&client).await;
    assert_eq!(remaining, after, "Services and their addresses survive helm uninstall");
}

/// The chart before its CRDs became templates (they were in `crds/`, which Helm installs once and never
/// upgrades). The version was never bumped, so its images are this build's.
const PREVIOUS_CHART_COMMIT: &str = "c06b1b6b593de5aebb37340ebd0342a9013da174";

/// charts/ferrolb as of `commit`, extracted from this repository's history into `into`.
fn chart_from_history(commit: &str, into: &std::path::Path) -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).expect("chart dir");
    let archive = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["archive", "--format=tar", commit, "charts/ferrolb"])
        .output()
        .expect("git archive");
    assert!(archive.status.success(), "git archive {commit}: {}", String::from_utf8_lossy(&archive.stderr));
    let mut tar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    std::io::Write::write_all(tar.stdin.as_mut().expect("tar stdin"), &archive.stdout).expect("tar input");
    assert!(tar.wait().expect("tar").success(), "tar -x");
    into.join("charts/ferrolb")
}

/// `helm upgrade` from the previous chart: Helm refuses until told to take the CRDs it never owned
/// (`--take-ownership`); then the CRDs join the release with the keep policy, every pod rolls under a DNS client
/// and an ARP asker, and no address moves, nobody answers twice, and no alarm is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_chart_takes_the_crds_into_the_release_without_an_alarm() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let _serial = one_lab_at_a_time().await;
    let scratch = std::env::temp_dir().join(format!("ferrolb-previous-chart-{}", std::process::id()));
    let previous = chart_from_history(PREVIOUS_CHART_COMMIT, &scratch);
    assert!(previous.join("crds/ipaddresspools.metallb.io.yaml").is_file(), "the previous chart ships crds/");
    let previous_arg = previous.display().to_string();
    let lab = TestLab::start_with(EXE, "flbk", 3, &["--kubelets", "--kube-proxy", "--chart", &previous_arg]);
    let client = lab.admin().await;
    let (vip, _, owner) = users_scenario(&lab, &client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pool_crd = crds.get("ipaddresspools.metallb.io").await.expect("pool CRD");
    let owned_by = |crd: &CustomResourceDefinition| {
        crd.metadata.annotations.clone().unwrap_or_default().get("meta.helm.sh/release-name").cloned()
    };
    assert_eq!(owned_by(&pool_crd), None, "crds/ gave the CRDs to no release");

    let state = lab.state();
    let current = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb");
    let refused = lifecycle::install_chart_from(&state, &current, &[], &[]).expect_err("Helm must refuse first");
    println!("helm upgrade without --take-ownership: {refused}");
    assert!(refused.to_string().contains("invalid ownership metadata"), "Helm says why: {refused}");

    let before = lb_addresses(&client).await;
    let (outage_ms, arp) = watched_dns_while(&lab, &vip, || async {
        lifecycle::install_chart_from(&state, &current, &[], &["--take-ownership"]).expect("helm upgrade");
        realnode::wait_chart_ready(&state, Duration::from_secs(180)).await.expect("rolled out");
    });
    let what = format!("helm upgrade from {PREVIOUS_CHART_COMMIT:.7}'s chart");
    assert_no_alarm(&lab, &client, &what, outage_ms, &arp).await;
    let _ = std::fs::remove_dir_all(&scratch);
    for name in ferrolb_crds::CRD_NAMES {
        let crd = crds.get(name).await.expect("CRD");
        assert_eq!(owned_by(&crd).as_deref(), Some("ferrolb"), "{name} now belongs to the release");
        let policy = crd.metadata.annotations.unwrap_or_default().get("helm.sh/resource-policy").cloned();
        assert_eq!(policy.as_deref(), Some("keep"), "{name} is kept on uninstall");
    }
    let after = lb_addresses(&client).await;
    assert_eq!(after, before, "every address kept");
    wait_answered_by(&lab, &vip, &[&owner]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_kubeadm_labelled_node_says_why_and_answers_with_ignore_exclude_lb() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start_with(EXE, "flb1", 1, &["--kubelets", "--kube-proxy", "--kubeadm-labels"]);
    let client = lab.admin().await;
    create_yaml(&client, LAB_POOL).await.expect("lab pool");
    create_yaml(&client, &seed("l2advertisement.yaml")).await.expect("l2advertisement");
    backends(&client, "kube-dns", &["node-1"]).await;
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    wait_ingress(&client, "kube-system", "dns-svc-lb", &["198.19.0.1"]).await;

    // Default values: the address is allocated, nobody answers, and the Service says why and what to set.
    let event =
        wait_event(&client, "kube-system", "dns-svc-lb", "node.kubernetes.io/exclude-from-external-load-balancers")
            .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let message = event.message.unwrap_or_default();
    assert!(message.contains("ignoreExcludeLB"), "the Event names the knob: {message}");
    assert!(answering_nodes(&lab, "198.19.0.1").is_empty(), "nobody answers for an excluded node");

    // With the knob, the same node answers, and DNS works through the static route.
    let state = lab.state();
    lifecycle::install_chart(&state, &["speaker.ignoreExcludeLB=true".into()]).expect("helm upgrade");
    realnode::wait_chart_ready(&state, Duration::from_secs(180)).await.expect("rolled out");
    wait_answered_by(&lab, "198.19.0.1", &["node-1"]).await;
    assert_dns_served_by_pods_through(&lab, "198.19.0.1", "node-1");
}

//! The lab is real: a real API server enforcing RBAC, a real node lifecycle controller, real EndpointSlices,
//! real Ethernet frames between namespaces, and a kube-proxy stand-in whose kernel does not answer ARP for VIPs.
//! Needs root (network namespaces); `make test` runs it, and so does CI.

use ferrolb_tests::harness::{TestLab, eventually};
use ferrolb_tests::lab::{State, control_plane::alive, net};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

async fn client_for(kubeconfig: &std::path::Path) -> Client {
    ferrolb_tests::lab::kubelet::client(kubeconfig).await.expect("kubeconfig loads")
}

async fn ready_status(nodes: &Api<Node>, name: &str) -> Option<String> {
    let node = nodes.get(name).await.ok()?;
    node.status?.conditions?.into_iter().find(|c| c.type_ == "Ready").map(|c| c.status)
}

fn neighbour(ns: &str, ip: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "neigh", "show", ip]).output().expect("ip neigh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_is_real_and_leaves_nothing_behind() {
    let lab = TestLab::start(EXE, "flbt", 3, true);
    let state = State::load(&lab.dir).expect("state");
    let admin = client_for(&state.kubeconfig()).await;

    // /readyz on a real API server.
    let readyz = admin.request_text(http::Request::get("/readyz").body(Vec::new()).expect("request")).await;
    assert_eq!(readyz.expect("readyz").trim(), "ok");

    // RBAC is enforced: a ServiceAccount with no bindings is denied what the admin may do.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "nobody"}})).expect("sa");
    sas.create(&PostParams::default(), &sa).await.expect("create sa");
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).expect("tokenrequest");
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .expect("token")
        .token;
    let ca = state.dir.join("pki/ca.crt");
    let sa_kubeconfig = state.dir.join("nobody.kubeconfig");
    std::fs::write(&sa_kubeconfig, ferrolb_tests::lab::pki::kubeconfig(&ca, state.api_port, "nobody", &token))
        .expect("write");
    let nobody = client_for(&sa_kubeconfig).await;
    let denied = Api::<Secret>::namespaced(nobody.clone(), "kube-system").list(&ListParams::default()).await;
    assert!(matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403), "unprivileged list of Secrets: {denied:?}");
    let denied = Api::<Node>::all(nobody).list(&ListParams::default()).await;
    assert!(matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403), "unprivileged list of Nodes: {denied:?}");
    Api::<Secret>::namespaced(admin.clone(), "kube-system").list(&ListParams::default()).await.expect("admin may");

    // Nodes are Ready; a killed node goes NotReady (node lifecycle controller), a revived one comes back.
    let nodes: Api<Node> = Api::all(admin.clone());
    for n in ["node-1", "node-2", "node-3"] {
        assert_eq!(ready_status(&nodes, n).await.as_deref(), Some("True"), "{n}");
    }

    // EndpointSlices for a Service whose pod is bound to a lab node, carrying nodeName.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "echo-2", "labels": {"app": "echo"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "echo", "image": "lab/echo"}]}}))
    .expect("pod");
    Api::<Pod>::namespaced(admin.clone(), "default").create(&PostParams::default(), &pod).await.expect("create pod");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "echo"}, "ports": [
            {"name": "t", "port": 7777, "protocol": "TCP"}, {"name": "u", "port": 7777, "protocol": "UDP"}]}}))
    .expect("service");
    Api::<Service>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .expect("create svc");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    let endpoint = eventually("an EndpointSlice endpoint on node-2", Duration::from_secs(60), || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=echo")).await.ok()?;
        list.items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .find(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
    })
    .await;
    assert_eq!(endpoint.node_name.as_deref(), Some("node-2"));

    // TCP and UDP from the host namespace to a node's echo server, over the bridge.
    let tcp = eventually("TCP answer from node-2", Duration::from_secs(30), || async {
        lab.probe("host", "tcp", "198.18.0.12:7777", 1000).ok()
    })
    .await;
    assert_eq!(tcp, "node-2");
    assert_eq!(lab.probe("host", "udp", "198.18.0.13:7777", 2000).as_deref(), Ok("node-3 probe"));

    // The kube-proxy stand-in holds the VIP on every node, yet the kernel never answers ARP for it...
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.77"}]}}});
    services.patch_status("echo", &PatchParams::default(), &Patch::Merge(&status)).await.expect("set ingress");
    for node in &state.nodes {
        eventually("the VIP on kube-ipvs0", Duration::from_secs(30), || async {
            let out = Command::new("ip")
                .args(["-n", &node.netns, "-4", "addr", "show", net::IPVS_INTERFACE])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).contains("198.19.0.77/32").then_some(())
        })
        .await;
    }
    let host = state.host_netns();
    let probe = lab.probe("host", "udp", "198.19.0.77:7777", 1500);
    assert!(probe.is_err(), "nobody answers ARP for the VIP, so nothing can reach it: {probe:?}");
    let neigh = neighbour(&host, "198.19.0.77");
    assert!(!neigh.contains("lladdr"), "no ARP reply for the VIP, host neighbour entry: {neigh:?}");
    // ...which is strictARP at work: with arp_ignore=0 (IPVS without strictARP) the kernel answers at once.
    for iface in ["all", "eth0"] {
        net::sysctl(&state.nodes[0].netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "0").expect("sysctl");
    }
    Command::new("ip").args(["-n", &host, "neigh", "flush", "all"]).status().expect("flush");
    let answered = lab.probe("host", "udp", "198.19.0.77:7777", 2000);
    assert_eq!(answered.as_deref(), Ok("node-1 probe"), "without strictARP node-1's kernel answers ARP for the VIP");
    assert!(neighbour(&host, "198.19.0.77").contains("lladdr"));
    for iface in ["all", "eth0"] {
        net::sysctl(&state.nodes[0].netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "1").expect("sysctl");
    }

    // Hard node failure: heartbeats stop, the node lifecycle controller marks it NotReady, endpoints go unready.
    lab.ok(&["kill", "node-2"]);
    eventually("node-2 NotReady", Duration::from_secs(60), || async {
        (ready_status(&nodes, "node-2").await.as_deref() != Some("True")).then_some(())
    })
    .await;
    assert!(lab.probe("host", "tcp", "198.18.0.12:7777", 500).is_err(), "node-2's link is down");
    eventually("node-2's endpoint not ready", Duration::from_secs(60), || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=echo")).await.ok()?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| &s.endpoints)
            .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
        (!ready).then_some(())
    })
    .await;
    lab.ok(&["revive", "node-2"]);
    eventually("node-2 Ready again", Duration::from_secs(60), || async {
        (ready_status(&nodes, "node-2").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    assert_eq!(lab.probe("host", "tcp", "198.18.0.12:7777", 2000).as_deref(), Ok("node-2"));

    // Down removes every process, namespace and file.
    let pids: Vec<i32> = state.procs.iter().map(|p| p.pid).collect();
    lab.ok(&["down"]);
    assert!(net::lab_namespaces("flbt").expect("ip netns").is_empty(), "namespaces left behind");
    assert!(pids.iter().all(|p| !alive(*p)), "processes left behind");
    assert!(!lab.dir.exists(), "state dir left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_cleans_up_after_an_interrupted_up() {
    assert!(nix::unistd::geteuid().is_root(), "the lab needs root");
    let dir = std::env::temp_dir().join("ferrolb-lab-flbi");
    let down = || Command::new(EXE).args(["--name", "flbi", "--dir"]).arg(&dir).arg("down").output().expect("down");
    down();
    let mut up = Command::new(EXE)
        .args(["--name", "flbi", "--dir"])
        .arg(&dir)
        .args(["up", "--nodes", "2", "--bare"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn up");
    // Interrupt `up` once it has started processes (etcd is the first), as a Ctrl-C at the worst moment would.
    let state = eventually("up to start a process", Duration::from_secs(120), || async {
        State::load(&dir).ok().filter(|s| !s.procs.is_empty())
    })
    .await;
    up.kill().expect("kill up");
    let _ = up.wait();
    assert!(!net::lab_namespaces("flbi").expect("ip netns").is_empty(), "the interrupted up left namespaces");
    assert!(down().status.success(), "down after an interrupted up");
    assert!(net::lab_namespaces("flbi").expect("ip netns").is_empty(), "namespaces left behind");
    assert!(state.procs.iter().all(|p| !alive(p.pid)), "processes left behind");
    assert!(!dir.exists(), "state dir left behind");
}

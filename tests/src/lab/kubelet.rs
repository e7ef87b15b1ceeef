//! The lab agent in the root namespace: forwards node namespaces to the API server, and plays kubelet for
//! every node (status + Lease heartbeats, pods bound to nodes marked Running/Ready, deletions finished) — what
//! kwok does, in a few hundred lines. Creating `<dir>/killed/<node>` stops that node's heartbeats.

use super::{NodeInfo, Result, State};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Seconds a node Lease claims; kube-controller-manager's grace period (6 s) is what decides death.
const LEASE_SECONDS: i32 = 40;
/// How often node status is re-posted when nothing changed (Leases carry the heartbeat in between).
const STATUS_REFRESH: Duration = Duration::from_secs(20);

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| super::LabError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| super::LabError::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(super::LabError::Kube)
}

/// Accepts on `<dir>/api.sock` and relays each connection to the API server's loopback port.
pub async fn api_bridge(state: &State) -> Result<()> {
    let sock = state.api_socket();
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| super::io_err(&sock, e))?;
    let port = state.api_port;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn now() -> serde_json::Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(serde_json::Value::Null)
}

async fn ensure_node(nodes: &Api<Node>, node: &NodeInfo) -> Result<()> {
    if nodes.get_opt(&node.name).await?.is_some() {
        return Ok(());
    }
    let obj: Node = serde_json::from_value(json!({
        "metadata": {"name": node.name, "labels": {
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "ferrolb.io/lab-node": "true"}},
    }))
    .map_err(|e| super::LabError::Usage(e.to_string()))?;
    nodes.create(&PostParams::default(), &obj).await?;
    let t = now();
    let network_ok = json!({"type": "NetworkUnavailable", "status": "False", "reason": "LabNetworkReady",
        "lastHeartbeatTime": t, "lastTransitionTime": t});
    nodes
        .patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [network_ok]}})),
        )
        .await?;
    Ok(())
}

async fn post_status(
    nodes: &Api<Node>,
    node: &NodeInfo,
    was_ready: bool,
    with_addresses: bool,
    ipv6_only: bool,
) -> Result<()> {
    let t = now();
    let cond = |kind: &str, status: &str, reason: &str| {
        let mut c = json!({"type": kind, "status": status, "reason": reason, "lastHeartbeatTime": t});
        if kind != "Ready" || !was_ready {
            c["lastTransitionTime"] = t.clone();
        }
        c
    };
    let status = json!({"status": {
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "phase": "Running",
        "nodeInfo": {"machineID": node.name, "systemUUID": node.name, "bootID": node.name, "kernelVersion": "lab",
            "osImage": "ferrolb-lab", "containerRuntimeVersion": "lab://0", "kubeletVersion": "v1.35.4",
            "kubeProxyVersion": "v1.35.4", "operatingSystem": "linux", "architecture": "amd64"},
    }});
    nodes.patch_status(&node.name, &PatchParams::default(), &Patch::Strategic(status)).await?;
    if with_addresses {
        // A merge patch, not a strategic one: strategic merge keys addresses by type, and would fold the two
        // InternalIPs of a dual-stack node into one.
        let mut addresses = Vec::new();
        if !ipv6_only {
            addresses.push(json!({"type": "InternalIP", "address": node.ip}));
        }
        if !node.ip6.is_empty() {
            addresses.push(json!({"type": "InternalIP", "address": node.ip6}));
        }
        addresses.push(json!({"type": "Hostname", "address": node.name}));
        let addresses = json!({"status": {"addresses": addresses}});
        nodes.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&addresses)).await?;
    }
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>, nodes: &Api<Node>, node: &NodeInfo) -> Result<()> {
    let renew = json!({"spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": serde_json::to_value(MicroTime(Timestamp::now())).unwrap_or_default()}});
    match leases.patch(&node.name, &PatchParams::default(), &Patch::Merge(&renew)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let uid = nodes.get(&node.name).await?.metadata.uid.unwrap_or_default();
            let mut lease = renew.clone();
            lease["metadata"] = json!({"name": node.name, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}]});
            let lease: Lease = serde_json::from_value(lease).map_err(|e| super::LabError::Usage(e.to_string()))?;
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn is_ready_pod(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks pods on live nodes Running/Ready with an address, and finishes deletions no kubelet will finish.
async fn sync_pods(client: &Client, live: &BTreeMap<String, NodeInfo>, next_ip: &mut u32) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods.list(&ListParams::default()).await? {
        let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else {
            continue;
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await;
            continue;
        }
        let Some(info) = live.get(&node) else {
            continue;
        };
        if is_ready_pod(&pod) {
            continue;
        }
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| {
            *next_ip += 1;
            let [a, b, c, d] = next_ip.to_be_bytes();
            format!("{a}.{b}.{c}.{d}")
        });
        // Dual-stack pods, as a dual-stack cluster's CNI gives them: the IPv6 address mirrors the IPv4 one (both
        // are data only, never on an interface), so IPv6 and dual-stack Services get endpoints.
        let pod_ip6 = pod_ip.parse::<std::net::Ipv4Addr>().ok().map(|v4| {
            std::net::Ipv6Addr::from(0x2001_0db8_0244_0000_0000_0000_0000_0000u128 | u128::from(u32::from(v4)))
                .to_string()
        });
        let pod_ips: Vec<serde_json::Value> =
            std::iter::once(&pod_ip).chain(pod_ip6.as_ref()).map(|ip| json!({"ip": ip})).collect();
        let host_ips: Vec<serde_json::Value> =
            [&info.ip, &info.ip6].into_iter().filter(|ip| !ip.is_empty()).map(|ip| json!({"ip": ip})).collect();
        let t = now();
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({
            "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": true,
            "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}})
            })
            .collect();
        let cond = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": t});
        let status = json!({"status": {
            "phase": "Running", "podIP": pod_ip, "podIPs": pod_ips, "hostIP": info.ip,
            "hostIPs": host_ips, "startTime": t, "containerStatuses": containers,
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    }
    Ok(())
}

/// Runs the fake kubelets until the process is stopped.
pub async fn run(state: State) -> Result<()> {
    let bridge_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = api_bridge(&bridge_state).await {
            eprintln!("api bridge stopped: {e}");
        }
    });
    if state.real_nodes {
        // Real kubelets keep their Nodes and pods; only the relay is needed.
        return std::future::pending().await;
    }
    let client = client(&state.kubeconfig()).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut last_status: BTreeMap<String, Instant> = BTreeMap::new();
    let mut was_killed: BTreeSet<String> = BTreeSet::new();
    let mut next_ip = u32::from_be_bytes([10, 244, 0, 9]);
    loop {
        let mut live = BTreeMap::new();
        for node in &state.nodes {
            if state.killed_marker(&node.name).exists() {
                was_killed.insert(node.name.clone());
                continue;
            }
            let result = async {
                ensure_node(&nodes, node).await?;
                renew_lease(&leases, &nodes, node).await?;
                let ready = nodes
                    .get(&node.name)
                    .await?
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let stale = last_status.get(&node.name).is_none_or(|t| t.elapsed() > STATUS_REFRESH);
                if !ready || stale || was_killed.remove(&node.name) {
                    post_status(&nodes, node, ready, !ready || !last_status.contains_key(&node.name), state.ipv6_nodes)
                        .await?;
                    last_status.insert(node.name.clone(), Instant::now());
                }
                Ok::<_, super::LabError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    live.insert(node.name.clone(), node.clone());
                }
                Err(e) => eprintln!("heartbeat {}: {e}", node.name),
            }
        }
        if let Err(e) = sync_pods(&client, &live, &mut next_ip).await {
            eprintln!("pods: {e}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

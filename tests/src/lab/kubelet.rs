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
        let (mut inbound, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                eprintln!("api bridge: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Accepts HTTP CONNECT requests from the API server on `<dir>/kubelet-proxy.sock` (its egress selector for
/// cluster traffic: `kubectl logs`, `exec`, `port-forward`) and connects each inside the namespace of the node it
/// names. The API server runs in the root namespace, which has no route to the lab's LAN and must not get one
/// (docs/lab.md §6).
pub async fn kubelet_proxy(state: &State) -> Result<()> {
    let sock = state.kubelet_proxy_socket();
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| super::io_err(&sock, e))?;
    let nodes = std::sync::Arc::new(state.nodes.clone());
    loop {
        let (inbound, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("kubelet proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let nodes = nodes.clone();
        tokio::spawn(async move {
            if let Err(e) = tunnel(inbound, &nodes).await {
                eprintln!("kubelet proxy: {e}");
            }
        });
    }
}

/// The node namespace and port a CONNECT target (`host:port`, `[v6]:port`) names: by InternalIP or name.
fn connect_target<'a>(target: &str, nodes: &'a [NodeInfo]) -> Option<(&'a NodeInfo, std::net::SocketAddr)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    let node = nodes.iter().find(|n| n.ip == host || n.ip6 == host || n.name == host)?;
    let ip: std::net::IpAddr = if host == node.name { node.ip.parse().ok()? } else { host.parse().ok()? };
    Some((node, std::net::SocketAddr::new(ip, port)))
}

async fn tunnel(mut inbound: tokio::net::UnixStream, nodes: &[NodeInfo]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The request head, byte by byte: the TLS handshake follows it only after our answer, so nothing is lost.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(std::io::Error::other("CONNECT request head too long"));
        }
        head.push(inbound.read_u8().await?);
    }
    let text = String::from_utf8_lossy(&head);
    let target = match text.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, ..] => target.to_string(),
        _ => return Err(std::io::Error::other(format!("not a CONNECT request: {:?}", text.lines().next()))),
    };
    let Some((node, addr)) = connect_target(&target, nodes) else {
        inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
        return Err(std::io::Error::other(format!("{target} is no lab node")));
    };
    let netns = format!("/run/netns/{}", node.netns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own enters the node's namespace: the socket it opens stays there, and no thread of the
    // runtime ever changes namespace.
    std::thread::spawn(move || {
        let connected = std::fs::File::open(&netns)
            .and_then(|ns| nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from))
            .and_then(|()| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        let _ = tx.send(connected);
    });
    let outbound = match rx.await.map_err(std::io::Error::other)? {
        Ok(stream) => stream,
        Err(e) => {
            inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
            return Err(std::io::Error::other(format!("{target} in {}: {e}", node.netns)));
        }
    };
    outbound.set_nonblocking(true)?;
    let mut outbound = tokio::net::TcpStream::from_std(outbound)?;
    inbound.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
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
    let proxy_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = kubelet_proxy(&proxy_state).await {
            eprintln!("kubelet proxy stopped: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_name_a_node_by_address_or_name() {
        let nodes = [NodeInfo {
            name: "node-1".into(),
            netns: "lab-node-1".into(),
            ip: "198.18.0.11".into(),
            ip6: "2001:db8:18::11".into(),
        }];
        let netns = |t: &str| connect_target(t, &nodes).map(|(n, a)| (n.netns.clone(), a.to_string()));
        assert_eq!(netns("198.18.0.11:10250"), Some(("lab-node-1".into(), "198.18.0.11:10250".into())));
        assert_eq!(netns("[2001:db8:18::11]:10250"), Some(("lab-node-1".into(), "[2001:db8:18::11]:10250".into())));
        assert_eq!(netns("node-1:10250"), Some(("lab-node-1".into(), "198.18.0.11:10250".into())));
        assert_eq!(netns("198.18.0.99:10250"), None, "no such node");
        assert_eq!(netns("198.18.0.11"), None, "no port");
    }
}

//! The per-node agent, run inside a node's namespace: relays `127.0.0.1:<api port>` to the API server (so
//! processes in the namespace use the same kubeconfig as everyone), and stands in for kube-proxy in IPVS mode
//! with strictARP: every LoadBalancer ingress address (inside 198.18.0.0/15 or 2001:db8::/32 only) goes on
//! `kube-ipvs0`, and an
//! echo server answers on every Service port, and on [`WITNESS_PORT`], with this node's name, so a client sees
//! which node served it.

use super::addresses::in_packet_range;
use super::net::IPVS_INTERFACE;
use super::{Result, State};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Relays the namespace's `<any address>:<port>` to the root namespace's API server via the lab's unix
/// socket: loopback for processes on the node, the node's address for pods (through the `kubernetes`
/// ClusterIP rule, see `realnode`).
async fn api_relay(state: State) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", state.api_port))
        .await
        .map_err(|e| super::io_err(std::path::Path::new("127.0.0.1"), e))?;
    let sock = state.api_socket();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let sock = sock.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::UnixStream::connect(&sock).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// What the echo server must listen on, from every LoadBalancer Service.
#[derive(Debug, Default, PartialEq, Eq)]
struct Desired {
    vips: BTreeSet<IpAddr>,
    tcp_ports: BTreeSet<u16>,
    udp_ports: BTreeSet<u16>,
}

/// The port the echo server always answers on (TCP and UDP, RFC 862's echo port), whatever the Services: no
/// Service uses it, so with a real kube-proxy (which rewrites only Service ports) a prober of `<vip>:7` still
/// reaches the echo server of the node the address's packets go to, and sees which node that is.
pub const WITNESS_PORT: u16 = 7;

fn desired(services: &[std::sync::Arc<Service>]) -> Desired {
    let mut d = Desired::default();
    d.tcp_ports.insert(WITNESS_PORT);
    d.udp_ports.insert(WITNESS_PORT);
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        for port in spec.ports.iter().flatten() {
            let Ok(p) = u16::try_from(port.port) else {
                continue;
            };
            match port.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => d.udp_ports.insert(p),
                _ => d.tcp_ports.insert(p),
            };
        }
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            // Only the benchmark range ever reaches an interface; other ranges (the seed's 172.17.255.x) stay data.
            if let Some(ip) = ing.ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok())
                && in_packet_range(ip)
            {
                d.vips.insert(ip);
            }
        }
    }
    d
}

async fn echo_tcp(listener: tokio::net::TcpListener, name: String) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            if stream.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1500];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                if stream.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn echo_udp(socket: tokio::net::UdpSocket, name: String) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// Echo listeners and VIPs currently in place.
struct Proxy {
    node: String,
    node_ips: Vec<IpAddr>,
    vips: BTreeSet<IpAddr>,
    tcp: BTreeMap<u16, JoinHandle<()>>,
    // UDP is bound per local address so replies leave from the address the client sent to.
    udp: BTreeMap<(IpAddr, u16), JoinHandle<()>>,
}

impl Proxy {
    async fn apply(&mut self, want: &Desired) {
        for vip in want.vips.difference(&self.vips.clone()) {
            // No duplicate-address detection for IPv6: the address must be usable at once, as kube-proxy's are.
            let add = match vip {
                IpAddr::V4(_) => super::run("ip", &["addr", "add", &format!("{vip}/32"), "dev", IPVS_INTERFACE]),
                IpAddr::V6(_) => {
                    super::run("ip", &["addr", "add", &format!("{vip}/128"), "dev", IPVS_INTERFACE, "nodad"])
                }
            };
            match add {
                Ok(_) => {
                    self.vips.insert(*vip);
                }
                Err(e) => eprintln!("{e}"),
            }
        }
        for vip in self.vips.clone().difference(&want.vips) {
            let bits = if vip.is_ipv4() { 32 } else { 128 };
            let _ = super::run("ip", &["addr", "del", &format!("{vip}/{bits}"), "dev", IPVS_INTERFACE]);
            self.vips.remove(vip);
        }
        self.tcp.retain(|port, task| {
            want.tcp_ports.contains(port) || {
                task.abort();
                false
            }
        });
        for port in &want.tcp_ports {
            if self.tcp.contains_key(port) {
                continue;
            }
            // `[::]` takes IPv4 connections too (as IPv4-mapped addresses): one listener per port for both families.
            match tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port)).await {
                Ok(l) => {
                    self.tcp.insert(*port, tokio::spawn(echo_tcp(l, self.node.clone())));
                }
                Err(e) => eprintln!("tcp/{port}: {e}"),
            }
        }
        let addrs: BTreeSet<IpAddr> = self.node_ips.iter().copied().chain(self.vips.iter().copied()).collect();
        self.udp.retain(|(addr, port), task| {
            addrs.contains(addr) && want.udp_ports.contains(port) || {
                task.abort();
                false
            }
        });
        for addr in &addrs {
            for port in &want.udp_ports {
                if self.udp.contains_key(&(*addr, *port)) {
                    continue;
                }
                match tokio::net::UdpSocket::bind(SocketAddr::new(*addr, *port)).await {
                    Ok(s) => {
                        self.udp.insert((*addr, *port), tokio::spawn(echo_udp(s, self.node.clone())));
                    }
                    Err(e) => eprintln!("udp {addr}:{port}: {e}"),
                }
            }
        }
    }
}

/// Runs the node agent until stopped.
pub async fn run(state: State, node: &str) -> Result<()> {
    let info = state.node(node)?.clone();
    let relay_state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = api_relay(relay_state).await {
            eprintln!("api relay stopped: {e}");
        }
    });
    let node_ips = [&info.ip, &info.ip6]
        .into_iter()
        .filter(|ip| !ip.is_empty())
        .map(|ip| ip.parse().map_err(|_| super::LabError::Usage(format!("bad node ip {ip}"))))
        .collect::<Result<Vec<IpAddr>>>()?;
    let mut proxy =
        Proxy { node: info.name.clone(), node_ips, vips: BTreeSet::new(), tcp: BTreeMap::new(), udp: BTreeMap::new() };
    // Clear VIPs a previous agent may have left, then follow the Services.
    let _ = super::run("ip", &["addr", "flush", "dev", IPVS_INTERFACE]);
    let client = loop {
        match super::kubelet::client(&state.kubeconfig()).await {
            Ok(c) => break c,
            Err(e) => {
                eprintln!("waiting for the API server: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(writer, watcher(Api::<Service>::all(client), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    futures::pin_mut!(stream);
    let mut last = Desired::default();
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            eprintln!("watch: {e}");
            continue;
        }
        let want = desired(&reader.state());
        if want != last {
            proxy.apply(&want).await;
            last = want;
        }
    }
    Ok(())
}

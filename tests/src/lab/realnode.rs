//! Real nodes: containerd and a real kubelet in every node namespace, kube-scheduler, and the workload
//! controllers, so `helm install` of the chart runs its pods from the images `make images` built.
//!
//! Each node gets `<dir>/nodes/<node>/` (containerd root and state, kubelet root, CNI config, pod logs) and
//! a cgroup `/<netns>` in every cgroup v1 hierarchy, so `down` and `kill` find everything a node started:
//! processes in the node's network namespace (kubelet, containerd, shims, `hostNetwork` pods) and processes
//! in its cgroups (pods with their own network namespace).
//!
//! Why `nsenter --net` and not `ip netns exec`: the latter also gives the process a private mount
//! namespace, and the kubelet's volume mounts (ServiceAccount tokens on tmpfs) must be seen by containerd.
//!
//! Pods reach the API server the way in-cluster clients do, through the `kubernetes` Service's ClusterIP, to
//! the node's API relay (the lab's `node-agent`). With `up --kube-proxy`, kube-proxy does it: the API server
//! advertises [`API_ENDPOINT_IP`], an address every node has on its loopback, as that Service's endpoint.
//! Without kube-proxy, an nftables rule in each node namespace sends that one ClusterIP to the relay.

use super::control_plane::{alive, spawn};
use super::{LabError, NodeInfo, Result, State, io_err, run, step};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Service range: inside the lab's 198.18.0.0/15, clear of the LAN, the pod ranges and the pools the tests
/// and benchmarks use (198.19.0.0/18 at most), and large enough for the 5,000- and 10,000-Service benchmarks.
pub const SERVICE_CIDR: &str = "198.19.128.0/17";
/// The `kubernetes` Service's endpoint under kube-proxy: the API server advertises it, and every node has it
/// on `lo`, where the node's API relay answers. Off every node's LAN, so nobody asks ARP for it.
pub const API_ENDPOINT_IP: &str = "198.18.2.1";
/// ClusterIP of the `kubernetes` Service (first address of [`SERVICE_CIDR`]); in the API server's certificate.
pub const KUBERNETES_SERVICE_IP: &str = "198.19.128.1";
/// The pause image containerd starts every pod sandbox from (built by `make images`, never pulled).
pub const PAUSE_IMAGE: &str = "docker.io/ferrolb-lab/pause:1";
/// The lab's web server image (busybox httpd on port 8000; `make images`): it answers with its pod's name and
/// the client's address, and logs each client.
pub const WEB_IMAGE: &str = "ferrolb-lab/web:1";
/// The lab's DNS server image (CoreDNS; `make images`): zone `lab.example`, `whoami.lab.example`, and CH TXT
/// `hostname.bind` answered with the pod's name.
pub const DNS_IMAGE: &str = "ferrolb-lab/coredns:1";
/// Where the CNI plugins from Debian's `containernetworking-plugins` live.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Node Lease duration: the kubelet renews every quarter of it, well inside the lab's 6 s node grace period.
const NODE_LEASE_SECONDS: u32 = 4;

/// Pod range of node `i` (1-based): one /24 per node, handed to the CNI bridge plugin.
pub fn pod_cidr(i: usize) -> String {
    format!("198.18.{}.0/24", 16 + i)
}

/// IPv6 pod range of node `i` (1-based): pods are dual-stack, so IPv6 and dual-stack Services get endpoints.
pub fn pod_cidr6(i: usize) -> String {
    format!("2001:db8:18:{}::/64", 16 + i)
}

/// Directory holding `make images`' archives (`IMAGES_DIR` overrides, as for `images/build.sh`).
pub fn images_dir() -> PathBuf {
    std::env::var_os("IMAGES_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"),
        |d| {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d) }
        },
    )
}

/// The image archives to import into every node: all of `make images`' output, which must include pause.
pub fn image_archives() -> Result<Vec<PathBuf>> {
    let dir = images_dir();
    let missing = || {
        LabError::Usage(format!(
            "no image archives in {}: run `make images` first (real nodes run the chart's pods from them)",
            dir.display()
        ))
    };
    let entries = std::fs::read_dir(&dir).map_err(|_| missing())?;
    let mut archives: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    let has =
        |prefix: &str| archives.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)));
    if !(has("ferrolb-lab-pause-") && has("ferrolb-controller-") && has("ferrolb-speaker-")) {
        return Err(missing());
    }
    Ok(archives)
}

/// A node's private directory.
pub fn node_dir(state: &State, node: &NodeInfo) -> PathBuf {
    state.dir.join("nodes").join(&node.name)
}

fn containerd_socket(state: &State, node: &NodeInfo) -> PathBuf {
    node_dir(state, node).join("containerd.sock")
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| io_err(path, e))
}

/// The cgroup v1 hierarchies of this machine (`/sys/fs/cgroup/<controller>`), without the named and unified
/// ones the kubelet does not place pods in.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tasks").exists() && !p.ends_with("unified"))
        .collect();
    dirs.sort();
    dirs
}

/// Creates the node's cgroup in every hierarchy; the kubelet requires its `cgroupRoot` to exist.
fn create_cgroups(netns: &str) -> Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(netns);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        // A new cpuset starts with no CPUs and no memory nodes; tasks cannot join it until both are set.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim()).map_err(|e| io_err(&dir.join(file), e))?;
            }
        }
    }
    Ok(())
}

/// Every process in the cgroups of a lab (`prefix` = `<lab>-`), or of one node (`prefix` = its netns).
pub fn cgroup_pids(prefix: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let Ok(entries) = std::fs::read_dir(&hierarchy) else { continue };
        for root in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if root.is_dir() && root.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)) {
                collect_tasks(&root, &mut pids);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_tasks(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(tasks) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(tasks.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for sub in entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()) {
        collect_tasks(&sub, pids);
    }
}

/// Removes a lab's cgroups, deepest first (a cgroup v1 directory goes only once it has no tasks and children).
pub fn remove_cgroups(prefix: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for sub in entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()) {
                remove(&sub);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for hierarchy in cgroup_hierarchies() {
        let Ok(entries) = std::fs::read_dir(&hierarchy) else { continue };
        for root in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if root.is_dir() && root.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)) {
                remove(&root);
            }
        }
    }
}

/// Unmounts everything mounted under `dir` (kubelet volumes, container root filesystems, pod network
/// namespaces), deepest first, so the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    for _ in 0..3 {
        let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
        let mut points: Vec<String> = table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = run("umount", &["-l", &point]);
        }
    }
}

fn containerd_config(state: &State, node: &NodeInfo) -> String {
    let dir = node_dir(state, node);
    let d = |p: &str| dir.join(p).display().to_string();
    let socket = containerd_socket(state, node).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state_dir}"
# Snapshotters this kernel lacks only log errors; tracing has nowhere to send to.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Pod network namespaces under the node's state directory, not /run/netns, so `down` finds them.
  netns_mounts_under_state_dir = true
  # This machine's processes may not lower their OOM score (no CAP_SYS_RESOURCE over it), and the kubelet
  # asks for -998 for critical pods: runc's init then dies. Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
"#,
        root = d("containerd/root"),
        state_dir = d("containerd/state"),
        opt = d("containerd/opt"),
        cni = d("cni"),
    )
}

fn cni_config(state: &State, node: &NodeInfo, index: usize) -> String {
    let ipam_dir = node_dir(state, node).join("cni-ipam").display().to_string();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "lab-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": ipam_dir,
                     "ranges": [[{"subnet": pod_cidr(index)}], [{"subnet": pod_cidr6(index)}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]},
        }],
    })
    .to_string()
}

fn kubelet_config(state: &State, node: &NodeInfo) -> String {
    let dir = node_dir(state, node);
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine has cgroup v1 and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: /{netns}
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {logs}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  # The API server's client certificate (`kubectl logs`, `exec`) is signed by the lab CA.
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
failSwapOn: false
resolvConf: ""
nodeLeaseDurationSeconds: {NODE_LEASE_SECONDS}
nodeStatusUpdateFrequency: 2s
# Several kubelets share one disk and one memory: never evict or collect images because of the others.
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        netns = node.netns,
        socket = containerd_socket(state, node).display(),
        logs = dir.join("pod-logs").display(),
        ca = state.dir.join("pki/ca.crt").display(),
    )
}

/// nftables in the node namespace without kube-proxy: the `kubernetes` ClusterIP goes to the node's API relay,
/// for pods (prerouting) and for `hostNetwork` processes (output).
fn api_dnat_rules(node: &NodeInfo, api_port: u16) -> String {
    let to = format!("{}:{api_port}", node.ip);
    format!(
        "table ip ferrolb-lab {{\n  chain pods {{ type nat hook prerouting priority dstnat - 20; ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 dnat to {to}; }}\n  chain local {{ type nat hook output priority -120; ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 dnat to {to}; }}\n}}\n"
    )
}

/// kube-proxy's configuration for a node: nftables mode, the node's own kubeconfig, and nothing that would
/// change this machine's global settings (conntrack table size and timeouts stay as they are) or need a
/// privilege the lab lacks (a lower OOM score).
fn kube_proxy_config(state: &State, node: &NodeInfo) -> String {
    let dir = node_dir(state, node);
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: {name}
clientConnection:
  kubeconfig: {kubeconfig}
detectLocalMode: BridgeInterface
detectLocal:
  bridgeInterface: cni0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
"#,
        name = node.name,
        kubeconfig = dir.join("kubelet.kubeconfig").display(),
    )
}

fn nsenter(netns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg("--");
    cmd
}

/// Writes a node's configuration: containerd, CNI, kubelet, the way to the API relay (kube-proxy's endpoint, or
/// the lab's DNAT), routes to the other nodes' pods.
pub fn prepare(state: &State, index: usize, token: &str) -> Result<()> {
    let node = &state.nodes[index - 1];
    let dir = node_dir(state, node);
    write(&dir.join("containerd.toml"), &containerd_config(state, node))?;
    write(&dir.join("cni/10-lab-pods.conflist"), &cni_config(state, node, index))?;
    write(&dir.join("kubelet.yaml"), &kubelet_config(state, node))?;
    if state.kube_proxy {
        write(&dir.join("kube-proxy.yaml"), &kube_proxy_config(state, node))?;
    }
    let kubeconfig = super::pki::kubeconfig(&state.dir.join("pki/ca.crt"), state.api_port, &node.name, token);
    write(&dir.join("kubelet.kubeconfig"), &kubeconfig)?;
    if state.kube_proxy {
        run("ip", &["-n", &node.netns, "addr", "replace", &format!("{API_ENDPOINT_IP}/32"), "dev", "lo"])?;
    } else {
        let rules = dir.join("api-dnat.nft");
        write(&rules, &api_dnat_rules(node, state.api_port))?;
        run("ip", &["netns", "exec", &node.netns, "nft", "-f", &rules.display().to_string()])?;
    }
    super::net::sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
    super::net::sysctl(&node.netns, "net.ipv6.conf.all.forwarding", "1")?;
    // Output NAT runs after the route lookup: without a route to the Service range, a `hostNetwork` client
    // gets "network unreachable" before the DNAT rule can apply (real nodes have a default route).
    run("ip", &["-n", &node.netns, "route", "replace", SERVICE_CIDR, "dev", "eth0"])?;
    for (j, other) in state.nodes.iter().enumerate() {
        if j + 1 != index {
            run("ip", &["-n", &node.netns, "route", "replace", &pod_cidr(j + 1), "via", &other.ip])?;
            if !other.ip6.is_empty() {
                run("ip", &["-n", &node.netns, "-6", "route", "replace", &pod_cidr6(j + 1), "via", &other.ip6])?;
            }
        }
    }
    create_cgroups(&node.netns)
}

/// Starts containerd in the node's namespace and imports the images into it.
pub fn start_runtime(state: &mut State, node: &NodeInfo, archives: &[PathBuf]) -> Result<()> {
    let dir = node_dir(state, node);
    let role = format!("containerd {}", node.name);
    let socket = containerd_socket(state, node);
    let _ = std::fs::remove_file(&socket);
    let mut cmd = nsenter(&node.netns);
    cmd.arg("containerd").arg("--config").arg(dir.join("containerd.toml"));
    spawn_replacing(state, &role, cmd)?;
    super::control_plane::wait_for(state, &role, Duration::from_secs(30), || socket.exists())?;
    let address = socket.display().to_string();
    for archive in archives {
        run("ctr", &["-a", &address, "-n", "k8s.io", "images", "import", &archive.display().to_string()])?;
    }
    Ok(())
}

/// The kubelet's `--node-ip`: both families when the node has an IPv6 address (dual-stack hostNetwork pods).
fn node_ips(node: &NodeInfo) -> String {
    if node.ip6.is_empty() { node.ip.clone() } else { format!("{},{}", node.ip, node.ip6) }
}

/// Starts the node's kubelet; it registers the Node itself.
pub fn start_kubelet(state: &mut State, node: &NodeInfo) -> Result<()> {
    let dir = node_dir(state, node);
    let mut cmd = nsenter(&node.netns);
    cmd.arg(state.bin_dir.join("kubelet"))
        .arg("--config")
        .arg(dir.join("kubelet.yaml"))
        .arg("--kubeconfig")
        .arg(dir.join("kubelet.kubeconfig"))
        .arg("--root-dir")
        .arg(dir.join("kubelet"))
        .args(["--hostname-override", &node.name, "--node-ip", &node_ips(node)])
        .args(["--node-labels", "ferrolb.io/lab-node=true", "-v", "1"]);
    spawn_replacing(state, &format!("kubelet {}", node.name), cmd)
}

/// Starts a node's kube-proxy (`up --kube-proxy`), in nftables mode.
pub fn start_kube_proxy(state: &mut State, node: &NodeInfo) -> Result<()> {
    let dir = node_dir(state, node);
    let mut cmd = nsenter(&node.netns);
    cmd.arg(state.bin_dir.join("kube-proxy")).arg("--config").arg(dir.join("kube-proxy.yaml")).args(["-v", "1"]);
    spawn_replacing(state, &format!("kube-proxy {}", node.name), cmd)
}

/// Starts a node's runtime and kubelet, and kube-proxy if the lab runs it (first start and revive).
pub fn start_node(state: &mut State, node: &NodeInfo, archives: &[PathBuf]) -> Result<()> {
    start_runtime(state, node, archives)?;
    start_kubelet(state, node)?;
    if state.kube_proxy {
        start_kube_proxy(state, node)?;
    }
    Ok(())
}

/// Starts kube-scheduler (DaemonSet and Deployment pods are placed by it).
pub fn start_scheduler(state: &mut State) -> Result<()> {
    step("starting kube-scheduler");
    let mut cmd = Command::new(state.bin_dir.join("kube-scheduler"));
    cmd.arg("--kubeconfig").arg(state.kubeconfig()).args([
        "--leader-elect=false",
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        "0",
    ]);
    spawn_replacing(state, "kube-scheduler", cmd)
}

/// Spawns a role, dropping the record of an earlier (dead) process of the same role.
fn spawn_replacing(state: &mut State, role: &str, cmd: Command) -> Result<()> {
    state.procs.retain(|p| p.role != role || alive(p.pid));
    spawn(state, role, cmd)
}

/// Kills every process of a node that is not the lab's own agent: its namespace's and its cgroups'.
pub fn kill_node_processes(node: &NodeInfo, keep: &dyn Fn(i32) -> bool) {
    let mut pids = cgroup_pids(&node.netns);
    if let Ok(list) = run("ip", &["netns", "pids", &node.netns]) {
        pids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    for pid in pids.into_iter().filter(|p| !keep(*p)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits until the chart's controller Deployment and speaker DaemonSet have every pod Ready.
pub async fn wait_chart_ready(state: &State, timeout: Duration) -> Result<()> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    let client = super::kubelet::client(&state.kubeconfig()).await?;
    let ns = super::lifecycle::RELEASE_NAMESPACE;
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), ns);
    let daemonsets: kube::Api<DaemonSet> = kube::Api::namespaced(client, ns);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let mut summary = String::new();
        let mut ready = true;
        // Rolled out: the controllers saw the newest spec, every pod runs it, and every one is Ready.
        for d in deployments.list(&Default::default()).await? {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = d.status.clone().unwrap_or_default();
            let have = status.ready_replicas.unwrap_or(0);
            ready &= status.observed_generation == d.metadata.generation
                && status.updated_replicas == Some(want)
                && status.replicas == Some(want)
                && have == want;
            let _ = write!(summary, "deployment/{} {have}/{want} ", d.metadata.name.unwrap_or_default());
        }
        for ds in daemonsets.list(&Default::default()).await? {
            let status = ds.status.clone().unwrap_or_default();
            let want = status.desired_number_scheduled;
            ready &= status.observed_generation == ds.metadata.generation
                && want > 0
                && status.updated_number_scheduled == Some(want)
                && status.number_ready == want;
            let _ =
                write!(summary, "daemonset/{} {}/{want} ", ds.metadata.name.unwrap_or_default(), status.number_ready);
        }
        if summary != last {
            step(format!("pods: {}", summary.trim()));
            last = summary;
        }
        if ready {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LabError::Timeout { what: format!("chart pods Ready ({})", last.trim()), after: timeout });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

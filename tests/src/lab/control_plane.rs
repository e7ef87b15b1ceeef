//! Building (once, cached outside the repo) and starting etcd, kube-apiserver and kube-controller-manager.

use super::{LabError, Proc, Result, State, io_err, step};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kubernetes version the lab runs (k8s-openapi's `v1_33` feature keeps the binaries compatible with it).
pub const K8S_VERSION: &str = "1.35.4";
/// Helm version the lab installs charts with.
pub const HELM_VERSION: &str = "3.21.4";

/// Where the build script caches the binaries for these versions.
pub fn cache_dir() -> PathBuf {
    let root = std::env::var_os("FERROLB_CACHE").map_or_else(|| PathBuf::from("/var/cache/ferrolb"), PathBuf::from);
    root.join(format!("k8s-v{K8S_VERSION}-helm-v{HELM_VERSION}"))
}

/// Builds the binaries unless cached, streaming the script's progress; returns their directory.
pub fn ensure_binaries() -> Result<PathBuf> {
    let dir = cache_dir();
    let have = ["etcd", "kube-apiserver", "kube-controller-manager", "helm"].iter().all(|b| dir.join(b).exists());
    if have {
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/build-control-plane.sh");
    step(format!("building the control plane (cold: several minutes) with {}", script.display()));
    let status = Command::new("bash")
        .arg(&script)
        .env("K8S_VERSION", K8S_VERSION)
        .env("HELM_VERSION", HELM_VERSION)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| io_err(&script, e))?;
    if !status.success() {
        return Err(LabError::Command { command: script.display().to_string(), detail: status.to_string() });
    }
    Ok(dir)
}

/// How long a port `free_port` handed out stays reserved: ample for its process to bind it.
const PORT_RESERVATION: Duration = Duration::from_secs(600);

/// A free TCP port on loopback, never one handed out in the last [`PORT_RESERVATION`] by this or any other lab
/// process on the machine. The kernel may give a just-closed port again at once (CI once saw etcd and
/// kube-apiserver both told 39607: the API server could not bind, and etcd answered its readiness probe), and
/// the processes told these ports bind them only later; two labs come up at once when suites run in parallel,
/// and one could otherwise talk to the other's etcd. The reservations live in `<tmp>/ferrolb-lab-ports`
/// under a file lock; when that file cannot be used (a user without root, a root-owned file), this process's
/// own memory still keeps it from repeating itself.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let shared = SharedReservations::open();
    let mut taken = handed_out.clone();
    if let Some(shared) = &shared {
        taken.extend(shared.ports());
    }
    // Listeners stay open until a new port is found, so the kernel cannot offer the same one again meanwhile.
    let mut held = Vec::new();
    let port = loop {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| io_err(Path::new("127.0.0.1:0"), e))?;
        let port = l.local_addr().map(|a| a.port()).map_err(|e| io_err(Path::new("127.0.0.1:0"), e))?;
        if !taken.contains(&port) {
            break port;
        }
        held.push(l);
    };
    handed_out.push(port);
    if let Some(shared) = shared {
        shared.add(port);
    }
    Ok(port)
}

/// The machine-wide port reservations, locked while open (the lock goes with the file).
struct SharedReservations {
    file: nix::fcntl::Flock<File>,
    now: u64,
    recent: Vec<(u16, u64)>,
}

impl SharedReservations {
    fn open() -> Option<Self> {
        use std::io::Read;
        let path = std::env::temp_dir().join("ferrolb-lab-ports");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).ok()?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        let recent = text
            .lines()
            .filter_map(|line| {
                let (port, at) = line.split_once(' ')?;
                Some((port.parse().ok()?, at.parse().ok()?))
            })
            .filter(|(_, at): &(u16, u64)| now.saturating_sub(*at) < PORT_RESERVATION.as_secs())
            .collect();
        Some(Self { file, now, recent })
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.recent.iter().map(|(port, _)| *port)
    }

    /// Records `port` and rewrites the file without the expired reservations (best effort: losing a
    /// reservation only brings back the small chance of a clash, which `up` retries).
    fn add(mut self, port: u16) {
        use std::io::{Seek, Write};
        self.recent.push((port, self.now));
        let text: String = self.recent.iter().map(|(p, at)| format!("{p} {at}\n")).collect();
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(text.as_bytes());
    }
}

/// Starts a process in its own process group (so a terminal's Ctrl-C does not reach it and `down` can kill
/// the whole group), logging to `<dir>/logs/<role>.log`, and records it in the state.
pub fn spawn(state: &mut State, role: &str, mut cmd: Command) -> Result<()> {
    let log_path = state.log(role);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let log = File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
    let err = log.try_clone().map_err(|e| io_err(&log_path, e))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command { command: format!("{cmd:?}"), detail: e.to_string() })?;
    let pid = i32::try_from(child.id()).map_err(|_| LabError::Usage("pid out of range".into()))?;
    state.procs.push(Proc { role: role.to_string(), pid, port: None });
    state.save()
}

/// Whether a recorded process still runs.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Polls until `ready` holds, failing with the log's tail when the process died or time ran out.
pub fn wait_for(state: &State, role: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let pid = state.procs.iter().rev().find(|p| p.role == role).map(|p| p.pid);
    while start.elapsed() < timeout {
        // Death first: a port answering while our process is gone is someone else's.
        if let Some(pid) = pid
            && !alive(pid)
        {
            return Err(exited(state, role));
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(LabError::Timeout { what: format!("{role} (log:\n{})", tail(&state.log(role))), after: timeout })
}

/// The error for a lab process that exited when it should run, with its log's tail.
pub fn exited(state: &State, role: &str) -> LabError {
    LabError::Command { command: role.to_string(), detail: format!("exited; log:\n{}", tail(&state.log(role))) }
}

/// The last 15 lines of a log file (empty when unreadable).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn tcp_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The Service (ClusterIP) ranges, IPv4 first: a dual-stack cluster whose Services are IPv4 unless they ask.
fn service_ranges() -> String {
    format!("{},{}", super::realnode::SERVICE_CIDR, super::addresses::SERVICE6_CIDR)
}

/// Starts etcd, kube-apiserver and kube-controller-manager; returns once the API server answers on its port.
pub fn start(state: &mut State) -> Result<()> {
    let bin = state.bin_dir.clone();
    let dir = state.dir.clone();
    let d = |p: &str| dir.join(p).display().to_string();
    state.etcd_port = free_port()?;
    let peer = free_port()?;
    state.api_port = free_port()?;

    step(format!("starting etcd on 127.0.0.1:{}", state.etcd_port));
    let mut etcd = Command::new(bin.join("etcd"));
    let (client, peer_url) = (format!("http://127.0.0.1:{}", state.etcd_port), format!("http://127.0.0.1:{peer}"));
    etcd.args(["--name", "lab", "--data-dir", &d("etcd"), "--log-level", "warn", "--unsafe-no-fsync"])
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("lab={peer_url}")]);
    spawn(state, "etcd", etcd)?;
    let port = state.etcd_port;
    wait_for(state, "etcd", Duration::from_secs(30), || tcp_open(port))?;

    step(format!("starting kube-apiserver on 127.0.0.1:{} (RBAC, ServiceAccount tokens)", state.api_port));
    let mut api = Command::new(bin.join("kube-apiserver"));
    // Under kube-proxy the `kubernetes` Service gets a real endpoint, the address every node's API relay has;
    // otherwise it has none, and the lab's DNAT stands in (see `realnode`).
    let (advertise, reconciler) =
        if state.kube_proxy { (super::realnode::API_ENDPOINT_IP, "lease") } else { ("127.0.0.1", "none") };
    api.args(["--etcd-servers", &client, "--bind-address", "127.0.0.1", "--advertise-address", advertise])
        .args(["--secure-port", &state.api_port.to_string()])
        .args(["--tls-cert-file", &d("pki/apiserver.crt"), "--tls-private-key-file", &d("pki/apiserver.key")])
        .args(["--client-ca-file", &d("pki/ca.crt"), "--token-auth-file", &d("tokens.csv")])
        .args(["--service-account-issuer", "https://kubernetes.default.svc.cluster.local"])
        .args(["--service-account-key-file", &d("pki/sa.key"), "--service-account-signing-key-file", &d("pki/sa.key")])
        .args(["--service-cluster-ip-range", &service_ranges(), "--authorization-mode", "RBAC"])
        .args(["--endpoint-reconciler-type", reconciler, "--allow-privileged=true", "--profiling=false"])
        .args(["--cert-dir", &d("pki")])
        // Kubelets (`kubectl logs`, `exec`) are reached through the lab agent's CONNECT proxy, by InternalIP.
        .args(["--kubelet-client-certificate", &d("pki/kubelet-client.crt")])
        .args(["--kubelet-client-key", &d("pki/kubelet-client.key")])
        .args(["--kubelet-preferred-address-types", "InternalIP"])
        .args(["--egress-selector-config-file", &d("egress-selector.yaml")]);
    let egress = format!(
        "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
        state.kubelet_proxy_socket().display()
    );
    let egress_path = dir.join("egress-selector.yaml");
    std::fs::write(&egress_path, egress).map_err(|e| super::io_err(&egress_path, e))?;
    spawn(state, "kube-apiserver", api)?;
    let port = state.api_port;
    wait_for(state, "kube-apiserver", Duration::from_secs(90), || tcp_open(port))?;
    Ok(())
}

/// Starts kube-controller-manager with the controllers the lab needs. Without real nodes, no Deployment,
/// ReplicaSet or DaemonSet controllers: the chart's workloads stay inert objects, and the lab runs
/// ferrolb's binaries as processes with the chart's ServiceAccount tokens instead.
pub fn start_controller_manager(state: &mut State) -> Result<()> {
    let d = |p: &str| state.dir.join(p).display().to_string();
    let mut controllers = vec![
        "serviceaccount-token-controller",
        "serviceaccount-controller",
        "namespace-controller",
        "garbage-collector-controller",
        "endpointslice-controller",
        "endpointslice-mirroring-controller",
        "node-lifecycle-controller",
        "pod-garbage-collector-controller",
        "root-ca-certificate-publisher-controller",
    ];
    if state.real_nodes {
        controllers.extend([
            "deployment-controller",
            "replicaset-controller",
            "daemonset-controller",
            "disruption-controller",
            "taint-eviction-controller",
        ]);
    }
    let controllers = controllers.join(",");
    let mut kcm = Command::new(state.bin_dir.join("kube-controller-manager"));
    kcm.args(["--kubeconfig", &d("kcm.kubeconfig"), "--leader-elect=false", "--controllers", &controllers])
        .args(["--service-account-private-key-file", &d("pki/sa.key"), "--root-ca-file", &d("pki/ca.crt")])
        .args(["--node-monitor-period", "1s", "--node-monitor-grace-period", "6s", "--node-startup-grace-period", "6s"])
        .args(["--bind-address", "127.0.0.1", "--secure-port", "0", "--concurrent-service-endpoint-syncs", "10"])
        .args(["--service-cluster-ip-range", &service_ranges()]);
    step("starting kube-controller-manager (EndpointSlices, node lifecycle, ServiceAccount tokens)");
    spawn(state, "kube-controller-manager", kcm)
}

#[cfg(test)]
mod tests {
    use super::free_port;

    #[test]
    fn free_ports_are_never_handed_out_twice_even_when_closed_at_once() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("a free port")).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice: {ports:?}");
    }
}

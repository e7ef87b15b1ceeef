//! What the end-to-end tests share: a lab per test that is always taken down (on success, on panic, and on
//! Ctrl-C or SIGTERM), polling with a bound, and applying YAML the way `kubectl apply` would.

use crate::lab::{State, kubelet};
use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The pool and advertisement most lab suites start with: 198.19.0.1-254 (routed on-link by `host`), every node.
pub const LAB_POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.254]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n";

/// Serialises the tests of one test binary that bring up labs: take it before `TestLab::start` and hold it to the
/// end (declared first, it is dropped after the lab, so the next test starts once this lab is down). Labs are
/// cheap to bring up (seconds), but two at once share the machine's two cores, and the speakers' liveness
/// timings (50 ms heartbeats) are what several tests watch.
pub async fn one_lab_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LABS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LABS.lock().await
}

/// A running `ferrolb-lab prober` (see [`TestLab::start_prober`]).
pub struct Prober {
    child: std::process::Child,
    drain: std::thread::JoinHandle<usize>,
}

impl Prober {
    /// Waits for the prober's window to end and returns its JSON report (`max_gap_ms`, `sent`, `answered`,
    /// `first`, `last`).
    pub fn report(self) -> serde_json::Value {
        let out = self.child.wait_with_output().expect("prober output");
        let _ = self.drain.join();
        serde_json::from_slice(&out.stdout).expect("prober report")
    }
}

/// Whether a pod is Ready and not being deleted.
pub fn is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pods in `namespace` matching label `selector` (none when the list fails).
pub async fn pods(client: &Client, namespace: &str, selector: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    api.list(&kube::api::ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default()
}

/// A lab owned by one test.
pub struct TestLab {
    /// Lab name (namespace prefix).
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    exe: String,
}

impl TestLab {
    /// Brings up a lab (`bare`: without the chart and controller). Needs root.
    pub fn start(exe: &str, name: &str, nodes: usize, bare: bool) -> Self {
        Self::start_with(exe, name, nodes, if bare { &["--bare"] } else { &[] })
    }

    /// Brings up a lab with extra `up` flags (e.g. `--kubelets`, `--kubeadm-labels`, `--set k=v`). Needs root.
    pub fn start_with(exe: &str, name: &str, nodes: usize, flags: &[&str]) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "the lab needs root (network namespaces, raw sockets)");
        let lab =
            Self { name: name.into(), dir: std::env::temp_dir().join(format!("ferrolb-lab-{name}")), exe: exe.into() };
        let (exe, name, dir) = (lab.exe.clone(), lab.name.clone(), lab.dir.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                    return;
                };
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
                let _ = Command::new(&exe).args(["--name", &name, "--dir"]).arg(&dir).arg("down").status();
                std::process::exit(130);
            });
        }
        let nodes = nodes.to_string();
        let mut args = vec!["up", "--nodes", nodes.as_str()];
        args.extend_from_slice(flags);
        let out = lab.cli(&args);
        assert!(out.status.success(), "up failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    /// Runs `ferrolb-lab` against this lab.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.exe)
            .args(["--name", &self.name, "--dir"])
            .arg(&self.dir)
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("ferrolb-lab runs")
    }

    /// Runs `ferrolb-lab` and returns its stdout, failing the test on error.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ferrolb-lab {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Restarts `node`'s speaker under libfaketime with its wall clock unchanged for now, and returns the clock
    /// file: writing e.g. `-60s` to it steps that speaker's wall clock within a second. Its monotonic clock is
    /// left alone, as an NTP step leaves the kernel's.
    pub fn restart_speaker_with_fake_clock(&self, node: &str) -> std::path::PathBuf {
        let clock = self.dir.join("faketime");
        std::fs::write(&clock, "+0\n").expect("faketime file");
        self.ok(&[
            "restart-speaker",
            node,
            "--env",
            "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "--env",
            &format!("FAKETIME_TIMESTAMP_FILE={}", clock.display()),
            "--env",
            "FAKETIME_CACHE_DURATION=1",
            "--env",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ]);
        clock
    }

    /// One probe from inside a namespace (`host` or `node-N`).
    pub fn probe(&self, from: &str, protocol: &str, addr: &str, timeout_ms: u64) -> Result<String, String> {
        let timeout = timeout_ms.to_string();
        let out = self.cli(&["exec", from, "--", &self.exe, "probe", protocol, addr, "--timeout-ms", &timeout]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Probes `addr` (`protocol` `tcp` or `udp`) from the host every 10 ms for `ms`, runs `during` once the
    /// prober has had its first answer (it says so on stderr), and returns the prober's JSON report (longest gap,
    /// who answered first and last).
    pub fn probe_while(&self, protocol: &str, addr: &str, ms: u64, during: impl FnOnce()) -> serde_json::Value {
        let prober = self.start_prober(protocol, addr, ms);
        during();
        prober.report()
    }

    /// Starts `ferrolb-lab prober` in `host` for `ms` and returns once it has had its first answer, so a fault
    /// started next is measured from a served state. Several may run at once, e.g. to measure one kill twice.
    pub fn start_prober(&self, protocol: &str, addr: &str, ms: u64) -> Prober {
        use std::io::BufRead;
        let (dir, duration) = (self.dir.display().to_string(), ms.to_string());
        let mut child = Command::new(&self.exe)
            .args(["--name", &self.name, "--dir", &dir, "exec", "host", "--", &self.exe, "prober", protocol, addr])
            .args(["--duration-ms", &duration])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prober");
        let stderr = std::io::BufReader::new(child.stderr.take().expect("prober stderr"));
        let mut lines = stderr.lines();
        let first = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("first answer from "));
        assert!(first.is_some(), "the {protocol} prober never had an answer from {addr}");
        // Keep reading stderr so the prober never blocks on a full pipe.
        let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
        Prober { child, drain }
    }

    /// The lab's recorded state.
    pub fn state(&self) -> State {
        State::load(&self.dir).expect("lab state")
    }

    /// An admin client.
    pub async fn admin(&self) -> Client {
        kubelet::client(&self.state().kubeconfig()).await.expect("admin kubeconfig")
    }

    /// Takes the lab down now.
    pub fn down(&self) {
        let _ = self.cli(&["down"]);
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        self.down();
    }
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout` (a bound, not a measurement).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kinds the tests create that live outside namespaces.
const CLUSTER_SCOPED: [&str; 3] = ["Namespace", "Node", "CustomResourceDefinition"];

fn resource_of(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "IPAddressPool" => "ipaddresspools".to_string(),
        "L2Advertisement" => "l2advertisements".to_string(),
        "ServiceL2Status" => "servicel2statuses".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    }
}

/// Creates every document of a multi-document YAML exactly as written (the server applies defaults).
pub async fn create_yaml(client: &Client, yaml: &str) -> Result<Vec<DynamicObject>, kube::Error> {
    let mut created = Vec::new();
    for doc in yaml.split("\n---").filter(|d| !d.trim().is_empty()) {
        let value: serde_json::Value = serde_yaml::from_str(doc).expect("valid YAML");
        let obj: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let resource = resource_of(&types.api_version, &types.kind);
        let namespace = obj.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<DynamicObject> = if CLUSTER_SCOPED.contains(&types.kind.as_str()) {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), &namespace, &resource)
        };
        created.push(api.create(&PostParams::default(), &obj).await?);
    }
    Ok(created)
}

/// The lab's IPAddressPools (namespace metallb-system) as dynamic objects: they may be mid-deletion or carry
/// fields the typed schema would not keep.
pub fn pools_api(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "metallb-system", &ApiResource::erase::<ferrolb_crds::IPAddressPool>(&()))
}

/// The ingress addresses of a Service, as strings.
pub async fn ingress(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let Ok(svc) = Api::<Service>::namespaced(client.clone(), namespace).get(name).await else { return Vec::new() };
    ingress_of(&svc)
}

fn ingress_of(svc: &Service) -> Vec<String> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.clone()).collect()
}

/// Waits until the Service has exactly these addresses.
pub async fn wait_ingress(client: &Client, namespace: &str, name: &str, want: &[&str]) {
    let what = format!("{namespace}/{name} to get {want:?}");
    eventually(&what, Duration::from_secs(30), || async {
        let got = ingress(client, namespace, name).await;
        (got == want).then_some(())
    })
    .await;
}

/// MAC of each node's eth0, mapped to the node's name.
pub fn node_macs(lab: &TestLab) -> std::collections::BTreeMap<String, String> {
    lab.state()
        .nodes
        .iter()
        .map(|n| {
            let out = Command::new("ip").args(["-n", &n.netns, "link", "show", "eth0"]).output().expect("ip link");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mac =
                text.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
            (mac, n.name.clone())
        })
        .collect()
}

/// The nodes whose MAC answered ARP for `ip` from the `host` namespace (`unknown <mac>` for other MACs).
pub fn answering_nodes(lab: &TestLab, ip: &str) -> Vec<String> {
    let macs = node_macs(lab);
    let exe = lab.exe.clone();
    let out = lab.cli(&["exec", "host", "--", &exe, "arping", ip, "--count", "3", "--wait-ms", "300"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|mac| macs.get(mac).cloned().unwrap_or_else(|| format!("unknown {mac}")))
        .collect()
}

/// Waits until exactly the nodes `want` answer ARP for `ip`.
pub async fn wait_answered_by(lab: &TestLab, ip: &str, want: &[&str]) {
    let what = format!("ARP for {ip} answered by exactly {want:?}");
    eventually(&what, Duration::from_secs(60), || async { (answering_nodes(lab, ip) == want).then_some(()) }).await;
}

/// Waits for an Event on an object (by name, in `namespace`) whose message contains `needle`; returns it.
pub async fn wait_event(
    client: &Client,
    namespace: &str,
    object: &str,
    needle: &str,
) -> k8s_openapi::api::core::v1::Event {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let what = format!("an Event on {namespace}/{object} saying {needle:?}");
    let fields = format!("involvedObject.name={object}");
    eventually(&what, Duration::from_secs(30), || async {
        let list = api.list(&kube::api::ListParams::default().fields(&fields)).await.ok()?;
        list.items.into_iter().find(|e| e.message.as_deref().is_some_and(|m| m.contains(needle)))
    })
    .await
}

/// One of the user's manifests from `examples/seed/`, unchanged.
pub fn seed(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Applies the user's pool, advertisement, web and DNS Services in the user's order, and waits for the
/// addresses MetalLB gives them: web-svc-lb 172.17.255.1, dns-svc-lb (TCP+UDP 53) 172.17.255.2.
pub async fn apply_users_services(client: &Client) {
    create_yaml(client, &seed("ipaddresspool.yaml")).await.expect("pool");
    create_yaml(client, &seed("l2advertisement.yaml")).await.expect("l2advertisement");
    create_yaml(client, &seed("web-svc-lb.yaml")).await.expect("web");
    wait_ingress(client, "default", "web-svc-lb", &["172.17.255.1"]).await;
    create_yaml(client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    wait_ingress(client, "kube-system", "dns-svc-lb", &["172.17.255.2"]).await;
}

/// Asserts that the DNS Service at `vip` answers from the `host` namespace over UDP and TCP 53, through the
/// static route, served by `owner` (the node's echo server names itself).
pub fn assert_dns_served_by(lab: &TestLab, vip: &str, owner: &str) {
    let udp = lab.probe("host", "udp", &format!("{vip}:53"), 2000);
    assert_eq!(udp, Ok(format!("{owner} probe")), "UDP 53 through the static route");
    let tcp = lab.probe("host", "tcp", &format!("{vip}:53"), 2000);
    assert_eq!(tcp, Ok(owner.to_string()), "TCP 53 through the static route");
}

/// A node's speaker's `/metrics` text (process-mode labs: the speaker serves it on the node's 127.0.0.1).
pub fn speaker_metrics(lab: &TestLab, node: &str) -> String {
    let state = lab.state();
    let port = state.speaker(node).and_then(|p| p.port);
    let Some(port) = port else { return String::new() };
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = lab.cli(&["exec", node, "--", "curl", "-s", "--max-time", "5", &url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sum of every sample of metric `name` (all label sets) in an exposition text; 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Takeovers summed over every node's speaker: how often any address changed hands, as the speakers count it.
/// Every node's speaker must be running: a scrape without the counter fails the test rather than counting 0
/// (which would make "no takeover happened" pass without evidence).
pub fn total_takeovers(lab: &TestLab) -> f64 {
    lab.state()
        .nodes
        .iter()
        .map(|n| {
            let text = speaker_metrics(lab, &n.name);
            assert!(text.contains("ferrolb_speaker_takeovers_total"), "{}'s speaker offered no takeover count", n.name);
            metric_sum(&text, "ferrolb_speaker_takeovers_total")
        })
        .sum()
}

/// Watches who answers ARP for `ip` from the `host` namespace (see `ferrolb-lab arpwatch`).
pub fn arpwatch(lab: &TestLab, ip: &str, interval_ms: u64, duration_ms: u64) -> crate::lab::arping::WatchReport {
    let exe = lab.exe.clone();
    let (interval, duration) = (interval_ms.to_string(), duration_ms.to_string());
    let out =
        lab.cli(&["exec", "host", "--", &exe, "arpwatch", ip, "--interval-ms", &interval, "--duration-ms", &duration]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("arpwatch {ip}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// One address watched from the host while something happens: a client of `protocol` (`udp` or `tcp`) asking
/// `ip:port` every 10 ms, and an ARP asker for `ip` every 100 ms.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The address.
    pub ip: String,
    /// `udp` or `tcp` (the echo server answers), or `dns` (a real DNS query, for DNS pods behind kube-proxy).
    pub protocol: &'static str,
    /// The port the client asks.
    pub port: u16,
}

/// What a [`Watch`] saw.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The client's longest gap between two answers, in ms.
    pub outage_ms: f64,
    /// Every ARP sample, summed over the rounds.
    pub arp: crate::lab::arping::WatchReport,
}

/// Runs `work` while every address in `watches` is asked by a client (every 10 ms) and by ARP (every 100 ms)
/// from the host, both in 10-second rounds until `work` is done, so neither needs to guess how long it takes (the
/// few milliseconds between two rounds are not watched). Needs a multi-threaded runtime.
pub fn watched_while<F, Fut>(lab: &TestLab, watches: &[Watch], work: F) -> Vec<Watched>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let watchers: Vec<_> = watches
                .iter()
                .map(|w| {
                    let done = &done;
                    let asker = scope.spawn(move || {
                        let mut total = crate::lab::arping::WatchReport::default();
                        while !done.load(Ordering::Relaxed) {
                            let round = arpwatch(lab, &w.ip, 100, 10_000);
                            total.samples += round.samples;
                            total.unanswered += round.unanswered;
                            total.several += round.several;
                            total.changes += round.changes;
                            for (mac, n) in round.macs {
                                *total.macs.entry(mac).or_default() += n;
                            }
                        }
                        total
                    });
                    let client = scope.spawn(move || {
                        let address = format!("{}:{}", w.ip, w.port);
                        let mut longest: f64 = 0.0;
                        while !done.load(Ordering::Relaxed) {
                            let round = lab.probe_while(w.protocol, &address, 10_000, || ());
                            longest = longest.max(round["max_gap_ms"].as_f64().expect("max_gap_ms"));
                        }
                        longest
                    });
                    (asker, client)
                })
                .collect();
            tokio::runtime::Handle::current().block_on(work());
            done.store(true, Ordering::Relaxed);
            watchers
                .into_iter()
                .map(|(asker, client)| Watched {
                    outage_ms: client.join().expect("client"),
                    arp: asker.join().expect("ARP asker"),
                })
                .collect()
        })
    })
}

/// Every `AddressConflict` Event in the cluster, as "namespace/object: note".
pub async fn address_conflict_events(client: &Client) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let list = events.list(&kube::api::ListParams::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("AddressConflict"))
        .map(|e| {
            let about = e.regarding.unwrap_or_default();
            format!(
                "{}/{}: {}",
                about.namespace.unwrap_or_default(),
                about.name.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// Every LoadBalancer Service's name and ingress addresses, in the API server's order.
pub async fn lb_addresses(client: &Client) -> Vec<(String, Vec<String>)> {
    let services: Api<Service> = Api::all(client.clone());
    let list = services.list(&kube::api::ListParams::default()).await.expect("services");
    list.items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .map(|s| {
            let ips = s.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
            (s.metadata.name.unwrap_or_default(), ips.into_iter().filter_map(|i| i.ip).collect())
        })
        .collect()
}

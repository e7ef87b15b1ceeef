//! `up`, `down`, `kill`, `revive`: building the lab, taking it apart, and failing nodes.

use super::control_plane::{self, alive, spawn};
use super::{LabError, NodeInfo, Result, State, addresses, io_err, kubelet, net, pki, realnode, step};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Lab name (namespace prefix).
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// Only the cluster and the network: no chart, no ferrolb processes.
    pub bare: bool,
    /// containerd + a real kubelet per node; ferrolb runs as the chart's pods (see [`super::realnode`]).
    pub real_nodes: bool,
    /// Real nodes also run kube-proxy (nftables mode): LoadBalancer traffic reaches the Services' pods instead of
    /// the node's echo server.
    pub kube_proxy: bool,
    /// Label every node as kubeadm labels a control-plane node (as minikube's and kind's single node are),
    /// including `node.kubernetes.io/exclude-from-external-load-balancers`.
    pub kubeadm_labels: bool,
    /// Extra `--set key=value` for `helm install`.
    pub helm_set: Vec<String>,
    /// Nodes report only their IPv6 InternalIP (an IPv6-only cluster as ferrolb sees it).
    pub ipv6_nodes: bool,
    /// A second LAN segment: every node and the host get `eth1` on it (see [`net::create`]).
    pub second_lan: bool,
    /// Only the first N nodes run a speaker: they get [`SPEAKER_NODE_LABEL`]=[`SPEAKER_NODE_VALUE`], and the
    /// chart is installed with `speaker.nodeSelector` on it (real nodes: the DaemonSet places its pods by it; process mode: the lab
    /// starts speakers where the rendered DaemonSet's nodeSelector matches).
    pub speaker_nodes: Option<usize>,
    /// Process mode: every speaker runs this binary instead of the one built beside `ferrolb-lab` (e.g. an older
    /// release, to upgrade it with `restart-speaker --binary`).
    pub speaker_binary: Option<PathBuf>,
    /// Install this chart directory instead of `charts/ferrolb` (e.g. a previous release's, from git history, to
    /// test `helm upgrade` from it).
    pub chart: Option<PathBuf>,
}

/// Label `up --speaker-nodes N` gives the nodes that run a speaker, with value [`SPEAKER_NODE_VALUE`].
pub const SPEAKER_NODE_LABEL: &str = "ferrolb.io/lab-tier";
/// Its value: not `true`, which `helm --set` would turn into a boolean (a nodeSelector holds strings only).
pub const SPEAKER_NODE_VALUE: &str = "edge";

/// What process mode takes from the installed chart's speaker DaemonSet besides its arguments, so the speaker
/// processes run as its pods would and can find each other as the pods do.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SpeakerTemplate {
    /// The container's literal environment (`value`, not `valueFrom`), e.g. the speaker pod selector.
    pub env: Vec<(String, String)>,
    /// The pod template's labels: the lab creates a Pod with them for every speaker process it runs.
    pub pod_labels: BTreeMap<String, String>,
    /// The pod template's nodeSelector: speakers run only on nodes whose labels match it.
    pub node_selector: BTreeMap<String, String>,
}

/// Labels kubeadm puts on a control-plane node; minikube and kind nodes carry them too.
pub const KUBEADM_LABELS: [&str; 2] =
    ["node-role.kubernetes.io/control-plane", "node.kubernetes.io/exclude-from-external-load-balancers"];

/// Namespace the chart is installed into: the one the user's MetalLB manifests name.
pub const RELEASE_NAMESPACE: &str = "metallb-system";
/// Helm release name (so the chart's objects are `ferrolb-controller`, `ferrolb-speaker`, …).
pub const RELEASE: &str = "ferrolb";

/// Whether the lab described by `dir` is fully running.
pub fn is_running(dir: &Path) -> bool {
    let Ok(state) = State::load(dir) else {
        return false;
    };
    let namespaces = net::lab_namespaces(&state.name).unwrap_or_default();
    let expected = state.nodes.len() + 2;
    !state.procs.is_empty() && state.procs.iter().all(|p| alive(p.pid)) && namespaces.len() == expected
}

/// Brings the lab up (idempotent: a running lab is left alone; a broken one is taken down first).
pub async fn up(opts: &UpOptions) -> Result<State> {
    if opts.kube_proxy && !opts.real_nodes {
        return Err(LabError::Usage("--kube-proxy needs --kubelets (real nodes)".into()));
    }
    if opts.speaker_binary.is_some() && (opts.real_nodes || opts.bare) {
        return Err(LabError::Usage(
            "--speaker-binary is for process mode with the chart (no --kubelets, --bare)".into(),
        ));
    }
    let speaker_binary = opts.speaker_binary.as_deref().map(speaker_binary_at).transpose()?;
    let speaker_binaries = |nodes: &[NodeInfo]| -> BTreeMap<String, PathBuf> {
        let Some(binary) = &speaker_binary else { return BTreeMap::new() };
        nodes.iter().map(|n| (n.name.clone(), binary.clone())).collect()
    };
    if is_running(&opts.dir) {
        let state = State::load(&opts.dir)?;
        if state.nodes.len() == opts.nodes
            && state.real_nodes == opts.real_nodes
            && state.kube_proxy == opts.kube_proxy
            && state.second_lan == opts.second_lan
            && state.speaker_nodes == opts.speaker_nodes
            && state.speaker_binaries == speaker_binaries(&state.nodes)
        {
            step(format!("lab {:?} is already up", state.name));
            return Ok(state);
        }
        step(format!(
            "lab {:?} has {} nodes (second LAN: {}), {} asked (second LAN: {}): rebuilding",
            state.name,
            state.nodes.len(),
            state.second_lan,
            opts.nodes,
            opts.second_lan
        ));
    }
    down(&opts.name, &opts.dir)?;
    if opts.nodes == 0 || opts.nodes > 200 {
        return Err(LabError::Usage(format!("--nodes must be 1..=200, got {}", opts.nodes)));
    }
    if opts.speaker_nodes.is_some_and(|n| n == 0 || n > opts.nodes) {
        return Err(LabError::Usage(format!("--speaker-nodes must be 1..=--nodes ({})", opts.nodes)));
    }
    let started = Instant::now();
    let bin_dir = control_plane::ensure_binaries()?;
    std::fs::create_dir_all(opts.dir.join("killed")).map_err(|e| io_err(&opts.dir, e))?;
    let nodes: Vec<NodeInfo> = (1..=opts.nodes)
        .map(|i| NodeInfo {
            name: format!("node-{i}"),
            netns: format!("{}-node-{i}", opts.name),
            ip: addresses::node_ip(i),
            ip6: addresses::node_ip6(i),
        })
        .collect();
    let mut state = State {
        name: opts.name.clone(),
        dir: opts.dir.clone(),
        bin_dir,
        speaker_gossip: true,
        real_nodes: opts.real_nodes,
        kube_proxy: opts.kube_proxy,
        ipv6_nodes: opts.ipv6_nodes,
        second_lan: opts.second_lan,
        speaker_nodes: opts.speaker_nodes,
        speaker_binaries: speaker_binaries(&nodes),
        nodes,
        ..State::default()
    };
    state.save()?;
    // Checked before anything starts: without the images, real nodes cannot run the chart.
    let archives = if opts.real_nodes { realnode::image_archives()? } else { Vec::new() };

    step("generating the CA, serving certificate, ServiceAccount key and tokens");
    let node_names: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let tokens = pki::generate(&state.dir, &node_names)?;
    let lans = if opts.second_lan { "two bridges" } else { "bridge" };
    step(format!("creating the network: {lans}, host and {} node namespaces (198.18.0.0/15)", state.nodes.len()));
    net::create(&state.lan_netns(), &state.host_netns(), &state.nodes, opts.second_lan)?;

    // Ports are picked free (and reserved for other labs, see `free_port`) and bound a moment later, so another
    // process can still take one first: etcd or kube-apiserver then exits, and both start again on new ports.
    // Only an exit is retried; a control plane that runs but never gets ready fails at once.
    for attempt in 1.. {
        match start_api_server(&mut state, &tokens).await {
            Ok(()) => break,
            Err(e @ LabError::Command { .. }) if attempt < 3 => {
                step(format!("the control plane did not come up ({e}); starting it again on new ports"));
                for p in state.procs.iter().filter(|p| p.role == "etcd" || p.role == "kube-apiserver") {
                    stop_group(p.pid);
                }
                state.procs.retain(|p| p.role != "etcd" && p.role != "kube-apiserver");
                let etcd_data = state.dir.join("etcd");
                if etcd_data.exists() {
                    std::fs::remove_dir_all(&etcd_data).map_err(|e| io_err(&etcd_data, e))?;
                }
                state.save()?;
            }
            Err(e) => return Err(e),
        }
    }
    control_plane::start_controller_manager(&mut state)?;

    step("starting the lab agent (fake kubelets, API relay for the node namespaces)");
    let exe = std::env::current_exe().map_err(|e| io_err(Path::new("current_exe"), e))?;
    let mut agent = Command::new(&exe);
    agent.args(["agent", "--dir"]).arg(&state.dir);
    spawn(&mut state, "agent", agent)?;
    for node in state.nodes.clone() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(&exe)
            .args(["node-agent", "--node", &node.name, "--dir"])
            .arg(&state.dir);
        spawn(&mut state, &format!("node-agent {}", node.name), cmd)?;
    }
    if opts.real_nodes {
        realnode::start_scheduler(&mut state)?;
        for (i, node) in state.nodes.clone().iter().enumerate() {
            step(format!("{}: containerd + kubelet in {} (pods {})", node.name, node.netns, realnode::pod_cidr(i + 1)));
            realnode::prepare(&state, i + 1, &tokens.kubelets[i])?;
            realnode::start_node(&mut state, node, &archives)?;
        }
    }
    wait_nodes_ready(&state, Duration::from_secs(if opts.real_nodes { 120 } else { 60 })).await?;
    if opts.kubeadm_labels {
        label_like_kubeadm(&state).await?;
    }
    let mut helm_set = opts.helm_set.clone();
    if let Some(count) = opts.speaker_nodes {
        label_speaker_nodes(&state, count).await?;
        helm_set.push(format!("speaker.nodeSelector.{}={SPEAKER_NODE_VALUE}", SPEAKER_NODE_LABEL.replace('.', "\\.")));
    }
    if !opts.bare {
        install(&mut state, opts.chart.as_deref().unwrap_or(&chart_dir()), &helm_set, &[]).await?;
    }
    step(format!("lab {:?} up in {:.1?}; kubeconfig: {}", state.name, started.elapsed(), state.kubeconfig().display()));
    Ok(state)
}

/// Installs the chart in `chart` (with `--set` values and extra helm flags such as `--take-ownership`) and
/// runs ferrolb: real nodes wait for the pods; process mode starts the controller and the speakers with the
/// chart's arguments. `up` does this unless `--bare`; `ferrolb-lab install` does it later (e.g. after MetalLB,
/// to switch from it).
pub async fn install(state: &mut State, chart: &Path, sets: &[String], flags: &[&str]) -> Result<()> {
    install_chart_from(state, chart, sets, flags)?;
    wait_crds_established(state, Duration::from_secs(60)).await?;
    if state.real_nodes {
        return realnode::wait_chart_ready(state, Duration::from_secs(180)).await;
    }
    (state.controller_args, state.speaker_args) = chart_args(state)?;
    state.speaker_template = speaker_template(state)?;
    state.save()?;
    start_controller(state, 0).await?;
    for node in speaker_nodes(state).await? {
        start_speaker(state, &node).await?;
    }
    Ok(())
}

async fn label_like_kubeadm(state: &State) -> Result<()> {
    let nodes: Api<Node> = Api::all(kubelet::client(&state.kubeconfig()).await?);
    let labels: serde_json::Map<String, serde_json::Value> =
        KUBEADM_LABELS.iter().map(|l| (l.to_string(), serde_json::Value::String(String::new()))).collect();
    for node in &state.nodes {
        step(format!("labelling {} as kubeadm labels a control-plane node: {}", node.name, KUBEADM_LABELS.join(", ")));
        let patch = serde_json::json!({"metadata": {"labels": labels}});
        nodes.patch(&node.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
    }
    Ok(())
}

async fn label_speaker_nodes(state: &State, count: usize) -> Result<()> {
    let nodes: Api<Node> = Api::all(kubelet::client(&state.kubeconfig()).await?);
    for node in state.nodes.iter().take(count) {
        step(format!(
            "labelling {} {SPEAKER_NODE_LABEL}={SPEAKER_NODE_VALUE}: it runs a speaker (speaker.nodeSelector)",
            node.name
        ));
        let patch = serde_json::json!({"metadata": {"labels": {SPEAKER_NODE_LABEL: SPEAKER_NODE_VALUE}}});
        nodes.patch(&node.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// The nodes the chart's speaker DaemonSet would run on, by its nodeSelector and the Nodes' labels (process mode
/// has no DaemonSet controller; the lab's nodes have no taints, so tolerations change nothing here).
pub async fn speaker_nodes(state: &State) -> Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(kubelet::client(&state.kubeconfig()).await?);
    let mut selected = Vec::new();
    for node in &state.nodes {
        let labels = nodes.get(&node.name).await?.metadata.labels.unwrap_or_default();
        if state.speaker_template.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            selected.push(node.name.clone());
        }
    }
    Ok(selected)
}

/// Starts etcd and kube-apiserver, writes the kubeconfigs for the port it got, and waits for `/readyz`.
async fn start_api_server(state: &mut State, tokens: &pki::Tokens) -> Result<()> {
    control_plane::start(state)?;
    let ca = state.dir.join("pki/ca.crt");
    let write = |file: &str, user: &str, token: &str| {
        let path = state.dir.join(file);
        std::fs::write(&path, pki::kubeconfig(&ca, state.api_port, user, token)).map_err(|e| io_err(&path, e))
    };
    write("admin.kubeconfig", "lab-admin", &tokens.admin)?;
    write("kcm.kubeconfig", "kube-controller-manager", &tokens.kcm)?;
    wait_ready(state).await
}

async fn wait_ready(state: &State) -> Result<()> {
    let client = kubelet::client(&state.kubeconfig()).await?;
    let start = Instant::now();
    let timeout = Duration::from_secs(90);
    let pid = state.procs.iter().rev().find(|p| p.role == "kube-apiserver").map(|p| p.pid);
    loop {
        let req = http::Request::get("/readyz?verbose").body(Vec::new()).map_err(|e| LabError::Usage(e.to_string()))?;
        let answer = client.request_text(req).await;
        match answer {
            Ok(body) if body.trim_end().ends_with("readyz check passed") => {
                step(format!("kube-apiserver /readyz: ok after {:.1?}", start.elapsed()));
                return Ok(());
            }
            // A dead API server never gets ready: say so at once, with its log, instead of after the timeout.
            _ if pid.is_some_and(|pid| !control_plane::alive(pid)) => {
                return Err(control_plane::exited(state, "kube-apiserver"));
            }
            last if start.elapsed() > timeout => {
                let last = match last {
                    Ok(body) => body.lines().filter(|l| l.starts_with("[-]")).collect::<Vec<_>>().join("\n"),
                    Err(e) => e.to_string(),
                };
                let log = control_plane::tail(&state.log("kube-apiserver"));
                return Err(LabError::Timeout {
                    what: format!("kube-apiserver /readyz (last answer:\n{last}\nlog:\n{log})"),
                    after: timeout,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Waits until every lab node (not marked killed) reports Ready=True.
pub async fn wait_nodes_ready(state: &State, timeout: Duration) -> Result<()> {
    let nodes: Api<Node> = Api::all(kubelet::client(&state.kubeconfig()).await?);
    let start = Instant::now();
    loop {
        let mut ready = 0;
        for n in &state.nodes {
            let node = nodes.get_opt(&n.name).await?;
            let conds = node.and_then(|n| n.status).and_then(|s| s.conditions).unwrap_or_default();
            if conds.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
                ready += 1;
            }
        }
        if ready == state.nodes.len() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LabError::Timeout {
                what: format!("{ready}/{} nodes Ready", state.nodes.len()),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the API server serves every CRD the chart installed (`Established`): the chart's CRDs are
/// templates, which Helm does not wait for as it does for a chart's `crds/`, and a pool created before that is
/// refused with 404. Helm has created them all when it returns, so the ones of ours that exist are the chart's
/// (an older chart installs fewer).
pub async fn wait_crds_established(state: &State, timeout: Duration) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(kubelet::client(&state.kubeconfig()).await?);
    let start = Instant::now();
    loop {
        let (mut installed, mut established) = (0, 0);
        for name in ferrolb_crds::CRD_NAMES {
            let Some(crd) = crds.get_opt(name).await? else { continue };
            installed += 1;
            let conds = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conds.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                established += 1;
            }
        }
        if installed > 0 && established == installed {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LabError::Timeout {
                what: format!("{established}/{installed} CRDs established"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop_group(pid: i32) {
    let group = Pid::from_raw(pid);
    if killpg(group, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(group, Signal::SIGKILL);
    // Gone before the caller reuses what it held (its port, its data directory).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes the lab apart: every process (recorded, or found in its namespaces), every namespace, the state dir.
/// Safe on a lab that is half built, crashed, or already gone.
pub fn down(name: &str, dir: &Path) -> Result<()> {
    if let Ok(state) = State::load(dir) {
        for p in state.procs.iter().rev() {
            stop_group(p.pid);
        }
    }
    // Real nodes: pods with their own network namespace are found through the nodes' cgroups.
    let prefix = format!("{name}-");
    for _ in 0..3 {
        let mut pids = realnode::cgroup_pids(&prefix);
        for ns in net::lab_namespaces(name)? {
            if let Ok(list) = super::run("ip", &["netns", "pids", &ns]) {
                pids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    realnode::unmount_under(dir);
    realnode::remove_cgroups(&prefix);
    net::destroy(name)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Hard node failure: SIGKILL whatever runs in its namespace except the lab's own agent, stop its heartbeats,
/// take its link down.
pub fn kill(state: &State, node: &str) -> Result<()> {
    let info = state.node(node)?;
    let index = state.nodes.iter().position(|n| n.name == info.name).map_or(0, |i| i + 1);
    let marker = state.killed_marker(&info.name);
    std::fs::write(&marker, b"").map_err(|e| io_err(&marker, e))?;
    let agent = state.procs.iter().find(|p| p.role == format!("node-agent {}", info.name)).map(|p| p.pid);
    let is_agent = |pid: i32| agent.is_some_and(|a| a == pid || parent_of(pid) == Some(a));
    realnode::kill_node_processes(info, &is_agent);
    net::set_node_link(&state.lan_netns(), index, false)
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Brings a killed node back: link up, heartbeats resume (the agent re-posts Ready and re-readies its pods),
/// and its speaker starts again if it had one.
pub async fn revive(state: &mut State, node: &str) -> Result<()> {
    revive_network(state, node)?;
    if state.real_nodes {
        // The kubelet restarts the node's pods (the speaker among them) itself, as after a power cut.
        let info = state.node(node)?.clone();
        realnode::start_node(state, &info, &realnode::image_archives()?)?;
        return state.save();
    }
    let name = state.node(node)?.name.clone();
    let role = format!("speaker {name}");
    let had_speaker = state.procs.iter().rev().find(|p| p.role == role).map(|p| alive(p.pid));
    if had_speaker == Some(false) {
        start_speaker(state, &name).await?;
    }
    Ok(())
}

fn revive_network(state: &State, node: &str) -> Result<()> {
    let info = state.node(node)?;
    let index = state.nodes.iter().position(|n| n.name == info.name).map_or(0, |i| i + 1);
    net::set_node_link(&state.lan_netns(), index, true)?;
    let marker = state.killed_marker(&info.name);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(|e| io_err(&marker, e))?;
    }
    Ok(())
}

/// This repository's chart, `charts/ferrolb`.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb")
}

/// `helm upgrade --install` of charts/ferrolb into metallb-system (with `--set` values).
pub fn install_chart(state: &State, sets: &[String]) -> Result<()> {
    install_chart_from(state, &chart_dir(), sets, &[])
}

/// `helm upgrade --install` of the chart in `chart` into metallb-system, with `--set` values and extra flags
/// (e.g. `--take-ownership`).
pub fn install_chart_from(state: &State, chart: &Path, sets: &[String], flags: &[&str]) -> Result<()> {
    step(format!("installing {} with helm into {RELEASE_NAMESPACE} (CRDs, RBAC, ServiceAccounts)", chart.display()));
    let chart = chart.display().to_string();
    let mut args = vec!["upgrade", "--install", RELEASE, chart.as_str(), "--create-namespace"];
    args.extend_from_slice(flags);
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    helm(state, &args).map(|_| ())
}

/// The container arguments the installed chart gives the controller Deployment and the speaker DaemonSet,
/// without the ones the lab sets itself (`--namespace`, `--metrics-addr`): process mode runs the binaries as the
/// chart would, so `--set loadBalancerClass=…` or `speaker.excludeInterfaces` reach them.
pub fn chart_args(state: &State) -> Result<(Vec<String>, Vec<String>)> {
    let manifest = helm(state, &["get", "manifest", RELEASE])?;
    let args_of = |kind: &str| -> Vec<String> {
        manifest
            .split("\n---")
            .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
            .find(|doc| doc["kind"].as_str() == Some(kind))
            .and_then(|doc| doc["spec"]["template"]["spec"]["containers"][0]["args"].as_sequence().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .filter(|a| !a.starts_with("--namespace=") && !a.starts_with("--metrics-addr="))
            .collect()
    };
    Ok((args_of("Deployment"), args_of("DaemonSet")))
}

/// The rest of what the installed chart gives the speaker DaemonSet's pods: literal environment, pod labels and
/// nodeSelector (see [`SpeakerTemplate`]).
pub fn speaker_template(state: &State) -> Result<SpeakerTemplate> {
    let manifest = helm(state, &["get", "manifest", RELEASE])?;
    let Some(daemonset) = manifest
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
        .find(|doc| doc["kind"].as_str() == Some("DaemonSet"))
    else {
        return Ok(SpeakerTemplate::default());
    };
    let pod = &daemonset["spec"]["template"];
    let strings = |map: &serde_yaml::Value| -> BTreeMap<String, String> {
        map.as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect()
    };
    let env = pod["spec"]["containers"][0]["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    Ok(SpeakerTemplate {
        env,
        pod_labels: strings(&pod["metadata"]["labels"]),
        node_selector: strings(&pod["spec"]["nodeSelector"]),
    })
}

/// A Pod object for a process-mode speaker, as the DaemonSet would have made it (its labels, bound to the node),
/// so the speakers discover each other from the API as they do in a cluster; the lab agent marks it Running.
/// Tolerating every taint, like a DaemonSet's pod, it is not evicted while its node is down.
async fn ensure_speaker_pod(state: &State, node: &str) -> Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(kubelet::client(&state.kubeconfig()).await?, RELEASE_NAMESPACE);
    let name = format!("{RELEASE}-speaker-{node}");
    if pods.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": state.speaker_template.pod_labels},
        "spec": {"nodeName": node, "hostNetwork": true, "serviceAccountName": format!("{RELEASE}-speaker"),
            "automountServiceAccountToken": false, "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "speaker", "image": "ferrolb-lab/process-mode"}]}}))
    .map_err(|e| LabError::Usage(e.to_string()))?;
    pods.create(&kube::api::PostParams::default(), &pod).await?;
    Ok(())
}

/// `helm uninstall` of the release: the CRDs, pools, advertisements and Services stay (helm never deletes CRDs).
pub fn uninstall_chart(state: &State) -> Result<()> {
    step(format!("helm uninstall {RELEASE} -n {RELEASE_NAMESPACE}"));
    helm(state, &["uninstall", RELEASE, "--wait"]).map(|_| ())
}

/// Runs the lab's helm against the lab, in the release namespace, with helm's caches kept in the lab dir.
pub fn helm(state: &State, args: &[&str]) -> Result<String> {
    let helm = state.bin_dir.join("helm");
    let out = Command::new(&helm)
        .args(args)
        .args(["--namespace", RELEASE_NAMESPACE, "--kubeconfig"])
        .arg(state.kubeconfig())
        .env("HELM_CACHE_HOME", state.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", state.dir.join("helm/config"))
        .env("HELM_DATA_HOME", state.dir.join("helm/data"))
        .output()
        .map_err(|e| io_err(&helm, e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("helm {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ferrolb binary next to this one (cargo puts every workspace binary in the same target directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| io_err(Path::new("current_exe"), e))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Integration tests run from target/<profile>/deps; binaries sit one level up.
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        LabError::Usage(format!(
            "{name} is not built next to {}: run `cargo build --workspace --bins` first",
            exe.display()
        ))
    })
}

/// A kubeconfig carrying a token of a chart ServiceAccount, so the chart's RBAC is what the process gets.
pub async fn service_account_kubeconfig(state: &State, account: &str) -> Result<PathBuf> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let client = kubelet::client(&state.kubeconfig()).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client, RELEASE_NAMESPACE);
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 86400}}))
            .map_err(|e| LabError::Usage(e.to_string()))?;
    let token = accounts
        .create_token_request(account, &kube::api::PostParams::default(), &request)
        .await?
        .status
        .map(|s| s.token)
        .unwrap_or_default();
    let path = state.dir.join(format!("{account}.kubeconfig"));
    let text = pki::kubeconfig(&state.dir.join("pki/ca.crt"), state.api_port, account, &token);
    // Atomically: a process started a moment ago may be reading the previous token right now.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    Ok(path)
}

/// Starts controller replica `replica` as a process with the chart's controller ServiceAccount token.
pub async fn start_controller(state: &mut State, replica: usize) -> Result<()> {
    let binary = sibling_binary("ferrolb-controller")?;
    let kubeconfig = service_account_kubeconfig(state, "ferrolb-controller").await?;
    let metrics_port = control_plane::free_port()?;
    step(format!(
        "starting ferrolb-controller replica {replica} (chart ServiceAccount token, metrics on 127.0.0.1:{metrics_port})"
    ));
    let mut cmd = Command::new(binary);
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_BACKTRACE")
        .args(["--namespace", RELEASE_NAMESPACE, "--identity", &format!("lab-controller-{replica}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(&state.controller_args);
    spawn(state, &format!("controller-{replica}"), cmd)?;
    if let Some(p) = state.procs.last_mut() {
        p.port = Some(metrics_port);
    }
    state.save()
}

/// Starts the speaker of a node inside its namespace, with the chart's speaker ServiceAccount token.
pub async fn start_speaker(state: &mut State, node: &str) -> Result<()> {
    start_speaker_with(state, node, &[]).await
}

/// Stops a node's speaker process (SIGTERM: it says it is leaving) and starts it again with extra environment,
/// e.g. libfaketime's to step its wall clock, and from `binary` if given (kept for later restarts and `revive`:
/// one node of a rolling upgrade). Process-mode labs only.
pub async fn restart_speaker(
    state: &mut State,
    node: &str,
    env: &[(String, String)],
    binary: Option<&Path>,
) -> Result<()> {
    if state.real_nodes {
        return Err(LabError::Usage("restart-speaker needs a process-mode lab (speakers as pods here)".into()));
    }
    let name = state.node(node)?.name.clone();
    // Checked before the running speaker is stopped: a wrong path must not leave the node without one.
    let binary = binary.map(speaker_binary_at).transpose()?;
    let role = format!("speaker {name}");
    if let Some(pid) = state.procs.iter().rev().find(|p| p.role == role).map(|p| p.pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Some(binary) = binary {
        state.speaker_binaries.insert(name.clone(), binary);
    }
    start_speaker_with(state, &name, env).await
}

/// An absolute path to an executable speaker binary given by the user (the speaker starts in another namespace,
/// from another working directory).
fn speaker_binary_at(path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let binary = std::fs::canonicalize(path).map_err(|e| io_err(path, e))?;
    let mode = std::fs::metadata(&binary).map_err(|e| io_err(&binary, e))?.permissions().mode();
    if !binary.is_file() || mode & 0o111 == 0 {
        return Err(LabError::Usage(format!("speaker binary {} is not an executable file", binary.display())));
    }
    Ok(binary)
}

async fn start_speaker_with(state: &mut State, node: &str, env: &[(String, String)]) -> Result<()> {
    let info = state.node(node)?.clone();
    let binary = match state.speaker_binaries.get(&info.name) {
        Some(binary) => binary.clone(),
        None => sibling_binary("ferrolb-speaker")?,
    };
    let kubeconfig = service_account_kubeconfig(state, "ferrolb-speaker").await?;
    // The chart's generated gossip key, handed over the way the DaemonSet's secretKeyRef would.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(kubelet::client(&state.kubeconfig()).await?, RELEASE_NAMESPACE);
    let key = secrets
        .get_opt("ferrolb-gossip")
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("key").map(|k| String::from_utf8_lossy(&k.0).into_owned()))
        .unwrap_or_default();
    let key = if state.speaker_gossip { key } else { String::new() };
    ensure_speaker_pod(state, &info.name).await?;
    let metrics_port = control_plane::free_port()?;
    step(format!(
        "starting ferrolb-speaker on {} (chart ServiceAccount token, raw ARP socket in {}) from {}",
        info.name,
        info.netns,
        binary.display()
    ));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &info.netns])
        .arg(&binary)
        .env("KUBECONFIG", kubeconfig)
        .env("FERROLB_GOSSIP_KEY", key)
        .env_remove("RUST_BACKTRACE")
        .envs(state.speaker_template.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["--node", &info.name, "--namespace", RELEASE_NAMESPACE])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(&state.speaker_args);
    spawn(state, &format!("speaker {}", info.name), cmd)?;
    if let Some(p) = state.procs.last_mut() {
        p.port = Some(metrics_port);
    }
    state.save()
}

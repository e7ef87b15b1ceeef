//! Real MetalLB (L2 mode) in a bare lab, so benchmarks can print its figure beside ferrolb's from the same run
//! (docs/lab.md §10). Built from the Go module proxy into a cache outside the repository; wired the way MetalLB's
//! own manifest wires it: a controller (webhook off), one hostNetwork speaker per node with memberlist bound to the
//! node's address and peers discovered through speaker Pod objects whose pod IP is the node's.

use crate::harness::{TestLab, create_yaml};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The MetalLB release compared against.
pub const VERSION: &str = "v0.16.1";
/// Where MetalLB's exclusion list must be: the speaker reads this fixed path (its DaemonSet mounts a ConfigMap).
const EXCLUDE_FILE: &str = "/etc/metallb/excludel2.yaml";

/// The cache holding `speaker`, `controller` and `crds/` of [`VERSION`].
pub fn cache_dir() -> PathBuf {
    PathBuf::from(format!("/var/cache/ferrolb/metallb-{VERSION}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds MetalLB's speaker and controller with `go install` (a few minutes, once) and copies its CRDs.
pub fn ensure_built() -> Result<PathBuf, String> {
    let dir = cache_dir();
    let crds = dir.join("crds");
    if dir.join("speaker").exists() && dir.join("controller").exists() && crds.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&crds).map_err(|e| format!("{}: {e}", crds.display()))?;
    eprintln!("building MetalLB {VERSION} from the Go module proxy into {} (once)", dir.display());
    run(
        Command::new("go")
            .args(["install", &format!("go.universe.tf/metallb/speaker@{VERSION}")])
            .arg(format!("go.universe.tf/metallb/controller@{VERSION}"))
            .env("GOBIN", &dir),
        "go install metallb",
    )?;
    let modcache = run(Command::new("go").args(["env", "GOMODCACHE"]), "go env GOMODCACHE")?;
    let bases = Path::new(&modcache).join(format!("go.universe.tf/metallb@{VERSION}/config/crd/bases"));
    for entry in std::fs::read_dir(&bases).map_err(|e| format!("{}: {e}", bases.display()))?.flatten() {
        std::fs::copy(entry.path(), crds.join(entry.file_name())).map_err(|e| format!("copy CRD: {e}"))?;
    }
    Ok(dir)
}

/// MetalLB running in a lab; dropping it stops every process it started and removes its exclusion file.
pub struct MetalLb {
    children: Vec<Child>,
    /// Logs, the memberlist key.
    pub run_dir: PathBuf,
}

impl Drop for MetalLb {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Each child leads its own process group (the speaker runs under `ferrolb-lab exec`).
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(EXCLUDE_FILE);
    }
}

impl MetalLb {
    /// Stops MetalLB as deleting its Deployment and DaemonSet does: SIGTERM to every process, which then has up
    /// to `grace` to exit (SIGKILL after that, as the kubelet does). Returns without waiting when `wait` is
    /// false (the processes are then reaped on drop).
    pub fn terminate(&mut self, grace: std::time::Duration, wait: bool) {
        for child in &self.children {
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        }
        if !wait {
            return;
        }
        let deadline = std::time::Instant::now() + grace;
        for child in &mut self.children {
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err).process_group(0);
    cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))
}

/// MetalLB's Helm chart as its release ships it (the Go module holds `charts/metallb`, with its CRDs subchart):
/// `go install` put it in the module cache. `None` if it is not there.
pub fn helm_chart() -> Option<PathBuf> {
    let modcache = run(Command::new("go").args(["env", "GOMODCACHE"]), "go env GOMODCACHE").ok()?;
    let chart = Path::new(&modcache).join(format!("go.universe.tf/metallb@{VERSION}/charts/metallb"));
    chart.join("Chart.yaml").is_file().then_some(chart)
}

/// Starts MetalLB's controller and one speaker per node in a bare lab (`exe`: the `ferrolb-lab` binary), with
/// its CRDs applied by kubectl as its manifest does.
pub async fn start(lab: &TestLab, exe: &str, binaries: &Path) -> Result<MetalLb, String> {
    start_processes(lab, exe, binaries, true).await
}

/// Starts MetalLB's controller and one speaker per node; `apply_crds: false` when its Helm chart installed them
/// (and the namespace) already.
pub async fn start_processes(lab: &TestLab, exe: &str, binaries: &Path, apply_crds: bool) -> Result<MetalLb, String> {
    let state = lab.state();
    let kubeconfig = state.kubeconfig();
    let run_dir = lab.dir.join("metallb");
    std::fs::create_dir_all(run_dir.join("key")).map_err(|e| e.to_string())?;
    let mut me = MetalLb { children: Vec::new(), run_dir: run_dir.clone() };
    if apply_crds {
        run(
            Command::new("kubectl")
                .args(["apply", "--server-side", "-f"])
                .arg(binaries.join("crds"))
                .env("KUBECONFIG", &kubeconfig),
            "kubectl apply MetalLB CRDs",
        )?;
    }
    run(
        Command::new("kubectl")
            .args(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])
            .env("KUBECONFIG", &kubeconfig),
        "CRDs established",
    )?;
    let client = lab.admin().await;
    // The memberlist key: 16 random bytes, base64 without padding, as MetalLB's controller generates it.
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| e.to_string())?;
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n";
    if let Err(e) = create_yaml(&client, namespace).await
        && !matches!(&e, kube::Error::Api(status) if status.code == 409)
    {
        return Err(format!("namespace: {e}"));
    }
    let raw_file = run_dir.join("key.raw");
    std::fs::write(&raw_file, raw).map_err(|e| e.to_string())?;
    let key = run(Command::new("base64").arg("-w0").arg(&raw_file), "base64")?.trim_end_matches('=').to_string();
    std::fs::write(run_dir.join("key/secretkey"), &key).map_err(|e| e.to_string())?;
    create_yaml(
        &client,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: memberlist, namespace: metallb-system}}\nstringData: {{secretkey: \"{key}\"}}\n"
        ),
    )
    .await
    .map_err(|e| format!("memberlist Secret: {e}"))?;
    std::fs::create_dir_all("/etc/metallb").map_err(|e| e.to_string())?;
    // MetalLB's manifest default (its metallb-excludel2 ConfigMap).
    std::fs::write(
        EXCLUDE_FILE,
        "announcedInterfacesToExclude: [\"^docker.*\", \"^cbr.*\", \"^dummy.*\", \"^virbr.*\", \"^lxcbr.*\", \"^veth.*\", \"^lo$\", \"^cali.*\", \"^tunl.*\", \"^flannel.*\", \"^kube-ipvs.*\", \"^cni.*\", \"^nodelocaldns.*\", \"^lxc.*\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "metallb-system");
    for node in &state.nodes {
        let name = format!("speaker-{}", node.name);
        create_yaml(
            &client,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: metallb-system, labels: {{app: metallb, component: speaker}}}}\nspec: {{hostNetwork: true, containers: [{{name: speaker, image: \"quay.io/metallb/speaker:{VERSION}\"}}]}}\n"
            ),
        )
        .await
        .map_err(|e| format!("speaker Pod: {e}"))?;
        // memberlist finds its peers by pod IP; set it before binding, as a hostNetwork pod's would be.
        let status = serde_json::json!({"status": {"podIP": node.ip, "podIPs": [{"ip": node.ip}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| format!("speaker Pod status: {e}"))?;
        let binding = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node.name}});
        pods.create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(|e| format!("bind speaker Pod: {e}"))?;
    }
    // Since v0.16 the controller owns its ConfigurationState through its own Pod and will not start without one.
    create_yaml(
        &client,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: controller, namespace: metallb-system, labels: {{app: metallb, component: controller}}}}\nspec: {{containers: [{{name: controller, image: \"quay.io/metallb/controller:{VERSION}\"}}]}}\n"
        ),
    )
    .await
    .map_err(|e| format!("controller Pod: {e}"))?;
    let mut controller = Command::new(binaries.join("controller"));
    controller
        .env("KUBECONFIG", &kubeconfig)
        .args(["--namespace=metallb-system", "--port=0", "--log-level=info", "--pod-name=controller"])
        .args(["--webhook-mode=disabled", "--disable-cert-rotation"]);
    me.children.push(spawn_logged(controller, &run_dir.join("controller.log"))?);
    for node in &state.nodes {
        let mut speaker = Command::new(exe);
        speaker
            .args(["--name", &lab.name, "--dir"])
            .arg(&lab.dir)
            .args(["exec", &node.name, "--", "env"])
            .arg(format!("METALLB_NODE_NAME={}", node.name))
            .arg(format!("METALLB_POD_NAME=speaker-{}", node.name))
            .arg(format!("METALLB_HOST={}", node.ip))
            .arg(format!("METALLB_ML_BIND_ADDR={}", node.ip))
            .arg("METALLB_ML_LABELS=app=metallb,component=speaker")
            .arg(format!("METALLB_ML_SECRET_KEY_PATH={}", run_dir.join("key").display()))
            .arg("METALLB_NAMESPACE=metallb-system")
            .arg(binaries.join("speaker"))
            .args(["--port=7472", "--log-level=info"]);
        me.children.push(spawn_logged(speaker, &run_dir.join(format!("speaker-{}.log", node.name)))?);
    }
    Ok(me)
}

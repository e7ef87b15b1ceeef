//! Switching from a running MetalLB to ferrolb the way docs/migration.md says, with real MetalLB (built from the Go
//! module proxy, `tests/src/metallb.rs`) serving the user's Services first: every Service keeps its address, the
//! pools and advertisements are untouched, and no ARP sample sees two answerers. Each address's client outage is
//! printed, never asserted. Needs root.

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, Watch, address_conflict_events, answering_nodes, create_yaml, eventually, ingress, lb_addresses,
    one_lab_at_a_time, pools_api, seed, wait_answered_by, watched_while,
};
use ferrolb_tests::lab::lifecycle;
use ferrolb_tests::metallb;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use std::net::IpAddr;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// The shared address of the seed's `dns-svc-tcp` and `dns-svc-udp`, moved into the lab's range (packets only
/// in 198.18.0.0/15).
const SHARED: &str = "198.19.0.10";

/// The specs of the user's pools and advertisements, by name.
async fn configuration(client: &kube::Client) -> Vec<(String, serde_json::Value)> {
    let ads: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "metallb-system",
        &ApiResource::erase::<ferrolb_crds::L2AdvertisementSchema>(&()),
    );
    let mut out = Vec::new();
    for (kind, api) in [("IPAddressPool", pools_api(client)), ("L2Advertisement", ads)] {
        for object in api.list(&ListParams::default()).await.expect("list").items {
            let name = format!("{kind}/{}", object.metadata.name.unwrap_or_default());
            out.push((name, object.data.get("spec").cloned().unwrap_or_default()));
        }
    }
    out
}

/// What MetalLB served before the switch.
struct Served {
    dns: String,
    web: String,
    addresses: Vec<(String, Vec<String>)>,
    configuration: Vec<(String, serde_json::Value)>,
}

/// The user's Services served by the running MetalLB: DNS over TCP+UDP on one address, the two that share one
/// address, and the web; each address answered by one MAC.
async fn served_by_metallb(lab: &TestLab, client: &kube::Client) -> Served {
    create_yaml(client, ferrolb_tests::harness::LAB_POOL).await.expect("pool and advertisement");
    for (pod, node, namespace, label, app) in [
        ("dns-a", "node-1", "kube-system", "k8s-app", "kube-dns"),
        ("dns-b", "node-3", "kube-system", "k8s-app", "kube-dns"),
        ("web-a", "node-2", "default", "app", "web"),
    ] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}, labels: {{{label}: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(client, &yaml).await.expect("backend pod");
    }
    create_yaml(client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    create_yaml(client, &seed("shared-ip.yaml").replace("172.17.255.10", SHARED)).await.expect("shared");
    create_yaml(client, &seed("web-svc-lb.yaml")).await.expect("web");
    let ingress_of = |namespace: &'static str, name: &'static str| async move {
        eventually(&format!("MetalLB gives {name} an address"), Duration::from_secs(60), || async {
            ingress(client, namespace, name).await.into_iter().next()
        })
        .await
    };
    let dns = ingress_of("kube-system", "dns-svc-lb").await;
    let web = ingress_of("default", "web-svc-lb").await;
    assert_eq!(ingress_of("kube-system", "dns-svc-tcp").await, SHARED);
    assert_eq!(ingress_of("kube-system", "dns-svc-udp").await, SHARED);
    for vip in [dns.as_str(), web.as_str(), SHARED] {
        eventually(&format!("MetalLB answers ARP for {vip}"), Duration::from_secs(60), || async {
            (answering_nodes(lab, vip).len() == 1).then_some(())
        })
        .await;
    }
    let served = Served { dns, web, addresses: lb_addresses(client).await, configuration: configuration(client).await };
    println!("MetalLB {} serves {:?}", metallb::VERSION, served.addresses);
    served
}

/// Runs `switch` while a client and an ARP asker watch every address, then checks what the switch must keep: every
/// address, the pools and advertisements, one answerer per sample, and ferrolb's owners serving DNS.
async fn switch_and_check<F, Fut>(path: &str, lab: &TestLab, client: &kube::Client, served: &Served, switch: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let watches: Vec<Watch> = [(served.dns.as_str(), "udp", 53), (SHARED, "udp", 53), (served.web.as_str(), "tcp", 80)]
        .into_iter()
        .map(|(ip, protocol, port)| Watch { ip: ip.to_string(), protocol, port })
        .collect();
    let seen = watched_while(lab, &watches, || async {
        switch().await;
        for vip in [served.dns.as_str(), served.web.as_str(), SHARED] {
            let ip: IpAddr = vip.parse().expect("ip");
            let owner = election::owner(ip, NODES).expect("owner").to_string();
            wait_answered_by(lab, vip, &[&owner]).await;
        }
        // The asker and the clients see ferrolb's owners for a full round after the switch.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    for (watch, saw) in watches.iter().zip(&seen) {
        println!(
            "{path}: {} {}/{}: longest client outage {:.0} ms; ARP samples {} ({} unanswered, {} with two answerers, answering MAC changed {} times)",
            watch.ip,
            watch.protocol,
            watch.port,
            saw.outage_ms,
            saw.arp.samples,
            saw.arp.unanswered,
            saw.arp.several,
            saw.arp.changes
        );
    }
    let conflicts = address_conflict_events(client).await;
    println!("{path}: AddressConflict Events during the switch: {} {conflicts:?}", conflicts.len());
    let statuses: Api<ferrolb_crds::ServiceL2Status> = Api::namespaced(client.clone(), "metallb-system");
    let left: Vec<String> = statuses
        .list(&ListParams::default())
        .await
        .expect("ServiceL2Status")
        .items
        .into_iter()
        .map(|s| format!("{} node={:?}", s.metadata.name.unwrap_or_default(), s.status.and_then(|s| s.node)))
        .collect();
    println!("{path}: ServiceL2Status objects after the switch: {left:?}");
    // MetalLB's ConfigurationState objects carry on under ferrolb: the same names, Valid, with ferrolb's condition.
    let states: Api<ferrolb_crds::ConfigurationState> = Api::namespaced(client.clone(), "metallb-system");
    let want: Vec<String> =
        std::iter::once("controller".to_string()).chain(NODES.iter().map(|n| format!("speaker-{n}"))).collect();
    let reported =
        eventually(&format!("{path}: ConfigurationStates {want:?} Valid"), Duration::from_secs(30), || async {
            let items = states.list(&ListParams::default()).await.ok()?.items;
            let valid: Vec<String> = items
                .iter()
                .filter(|o| o.status.as_ref().and_then(|s| s.result.as_deref()) == Some("Valid"))
                // ferrolb's condition alone: MetalLB's components' conditions are not left beside it.
                .filter(|o| {
                    let types: Vec<&str> =
                        o.status.iter().flat_map(|s| s.conditions.iter()).map(|c| c.type_.as_str()).collect();
                    types == ["poolReconcilerValid"] || types == ["configReconcilerValid"]
                })
                .filter_map(|o| o.metadata.name.clone())
                .collect();
            (valid == want).then_some(items.len())
        })
        .await;
    println!(
        "{path}: ConfigurationState objects after the switch: {reported}, all Valid with ferrolb's condition alone"
    );
    assert_eq!(lb_addresses(client).await, served.addresses, "every Service keeps its address");
    assert_eq!(configuration(client).await, served.configuration, "pools and advertisements unchanged");
    for (watch, saw) in watches.iter().zip(&seen) {
        assert_eq!(saw.arp.several, 0, "{}: never two answerers", watch.ip);
    }
    for vip in [served.dns.as_str(), SHARED] {
        let owner = election::owner(vip.parse().expect("ip"), NODES).expect("owner").to_string();
        assert_eq!(lab.probe("host", "udp", &format!("{vip}:53"), 2000), Ok(format!("{owner} probe")));
        assert_eq!(lab.probe("host", "tcp", &format!("{vip}:53"), 2000), Ok(owner.clone()));
    }
}

/// MetalLB installed by its manifest (CRDs applied by kubectl, owned by no Helm release): docs/migration.md §2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_a_manifest_installed_metallb_keeps_every_address_with_one_answerer() {
    let _serial = one_lab_at_a_time().await;
    let binaries = metallb::ensure_built().expect("MetalLB builds from the Go module proxy");
    let lab = TestLab::start(EXE, "flbm", 3, true);
    let client = lab.admin().await;
    let mut running = metallb::start(&lab, EXE, &binaries).await.expect("MetalLB starts");
    let served = served_by_metallb(&lab, &client).await;
    // Delete MetalLB's controller and speakers, not its CRDs; install ferrolb at once, letting Helm adopt the
    // CRDs. MetalLB's processes are still exiting, and memberlist still holds UDP 7946, when ferrolb's start.
    switch_and_check("manifest", &lab, &client, &served, || async {
        running.terminate(Duration::from_secs(30), false);
        lab.ok(&["install", "--take-ownership"]);
    })
    .await;
    running.terminate(Duration::from_secs(5), true);
}

/// MetalLB installed by its own Helm chart (the release's, CRDs as templates of a subchart, so `helm uninstall`
/// would delete them and every pool): docs/migration.md §1 keeps the CRDs out of the uninstall first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_a_helm_installed_metallb_keeps_its_crds_and_every_address() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let _serial = one_lab_at_a_time().await;
    let binaries = metallb::ensure_built().expect("MetalLB builds from the Go module proxy");
    let chart = metallb::helm_chart().expect("MetalLB's chart in the Go module cache");
    let lab = TestLab::start(EXE, "flbm", 3, true);
    let client = lab.admin().await;
    let state = lab.state();
    let chart_arg = chart.display().to_string();
    // Its webhook has no server here (the lab runs MetalLB's processes, not its pods): fail open. FRR is BGP only.
    let metallb_values = ["frrk8s.enabled=false", "speaker.frr.enabled=false", "crds.validationFailurePolicy=Ignore"];
    let mut install = vec!["install", "metallb", chart_arg.as_str(), "--create-namespace"];
    for value in metallb_values {
        install.extend(["--set", value]);
    }
    lifecycle::helm(&state, &install).expect("helm install metallb");
    lifecycle::wait_crds_established(&state, Duration::from_secs(60)).await.expect("MetalLB's CRDs");
    let mut running = metallb::start_processes(&lab, EXE, &binaries, false).await.expect("MetalLB starts");
    let served = served_by_metallb(&lab, &client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let metallb_crds: Vec<String> = crds
        .list(&ListParams::default())
        .await
        .expect("CRDs")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.ends_with(".metallb.io"))
        .collect();
    assert!(metallb_crds.len() >= 9, "MetalLB's chart installed its CRDs: {metallb_crds:?}");

    switch_and_check("helm chart", &lab, &client, &served, || async {
        // 1. Keep every MetalLB CRD when it leaves the release, then take them out of the release.
        let keep = serde_json::json!({"metadata": {"annotations": {"helm.sh/resource-policy": "keep"}}});
        for name in &metallb_crds {
            crds.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&keep))
                .await
                .expect("annotate CRD");
        }
        let mut upgrade =
            vec!["upgrade", "metallb", chart_arg.as_str(), "--reuse-values", "--set", "crds.enabled=false"];
        upgrade.extend(["--set", "frrk8s.enabled=false"]);
        lifecycle::helm(&state, &upgrade).expect("helm upgrade metallb without its CRDs");
        // 2. Uninstall MetalLB (its pods get SIGTERM), 3. install ferrolb at once, adopting the CRDs.
        lifecycle::helm(&state, &["uninstall", "metallb"]).expect("helm uninstall metallb");
        running.terminate(Duration::from_secs(30), false);
        lab.ok(&["install", "--take-ownership"]);
    })
    .await;
    running.terminate(Duration::from_secs(5), true);
    for name in &metallb_crds {
        let crd = crds.get_opt(name).await.expect("get CRD");
        assert!(crd.is_some_and(|c| c.metadata.deletion_timestamp.is_none()), "{name} survived helm uninstall metallb");
    }
}

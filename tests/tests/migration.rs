//! Switching from a running MetalLB to ferrolb the way docs/migration.md says, with real MetalLB (built from the Go
//! module proxy, `tests/src/metallb.rs`) serving the user's Services first: every Service keeps its address, the
//! pools and advertisements are untouched, and no ARP sample sees two answerers. Each address's client outage is
//! printed, never asserted. Needs root.

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, Watch, answering_nodes, create_yaml, eventually, ingress, one_lab_at_a_time, pools_api, seed,
    wait_answered_by, watched_while,
};
use ferrolb_tests::metallb;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use std::net::IpAddr;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// The shared address of the seed's `dns-svc-tcp` and `dns-svc-udp`, moved into the lab's range (packets only
/// in 198.18.0.0/15).
const SHARED: &str = "198.19.0.10";

/// Every LoadBalancer Service's name and ingress addresses.
async fn addresses(client: &kube::Client) -> Vec<(String, Vec<String>)> {
    let services: Api<Service> = Api::all(client.clone());
    let list = services.list(&ListParams::default()).await.expect("services");
    list.items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .map(|s| {
            let ips = s.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
            (s.metadata.name.unwrap_or_default(), ips.into_iter().filter_map(|i| i.ip).collect())
        })
        .collect()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_a_running_metallb_keeps_every_address_with_one_answerer() {
    let _serial = one_lab_at_a_time().await;
    let binaries = metallb::ensure_built().expect("MetalLB builds from the Go module proxy");
    let lab = TestLab::start(EXE, "flbm", 3, true);
    let client = lab.admin().await;
    // MetalLB as its manifest installs it: its CRDs (applied by kubectl, owned by no Helm release), controller
    // and speakers.
    let mut running = metallb::start(&lab, EXE, &binaries).await.expect("MetalLB starts");
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool and advertisement");
    for (pod, node, app) in
        [("dns-a", "node-1", "kube-dns"), ("dns-b", "node-3", "kube-dns"), ("web-a", "node-2", "web")]
    {
        let namespace = if app == "web" { "default" } else { "kube-system" };
        let label = if app == "web" { "app" } else { "k8s-app" };
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}, labels: {{{label}: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &yaml).await.expect("backend pod");
    }
    // The user's Services: DNS over TCP+UDP on one address, the two that share one address, and the web.
    create_yaml(&client, &seed("dns-svc-lb.yaml")).await.expect("dns");
    create_yaml(&client, &seed("shared-ip.yaml").replace("172.17.255.10", SHARED)).await.expect("shared");
    create_yaml(&client, &seed("web-svc-lb.yaml")).await.expect("web");
    let ingress_of = |namespace: &'static str, name: &'static str| {
        let client = client.clone();
        async move {
            eventually(&format!("MetalLB gives {name} an address"), Duration::from_secs(60), || async {
                ingress(&client, namespace, name).await.into_iter().next()
            })
            .await
        }
    };
    let dns = ingress_of("kube-system", "dns-svc-lb").await;
    let web = ingress_of("default", "web-svc-lb").await;
    assert_eq!(ingress_of("kube-system", "dns-svc-tcp").await, SHARED);
    assert_eq!(ingress_of("kube-system", "dns-svc-udp").await, SHARED);
    for vip in [&dns, &web, &SHARED.to_string()] {
        eventually(&format!("MetalLB answers ARP for {vip}"), Duration::from_secs(60), || async {
            (answering_nodes(&lab, vip).len() == 1).then_some(())
        })
        .await;
    }
    let before = addresses(&client).await;
    let config_before = configuration(&client).await;
    println!("MetalLB {} serves {before:?}", metallb::VERSION);

    // docs/migration.md, MetalLB installed by its manifest: delete its controller and speakers (not its CRDs),
    // then install ferrolb at once, letting Helm adopt the CRDs. MetalLB's processes are still exiting, and its
    // memberlist still holds UDP 7946, when ferrolb's speakers start.
    let watches: Vec<Watch> = [(dns.as_str(), "udp", 53), (SHARED, "udp", 53), (web.as_str(), "tcp", 80)]
        .into_iter()
        .map(|(ip, protocol, port)| Watch { ip: ip.to_string(), protocol, port })
        .collect();
    let seen = watched_while(&lab, &watches, || async {
        running.terminate(Duration::from_secs(30), false);
        lab.ok(&["install", "--take-ownership"]);
        for vip in [&dns, &web, &SHARED.to_string()] {
            let ip: IpAddr = vip.parse().expect("ip");
            let owner = election::owner(ip, NODES).expect("owner").to_string();
            wait_answered_by(&lab, vip, &[&owner]).await;
        }
        // Settled: the asker sees ferrolb's owners for a full round after the switch.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    for (watch, saw) in watches.iter().zip(&seen) {
        println!(
            "{} {}/{}: longest client outage {:.0} ms; ARP samples {} ({} unanswered, {} with two answerers, answering MAC changed {} times)",
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
    running.terminate(Duration::from_secs(5), true);

    assert_eq!(addresses(&client).await, before, "every Service keeps its address");
    assert_eq!(configuration(&client).await, config_before, "pools and advertisements unchanged");
    for (watch, saw) in watches.iter().zip(&seen) {
        assert_eq!(saw.arp.several, 0, "{}: never two answerers", watch.ip);
    }
    // ferrolb serves what MetalLB served: DNS over UDP and TCP on both DNS addresses, the web on its own.
    for vip in [&dns, &SHARED.to_string()] {
        let owner = election::owner(vip.parse().expect("ip"), NODES).expect("owner").to_string();
        assert_eq!(lab.probe("host", "udp", &format!("{vip}:53"), 2000), Ok(format!("{owner} probe")));
        assert_eq!(lab.probe("host", "tcp", &format!("{vip}:53"), 2000), Ok(owner.clone()));
    }
}

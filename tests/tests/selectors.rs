//! Which Services and nodes an L2Advertisement covers, end to end (docs/design.md §4.1–§4.2, MetalLB's rules in
//! docs/metallb-differences.md §5): `ipAddressPoolSelectors`, `serviceSelectors` (several advertisements
//! matching one Service: the union of their nodes; a Service that may share its address matched through service
//! selectors: nobody announces it), several `nodeSelectors` (their union), a node that starts matching later,
//! and `loadBalancerClass` given as a chart value to the lab's controller and speakers. Every Service here has a
//! ready endpoint on every node, so where one is answered is decided by the advertisements alone. Needs root.
//! One test per rule, each on a fresh lab with the same pools and advertisements, one lab at a time.

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, create_yaml, eventually, ingress, one_lab_at_a_time, wait_answered_by, wait_event,
    wait_ingress,
};
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const CLASS: &str = "example.com/l2";

/// A UDP 53 Service of our class, with these labels and annotations (flow-style YAML maps).
async fn service(client: &kube::Client, name: &str, labels: &str, annotations: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, labels: {labels}, annotations: {annotations}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: {CLASS}\n  selector: {{app: dns}}\n  ports: [{{name: {name}, port: 53, protocol: UDP}}]\n"
    );
    create_yaml(client, &yaml).await.expect("Service");
}

/// Waits for the Service's one address.
async fn address(client: &kube::Client, name: &str) -> String {
    eventually(&format!("an address for {name}"), Duration::from_secs(30), || async {
        ingress(client, "default", name).await.into_iter().next()
    })
    .await
}

/// The `NoEligibleNode` note the speakers publish for a Service nobody may announce; then nobody answers.
async fn wait_unannounced(lab: &TestLab, client: &kube::Client, name: &str, ip: &str, needle: &str) {
    let event = wait_event(client, "default", name, needle).await;
    assert_eq!(event.reason.as_deref(), Some("NoEligibleNode"), "{event:?}");
    assert!(answering_nodes(lab, ip).is_empty(), "nobody answers for {ip}");
}

async fn label(
    client: &kube::Client,
    api: ApiResource,
    namespace: Option<&str>,
    name: &str,
    labels: serde_json::Value,
) {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &api),
        None => Api::all_with(client.clone(), &api),
    };
    let patch = json!({"metadata": {"labels": labels}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label");
}

fn pools() -> ApiResource {
    ApiResource::erase::<ferrolb_crds::IPAddressPool>(&())
}

/// A 3-node lab with the chart's loadBalancerClass set, the pools and advertisements every test here reads, and a
/// backend pod on every node.
async fn selector_lab() -> (TestLab, kube::Client) {
    let lab = TestLab::start_with(EXE, "flbsel", 3, &["--set", &format!("loadBalancerClass={CLASS}")]);
    let state = lab.state();
    let class_arg = format!("--load-balancer-class={CLASS}");
    assert!(state.speaker_args.contains(&class_arg), "the chart's class reaches the speakers: {state:?}");
    assert!(state.controller_args.contains(&class_arg), "and the controller");
    let client = lab.admin().await;
    let config = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: gold, namespace: metallb-system, labels: {tier: gold}}\nspec: {addresses: [198.19.0.1-198.19.0.9], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: plain, namespace: metallb-system}\nspec: {addresses: [198.19.0.10-198.19.0.19], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: gold, namespace: metallb-system}\nspec:\n  ipAddressPoolSelectors: [{matchLabels: {tier: gold}}]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-2}}]\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: general, namespace: metallb-system}\nspec: {addresses: [198.19.0.20-198.19.0.99]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: general, namespace: metallb-system}\nspec: {ipAddressPools: [general]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: multi, namespace: metallb-system}\nspec: {addresses: [198.19.0.100-198.19.0.149], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: multi, namespace: metallb-system}\nspec:\n  ipAddressPools: [multi]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}, {matchLabels: {kubernetes.io/hostname: node-3}}]\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: late, namespace: metallb-system}\nspec: {addresses: [198.19.0.150-198.19.0.159], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: late, namespace: metallb-system}\nspec:\n  ipAddressPools: [late]\n  nodeSelectors: [{matchLabels: {zone: late}}]\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: teams, namespace: metallb-system}\nspec: {addresses: [198.19.0.160-198.19.0.199], autoAssign: false}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: team-a, namespace: metallb-system}\nspec:\n  ipAddressPools: [teams]\n  serviceSelectors: [{matchLabels: {team: a}}]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-1}}]\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: tier-b, namespace: metallb-system}\nspec:\n  ipAddressPools: [teams]\n  serviceSelectors: [{matchLabels: {tier: b}}, {matchLabels: {tier: c}}]\n  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-3}}]\n";
    create_yaml(&client, config).await.expect("pools and advertisements");
    for node in NODES {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: dns-{node}, namespace: default, labels: {{app: dns}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }

    (lab, client)
}

/// loadBalancerClass: a Service of another class and one without a class are left alone; ours is served, and
/// gives its address back when it leaves the class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_class_decides_which_services_are_served() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // loadBalancerClass: a Service of another class and one without a class are left alone; ours is served.
    let foreign = "apiVersion: v1\nkind: Service\nmetadata: {name: foreign, namespace: default}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: example.com/other\n  selector: {app: dns}\n  ports: [{port: 53, protocol: UDP}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: classless, namespace: default}\nspec:\n  type: LoadBalancer\n  selector: {app: dns}\n  ports: [{port: 53, protocol: UDP}]\n";
    create_yaml(&client, foreign).await.expect("Services of other classes");
    service(&client, "ours", "{}", "{}").await;
    let ours = address(&client, "ours").await;
    let owner = election::owner(ours.parse().expect("ip"), NODES).expect("owner").to_string();
    wait_answered_by(&lab, &ours, &[&owner]).await;
    for other in ["foreign", "classless"] {
        assert!(ingress(&client, "default", other).await.is_empty(), "{other} got an address");
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let fields = format!("involvedObject.name={other}");
        let list = events.list(&ListParams::default().fields(&fields)).await.expect("events");
        let ours: Vec<&Event> = list
            .items
            .iter()
            .filter(|e| e.reporting_component.as_deref().is_some_and(|c| c.starts_with("ferrolb")))
            .collect();
        assert!(ours.is_empty(), "ferrolb said something about {other}: {ours:?}");
    }
    // A Service that leaves our class gives its address back.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let patch = json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}});
    services.patch("ours", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("leave");
    wait_ingress(&client, "default", "ours", &[]).await;
    wait_answered_by(&lab, &ours, &[]).await;
}

/// ipAddressPoolSelectors select pools by their labels, also a label added later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_address_pool_selectors_select_pools_by_label() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // ipAddressPoolSelectors: the gold pool is selected by its label (and announced by node-2 only, the
    // advertisement's node); the plain pool has no advertisement until it carries the label too.
    service(&client, "gold", "{}", "{metallb.io/address-pool: gold}").await;
    let gold = address(&client, "gold").await;
    wait_answered_by(&lab, &gold, &["node-2"]).await;
    service(&client, "plain", "{}", "{metallb.io/address-pool: plain}").await;
    let plain = address(&client, "plain").await;
    wait_unannounced(&lab, &client, "plain", &plain, "no L2Advertisement applies").await;
    label(&client, pools(), Some("metallb-system"), "plain", json!({"tier": "gold"})).await;
    wait_answered_by(&lab, &plain, &["node-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_node_selectors_in_one_advertisement_are_their_union() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // Several nodeSelectors in one advertisement: their union. The address is one the election would give to
    // node-2 among all three, so an answer from node-1 or node-3 shows the selectors at work.
    let ip = (100..150)
        .map(|i| format!("198.19.0.{i}"))
        .find(|ip| election::owner(ip.parse().expect("ip"), NODES) == Some("node-2"))
        .expect("an address node-2 would win");
    service(&client, "multi", "{}", &format!("{{metallb.io/loadBalancerIPs: '{ip}'}}")).await;
    wait_ingress(&client, "default", "multi", &[&ip]).await;
    let multi_owner = election::owner(ip.parse().expect("ip"), ["node-1", "node-3"]).expect("owner");
    wait_answered_by(&lab, &ip, &[multi_owner]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_matching_a_node_selector_later_answers() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // A node that starts matching later: nobody is selected, then node-3 gets the label and answers.
    service(&client, "late", "{}", "{metallb.io/address-pool: late}").await;
    let late = address(&client, "late").await;
    wait_unannounced(&lab, &client, "late", &late, "not selected by the L2Advertisement's nodeSelectors").await;
    let nodes = ApiResource::erase::<Node>(&());
    label(&client, nodes, None, "node-3", json!({"zone": "late"})).await;
    wait_answered_by(&lab, &late, &["node-3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_selectors_pick_the_advertisement_and_a_label_change_moves_the_service() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // serviceSelectors: team=a goes to team-a's node, tier=b or tier=c (either selector) to tier-b's node; a
    // Service matching both advertisements may go to either node (the union, one elected); one matching neither
    // is not announced, and a label change moves a Service between advertisements.
    for (name, labels) in [
        ("team-a", "{team: a}"),
        ("tier-b", "{tier: b}"),
        ("tier-c", "{tier: c}"),
        ("both", "{team: a, tier: b}"),
        ("none", "{team: z}"),
    ] {
        service(&client, name, labels, "{metallb.io/address-pool: teams}").await;
    }
    let team_a = address(&client, "team-a").await;
    wait_answered_by(&lab, &team_a, &["node-1"]).await;
    wait_answered_by(&lab, &address(&client, "tier-b").await, &["node-3"]).await;
    wait_answered_by(&lab, &address(&client, "tier-c").await, &["node-3"]).await;
    let both = address(&client, "both").await;
    let both_owner = election::owner(both.parse().expect("ip"), ["node-1", "node-3"]).expect("owner");
    wait_answered_by(&lab, &both, &[both_owner]).await;
    let none = address(&client, "none").await;
    wait_unannounced(&lab, &client, "none", &none, "no L2Advertisement applies").await;
    let svc_resource = ApiResource::erase::<Service>(&());
    label(&client, svc_resource.clone(), Some("default"), "team-a", json!({"team": null, "tier": "b"})).await;
    wait_answered_by(&lab, &team_a, &["node-3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_sharing_an_address_under_service_selectors_are_not_announced_as_in_metallb() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = selector_lab().await;
    // Two Services sharing an address through allow-shared-ip, matched by an advertisement with serviceSelectors:
    // as in MetalLB, nobody announces them (they could otherwise be elected on different nodes). The same pair
    // from a pool whose advertisement selects no Services is announced by one node.
    let ip = "198.19.0.190";
    for (name, port) in [("shared-tcp", "TCP"), ("shared-udp", "UDP")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, labels: {{team: a}}, annotations: {{metallb.io/allow-shared-ip: k, metallb.io/loadBalancerIPs: '{ip}'}}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: {CLASS}\n  selector: {{app: dns}}\n  ports: [{{port: 53, protocol: {port}}}]\n"
        );
        create_yaml(&client, &yaml).await.expect("shared Service");
        wait_ingress(&client, "default", name, &[ip]).await;
    }
    for name in ["shared-tcp", "shared-udp"] {
        wait_unannounced(&lab, &client, name, ip, "allow-shared-ip and an L2Advertisement selects it").await;
    }
    let general_ip = "198.19.0.90";
    for (name, port) in [("general-tcp", "TCP"), ("general-udp", "UDP")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{metallb.io/allow-shared-ip: k, metallb.io/loadBalancerIPs: '{general_ip}'}}}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: {CLASS}\n  selector: {{app: dns}}\n  ports: [{{port: 53, protocol: {port}}}]\n"
        );
        create_yaml(&client, &yaml).await.expect("shared Service");
        wait_ingress(&client, "default", name, &[general_ip]).await;
    }
    let general_owner = election::owner(general_ip.parse().expect("ip"), NODES).expect("owner");
    wait_answered_by(&lab, general_ip, &[general_owner]).await;
}

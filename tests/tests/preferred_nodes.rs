//! MetalLB main's `L2Advertisement.spec.preferredNodeSelectors`, end to end (docs/metallb-preferred-nodes.md):
//! the eight cases of MetalLB's `e2etest/l2tests/preferred_node.go`, each named below by its number there, plus a
//! hard failover to a non-preferred node and back. The announcing node is the one whose MAC answers ARP from the
//! `host` namespace (MetalLB's suite reads `ServiceL2Status`; the first case checks that too). Every advertisement
//! is applied with `kubectl apply --validate=strict`, as a MetalLB-main user's manifest would be. Needs root.

use ferrolb_crds::{IPAddressPool, L2Advertisement, ServiceL2Status};
use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, create_yaml, eventually, ingress, one_lab_at_a_time, wait_answered_by,
};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// A 3-node lab with a backend pod on every node (so that where an address is answered is decided by the
/// advertisements alone) and these pools.
async fn lab_with_pools(name: &str, pools: &[(&str, &str)]) -> (TestLab, kube::Client) {
    let lab = TestLab::start_with(EXE, name, 3, &[]);
    let client = lab.admin().await;
    for (pool, range) in pools {
        let yaml = format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {pool}, namespace: metallb-system}}\nspec: {{addresses: [{range}], autoAssign: false}}\n"
        );
        create_yaml(&client, &yaml).await.expect("pool");
    }
    for node in NODES {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{node}, namespace: default, labels: {{app: web}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: lab/x}}]}}\n"
        );
        create_yaml(&client, &pod).await.expect("pod");
    }
    (lab, client)
}

/// A TCP 80 Service from `pool` with these labels; returns its address.
async fn service(client: &kube::Client, name: &str, pool: &str, labels: &str) -> String {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, labels: {labels}, annotations: {{metallb.io/address-pool: {pool}}}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports: [{{port: 80, protocol: TCP}}]\n"
    );
    create_yaml(client, &yaml).await.expect("Service");
    eventually(&format!("an address for {name}"), Duration::from_secs(30), || async {
        ingress(client, "default", name).await.into_iter().next()
    })
    .await
}

/// `kubectl apply --validate=strict` of a manifest, as a user would: a field the schema lacks fails.
fn kubectl_apply(lab: &TestLab, yaml: &str) -> std::process::Output {
    let mut child = Command::new("kubectl")
        .args(["apply", "--validate=strict", "-f", "-"])
        .env("KUBECONFIG", lab.state().kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("manifest to kubectl");
    child.wait_with_output().expect("kubectl")
}

/// Applies a manifest that must be accepted.
fn apply_strict(lab: &TestLab, yaml: &str) {
    let out = kubectl_apply(lab, yaml);
    assert!(out.status.success(), "kubectl apply --validate=strict: {}", String::from_utf8_lossy(&out.stderr));
}

/// An L2Advertisement for `pool`, with the rest of its spec as flow-style YAML lines (`  key: value\n`).
fn advertisement(name: &str, pool: &str, rest: &str) -> String {
    format!(
        "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n  ipAddressPools:\n  - {pool}\n{rest}"
    )
}

/// `preferredNodeSelectors` giving `weight` to nodes labelled `key=value`, in the block style of MetalLB's docs.
fn preferring(key: &str, value: &str, weight: u32) -> String {
    format!(
        "  preferredNodeSelectors:\n  - weight: {weight}\n    preference:\n      matchLabels:\n        {key}: \"{value}\"\n"
    )
}

/// Sets (a string) or removes (`null`) node labels.
async fn label_node(client: &kube::Client, node: &str, labels: serde_json::Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"labels": labels}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label node");
}

/// The address's owner when no preference applies (MetalLB's "natural winner").
fn natural(ip: &str, among: &[&'static str]) -> &'static str {
    election::owner(ip.parse().expect("ip"), among.iter().copied()).expect("owner")
}

/// The nodes other than `except`, in name order (MetalLB's `nonNaturalNode`).
fn others(except: &[&str]) -> Vec<&'static str> {
    NODES.into_iter().filter(|n| !except.contains(n)).collect()
}

/// After positive evidence that the speakers acted (the caller waited for a move), the owner stays put: three ARP
/// rounds of three requests each, all answered by `node` alone (MetalLB's `Consistently`).
fn stays(lab: &TestLab, ip: &str, node: &str) {
    for _ in 0..3 {
        assert_eq!(answering_nodes(lab, ip), [node], "{ip} stays with {node}");
    }
}

/// MetalLB's cases 1–4 on one Service, and a hard kill of the preferred node: a label, a spec change or a failure
/// moves the address, and it moves back when the cause goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_nodes_win_and_give_way_as_labels_specs_and_failures_change() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client) = lab_with_pools("flbpref1", &[("l2-test", "198.19.0.1-198.19.0.9")]).await;
    let ip = service(&client, "web", "l2-test", "{}").await;
    // A weight outside 1–100 is refused by the schema, as MetalLB's is (its webhook does not check it either).
    for weight in [0, 101] {
        let out = kubectl_apply(&lab, &advertisement("preferred", "l2-test", &preferring("zone", "a", weight)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("weight"), "weight {weight}: {err}");
    }
    // MetalLB main's own example, verbatim, passes strict validation and keeps its preference. Its pool is outside
    // the lab's addresses, so it is removed again before any Service could take an address from it.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/metallb-main/preferred-node-edge.yaml");
    apply_strict(&lab, &std::fs::read_to_string(&example).expect("MetalLB's example"));
    let ads: Api<L2Advertisement> = Api::namespaced(client.clone(), "metallb-system");
    let stored = ads.get("prefer-edge").await.expect("stored as applied").spec.preferred_node_selectors;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].weight, 100, "not pruned: {stored:?}");
    ads.delete("prefer-edge", &Default::default()).await.expect("delete the example's advertisement");
    let pools: Api<IPAddressPool> = Api::namespaced(client.clone(), "metallb-system");
    pools.delete("external-pool", &Default::default()).await.expect("delete the example's pool");
    apply_strict(&lab, &advertisement("preferred", "l2-test", ""));
    let n = natural(&ip, &NODES);
    wait_answered_by(&lab, &ip, &[n]).await;

    // 1. The labelled non-natural node announces; without the label the natural one does again.
    let c = others(&[n])[0];
    label_node(&client, c, json!({"l2-preferred-node-test": "true"})).await;
    apply_strict(&lab, &advertisement("preferred", "l2-test", &preferring("l2-preferred-node-test", "true", 100)));
    wait_answered_by(&lab, &ip, &[c]).await;
    let statuses: Api<ServiceL2Status> = Api::namespaced(client.clone(), "metallb-system");
    eventually(&format!("ServiceL2Status of web naming {c} alone"), Duration::from_secs(30), || async {
        let list = statuses.list(&ListParams::default().labels("metallb.io/service-name=web")).await.ok()?;
        let nodes: Vec<String> = list.items.iter().filter_map(|s| s.status.as_ref()?.node.clone()).collect();
        (nodes == [c]).then_some(())
    })
    .await;
    label_node(&client, c, json!({"l2-preferred-node-test": null})).await;
    wait_answered_by(&lab, &ip, &[n]).await;

    // 2. A preference no node matches plus one every node matches is the baseline: from the labelled node (still
    // preferred by case 1's spec) the address goes back to the natural one and stays.
    label_node(&client, c, json!({"l2-preferred-node-test": "true"})).await;
    wait_answered_by(&lab, &ip, &[c]).await;
    let nomatch_and_all = "  preferredNodeSelectors:\n  - weight: 100\n    preference:\n      matchLabels:\n        l2-preferred-node-nomatch: \"true\"\n  - weight: 10\n    preference: {}\n";
    apply_strict(&lab, &advertisement("preferred", "l2-test", nomatch_and_all));
    wait_answered_by(&lab, &ip, &[n]).await;
    stays(&lab, &ip, n);

    // 3. The preferred node excluded from load balancing gives way, and takes the address back when it returns.
    apply_strict(&lab, &advertisement("preferred", "l2-test", &preferring("l2-preferred-node-test", "true", 100)));
    wait_answered_by(&lab, &ip, &[c]).await;
    label_node(&client, c, json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""})).await;
    wait_answered_by(&lab, &ip, &[n]).await;
    label_node(&client, c, json!({"node.kubernetes.io/exclude-from-external-load-balancers": null})).await;
    wait_answered_by(&lab, &ip, &[c]).await;

    // The same with a hard failure: the preferred node killed, the natural one answers; revived, it takes over.
    lab.ok(&["kill", c]);
    wait_answered_by(&lab, &ip, &[n]).await;
    lab.ok(&["revive", c]);
    wait_answered_by(&lab, &ip, &[c]).await;
    stays(&lab, &ip, c);
    label_node(&client, c, json!({"l2-preferred-node-test": null})).await;
    wait_answered_by(&lab, &ip, &[n]).await;

    // 4. Spec changes at run time re-elect: preference for A, then for B, then none.
    let [a, b] = [others(&[n])[0], others(&[n])[1]];
    label_node(&client, a, json!({"l2-preferred-rt-test": "a"})).await;
    label_node(&client, b, json!({"l2-preferred-rt-test": "b"})).await;
    apply_strict(&lab, &advertisement("preferred", "l2-test", &preferring("l2-preferred-rt-test", "a", 100)));
    wait_answered_by(&lab, &ip, &[a]).await;
    apply_strict(&lab, &advertisement("preferred", "l2-test", &preferring("l2-preferred-rt-test", "b", 100)));
    wait_answered_by(&lab, &ip, &[b]).await;
    apply_strict(&lab, &advertisement("preferred", "l2-test", ""));
    wait_answered_by(&lab, &ip, &[n]).await;
}

/// MetalLB's cases 5–8, one pool each: `nodeSelectors` stay a hard filter, weights add up across advertisements,
/// and an advertisement's `serviceSelectors` scope its preferences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_respect_node_selectors_add_up_across_advertisements_and_follow_service_selectors() {
    let _serial = one_lab_at_a_time().await;
    let pools = [
        ("hard", "198.19.0.20-198.19.0.29"),
        ("disjoint", "198.19.0.30-198.19.0.39"),
        ("sum", "198.19.0.40-198.19.0.49"),
        ("scoped", "198.19.0.50-198.19.0.59"),
    ];
    let (lab, client) = lab_with_pools("flbpref2", &pools).await;

    // 5. nodeSelectors allow two nodes; the preference picks the one the hash would not.
    let hard = service(&client, "hard", "hard", "{}").await;
    let eligible = [NODES[0], NODES[1]];
    let winner = others(&[natural(&hard, &eligible), NODES[2]])[0];
    for node in eligible {
        label_node(&client, node, json!({"l2-ns-pref-test": "eligible"})).await;
    }
    label_node(&client, winner, json!({"l2-ns-preferred-test": "true"})).await;
    let filter = "  nodeSelectors:\n  - matchLabels:\n      l2-ns-pref-test: eligible\n";
    let spec = format!("{filter}{}", preferring("l2-ns-preferred-test", "true", 100));
    apply_strict(&lab, &advertisement("hard-soft-filter", "hard", &spec));
    wait_answered_by(&lab, &hard, &[winner]).await;

    // 6. Disjoint: only the eligible node announces, never the preferred-only one (chosen as the address's
    // natural owner, so that it would win if the preference made it eligible).
    let disjoint = service(&client, "disjoint", "disjoint", "{}").await;
    let preferred_only = natural(&disjoint, &NODES);
    let only_eligible = others(&[preferred_only])[0];
    label_node(&client, only_eligible, json!({"l2-disjoint-eligible": "true"})).await;
    label_node(&client, preferred_only, json!({"l2-disjoint-preferred": "true"})).await;
    let spec = format!(
        "  nodeSelectors:\n  - matchLabels:\n      l2-disjoint-eligible: \"true\"\n{}",
        preferring("l2-disjoint-preferred", "true", 100)
    );
    apply_strict(&lab, &advertisement("disjoint", "disjoint", &spec));
    wait_answered_by(&lab, &disjoint, &[only_eligible]).await;
    stays(&lab, &disjoint, only_eligible);

    // 7. Two advertisements for one pool: zone (60) + role (50) = 110 beats zone alone (60); without its zone
    // label the double node has 50 and the single one wins. Both are non-natural nodes.
    let sum = service(&client, "sum", "sum", "{}").await;
    let [double, single] = [others(&[natural(&sum, &NODES)])[0], others(&[natural(&sum, &NODES)])[1]];
    label_node(&client, double, json!({"l2-pref-zone": "primary", "l2-pref-role": "edge"})).await;
    label_node(&client, single, json!({"l2-pref-zone": "primary"})).await;
    apply_strict(&lab, &advertisement("ad-zone", "sum", &preferring("l2-pref-zone", "primary", 60)));
    apply_strict(&lab, &advertisement("ad-role", "sum", &preferring("l2-pref-role", "edge", 50)));
    wait_answered_by(&lab, &sum, &[double]).await;
    label_node(&client, double, json!({"l2-pref-zone": null})).await;
    wait_answered_by(&lab, &sum, &[single]).await;

    // 8. A preference in an advertisement with serviceSelectors moves only the Services it selects.
    let matched = service(&client, "matched", "scoped", "{app: matched}").await;
    let unmatched = service(&client, "unmatched", "scoped", "{app: unmatched}").await;
    apply_strict(&lab, &advertisement("svc-selector-baseline", "scoped", ""));
    let (nm, nu) = (natural(&matched, &NODES), natural(&unmatched, &NODES));
    wait_answered_by(&lab, &matched, &[nm]).await;
    wait_answered_by(&lab, &unmatched, &[nu]).await;
    // A node neither Service would get naturally, if there is one; else any node but the matched one's.
    let p = others(&[nm, nu]).first().copied().unwrap_or(others(&[nm])[0]);
    label_node(&client, p, json!({"l2-svc-pref-test": "true"})).await;
    let spec = format!(
        "  serviceSelectors:\n  - matchLabels:\n      app: matched\n{}",
        preferring("l2-svc-pref-test", "true", 100)
    );
    apply_strict(&lab, &advertisement("svc-selector-scope", "scoped", &spec));
    wait_answered_by(&lab, &matched, &[p]).await;
    stays(&lab, &unmatched, nu);
}

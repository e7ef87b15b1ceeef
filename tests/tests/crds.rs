//! The generated CRDs install on a real API server, accept the user's MetalLB manifests byte for byte, and
//! reject what their schema and CEL rules exist to reject. Needs root (it brings up a one-node lab).

use ferrolb_crds::{IPAddressPool, L2AdvertisementSchema, ServiceL2Status};
use ferrolb_tests::harness::TestLab;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Creates one object exactly as written, in `namespace`, as the given kind.
async fn create_yaml(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    yaml: &str,
) -> Result<DynamicObject, kube::Error> {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("yaml");
    let obj: DynamicObject = serde_json::from_value(value).expect("object");
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, resource)
        .create(&PostParams::default(), &obj)
        .await
}

fn rejected_with(result: Result<DynamicObject, kube::Error>, needle: &str) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains(needle), "expected {needle:?} in {:?}", e.message);
        }
        other => panic!("expected a 422 mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_crds_accept_metallb_manifests_and_reject_bad_input() {
    let lab = TestLab::start(EXE, "flbc", 1, true);
    let client = lab.admin().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // The chart's templates are these files wrapped in `crds.enabled` (crds/tests/generated_crds.rs).
    for (file, text) in ferrolb_crds::crd_files().expect("crds") {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD yaml");
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("{file} rejected by the API server: {e}"));
    }
    let start = Instant::now();
    for name in ferrolb_crds::CRD_NAMES {
        loop {
            let crd = crds.get(name).await.expect("crd");
            let conds = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conds.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{name} never Established");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "metallb-system"}})).expect("ns");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace");

    let pools = ApiResource::erase::<IPAddressPool>(&());
    let ads = ApiResource::erase::<L2AdvertisementSchema>(&());
    // The user's manifests, unchanged.
    let seed = |f: &str| std::fs::read_to_string(repo("examples/seed").join(f)).expect("seed");
    let pool =
        create_yaml(&client, &pools, "metallb-system", &seed("ipaddresspool.yaml")).await.expect("seed pool accepted");
    assert_eq!(pool.data["spec"]["autoAssign"], true, "schema default applied");
    assert_eq!(pool.data["spec"]["avoidBuggyIPs"], false, "schema default applied");
    create_yaml(&client, &ads, "metallb-system", &seed("l2advertisement.yaml"))
        .await
        .expect("spec-less L2Advertisement accepted");

    // MetalLB's documented forms.
    let doc = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: docs}\nspec:\n  addresses: ['192.168.10.0/24', '192.168.9.1-192.168.9.5', 'fc00:f853:0ccd:e799::/124', '10.9.0.1 - 10.9.0.9']\n  serviceAllocation: {priority: 50, namespaces: [a, b]}\n";
    create_yaml(&client, &pools, "metallb-system", doc).await.expect("documented pool accepted");

    // What the schema and CEL reject, with a message a user can act on.
    let bad = |addr: &str, name: &str| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}}}\nspec: {{addresses: ['{addr}']}}\n"
        )
    };
    for (i, addr) in ["banana", "10.0.0.1", "10.0.0.0/33", "10.0.0.1-banana"].iter().enumerate() {
        let result = create_yaml(&client, &pools, "metallb-system", &bad(addr, &format!("bad{i}"))).await;
        rejected_with(result, "each address must be a CIDR");
    }
    let empty = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: empty}\nspec: {addresses: []}\n";
    rejected_with(create_yaml(&client, &pools, "metallb-system", empty).await, "should have at least 1 items");
    let no_spec = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: nospec}\n";
    rejected_with(create_yaml(&client, &pools, "metallb-system", no_spec).await, "spec: Required value");
    let dup = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: dup}\nspec: {interfaces: [eth0, eth0]}\n";
    rejected_with(create_yaml(&client, &ads, "metallb-system", dup).await, "Duplicate value");
    let prio = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: prio}\nspec: {addresses: [10.1.0.0/24], serviceAllocation: {priority: -1}}\n";
    rejected_with(create_yaml(&client, &pools, "metallb-system", prio).await, "should be greater than or equal to 0");

    // ServiceL2Status: the announcing node cannot be rewritten in place.
    let statuses = ApiResource::erase::<ServiceL2Status>(&());
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), "metallb-system", &statuses);
    create_yaml(
        &client,
        &statuses,
        "metallb-system",
        "apiVersion: metallb.io/v1beta1\nkind: ServiceL2Status\nmetadata: {name: l2-x}\nspec: {}\n",
    )
    .await
    .expect("status object");
    let set = |node: &str| Patch::Merge(json!({"status": {"node": node, "serviceName": "s", "serviceNamespace": "n"}}));
    api.patch_status("l2-x", &PatchParams::default(), &set("node-1")).await.expect("first status write");
    let moved = api.patch_status("l2-x", &PatchParams::default(), &set("node-2")).await;
    rejected_with(moved, "node is immutable");
}

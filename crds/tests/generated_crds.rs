//! The committed CRD YAML must be exactly what the types generate, and MetalLB's manifests must parse.

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/templates/crds");
    let files = ferrolb_crds::crd_files().expect("CRDs serialize");
    assert_eq!(files.len(), ferrolb_crds::CRD_NAMES.len());
    for (file, name) in files.iter().zip(ferrolb_crds::CRD_NAMES) {
        assert_eq!(file.0, format!("{name}.yaml"));
    }
    for (name, generated) in files {
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            committed == ferrolb_crds::chart_template(&generated),
            "charts/ferrolb/templates/crds/{name} is stale: run `cargo run -p ferrolb-crds --bin crdgen` and commit the result"
        );
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        [
            "configurationstates.metallb.io.yaml",
            "ipaddresspools.metallb.io.yaml",
            "l2advertisements.metallb.io.yaml",
            "servicel2statuses.metallb.io.yaml"
        ],
        "no stray files in charts/ferrolb/templates/crds"
    );
}

fn seed(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn seed_pool_parses_with_metallb_defaults() {
    let pool: IPAddressPool = serde_yaml::from_str(&seed("ipaddresspool.yaml")).expect("seed pool parses");
    assert_eq!(pool.metadata.name.as_deref(), Some("default"));
    assert_eq!(pool.metadata.namespace.as_deref(), Some("metallb-system"));
    assert_eq!(pool.spec.addresses, ["172.17.255.1-172.17.255.255"]);
    assert!(pool.spec.auto_assign(), "autoAssign defaults to true");
    assert!(!pool.spec.avoid_buggy_ips);
    assert!(pool.spec.service_allocation.is_none());
}

#[test]
fn seed_l2advertisement_without_spec_means_everything() {
    let adv: L2Advertisement =
        serde_yaml::from_str(&seed("l2advertisement.yaml")).expect("seed L2Advertisement parses");
    assert_eq!(adv.metadata.name.as_deref(), Some("default"));
    assert!(
        adv.spec.ip_address_pools.is_empty() && adv.spec.node_selectors.is_empty() && adv.spec.interfaces.is_empty()
    );
    assert_eq!(adv.kind, "L2Advertisement");
}

#[test]
fn spec_is_optional_where_metallb_manifests_omit_it() {
    for (name, yaml) in ferrolb_crds::crd_files().expect("CRDs serialize") {
        let crd: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
        let required = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"];
        let spec_required = required.as_sequence().is_some_and(|r| r.iter().any(|f| f == "spec"));
        assert_eq!(spec_required, name.starts_with("ipaddresspools"), "{name}");
    }
}

#[test]
fn full_metallb_pool_manifest_round_trips() {
    let yaml = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: reserved, namespace: metallb-system}
spec:
  addresses: ["192.168.10.0/24", "fc00:f853:ccd:e799::/124", "192.168.9.1 - 192.168.9.5"]
  autoAssign: false
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 50
    namespaces: [team-a]
    namespaceSelectors: [{matchLabels: {tier: prod}}]
    serviceSelectors: [{matchExpressions: [{key: app, operator: In, values: [web]}]}]
"#;
    let pool: IPAddressPool = serde_yaml::from_str(yaml).expect("parses");
    assert!(!pool.spec.auto_assign());
    assert!(pool.spec.avoid_buggy_ips);
    let alloc = pool.spec.service_allocation.as_ref().expect("serviceAllocation");
    assert_eq!(alloc.priority, Some(50));
    assert_eq!(alloc.namespaces, ["team-a"]);
    let json = serde_json::to_value(&pool).expect("serializes");
    assert_eq!(json["spec"]["avoidBuggyIPs"], true, "field keeps MetalLB's exact spelling");
    assert_eq!(json["spec"]["serviceAllocation"]["namespaceSelectors"][0]["matchLabels"]["tier"], "prod");
}

#[test]
fn misspelt_field_does_not_flip_our_flag() {
    // MetalLB spells it avoidBuggyIPs; a camel-cased avoidBuggyIps is ignored by MetalLB too.
    let yaml = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec: {addresses: [10.0.0.0/30], avoidBuggyIps: true}\n";
    let pool: IPAddressPool = serde_yaml::from_str(yaml).expect("parses");
    assert!(!pool.spec.avoid_buggy_ips);
}

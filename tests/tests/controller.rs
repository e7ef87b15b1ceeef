//! ferrolb-controller against the real API server, installed with Helm and running with its chart
//! ServiceAccount token (so the chart's RBAC is what is tested). Needs root (it brings up a lab).

use ferrolb_crds::ConfigurationState;
use ferrolb_tests::harness::{
    TestLab, apply_users_services, create_yaml, eventually, ingress, one_lab_at_a_time, seed, wait_ingress,
};
use ferrolb_tests::lab::{State, control_plane::alive, lifecycle};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");

/// Event notes on an object, oldest first.
async fn events(client: &Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await.expect("events");
    list.items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect()
}

async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str, needle: &str) -> String {
    let what = format!("{reason} Event on {namespace}/{name} containing {needle:?}");
    eventually(&what, Duration::from_secs(30), || async {
        events(client, namespace, name)
            .await
            .into_iter()
            .find(|(r, m)| r == reason && m.contains(needle))
            .map(|(_, m)| m)
    })
    .await
}

fn pools(client: &Client) -> Api<DynamicObject> {
    ferrolb_tests::harness::pools_api(client)
}

fn lb_service(namespace: &str, name: &str, port: u16, extra_metadata: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{extra_metadata}spec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n  ports: [{{port: {port}, protocol: TCP}}]\n{extra_spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_scenario_and_every_allocation_rule() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start(EXE, "flbe", 1, false);
    let client = lab.admin().await;

    // The user's manifests, unchanged: web first, then DNS (TCP+UDP 53 in one Service).
    apply_users_services(&client).await;
    let dns_api = Api::<Service>::namespaced(client.clone(), "kube-system");
    let pool_annotation = eventually("the pool annotation", Duration::from_secs(30), || async {
        dns_api.get("dns-svc-lb").await.ok()?.metadata.annotations?.get("metallb.io/ip-allocated-from-pool").cloned()
    })
    .await;
    assert_eq!(pool_annotation, "default");
    wait_event(&client, "kube-system", "dns-svc-lb", "IPAllocated", "172.17.255.2").await;

    // shared-ip.yaml: two Services share .10 through the legacy annotation.
    create_yaml(&client, &seed("shared-ip.yaml")).await.expect("shared-ip");
    wait_ingress(&client, "kube-system", "dns-svc-tcp", &["172.17.255.10"]).await;
    wait_ingress(&client, "kube-system", "dns-svc-udp", &["172.17.255.10"]).await;

    // A clashing port is refused with a clear Event; the Service stays pending and nobody else moves.
    let clash = lb_service(
        "kube-system",
        "dns-svc-tcp-2",
        53,
        "  annotations: {metallb.universe.tf/allow-shared-ip: \"true\"}\n",
        "  loadBalancerIP: 172.17.255.10\n",
    );
    create_yaml(&client, &clash).await.expect("clash");
    let msg = wait_event(&client, "kube-system", "dns-svc-tcp-2", "AllocationFailed", "port TCP/53").await;
    assert_eq!(msg, "port TCP/53 already used by kube-system/dns-svc-tcp on 172.17.255.10");
    assert!(ingress(&client, "kube-system", "dns-svc-tcp-2").await.is_empty());
    assert_eq!(ingress(&client, "kube-system", "dns-svc-tcp").await, ["172.17.255.10"]);
    assert_eq!(ingress(&client, "kube-system", "dns-svc-udp").await, ["172.17.255.10"]);
    assert_eq!(ingress(&client, "default", "web-svc-lb").await, ["172.17.255.1"]);

    // A requested address outside every pool is refused with a clear Event.
    create_yaml(&client, &lb_service("default", "outside", 80, "", "  loadBalancerIP: 10.99.0.1\n"))
        .await
        .expect("svc");
    wait_event(&client, "default", "outside", "AllocationFailed", "10.99.0.1 is not in any usable IPAddressPool").await;

    // address-pool picks a pool even with autoAssign: false.
    let reserved = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: reserved, namespace: metallb-system}\nspec: {addresses: [172.18.0.0/30], autoAssign: false}\n";
    create_yaml(&client, reserved).await.expect("reserved pool");
    let named = lb_service("default", "named", 80, "  annotations: {metallb.io/address-pool: reserved}\n", "");
    create_yaml(&client, &named).await.expect("named");
    wait_ingress(&client, "default", "named", &["172.18.0.0"]).await;

    // serviceAllocation: priority and namespace selection.
    let team = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {tier: gold}}\n";
    create_yaml(&client, team).await.expect("namespace");
    let pinned = |name: &str, cidr: &str, priority: u32| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}, namespace: metallb-system}}\nspec:\n  addresses: [{cidr}]\n  serviceAllocation: {{priority: {priority}, namespaceSelectors: [{{matchLabels: {{tier: gold}}}}]}}\n"
        )
    };
    create_yaml(&client, &pinned("gold-low", "172.19.1.0/30", 20)).await.expect("pool");
    create_yaml(&client, &pinned("gold-high", "172.19.0.0/30", 10)).await.expect("pool");
    create_yaml(&client, &lb_service("team", "app", 80, "", "")).await.expect("svc");
    wait_ingress(&client, "team", "app", &["172.19.0.0"]).await;
    create_yaml(&client, &lb_service("default", "other-ns", 80, "", "")).await.expect("svc");
    wait_ingress(&client, "default", "other-ns", &["172.17.255.3"]).await;

    // Pool deleted while team/app holds one of its addresses (docs/design.md §3.10): the pool stays, says who holds
    // it, the Service keeps its address, a new Service of the namespace gets the next pool; once the holder lets go
    // the pool goes away.
    pools(&client).delete("gold-high", &DeleteParams::default()).await.expect("delete pool");
    wait_event(&client, "metallb-system", "gold-high", "PoolInUse", "team/app (172.19.0.0)").await;
    assert_eq!(ingress(&client, "team", "app").await, ["172.19.0.0"], "the holder keeps its address");
    create_yaml(&client, &lb_service("team", "late", 81, "", "")).await.expect("svc");
    wait_ingress(&client, "team", "late", &["172.19.1.0"]).await;
    assert_eq!(ingress(&client, "team", "app").await, ["172.19.0.0"], "still kept");
    Api::<Service>::namespaced(client.clone(), "team").delete("app", &DeleteParams::default()).await.expect("delete");
    eventually("the deleted pool gone once nobody holds its addresses", Duration::from_secs(30), || async {
        pools(&client).get_opt("gold-high").await.ok()?.is_none().then_some(())
    })
    .await;

    // Deleted Service, and a Service turned ClusterIP: addresses freed, status and annotation cleared, reused.
    Api::<Service>::namespaced(client.clone(), "default")
        .delete("web-svc-lb", &DeleteParams::default())
        .await
        .expect("delete");
    let to_cluster_ip = json!({"spec": {"type": "ClusterIP"}});
    dns_api.patch("dns-svc-lb", &PatchParams::default(), &Patch::Merge(&to_cluster_ip)).await.expect("to ClusterIP");
    wait_ingress(&client, "kube-system", "dns-svc-lb", &[]).await;
    eventually("the pool annotation removed", Duration::from_secs(30), || async {
        let svc = dns_api.get("dns-svc-lb").await.ok()?;
        (!svc.metadata.annotations.unwrap_or_default().contains_key("metallb.io/ip-allocated-from-pool")).then_some(())
    })
    .await;
    create_yaml(&client, &lb_service("default", "reuse-1", 81, "", "")).await.expect("svc");
    wait_ingress(&client, "default", "reuse-1", &["172.17.255.1"]).await;
    create_yaml(&client, &lb_service("default", "reuse-2", 82, "", "")).await.expect("svc");
    wait_ingress(&client, "default", "reuse-2", &["172.17.255.2"]).await;

    // Pool status counts match the Services: .1 .2 .3 .10 are in use in "default".
    let status = eventually("pool status counts", Duration::from_secs(30), || async {
        let pool = pools(&client).get("default").await.ok()?;
        let s = pool.data.get("status")?.clone();
        (s["assignedIPv4"] == 4).then_some(s)
    })
    .await;
    assert_eq!(status["availableIPv4"], 251);
    let valid = status["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Valid").cloned();
    assert_eq!(valid.map(|c| c["status"].clone()), Some(json!("True")));

    // Printer columns: what `kubectl get ipaddresspools` shows, from the server's own Table rendering.
    let req = http::Request::get("/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools/default")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .expect("request");
    let table: serde_json::Value = serde_json::from_str(&client.request_text(req).await.expect("table")).expect("json");
    let columns: Vec<String> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect();
    let row = &table["rows"][0]["cells"];
    let cell =
        |name: &str| row[columns.iter().position(|c| c == name).unwrap_or_else(|| panic!("column {name}"))].clone();
    assert_eq!((cell("Assigned v4"), cell("Available v4"), cell("Valid")), (json!(4), json!(251), json!("True")));
}

/// Pools and advertisements the controller cannot use say so on themselves: a pool overlapping the user's, and
/// configuration outside the configuration namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misplaced_or_overlapping_configuration_is_reported_on_itself() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start(EXE, "flbe", 1, false);
    let client = lab.admin().await;
    create_yaml(&client, &seed("ipaddresspool.yaml")).await.expect("pool");
    // A pool overlapping an existing one is reported, not used, and the first one keeps working.
    let overlap = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: overlap, namespace: metallb-system}\nspec: {addresses: [172.17.255.200/29]}\n";
    create_yaml(&client, overlap).await.expect("overlapping pool is accepted by the schema");
    wait_event(&client, "metallb-system", "overlap", "InvalidConfiguration", "overlap pool \"default\"").await;

    // Configuration outside the configuration namespace is ignored, and says so on itself.
    let elsewhere = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: elsewhere, namespace: default}\nspec: {addresses: [172.17.254.0/24]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: elsewhere, namespace: default}\n";
    create_yaml(&client, elsewhere).await.expect("config in another namespace");
    for kind in ["IPAddressPools", "L2Advertisements"] {
        let needle = format!("reads {kind} only in namespace metallb-system");
        wait_event(&client, "default", "elsewhere", "IgnoredNamespace", &needle).await;
    }
}

/// The pool's status counts as `kubectl get ipaddresspools` shows them.
async fn pool_counts(client: &Client, name: &str) -> Option<(i64, i64, i64, i64)> {
    let pool = pools(client).get(name).await.ok()?;
    let status = pool.data.get("status")?;
    let n = |k: &str| status.get(k).and_then(serde_json::Value::as_i64);
    Some((n("assignedIPv4")?, n("availableIPv4")?, n("assignedIPv6")?, n("availableIPv6")?))
}

/// MetalLB's "Pool Status › DUALSTACK", "with namespace with labels" and "requesting a specific pool (autoAssign
/// true)": IPv6 counts, a grown pool, a hand-edited status put back; a namespace labelled at run time sends its
/// next Service to the pool its label selects; naming an autoAssign pool works and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_and_pool_choice_follow_changes() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start(EXE, "flbps", 1, false);
    let client = lab.admin().await;
    let config = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p, namespace: metallb-system}\nspec: {addresses: [198.19.0.0/30, '2001:db8:19::/126']}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: team-a, namespace: metallb-system}\nspec:\n  addresses: [198.19.1.0/30]\n  serviceAllocation: {priority: 10, namespaceSelectors: [{matchLabels: {team: a}}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n";
    create_yaml(&client, config).await.expect("pools and namespace");
    let wait_counts = |want: (i64, i64, i64, i64), what: &'static str| {
        let client = client.clone();
        async move {
            eventually(what, Duration::from_secs(30), || async {
                (pool_counts(&client, "p").await == Some(want)).then_some(())
            })
            .await
        }
    };
    wait_counts((0, 4, 0, 4), "an empty dual-stack pool counted").await;
    let v6 = "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n";
    create_yaml(&client, &lb_service("default", "six", 80, "", v6)).await.expect("IPv6 Service");
    wait_counts((0, 4, 1, 3), "one IPv6 address in use").await;
    let grown = json!({"spec": {"addresses": ["198.19.0.0/30", "2001:db8:19::/126", "2001:db8:19::100/126"]}});
    pools(&client).patch("p", &PatchParams::default(), &Patch::Merge(&grown)).await.expect("grow");
    wait_counts((0, 4, 1, 7), "the grown pool counted").await;
    let edited = json!({"status": {"availableIPv4": 999}});
    pools(&client).patch_status("p", &PatchParams::default(), &Patch::Merge(&edited)).await.expect("hand edit");
    wait_counts((0, 4, 1, 7), "the hand-edited status put back").await;

    // A namespace without the label gets the general pool; labelled, its next Service gets team-a's.
    create_yaml(&client, &lb_service("apps", "before", 80, "", "")).await.expect("before");
    eventually("before from p", Duration::from_secs(30), || async {
        ingress(&client, "apps", "before").await.first().filter(|ip| ip.starts_with("198.19.0.")).cloned()
    })
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"team": "a"}}});
    namespaces.patch("apps", &PatchParams::default(), &Patch::Merge(&label)).await.expect("label namespace");
    create_yaml(&client, &lb_service("apps", "after", 80, "", "")).await.expect("after");
    eventually("after from team-a", Duration::from_secs(30), || async {
        ingress(&client, "apps", "after").await.first().filter(|ip| ip.starts_with("198.19.1.")).cloned()
    })
    .await;
    assert!(ingress(&client, "apps", "before").await[0].starts_with("198.19.0."), "before keeps its address");

    // Naming the autoAssign pool: served from it, and the Service says so.
    let named = "  annotations: {metallb.io/address-pool: p}\n";
    create_yaml(&client, &lb_service("default", "named", 80, named, "")).await.expect("named");
    eventually("named from p", Duration::from_secs(30), || async {
        ingress(&client, "default", "named").await.first().filter(|ip| ip.starts_with("198.19.0.")).cloned()
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    eventually("named says it came from p", Duration::from_secs(30), || async {
        let annotations = services.get("named").await.ok()?.metadata.annotations?;
        (annotations.get("metallb.io/ip-allocated-from-pool").map(String::as_str) == Some("p")).then_some(())
    })
    .await;
}

/// `kubectl get configurationstates -n metallb-system`, as a user types it.
fn kubectl_get_configuration_states(lab: &TestLab) -> String {
    let out = std::process::Command::new("kubectl")
        .args(["get", "configurationstates", "-n", "metallb-system"])
        .env("KUBECONFIG", lab.state().kubeconfig())
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl get configurationstates: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each object's (result, errorSummary), by name.
async fn configuration_states(client: &Client) -> BTreeMap<String, (String, String)> {
    let api: Api<ConfigurationState> = Api::namespaced(client.clone(), "metallb-system");
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .map(|o| {
            let status = o.status.unwrap_or_default();
            (
                o.metadata.name.unwrap_or_default(),
                (status.result.unwrap_or_default(), status.error_summary.unwrap_or_default()),
            )
        })
        .collect()
}

/// Waits until every object's result and summary satisfy `check`.
async fn wait_configuration_states(
    client: &Client,
    what: &str,
    check: impl Fn(&BTreeMap<String, (String, String)>) -> bool,
) -> BTreeMap<String, (String, String)> {
    eventually(what, Duration::from_secs(30), || async {
        let states = configuration_states(client).await;
        check(&states).then_some(states)
    })
    .await
}

/// MetalLB v0.16's ConfigurationState: one object for the controller and one per speaker, `Valid` for a good
/// configuration; a broken pool turns the controller's `Invalid` with a summary naming it, a malformed
/// L2Advertisement the speakers'; fixed, they are `Valid` again; deleted, they come back (MetalLB's self-heal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_states_report_each_component_as_metallbs_do() {
    let _serial = one_lab_at_a_time().await;
    let lab = TestLab::start(EXE, "flbcs", 3, false);
    let client = lab.admin().await;
    create_yaml(&client, &seed("ipaddresspool.yaml")).await.expect("pool");
    create_yaml(&client, &seed("l2advertisement.yaml")).await.expect("advertisement");
    let names = ["controller", "speaker-node-1", "speaker-node-2", "speaker-node-3"];
    let all_valid = |s: &BTreeMap<String, (String, String)>| {
        s.keys().map(String::as_str).eq(names) && s.values().all(|(r, e)| r == "Valid" && e.is_empty())
    };
    wait_configuration_states(&client, "every component Valid", all_valid).await;
    let table = kubectl_get_configuration_states(&lab);
    println!("{table}");
    assert!(table.starts_with("NAME") && table.contains("RESULT") && table.contains("ERRORSUMMARY"), "{table}");
    for name in names {
        assert!(table.lines().any(|l| l.starts_with(name) && l.contains("Valid")), "{name} in {table}");
    }
    // Labels exactly as MetalLB writes them (its e2e compares them).
    let api: Api<ConfigurationState> = Api::namespaced(client.clone(), "metallb-system");
    let speaker = api.get("speaker-node-2").await.expect("speaker-node-2");
    let labels = speaker.metadata.labels.unwrap_or_default();
    let want: BTreeMap<String, String> = [
        ("metallb.io/component-type".to_string(), "speaker".to_string()),
        ("metallb.io/node-name".to_string(), "node-2".to_string()),
    ]
    .into();
    assert_eq!(labels, want);
    let condition = &speaker.status.unwrap_or_default().conditions[0];
    assert_eq!((condition.type_.as_str(), condition.reason.as_str()), ("configReconcilerValid", "Reconciled"));

    // A pool overlapping another is the controller's error, named in its summary; the speakers stay Valid.
    let overlap = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: overlap, namespace: metallb-system}\nspec: {addresses: [172.17.255.200/29]}\n";
    create_yaml(&client, overlap).await.expect("overlapping pool");
    let states = wait_configuration_states(&client, "the controller Invalid naming the pool", |s| {
        s.get("controller").is_some_and(|(r, e)| r == "Invalid" && e.contains("IPAddressPool \"overlap\""))
    })
    .await;
    println!("{}", kubectl_get_configuration_states(&lab));
    assert!(states.get("controller").is_some_and(|(_, e)| e.starts_with("configuration error: ")), "{states:?}");
    assert!(names[1..].iter().all(|n| states.get(*n).is_some_and(|(r, _)| r == "Valid")), "{states:?}");
    pools(&client).delete("overlap", &DeleteParams::default()).await.expect("delete the overlapping pool");
    wait_configuration_states(&client, "Valid again without the pool", all_valid).await;

    // A malformed selector in an L2Advertisement is every speaker's error; the controller stays Valid.
    let bad = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: near, namespace: metallb-system}\nspec:\n  nodeSelectors: [{matchExpressions: [{key: zone, operator: Near}]}]\n";
    create_yaml(&client, bad).await.expect("malformed advertisement passes the schema");
    let states = wait_configuration_states(&client, "every speaker Invalid naming the advertisement", |s| {
        names[1..]
            .iter()
            .all(|n| s.get(*n).is_some_and(|(r, e)| r == "Invalid" && e.contains("L2Advertisement \"near\"")))
    })
    .await;
    assert_eq!(states.get("controller").map(|(r, _)| r.as_str()), Some("Valid"), "{states:?}");
    let ads: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "metallb-system",
        &kube::api::ApiResource::erase::<ferrolb_crds::L2AdvertisementSchema>(&()),
    );
    ads.delete("near", &DeleteParams::default()).await.expect("delete the advertisement");
    wait_configuration_states(&client, "Valid again without the advertisement", all_valid).await;

    // Self-heal: deleted objects come back with their verdict.
    let uids = |o: &ConfigurationState| o.metadata.uid.clone().unwrap_or_default();
    let before = [api.get("controller").await.expect("controller"), api.get("speaker-node-1").await.expect("speaker")];
    for o in &before {
        api.delete(&o.metadata.name.clone().unwrap_or_default(), &DeleteParams::default()).await.expect("delete");
    }
    eventually("both objects back with new uids", Duration::from_secs(30), || async {
        let again = [api.get_opt("controller").await.ok()??, api.get_opt("speaker-node-1").await.ok()??];
        again.iter().zip(&before).all(|(a, b)| uids(a) != uids(b)).then_some(())
    })
    .await;
    wait_configuration_states(&client, "Valid after the self-heal", all_valid).await;
}

/// Polls a controller's /metrics.
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn controller(state: &State, replica: usize) -> (i32, u16) {
    let p = state.procs.iter().rev().find(|p| p.role == format!("controller-{replica}")).expect("controller process");
    (p.pid, p.port.expect("metrics port"))
}

async fn snapshot(client: &Client) -> BTreeMap<String, Vec<String>> {
    let list = Api::<Service>::namespaced(client.clone(), "load").list(&ListParams::default()).await.expect("list");
    list.items
        .iter()
        .map(|s| {
            let ips = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
            (
                s.metadata.name.clone().unwrap_or_default(),
                ips.into_iter().flatten().filter_map(|i| i.ip.clone()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_move_an_address_and_one_of_two_replicas_writes() {
    let lab = TestLab::start(EXE, "flbr", 1, false);
    let client = lab.admin().await;
    let pool = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: load, namespace: metallb-system}\nspec: {addresses: [198.19.0.0/24, 198.19.1.0/24]}\n";
    create_yaml(&client, pool).await.expect("pool");
    create_yaml(&client, "apiVersion: v1\nkind: Namespace\nmetadata: {name: load}\n").await.expect("ns");
    // 200 Services, created in shuffled name order so allocation order is not name order.
    let mut names: Vec<String> = (0..200).map(|i| format!("svc-{:03}", (i * 37) % 200)).collect();
    names.dedup();
    for name in &names {
        create_yaml(&client, &lb_service("load", name, 80, "", "")).await.expect("svc");
    }
    let before = eventually("200 Services with an address", Duration::from_secs(120), || async {
        let snap = snapshot(&client).await;
        (snap.len() == 200 && snap.values().all(|ips| ips.len() == 1)).then_some(snap)
    })
    .await;

    for round in 1..=3 {
        let mut state = lab.state();
        let (pid, _) = controller(&state, 0);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        eventually("the killed controller to be gone", Duration::from_secs(10), || async {
            (!alive(pid)).then_some(())
        })
        .await;
        // The lease of a SIGKILLed leader is not released; let it expire so the restart leads at once.
        let leases: Api<Lease> = Api::namespaced(client.clone(), "metallb-system");
        leases.delete("ferrolb-controller", &DeleteParams::default()).await.expect("delete lease");
        lifecycle::start_controller(&mut state, 0).await.expect("restart");
        // A new Service getting an address proves the restarted leader has restored and reconciled everything.
        let marker = format!("after-restart-{round}");
        create_yaml(&client, &lb_service("default", &marker, 80, "", "")).await.expect("marker");
        eventually("the restarted controller to assign again", Duration::from_secs(60), || async {
            (!ingress(&client, "default", &marker).await.is_empty()).then_some(())
        })
        .await;
        assert_eq!(snapshot(&client).await, before, "an address changed across restart {round}");
    }

    // Two replicas: exactly one leads and writes; the standby reconciles nothing until the leader dies.
    let mut state = lab.state();
    lifecycle::start_controller(&mut state, 1).await.expect("second replica");
    let state = lab.state();
    let (leader_pid, leader_port) = controller(&state, 0);
    let (_, standby_port) = controller(&state, 1);
    eventually("the standby's metrics", Duration::from_secs(30), || async { scrape(standby_port).await }).await;
    create_yaml(&client, &lb_service("default", "while-two", 80, "", "")).await.expect("svc");
    eventually("the leader to assign", Duration::from_secs(30), || async {
        (!ingress(&client, "default", "while-two").await.is_empty()).then_some(())
    })
    .await;
    let standby = scrape(standby_port).await.expect("standby metrics");
    assert_eq!(metric(&standby, "ferrolb_leader"), 0.0);
    assert_eq!(metric(&standby, "ferrolb_service_reconciles_total"), 0.0, "the standby must not reconcile");
    let leader = scrape(leader_port).await.expect("leader metrics");
    assert_eq!(metric(&leader, "ferrolb_leader"), 1.0);
    assert!(metric(&leader, "ferrolb_service_reconciles_total") > 0.0);

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(leader_pid), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "metallb-system");
    eventually("the standby to take the lease after it expires", Duration::from_secs(60), || async {
        let lease = leases.get("ferrolb-controller").await.ok()?;
        (lease.spec?.holder_identity.as_deref() == Some("lab-controller-1")).then_some(())
    })
    .await;
    create_yaml(&client, &lb_service("default", "after-failover", 80, "", "")).await.expect("svc");
    eventually("the new leader to assign", Duration::from_secs(30), || async {
        (!ingress(&client, "default", "after-failover").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(snapshot(&client).await, before, "failover moved an address");
    let new_leader = scrape(standby_port).await.expect("metrics");
    assert_eq!(metric(&new_leader, "ferrolb_leader"), 1.0);
}

/// A Service refused for a full pool gets the address another Service frees (deleted, or moved out by a
/// class change), and an address a grown pool adds; one refused for a holder's sharing key gets the address when
/// the holder changes its key. Bounds are generous, the time taken is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_services_get_addresses_as_soon_as_some_are_freed() {
    let lab = TestLab::start(EXE, "flbq", 1, false);
    let client = lab.admin().await;
    let two = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: small, namespace: metallb-system}\nspec: {addresses: [198.19.0.1-198.19.0.2]}\n";
    create_yaml(&client, two).await.expect("pool");
    for name in ["a", "b"] {
        create_yaml(&client, &lb_service("default", name, 80, "", "")).await.expect("svc");
        eventually(&format!("{name} addressed"), Duration::from_secs(30), || async {
            (!ingress(&client, "default", name).await.is_empty()).then_some(())
        })
        .await;
    }
    create_yaml(&client, &lb_service("default", "c", 80, "", "")).await.expect("svc c");
    wait_event(&client, "default", "c", "AllocationFailed", "").await;
    assert!(ingress(&client, "default", "c").await.is_empty(), "the pool is full");
    let freed = ingress(&client, "default", "a").await;

    // Deleting a Service frees its address, and the refused one gets it without any change of its own.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let start = std::time::Instant::now();
    services.delete("a", &DeleteParams::default()).await.expect("delete a");
    wait_ingress(&client, "default", "c", &freed.iter().map(String::as_str).collect::<Vec<_>>()).await;
    println!("refused Service addressed {:?} after another was deleted", start.elapsed());

    // A fourth Service is refused; moving "b" to another class frees its address for it.
    create_yaml(&client, &lb_service("default", "d", 80, "", "")).await.expect("svc d");
    wait_event(&client, "default", "d", "AllocationFailed", "").await;
    let freed = ingress(&client, "default", "b").await;
    let patch = json!({"spec": {"loadBalancerClass": null, "type": "ClusterIP"}});
    services.patch("b", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("b to ClusterIP");
    wait_ingress(&client, "default", "d", &freed.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // A fifth is refused until the pool grows.
    create_yaml(&client, &lb_service("default", "e", 80, "", "")).await.expect("svc e");
    wait_event(&client, "default", "e", "AllocationFailed", "").await;
    let grown = json!({"spec": {"addresses": ["198.19.0.1-198.19.0.3"]}});
    pools(&client).patch("small", &PatchParams::default(), &Patch::Merge(&grown)).await.expect("grow the pool");
    wait_ingress(&client, "default", "e", &["198.19.0.3"]).await;

    // MetalLB's "reconsider sharing": refused because the holder of its requested address uses another sharing
    // key, a Service gets the address once the holder takes its key, though nothing was freed.
    let sharing = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: sharing, namespace: metallb-system}\nspec: {addresses: [198.19.0.10-198.19.0.11]}\n";
    create_yaml(&client, sharing).await.expect("sharing pool");
    let keyed = |key: &str| format!("  annotations: {{metallb.io/allow-shared-ip: {key}}}\n");
    let at = "  loadBalancerIP: 198.19.0.10\n";
    create_yaml(&client, &lb_service("default", "holder", 80, &keyed("one"), at)).await.expect("holder");
    wait_ingress(&client, "default", "holder", &["198.19.0.10"]).await;
    create_yaml(&client, &lb_service("default", "sharer", 81, &keyed("two"), at)).await.expect("sharer");
    wait_event(&client, "default", "sharer", "AllocationFailed", "198.19.0.10").await;
    assert!(ingress(&client, "default", "sharer").await.is_empty(), "refused for the other key");
    let rekey = json!({"metadata": {"annotations": {"metallb.io/allow-shared-ip": "two"}}});
    let start = std::time::Instant::now();
    services.patch("holder", &PatchParams::default(), &Patch::Merge(&rekey)).await.expect("holder takes key two");
    wait_ingress(&client, "default", "sharer", &["198.19.0.10"]).await;
    println!("refused sharer addressed {:?} after the holder took its key (measured, not asserted)", start.elapsed());
    assert_eq!(ingress(&client, "default", "holder").await, ["198.19.0.10"], "the holder kept its address");

    // The rest of MetalLB's case: `externalTrafficPolicy: Local` Services share only with Local Services of the
    // same selector. The sharer turning Local loses the address; the holder following gets it back to the sharer;
    // then the same with a selector change.
    let spec = |local: bool, app: &str| json!({"spec": {"externalTrafficPolicy": if local { "Local" } else { "Cluster" }, "selector": {"app": app}}});
    let patch = |name: &'static str, body: serde_json::Value| {
        let services = services.clone();
        async move { services.patch(name, &PatchParams::default(), &Patch::Merge(&body)).await.expect("patch") }
    };
    patch("sharer", spec(true, "dns")).await;
    wait_ingress(&client, "default", "sharer", &[]).await;
    patch("holder", spec(true, "dns")).await;
    wait_ingress(&client, "default", "sharer", &["198.19.0.10"]).await;
    patch("sharer", spec(true, "web")).await;
    wait_ingress(&client, "default", "sharer", &[]).await;
    patch("holder", spec(true, "web")).await;
    wait_ingress(&client, "default", "sharer", &["198.19.0.10"]).await;
    assert_eq!(ingress(&client, "default", "holder").await, ["198.19.0.10"], "the holder kept it throughout");
}

//! The chart: its README documents every value in values.yaml (and nothing that is not there), and its optional
//! Prometheus Operator objects render, parse as PromQL and query only series the binaries expose. The tests
//! in `helm` render the chart with the cached helm (`make test`); the rest is pure (`make check`).

use std::collections::BTreeSet;
use std::path::Path;

fn leaves(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                // Resource blocks are documented as one value.
                if key == "resources" {
                    out.push(path);
                } else {
                    leaves(&path, v, out);
                }
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_value_is_documented() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).expect("values")).expect("yaml");
    let readme = std::fs::read_to_string(chart.join("README.md")).expect("README");
    let documented: Vec<&str> = readme.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()).collect();
    let mut keys = Vec::new();
    leaves("", &values, &mut keys);
    for key in &keys {
        assert!(documented.contains(&key.as_str()), "values.yaml key {key} is not in charts/ferrolb/README.md");
    }
    for key in &documented {
        assert!(keys.iter().any(|k| k == key), "README documents {key}, which values.yaml does not have");
    }
}

/// Every series name an exposition text offers: sample names, and the names its `# TYPE` lines imply (a counter
/// `x` is queried as `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count`), so families without samples yet
/// (no stranger seen, no pool configured) count too.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            names.insert(name);
        }
    }
    names
}

/// What the two binaries' renderers expose (the same code their `/metrics` serves). prometheus-client leaves out
/// labelled families without samples, so every family gets one, as a running cluster would give it.
fn binaries_expose() -> BTreeSet<String> {
    let metrics = ferrolb_controller::metrics::Metrics::new();
    let usage = ferrolb_controller::PoolUsage { assigned_v4: 1, available_v4: 9, assigned_v6: 0, available_v6: 0 };
    metrics.set_pool_usage("lab", &usage);
    metrics.count("assigned");
    let controller = metrics.render();
    let stats = std::sync::Arc::new(ferrolb_speaker::telemetry::stats::Stats::default());
    let ip = std::net::IpAddr::from([198, 19, 0, 1]);
    let mac = ferrolb_speaker::wire::Mac([2, 0, 0, 0, 0, 9]);
    for family in [&stats.drops, &stats.ndp_drops, &stats.gossip_rejects, &stats.interface_rescans] {
        ferrolb_speaker::telemetry::stats::Stats::count(family, "some_reason");
    }
    for gauges in [&stats.unannounced, &stats.announce_failed] {
        gauges.set([("some_reason", 1)].into());
    }
    stats.strangers.lock().map(|mut m| m.insert((ip, mac), std::time::Instant::now())).ok();
    stats
        .announced
        .lock()
        .map(|mut m| m.insert(ip, vec![ferrolb_crds::service::ServiceKey::new("default", "web")]))
        .ok();
    stats.count_for(ip, |c| c.requests += 1);
    let speaker =
        ferrolb_speaker::telemetry::metrics::render(&ferrolb_speaker::telemetry::metrics::registry(stats, "node-1"));
    let mut names = exposed(&controller);
    names.extend(exposed(&speaker));
    names
}

/// Metric names an expression selects.
fn selected(expr: &promql_parser::parser::Expr) -> Vec<String> {
    use promql_parser::parser::Expr;
    use promql_parser::util::{ExprVisitor, walk_expr};
    struct Names(Vec<String>);
    impl ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            match expr {
                Expr::VectorSelector(vs) => self.0.extend(vs.name.clone()),
                Expr::MatrixSelector(ms) => self.0.extend(ms.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let mut names = Names(Vec::new());
    let _ = walk_expr(&mut names, expr);
    names.0
}

#[test]
fn the_name_check_catches_a_series_nobody_exposes() {
    let exposed = binaries_expose();
    let parsed = promql_parser::parser::parse("sum(rate(ferrolb_speaker_arp_replys_total[5m])) > 0").expect("parses");
    assert_eq!(selected(&parsed), ["ferrolb_speaker_arp_replys_total"]);
    assert!(!exposed.contains("ferrolb_speaker_arp_replys_total"));
    assert!(exposed.contains("ferrolb_pending_services") && exposed.contains("metallb_allocator_addresses_total"));
}

/// What needs `helm template` (helm from the control-plane cache, /var/cache/ferrolb): run by `make test`, left
/// out of `make check` (`--skip helm::`).
mod helm {
    use super::*;

    /// `helm template` of the chart with extra `--set` values, as the lab's helm renders it; documents by kind.
    fn render(sets: &[&str]) -> Vec<serde_yaml::Value> {
        let helm = ferrolb_tests::lab::control_plane::ensure_binaries().expect("helm").join("helm");
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb");
        let home = std::env::temp_dir().join("ferrolb-chart-test-helm");
        let mut cmd = std::process::Command::new(helm);
        cmd.args(["template", "ferrolb"]).arg(&chart).args([
            "-n",
            "metallb-system",
            "--kube-version",
            ferrolb_tests::lab::control_plane::K8S_VERSION,
        ]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
            cmd.env(var, home.join(var));
        }
        let out = cmd.output().expect("helm runs");
        assert!(out.status.success(), "helm template {sets:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("\n---")
            .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
            .filter(|doc| doc.get("kind").is_some())
            .collect()
    }

    fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
        docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
    }

    #[test]
    fn monitoring_objects_are_off_by_default() {
        let docs = render(&[]);
        assert!(of_kind(&docs, "ServiceMonitor").is_empty());
        assert!(of_kind(&docs, "PrometheusRule").is_empty());
        assert_eq!(of_kind(&docs, "Service").len(), 2, "the metrics Services are there for a scrape config");
    }

    #[test]
    fn every_alert_parses_as_promql_and_queries_only_series_the_binaries_expose() {
        let docs = render(&[
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.poolNearlyExhausted.threshold=0.75",
        ]);
        let rules = of_kind(&docs, "PrometheusRule");
        assert_eq!(rules.len(), 1);
        let exposed = binaries_expose();
        assert!(exposed.contains("ferrolb_speaker_arp_replies_total"), "the renderers were read: {exposed:?}");
        let mut alerts = BTreeSet::new();
        for rule in rules[0]["spec"]["groups"][0]["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{alert}: {expr}: {e}"));
            let names = selected(&parsed);
            assert!(!names.is_empty(), "{alert} selects no series");
            for name in names {
                assert!(exposed.contains(&name), "{alert} queries {name}, which neither binary exposes");
            }
            let duration = rule["for"].as_str().expect("for");
            promql_parser::util::parse_duration(duration).unwrap_or_else(|e| panic!("{alert}: for {duration:?}: {e}"));
            assert!(rule["labels"]["severity"].as_str().is_some(), "{alert} has a severity");
            alerts.insert(alert.to_string());
            if alert == "FerrolbAddressPoolNearlyExhausted" {
                assert!(expr.trim_end().ends_with("> 0.75"), "the threshold is the chart value: {expr}");
            }
        }
        // The signals issue 10 asks for: exhaustion, pending, two answerers, strictARP, liveness channel.
        for wanted in [
            "FerrolbAddressPoolNearlyExhausted",
            "FerrolbServicePending",
            "FerrolbAddressClaimedByStranger",
            "FerrolbTwoNodesAnswering",
            "FerrolbStrictARPDisabled",
            "FerrolbLivenessChannelBroken",
        ] {
            assert!(alerts.contains(wanted), "{wanted} missing: {alerts:?}");
        }
    }

    #[test]
    fn the_service_monitor_selects_both_metrics_services_by_their_port() {
        let docs = render(&["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"]);
        let monitors = of_kind(&docs, "ServiceMonitor");
        assert_eq!(monitors.len(), 1);
        let monitor = monitors[0];
        assert_eq!(monitor["metadata"]["labels"]["release"].as_str(), Some("prom"), "extra labels for the selector");
        let port = monitor["spec"]["endpoints"][0]["port"].as_str().expect("endpoint port");
        let match_labels = monitor["spec"]["selector"]["matchLabels"].as_mapping().expect("matchLabels");
        let components: Vec<&str> = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
            .as_sequence()
            .expect("components")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let mut selected = Vec::new();
        for svc in of_kind(&docs, "Service") {
            let labels = svc["metadata"]["labels"].as_mapping().expect("labels");
            let matches = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                && labels
                    .get("app.kubernetes.io/component")
                    .and_then(|c| c.as_str())
                    .is_some_and(|c| components.contains(&c));
            if matches {
                let ports = svc["spec"]["ports"].as_sequence().expect("ports");
                assert!(ports.iter().any(|p| p["name"].as_str() == Some(port)), "{svc:?} has no port {port}");
                selected.push(svc["metadata"]["name"].as_str().unwrap_or_default().to_string());
            }
        }
        selected.sort();
        assert_eq!(selected, ["ferrolb-controller-metrics", "ferrolb-speaker-metrics"]);
    }

    /// `networkPolicy.enabled`: one policy for the controller, selecting exactly its pods, open only on the
    /// metrics port (to the configured scrapers) and out only to the API server; none by default.
    #[test]
    fn the_controller_network_policy_selects_its_pods_and_opens_only_metrics_and_the_api() {
        assert!(of_kind(&render(&[]), "NetworkPolicy").is_empty(), "off by default");
        let docs = render(&[
            "networkPolicy.enabled=true",
            "networkPolicy.apiPort=443",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        ]);
        let policies = of_kind(&docs, "NetworkPolicy");
        assert_eq!(policies.len(), 1, "no default-deny unless asked");
        let policy = &policies[0]["spec"];
        let deployment = of_kind(&docs, "Deployment")[0];
        assert_eq!(
            policy["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"],
            "exactly the controller's pods"
        );
        let metrics_port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"].clone();
        assert_eq!(policy["ingress"][0]["ports"][0]["port"], metrics_port);
        assert_eq!(policy["ingress"].as_sequence().map(Vec::len), Some(1));
        assert_eq!(
            policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"].as_str(),
            Some("monitoring")
        );
        assert_eq!(policy["egress"][0]["ports"][0]["port"].as_u64(), Some(443));
        assert_eq!(policy["egress"].as_sequence().map(Vec::len), Some(1));
        let with_deny = render(&["networkPolicy.enabled=true", "networkPolicy.defaultDeny=true"]);
        let deny = of_kind(&with_deny, "NetworkPolicy")
            .into_iter()
            .find(|p| p["spec"]["podSelector"].as_mapping().is_some_and(|m| m.is_empty()))
            .expect("a default-deny policy");
        assert!(deny["spec"]["ingress"].is_null() && deny["spec"]["egress"].is_null(), "denies both ways");
    }

    /// The speaker's container arguments as the chart renders them with these values.
    fn speaker_args(sets: &[&str]) -> Vec<String> {
        let docs = render(sets);
        let daemonset = of_kind(&docs, "DaemonSet");
        let args =
            daemonset.first().expect("the speaker DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
        args.iter().filter_map(|a| a.as_str().map(String::from)).collect()
    }

    /// The chart's default exclusion list is the speaker's own default (so a speaker run outside the chart behaves
    /// the same), and a value given with `--set` replaces it, also as an empty list.
    #[test]
    fn interface_exclusions_reach_the_speaker_from_the_chart_value() {
        let default =
            format!("--exclude-interfaces={}", ferrolb_speaker::model::interfaces::DEFAULT_EXCLUDED.join(" "));
        assert!(speaker_args(&[]).contains(&default), "{:?}", speaker_args(&[]));
        let custom = speaker_args(&["speaker.excludeInterfaces={^eth1$,^vlan[0-9]+$}"]);
        assert!(custom.iter().any(|a| a == "--exclude-interfaces=^eth1$ ^vlan[0-9]+$"), "{custom:?}");
        let none = speaker_args(&["speaker.excludeInterfaces=null"]);
        assert!(none.iter().any(|a| a == "--exclude-interfaces="), "an empty list excludes nothing: {none:?}");
    }

    /// Each speaker learns where speakers run from its release's pods: the selector it is given must select
    /// exactly the DaemonSet's pods (its template labels), and its Role must let it list and watch pods there.
    #[test]
    fn speakers_find_each_other_by_their_own_pod_labels() {
        for release_values in [&[][..], &["speaker.nodeSelector.tier=edge"][..]] {
            let docs = render(release_values);
            let daemonset = of_kind(&docs, "DaemonSet")[0];
            let template = &daemonset["spec"]["template"];
            let env = template["spec"]["containers"][0]["env"].as_sequence().cloned().unwrap_or_default();
            let selector = env
                .iter()
                .find(|e| e["name"].as_str() == Some("FERROLB_SPEAKER_POD_SELECTOR"))
                .and_then(|e| e["value"].as_str())
                .expect("the speaker is told its pods' selector")
                .to_string();
            let labels: BTreeSet<String> = template["metadata"]["labels"]
                .as_mapping()
                .expect("pod labels")
                .iter()
                .filter_map(|(k, v)| Some(format!("{}={}", k.as_str()?, v.as_str()?)))
                .collect();
            let wanted: BTreeSet<String> = selector.split(',').map(String::from).collect();
            assert_eq!(wanted, labels, "the selector is the pod template's labels");
            let selected: BTreeSet<String> = daemonset["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .expect("matchLabels")
                .iter()
                .filter_map(|(k, v)| Some(format!("{}={}", k.as_str()?, v.as_str()?)))
                .collect();
            assert_eq!(wanted, selected, "and the DaemonSet's own selector");
            let role = of_kind(&docs, "Role")
                .into_iter()
                .find(|r| r["metadata"]["name"].as_str() == Some("ferrolb-speaker"))
                .expect("the speaker's Role in the release namespace");
            let pods_rule = role["rules"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["resources"].as_sequence().is_some_and(|res| res.iter().any(|x| x.as_str() == Some("pods")))
                })
                .expect("a rule for pods");
            let verbs: BTreeSet<&str> =
                pods_rule["verbs"].as_sequence().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "read-only");
        }
    }
}

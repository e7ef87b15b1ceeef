//! One answerer per address whatever the network does (docs/design.md §5.6, §6.5): the speakers' liveness port
//! blocked, lossy, a speaker's wall clock stepped back, a stranger claiming an address, forged datagrams, the API
//! server frozen. One test per fault, each on a fresh lab (`up` takes seconds), one lab at a time.
//! Needs root. Fault injection is nftables inside the node namespaces (the kernel has no netem); who answers is
//! watched with ARP from the `host` namespace, and ownership changes are also counted by the speakers
//! themselves (`ferrolb_speaker_takeovers_total`). The loss phases are short here (`FERROLB_LOSS_SECS`, 20 s
//! each); the long statistical runs (300 s each, beside MetalLB) are `make soak` (tests/benches/faults.rs).

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, answering_nodes, arpwatch, create_yaml, eventually, ingress, metric_sum, node_macs, one_lab_at_a_time,
    speaker_metrics, total_takeovers, wait_answered_by, wait_event,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const LAB: &str = "flbx";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// Watches every address at once for `duration_ms` and asserts each had exactly one answerer, the expected one,
/// in every sample.
fn assert_one_steady_answerer(lab: &TestLab, owners: &BTreeMap<String, String>, duration_ms: u64, phase: &str) {
    assert_only_the_owner_answers(lab, owners, duration_ms, phase, false);
}

/// As [`assert_one_steady_answerer`]; with `starved`, a sample may go unanswered (the machine is saturated on
/// purpose and the responder can miss the watcher's deadline), but never another answerer nor a change of owner.
fn assert_only_the_owner_answers(
    lab: &TestLab,
    owners: &BTreeMap<String, String>,
    duration_ms: u64,
    phase: &str,
    starved: bool,
) {
    let macs = node_macs(lab);
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            owners.keys().map(|ip| s.spawn(move || (ip.clone(), arpwatch(lab, ip, 200, duration_ms)))).collect();
        handles.into_iter().map(|h| h.join().expect("arpwatch thread")).collect()
    });
    for (ip, report) in reports {
        println!("{phase}: {ip}: {report:?}");
        assert_eq!(report.several, 0, "{phase}: {ip} had several answerers: {report:?}");
        if !starved {
            assert_eq!(report.unanswered, 0, "{phase}: {ip} went unanswered: {report:?}");
        }
        assert_eq!(report.changes, 0, "{phase}: {ip} changed owner: {report:?}");
        let answered: Vec<String> = report.macs.keys().map(|m| macs.get(m).cloned().unwrap_or(m.clone())).collect();
        assert_eq!(answered, [owners[&ip].clone()], "{phase}: {ip} answered by the election's owner only");
    }
}

async fn node_event(client: &kube::Client, node: &str, needle: &str) {
    wait_event(client, "default", node, needle).await;
}

/// A 3-node lab with six Services, enough that every node owns at least one address (rendezvous spreads them),
/// each answered by its election owner. Returns the lab, an admin client and address → owner.
async fn lab_with_owners() -> (TestLab, kube::Client, BTreeMap<String, String>) {
    let lab = TestLab::start(EXE, LAB, 3, false);
    let client = lab.admin().await;
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    create_yaml(
        &client,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: default, labels: {app: web}}\nspec: {nodeName: node-2, containers: [{name: c, image: lab/x}]}\n",
    )
    .await
    .expect("pod");
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for i in 1..=6 {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i}, namespace: default}}\nspec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        create_yaml(&client, &svc).await.expect("service");
        let ip = eventually(&format!("an address for web-{i}"), Duration::from_secs(30), || async {
            ingress(&client, "default", &format!("web-{i}")).await.into_iter().next()
        })
        .await;
        let owner = election::owner(ip.parse::<IpAddr>().expect("ip"), NODES).expect("owner").to_string();
        owners.insert(ip, owner);
    }
    for (ip, owner) in &owners {
        wait_answered_by(&lab, ip, &[owner]).await;
    }
    println!("owners: {owners:?}");
    (lab, client, owners)
}

/// The liveness port blocked between all nodes: every speaker hears nobody, says so, yet the owners keep their
/// addresses and nobody else answers, from the start and throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_keep_their_addresses_while_the_liveness_port_is_blocked() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client, owners) = lab_with_owners().await;
    let before = total_takeovers(&lab);
    lab.ok(&["fault", "all", "--loss-percent", "100"]);
    assert_one_steady_answerer(&lab, &owners, 2_000, "port blocked, first 2 s");
    // Each speaker says the channel is broken, on its Node, naming the peers it cannot hear.
    for node in NODES {
        node_event(&client, node, "liveness channel broken").await;
    }
    let metrics = speaker_metrics(&lab, "node-1");
    assert_eq!(metric_sum(&metrics, "ferrolb_speaker_unheard_live_peers"), 2.0, "{metrics}");
    assert!(metric_sum(&metrics, "ferrolb_speaker_arp_probes_total") > 0.0, "held back by probing");
    assert_one_steady_answerer(&lab, &owners, 20_000, "port blocked");
    assert_eq!(total_takeovers(&lab), before, "no address changed hands while the port was blocked");
}

/// An owner that really dies while the channel is down is still replaced (by probing, more slowly) by exactly
/// one of the others; healed, everything returns to the election's owners and stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_dying_while_the_port_is_blocked_is_replaced_by_one_node_and_healing_restores_the_owners() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client, owners) = lab_with_owners().await;
    lab.ok(&["fault", "all", "--loss-percent", "100"]);
    // Positive evidence the speakers run blocked before the owner dies.
    for node in NODES {
        node_event(&client, node, "liveness channel broken").await;
    }
    let (victim_ip, victim) = owners.iter().next().map(|(i, o)| (i.clone(), o.clone())).expect("an address");
    lab.ok(&["kill", &victim]);
    let survivor =
        eventually(&format!("one node answering {victim_ip} after {victim} died"), Duration::from_secs(30), || async {
            let answering = answering_nodes(&lab, &victim_ip);
            (answering.len() == 1 && answering[0] != victim).then(|| answering[0].clone())
        })
        .await;
    println!("{victim} killed during the block: {victim_ip} taken by {survivor}");
    for _ in 0..3 {
        assert_eq!(answering_nodes(&lab, &victim_ip), std::slice::from_ref(&survivor), "stays with one node");
    }

    // Healed: the channel says so, the dead node comes back, and everything returns to the election's owners
    // and stays there.
    lab.ok(&["fault", "all", "--clear"]);
    lab.ok(&["revive", &victim]);
    for (ip, owner) in &owners {
        wait_answered_by(&lab, ip, &[owner]).await;
    }
    for node in NODES.iter().filter(|n| **n != victim) {
        node_event(&client, node, "every peer speaker whose node is alive is heard again").await;
    }
    let settled = total_takeovers(&lab);
    assert_one_steady_answerer(&lab, &owners, 10_000, "healed");
    assert_eq!(total_takeovers(&lab), settled, "nothing flaps after healing");
}

/// Random loss on the liveness port, 15 % then 30 %, for `FERROLB_LOSS_SECS` (20) each: no address changes
/// hands, by ARP from the host and by the speakers' own takeover counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_loss_on_the_liveness_port_moves_no_address() {
    let _serial = one_lab_at_a_time().await;
    let (lab, _client, owners) = lab_with_owners().await;
    let loss_ms = std::env::var("FERROLB_LOSS_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(20) * 1000;
    let probes = || -> f64 {
        NODES.iter().map(|n| metric_sum(&speaker_metrics(&lab, n), "ferrolb_speaker_arp_probes_total")).sum()
    };
    for loss in ["15", "30"] {
        let (before, probes_before) = (total_takeovers(&lab), probes());
        lab.ok(&["fault", "all", "--loss-percent", loss]);
        assert_one_steady_answerer(&lab, &owners, loss_ms, &format!("{loss}% loss"));
        lab.ok(&["fault", "all", "--clear"]);
        assert_eq!(total_takeovers(&lab), before, "{loss}% loss moved an address");
        // Each false verdict of death cost probes (the owner answered them); `make soak` prints the long run's.
        println!("{loss}% loss: {} probes in {} s by all speakers", probes() - probes_before, loss_ms / 1000);
    }
}

/// Log lines of `witness`'s speaker saying how it judges `node` ("node=X verdict=Y").
fn verdicts(lab: &TestLab, witness: &str, node: &str) -> Vec<String> {
    let log = std::fs::read_to_string(lab.state().log(&format!("speaker {witness}"))).unwrap_or_default();
    let needle = format!("node={node} verdict=");
    log.lines()
        .filter_map(|l| Some(l[l.find(&needle)? + needle.len()..].split_whitespace().next()?.to_string()))
        .collect()
}

/// One speaker's wall clock stepped back 60 s (libfaketime; its monotonic clock is left alone, as an NTP step
/// leaves the kernel's): its peers keep hearing it and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speakers_wall_clock_stepped_back_moves_nothing() {
    let _serial = one_lab_at_a_time().await;
    let (lab, _client, owners) = lab_with_owners().await;
    let stepped = owners.values().next().cloned().expect("an owner");
    let clock = lab.restart_speaker_with_fake_clock(&stepped);
    for (ip, owner) in &owners {
        wait_answered_by(&lab, ip, &[owner]).await;
    }
    let witnesses: Vec<&str> = NODES.iter().copied().filter(|n| *n != stepped).collect();
    // The restart itself made the witnesses judge it dead then alive again: wait until each says it is alive, so
    // the restart's own verdicts are counted before the step.
    for w in &witnesses {
        eventually(&format!("{w} hearing the restarted {stepped} again"), Duration::from_secs(30), || async {
            (verdicts(&lab, w, &stepped).last().map(String::as_str) == Some("Alive")).then_some(())
        })
        .await;
    }
    let deaths = |witness: &str| verdicts(&lab, witness, &stepped).iter().filter(|v| *v == "Dead").count();
    let deaths_before: Vec<usize> = witnesses.iter().map(|w| deaths(w)).collect();
    let before = total_takeovers(&lab);
    std::fs::write(&clock, "-60s\n").expect("step the clock back");
    assert_one_steady_answerer(&lab, &owners, 15_000, "clock stepped back 60 s");
    assert_eq!(total_takeovers(&lab), before, "a clock step moved an address");
    // The step took effect: the speaker's own log times went back (they come from its wall clock). A forged
    // datagram makes it log a line now.
    let to = format!("{}:7946", lab.state().node(&stepped).expect("node").ip);
    lab.ok(&["exec", "host", "--", EXE, "gossip-forge", "--node", "node-x", "--to", &to, "--kind", "alive"]);
    eventually(
        &format!("a log line of {stepped} showing its clock stepping back"),
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(lab.state().log(&format!("speaker {stepped}"))).unwrap_or_default();
            let times: Vec<&str> = log.lines().filter_map(|l| l.get(..26)).filter(|t| t.starts_with("20")).collect();
            times.windows(2).any(|w| w[1] < w[0]).then_some(())
        },
    )
    .await;
    // Judged after the 15 s watch and the step's own evidence above.
    let deaths_after: Vec<usize> = witnesses.iter().map(|w| deaths(w)).collect();
    assert_eq!(deaths_after, deaths_before, "peers {witnesses:?} counted {stepped} dead after its clock stepped");
}

/// A stranger claims an address: the owner keeps answering and the Service's Event names the MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_claiming_an_address_is_named_and_the_owner_keeps_answering() {
    let _serial = one_lab_at_a_time().await;
    let (lab, client, owners) = lab_with_owners().await;
    let (ip, owner) = owners.iter().next().map(|(i, o)| (i.clone(), o.clone())).expect("an address");
    let service = eventually("the Service of the claimed address", Duration::from_secs(5), || async {
        for i in 1..=6 {
            if ingress(&client, "default", &format!("web-{i}")).await.contains(&ip) {
                return Some(format!("web-{i}"));
            }
        }
        None
    })
    .await;
    let out = lab.cli(&["exec", "host", "--", EXE, "claim", &ip]);
    let stranger = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!stranger.is_empty(), "claim printed its MAC: {}", String::from_utf8_lossy(&out.stderr));
    let event = wait_event(&client, "default", &service, &format!("also claimed by MAC {stranger}")).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let metrics = speaker_metrics(&lab, &owner);
    assert!(
        metrics.contains(&format!("ferrolb_speaker_address_claimed_by_stranger{{ip=\"{ip}\",mac=\"{stranger}\"}} 1")),
        "{metrics}"
    );
    assert_eq!(answering_nodes(&lab, &ip), std::slice::from_ref(&owner), "the owner keeps answering");
}

/// A 10 s flood of forged liveness datagrams ("leaving", signed with the wrong key) at every node, claiming to
/// come from each owner: rejected, nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_leaving_datagrams_is_rejected_and_moves_nothing() {
    let _serial = one_lab_at_a_time().await;
    let (lab, _client, owners) = lab_with_owners().await;
    let owning: std::collections::BTreeSet<&String> = owners.values().collect();
    let before = total_takeovers(&lab);
    let targets: Vec<(String, String)> = lab
        .state()
        .nodes
        .iter()
        .flat_map(|target| owning.iter().map(move |owner| (target.ip.clone(), owner.to_string())))
        .collect();
    let floods: Vec<std::process::Child> = targets
        .iter()
        .map(|(ip, owner)| {
            std::process::Command::new(EXE)
                .args(["--name", &lab.name, "--dir"])
                .arg(&lab.dir)
                .args(["exec", "host", "--", EXE, "gossip-forge", "--node", owner, "--to", &format!("{ip}:7946")])
                .args(["--kind", "leaving", "--flood-ms", "10000"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("flood")
        })
        .collect();
    // Nine flooding processes (one datagram every 100 µs each) saturate the two cores: a reply may miss the
    // watcher's deadline (1 sample in 50 once in CI), which is load, not a lost address.
    assert_only_the_owner_answers(&lab, &owners, 10_000, "forged flood", true);
    for mut f in floods {
        let _ = f.wait();
    }
    let rejected = metric_sum(&speaker_metrics(&lab, "node-1"), "ferrolb_speaker_gossip_rejects_total");
    assert!(rejected > 1000.0, "node-1 saw and rejected the flood: {rejected}");
    assert_eq!(total_takeovers(&lab), before, "a forged flood moved an address");
}

/// The API server frozen (SIGSTOP) and an owner killed: liveness alone moves its addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_server_frozen_liveness_alone_moves_a_dead_owners_address() {
    let _serial = one_lab_at_a_time().await;
    let (lab, _client, owners) = lab_with_owners().await;
    let api = lab.state().procs.iter().find(|p| p.role == "kube-apiserver").map(|p| p.pid).expect("apiserver");
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(api), sig).expect("signal apiserver");
    signal(nix::sys::signal::Signal::SIGSTOP);
    let (ip, owner) = owners.iter().last().map(|(i, o)| (i.clone(), o.clone())).expect("an address");
    lab.ok(&["kill", &owner]);
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let next = election::owner(ip.parse::<IpAddr>().expect("ip"), rest.iter().copied()).expect("next").to_string();
    let moved = std::panic::AssertUnwindSafe(eventually(
        "the address to move with the API server frozen",
        Duration::from_secs(10),
        || async { (answering_nodes(&lab, &ip) == [next.clone()]).then_some(()) },
    ));
    let moved = futures::FutureExt::catch_unwind(moved).await;
    signal(nix::sys::signal::Signal::SIGCONT);
    if let Err(panic) = moved {
        std::panic::resume_unwind(panic);
    }
    lab.ok(&["revive", &owner]);
    wait_answered_by(&lab, &ip, &[&owner]).await;
}

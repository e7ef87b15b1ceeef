//! A rolling upgrade from the speakers before the ring of watchers keeps one answerer per address (issue 19).
//!
//! The speakers up to commit 7c38fcf speak liveness format `FLB2` (every speaker heartbeats every other); this
//! one speaks `FLB3` (a ring of watchers), still reads `FLB2`, and while an old speaker was heard in the last 10 s
//! also heartbeats every speaker in `FLB2` (model/liveness.rs `encode_legacy`, model/membership.rs
//! `legacy_peers`). Here real processes show it: a 3-node lab whose speakers all start as the old binary, six
//! Services, and ARP asked for every address from `host` throughout while the speakers are replaced one node at
//! a time, with an owner hard-killed twice while the versions are mixed (an old owner once one node runs the new
//! speaker, a new owner once two do), each time with one old and one new survivor.
//!
//! Needs root and the old speaker's binary in `FERROLB_OLD_SPEAKER`: `make upgrade-test` builds it from 7c38fcf
//! (tests/lab/build-old-speaker.sh, cached outside the repo) and runs this. It is not in `make test` (CI has no
//! second build of old code, and maybe no history to build it from), and without the variable it fails rather
//! than pass having shown nothing; `cargo test -p ferrolb-tests` leaves it out (`test = false` in Cargo.toml).

use ferrolb_speaker::model::election;
use ferrolb_tests::harness::{
    TestLab, create_yaml, eventually, ingress, metric_sum, node_macs, one_lab_at_a_time, speaker_metrics,
    wait_answered_by,
};
use ferrolb_tests::lab::arping::WatchReport;
use ferrolb_tests::lab::net;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_ferrolb-lab");
const LAB: &str = "flbu";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// One ARP request per address this often, throughout.
const ASK_EVERY_MS: u64 = 100;

/// The speaker before the ring of watchers, which only speaks `FLB2`.
fn old_speaker() -> PathBuf {
    let path = std::env::var_os("FERROLB_OLD_SPEAKER").map(PathBuf::from).expect(
        "FERROLB_OLD_SPEAKER must name the speaker binary of commit 7c38fcf (`make upgrade-test` builds it and \
         sets it)",
    );
    assert!(path.is_file(), "FERROLB_OLD_SPEAKER={} is not a file", path.display());
    std::fs::canonicalize(&path).expect("old speaker path")
}

/// This commit's speaker, built beside the lab binary.
fn new_speaker() -> PathBuf {
    let path = Path::new(EXE).with_file_name("ferrolb-speaker");
    assert!(path.is_file(), "{} is missing: `cargo build --workspace --bins` first", path.display());
    std::fs::canonicalize(&path).expect("new speaker path")
}

/// The binary a node's speaker process runs now: `ip netns exec` enters the namespace and execs it in the
/// recorded process, so until it has, that process is still `ip`.
fn running_binary(lab: &TestLab, node: &str) -> PathBuf {
    let state = lab.state();
    let pid = state.speaker(node).map(|p| p.pid);
    let pid = pid.unwrap_or_else(|| panic!("no speaker recorded on {node}"));
    for _ in 0..200 {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap_or_else(|e| panic!("{node}'s speaker (pid {pid}): {e}"));
        if exe.file_name().is_none_or(|name| name != "ip") {
            return exe;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{node}'s speaker (pid {pid}) is still `ip netns exec` after 10 s")
}

/// Log lines of `witness`'s speaker saying how it judges `node` ("node=X verdict=Y": old and new speakers log
/// alike), in order.
fn verdicts(lab: &TestLab, witness: &str, node: &str) -> Vec<String> {
    let log = std::fs::read_to_string(lab.state().log(&format!("speaker {witness}"))).unwrap_or_default();
    let needle = format!("node={node} verdict=");
    log.lines()
        .filter_map(|l| Some(l[l.find(&needle)? + needle.len()..].split_whitespace().next()?.to_string()))
        .collect()
}

fn alive_verdicts(lab: &TestLab, witness: &str, node: &str) -> usize {
    verdicts(lab, witness, node).iter().filter(|v| *v == "Alive").count()
}

/// Which node answers each address: the election among `nodes` (old and new speakers elect alike).
fn owners_among(addresses: &[String], nodes: &[&str]) -> BTreeMap<String, String> {
    addresses
        .iter()
        .map(|ip| {
            let owner = election::owner(ip.parse::<IpAddr>().expect("ip"), nodes.iter().copied()).expect("an owner");
            (ip.clone(), owner.to_string())
        })
        .collect()
}

async fn wait_owners(lab: &TestLab, owners: &BTreeMap<String, String>) {
    for (ip, owner) in owners {
        wait_answered_by(lab, ip, &[owner]).await;
    }
}

/// Everything one address's ARP watch saw, summed over its consecutive windows.
#[derive(Debug, Default)]
struct Seen {
    windows: u64,
    samples: u64,
    unanswered: u64,
    several: u64,
    changes: u64,
    macs: BTreeMap<String, u64>,
    /// The windows that had several answerers, as reported (for the failure message).
    several_windows: Vec<WatchReport>,
}

/// An ARP asker per address in the `host` namespace for as long as the upgrade runs: `ferrolb-lab arpwatch` in
/// back-to-back windows, so every answering MAC is recorded and every request answered by two MACs counted.
struct Watchers {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, std::thread::JoinHandle<Seen>)>,
}

impl Watchers {
    fn start(lab: &TestLab, addresses: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = addresses
            .iter()
            .map(|ip| {
                let (ip, stop, name, dir) = (ip.clone(), stop.clone(), lab.name.clone(), lab.dir.clone());
                let thread_ip = ip.clone();
                let handle = std::thread::spawn(move || watch_until(&name, &dir, &thread_ip, &stop));
                (ip, handle)
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops asking (after the current window) and returns what each address saw.
    fn finish(mut self) -> BTreeMap<String, Seen> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|(ip, handle)| (ip, handle.join().expect("watch thread")))
            .collect()
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        // On a failed assertion: the threads end with their window, or when the lab is gone.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch_until(name: &str, dir: &Path, ip: &str, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let interval = ASK_EVERY_MS.to_string();
    while !stop.load(Ordering::Relaxed) {
        let out = Command::new(EXE)
            .args(["--name", name, "--dir"])
            .arg(dir)
            .args(["exec", "host", "--", EXE, "arpwatch", ip, "--interval-ms", &interval, "--duration-ms", "3000"])
            .env_remove("RUST_BACKTRACE")
            .output();
        let Some(report) = out.ok().and_then(|o| serde_json::from_slice::<WatchReport>(&o.stdout).ok()) else {
            // The lab is gone (a failed test took it down): nothing more to see.
            break;
        };
        seen.windows += 1;
        seen.samples += report.samples;
        seen.unanswered += report.unanswered;
        seen.several += report.several;
        seen.changes += report.changes;
        for (mac, n) in &report.macs {
            *seen.macs.entry(mac.clone()).or_default() += n;
        }
        if report.several > 0 {
            seen.several_windows.push(report);
        }
    }
    seen
}

/// Replaces `node`'s speaker with `binary` (SIGTERM: the old one says it is leaving) and waits for evidence the
/// new process runs and that it and every other speaker hear each other whatever their formats: it judges each
/// peer alive, and each peer judges it alive again after its leaving. Then every address is with its owner.
async fn replace_speaker(lab: &TestLab, node: &str, binary: &Path, owners: &BTreeMap<String, String>) {
    let peers: Vec<&str> = NODES.iter().copied().filter(|n| *n != node).collect();
    let alive_before: Vec<usize> = peers.iter().map(|p| alive_verdicts(lab, p, node)).collect();
    let binary_arg = binary.display().to_string();
    lab.ok(&["restart-speaker", node, "--binary", &binary_arg]);
    assert_eq!(running_binary(lab, node), binary, "{node} runs the binary it was given");
    for peer in &peers {
        eventually(&format!("{node}'s new speaker judging {peer} alive"), Duration::from_secs(30), || async {
            (verdicts(lab, node, peer).last().map(String::as_str) == Some("Alive")).then_some(())
        })
        .await;
    }
    for (peer, before) in peers.iter().zip(alive_before) {
        eventually(&format!("{peer} judging {node}'s new speaker alive"), Duration::from_secs(30), || async {
            let alive_again = alive_verdicts(lab, peer, node) > before;
            (alive_again && verdicts(lab, peer, node).last().map(String::as_str) == Some("Alive")).then_some(())
        })
        .await;
    }
    wait_owners(lab, owners).await;
    println!("{node}: now {}; every address with its owner again", binary.display());
}

/// `old` or `new`: which build a node's speaker runs.
fn build_of(lab: &TestLab, node: &str, old: &Path) -> &'static str {
    if running_binary(lab, node) == old { "old" } else { "new" }
}

/// Hard-kills the owner among `candidates` one of whose addresses would go to a survivor running
/// `successor_binary` (any owner if none would), and shows each of its addresses move to the one survivor the
/// election names, old and new speakers agreeing; then revives it (its speaker restarts from the same binary) and
/// waits until every address is back with its owner. Returns a line for the report.
async fn kill_an_owner(
    lab: &TestLab,
    owners: &BTreeMap<String, String>,
    candidates: &[&str],
    successor_binary: &Path,
    old: &Path,
    phase: &str,
) -> String {
    let addresses: Vec<String> = owners.keys().cloned().collect();
    let moves = |victim: &str| {
        let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != victim).collect();
        let after = owners_among(&addresses, &survivors);
        owners.iter().filter(|(_, o)| *o == victim).map(|(ip, _)| (ip.clone(), after[ip].clone())).collect::<Vec<_>>()
    };
    let to_successor = |victim: &&str| moves(victim).iter().any(|(_, to)| running_binary(lab, to) == successor_binary);
    let victim = candidates
        .iter()
        .copied()
        .find(to_successor)
        .or_else(|| candidates.iter().copied().find(|v| !moves(v).is_empty()))
        .unwrap_or_else(|| panic!("{phase}: none of {candidates:?} owns an address"));
    let moved = moves(victim);
    let (probed, probed_to) = moved
        .iter()
        .find(|(_, to)| running_binary(lab, to) == successor_binary)
        .or(moved.first())
        .cloned()
        .expect("an address of the victim");
    let describe = |node: &str| format!("{node} ({})", build_of(lab, node, old));
    let victim_binary = running_binary(lab, victim);
    // Named now: once killed, its process is gone.
    let victim_named = describe(victim);
    println!("{phase}: killing {victim_named}; its addresses go to {moved:?}");
    let survivors: Vec<String> = NODES.iter().filter(|n| **n != victim).map(|n| describe(n)).collect();
    let report = lab.probe_while("tcp", &format!("{probed}:80"), 10_000, || {
        lab.ok(&["kill", victim]);
    });
    for (ip, to) in &moved {
        wait_answered_by(lab, ip, &[to]).await;
    }
    // The others never moved (judged after the victim's addresses were seen with their new owners).
    for (ip, owner) in owners.iter().filter(|(_, o)| *o != victim) {
        wait_answered_by(lab, ip, &[owner]).await;
    }
    let line = format!(
        "{phase}: killed {}, survivors {survivors:?}; {moved:?} moved; {probed} (to {}): longest TCP gap {:.0} ms, \
         {} of {} probes answered, first {} last {}",
        victim_named,
        describe(&probed_to),
        report["max_gap_ms"].as_f64().unwrap_or(f64::NAN),
        report["answered"],
        report["sent"],
        report["first"],
        report["last"]
    );
    println!("{line}");
    assert_eq!(report["last"].as_str(), Some(probed_to.as_str()), "{phase}: the survivor serves {probed}");
    lab.ok(&["revive", victim]);
    assert_eq!(running_binary(lab, victim), victim_binary, "{victim} revived with the speaker it ran");
    wait_owners(lab, owners).await;
    line
}

/// Old speakers everywhere, replaced one node at a time by this build, with an owner hard-killed twice while the
/// versions are mixed: never two MACs answer one ARP request, the killed owners' addresses move to the survivor
/// the election names, and at the end every address is answered by its owner alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_flb2_speakers_keeps_one_answerer_per_address() {
    let (old, new) = (old_speaker(), new_speaker());
    let _serial = one_lab_at_a_time().await;
    let old_arg = old.display().to_string();
    let lab = TestLab::start_with(EXE, LAB, 3, &["--speaker-binary", &old_arg]);
    for node in NODES {
        assert_eq!(running_binary(&lab, node), old, "{node} starts with the old speaker");
    }
    let client = lab.admin().await;
    create_yaml(&client, ferrolb_tests::harness::LAB_POOL).await.expect("pool");
    create_yaml(
        &client,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: default, labels: {app: web}}\nspec: {nodeName: node-2, containers: [{name: c, image: lab/x}]}\n",
    )
    .await
    .expect("pod");
    let mut addresses = Vec::new();
    for i in 1..=6 {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{i}, namespace: default}}\nspec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        create_yaml(&client, &svc).await.expect("service");
        let ip = eventually(&format!("an address for web-{i}"), Duration::from_secs(30), || async {
            ingress(&client, "default", &format!("web-{i}")).await.into_iter().next()
        })
        .await;
        addresses.push(ip);
    }
    let owners = owners_among(&addresses, &NODES);
    println!("owners: {owners:?}");
    // The old speakers answer for every address first: the asking starts from a working cluster.
    wait_owners(&lab, &owners).await;
    for node in NODES {
        for peer in NODES.iter().filter(|p| **p != node) {
            assert_eq!(verdicts(&lab, node, peer).last().map(String::as_str), Some("Alive"), "{node} hears {peer}");
        }
    }
    let watchers = Watchers::start(&lab, &addresses);

    replace_speaker(&lab, "node-1", &new, &owners).await;
    let first_kill = kill_an_owner(&lab, &owners, &["node-2", "node-3"], &new, &old, "1 new, 2 old").await;
    replace_speaker(&lab, "node-2", &new, &owners).await;
    let second_kill = kill_an_owner(&lab, &owners, &["node-1", "node-2"], &old, &old, "2 new, 1 old").await;
    // The old speakers rejected what only new speakers read (hellos, suspicions, verdicts) and nothing else:
    // counted before the last one is replaced.
    let old_rejects = metric_sum(&speaker_metrics(&lab, "node-3"), "ferrolb_speaker_gossip_rejects_total");
    replace_speaker(&lab, "node-3", &new, &owners).await;
    for node in NODES {
        assert_eq!(running_binary(&lab, node), new, "{node} runs the new speaker at the end");
    }
    // The old format ends with the last old speaker: the new ones go back to heartbeating their ring in FLB3.
    // Evidence, at node-1's liveness port: a window of 100 FLB3 datagrams (in the old format's mode a new
    // speaker's heartbeats are all FLB2) with no FLB2 datagram in it.
    let node1 = lab.state().node("node-1").expect("node-1").netns.clone();
    net::count_liveness_formats(&node1, 7946).expect("count liveness formats");
    let window = std::cell::Cell::new((0u64, 0u64));
    let flb2_windows = std::cell::Cell::new(0u32);
    eventually("a window of 100 FLB3 datagrams at node-1 without FLB2", Duration::from_secs(60), || async {
        let (flb2, flb3) = net::take_liveness_formats(&node1).expect("liveness format counts");
        let (sum2, sum3) = (window.get().0 + flb2, window.get().1 + flb3);
        if sum3 < 100 {
            window.set((sum2, sum3));
            return None;
        }
        window.set((0, 0));
        if sum2 > 0 {
            flb2_windows.set(flb2_windows.get() + 1);
            return None;
        }
        Some(())
    })
    .await;
    let old_format_windows = flb2_windows.get();

    let seen = watchers.finish();
    let macs = node_macs(&lab);
    let name = |mac: &String| macs.get(mac).cloned().unwrap_or_else(|| format!("unknown {mac}"));
    println!("ARP from host, one request per address every {ASK_EVERY_MS} ms throughout the upgrade:");
    for (ip, s) in &seen {
        let answered: BTreeMap<String, u64> = s.macs.iter().map(|(m, n)| (name(m), *n)).collect();
        println!(
            "  {ip} (owner {}): {} requests in {} windows, {} unanswered, {} answered by several MACs, {} owner \
             changes; answered by {answered:?}",
            owners[ip], s.samples, s.windows, s.unanswered, s.several, s.changes
        );
    }
    println!("{first_kill}\n{second_kill}");
    println!("old speaker on node-3: {old_rejects} liveness datagrams rejected (formats it cannot read)");
    println!("after the upgrade, windows of 100 FLB3 datagrams at node-1 with FLB2 in them: {old_format_windows}");
    for (ip, s) in &seen {
        assert!(s.samples > 0, "{ip} was asked for");
        assert_eq!(s.several, 0, "{ip}: two MACs answered one request: {:?}", s.several_windows);
        for mac in s.macs.keys() {
            assert!(macs.contains_key(mac), "{ip} answered by {mac}, no node's MAC");
        }
    }
    // Every address answered at the end, by its owner alone, asked afresh now that everything settled.
    wait_owners(&lab, &owners).await;
}

//! What to tell users, and when: each function compares what was with what is and returns the notices to
//! give — on change only, never on every pass. The words come from [`crate::model::diagnose`]; the shell
//! ([`crate::kube::events`]) logs each notice and publishes its Event.

use crate::model::claim::Conflict;
use crate::model::diagnose;
use crate::model::plan::{Announced, Announcements};
use crate::model::status;
use crate::wire::Mac;
use ferrolb_crds::service::ServiceKey;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Who a notice is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A Service: the Event goes on it.
    Service {
        /// The Service.
        key: ServiceKey,
        /// Its uid (an Event names the object it is about).
        uid: String,
    },
    /// This node: the Event goes on its Node.
    Node,
    /// Nobody: a log line only.
    LogOnly,
}

/// One thing to tell users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A Warning (else Normal / info).
    pub warning: bool,
    /// Event reason (also the log line's `reason`).
    pub reason: &'static str,
    /// Who it is about.
    pub subject: Subject,
    /// The words.
    pub note: String,
}

impl Notice {
    fn warning(reason: &'static str, subject: Subject, note: String) -> Self {
        Self { warning: true, reason, subject, note }
    }

    fn normal(reason: &'static str, subject: Subject, note: String) -> Self {
        Self { warning: false, reason, subject, note }
    }
}

fn on_service(key: &ServiceKey, uid: &str) -> Subject {
    Subject::Service { key: key.clone(), uid: uid.to_string() }
}

/// Services whose addresses nobody may announce: told by the reporting speaker only, on change. Every speaker
/// keeps `before` so that a new reporter (the previous one died) does not repeat what was already said.
pub fn unannounced(before: &BTreeMap<ServiceKey, diagnose::Problem>, now: &Announcements) -> Vec<Notice> {
    if !now.reporter {
        return Vec::new();
    }
    let told = diagnose::changed(before, &now.unannounced).into_iter().map(|(key, problem)| {
        Notice::warning(diagnose::NO_ELIGIBLE_NODE, on_service(key, &problem.uid), problem.note.clone())
    });
    let healed = before.keys().filter(|k| !now.unannounced.contains_key(*k)).map(|key| {
        let note = format!("{key}: every address has an owner again (or the Service is gone)");
        Notice::normal(diagnose::NO_ELIGIBLE_NODE, Subject::LogOnly, note)
    });
    told.chain(healed).collect()
}

/// Services with addresses this node won but cannot answer for, on change.
pub fn announce_failed(
    before: &BTreeMap<ServiceKey, diagnose::Problem>,
    now: &BTreeMap<ServiceKey, diagnose::Problem>,
) -> Vec<Notice> {
    diagnose::changed(before, now)
        .into_iter()
        .map(|(key, problem)| {
            Notice::warning(diagnose::ANNOUNCE_FAILED, on_service(key, &problem.uid), problem.note.clone())
        })
        .collect()
}

/// Services this node now answers for, or answers for with other addresses: MetalLB's `nodeAssigned`.
pub fn takeovers(
    node: &str,
    before: &BTreeMap<ServiceKey, Announced>,
    now: &BTreeMap<ServiceKey, Announced>,
) -> Vec<Notice> {
    status::takeovers(before, now)
        .into_iter()
        .map(|(key, a)| {
            let ips: Vec<String> = a.ips.iter().map(ToString::to_string).collect();
            let interfaces: Vec<&str> = a.interfaces.iter().map(String::as_str).collect();
            let note = diagnose::node_assigned(node, &ips, &interfaces);
            Notice::normal(diagnose::NODE_ASSIGNED, on_service(key, &a.uid), note)
        })
        .collect()
}

/// When this node starts or stops hearing nothing from peers that show other signs of life.
pub fn liveness_channel(before: &BTreeSet<String>, now: &BTreeSet<String>, port: u16) -> Option<Notice> {
    if before == now {
        return None;
    }
    if now.is_empty() {
        let note = diagnose::CHANNEL_HEALED.to_string();
        return Some(Notice::normal(diagnose::LIVENESS_CHANNEL_HEALED, Subject::Node, note));
    }
    let peers: Vec<&str> = now.iter().map(String::as_str).collect();
    let note = diagnose::channel_broken(&peers, port);
    Some(Notice::warning(diagnose::LIVENESS_CHANNEL_BROKEN, Subject::Node, note))
}

/// When kube-proxy's IPVS starts or stops running without strictARP on this node.
pub fn strict_arp(missing_before: bool, missing_now: bool) -> Option<Notice> {
    match (missing_before, missing_now) {
        (false, true) => Some(Notice::warning(
            diagnose::STRICT_ARP_DISABLED,
            Subject::Node,
            diagnose::STRICT_ARP_MISSING.to_string(),
        )),
        (true, false) => {
            Some(Notice::normal(diagnose::STRICT_ARP_DISABLED, Subject::LogOnly, "strictARP in effect again".into()))
        }
        _ => None,
    }
}

/// A conflict is told at most once per address and MAC in this long.
const QUIET: Duration = Duration::from_secs(60);

/// Claims by MACs no peer has named yet, kept at most.
const UNSURE_MAX: usize = 256;

/// How long a claim by a MAC no peer has named waits before it counts as a stranger's: a restarted speaker learns
/// its peers' MACs from their first words, within milliseconds of greeting them, and may probe an address a
/// peer answers in the same moment.
pub const STRANGER_AFTER: Duration = Duration::from_secs(2);

/// Which conflicts were told when, so a stranger that keeps answering is not told of every few seconds; and the
/// claims by MACs not known yet, with when each was first heard.
#[derive(Debug, Default)]
pub struct ConflictMemory {
    told: BTreeMap<(IpAddr, Mac), Instant>,
    unsure: Vec<(Conflict, Instant)>,
}

impl ConflictMemory {
    /// The conflicts to tell at `now`, each claimant named by the node whose MAC it is (`macs`: what the peers
    /// said their MACs are). A claim by a MAC no peer has named waits [`STRANGER_AFTER`] for a peer to name it
    /// (docs/design.md §6.5): a peer answering for an address is no stranger because this speaker has not heard
    /// it yet. Named then, it is that node's; still unknown, a stranger's.
    pub fn identify(
        &mut self,
        conflicts: Vec<Conflict>,
        macs: &BTreeMap<[u8; 6], String>,
        now: Instant,
    ) -> Vec<Conflict> {
        let mut out = Vec::new();
        let waiting = std::mem::take(&mut self.unsure);
        for (mut c, heard) in waiting.into_iter().chain(conflicts.into_iter().map(|c| (c, now))) {
            if c.node.is_none() {
                c.node = macs.get(&c.mac.0).cloned();
            }
            let waiting = self.unsure.iter().any(|(u, _)| (u.ip, u.mac) == (c.ip, c.mac));
            if c.node.is_some() || now.saturating_duration_since(heard) >= STRANGER_AFTER {
                out.push(c);
            } else if !waiting && self.unsure.len() < UNSURE_MAX {
                self.unsure.push((c, heard));
            } else if !waiting {
                // No room to wait (a flood of claims): told at once, as before the wait, rather than lost (the
                // claim rules report a held-back address once per hold).
                out.push(c);
            }
        }
        out
    }

    /// Notices for conflicts seen at `now` over addresses this node answers for or wants: a stranger's MAC is a
    /// Warning on the Service naming it; another node's is a log line (the two settle it, docs/design.md §6.5).
    pub fn notices(
        &mut self,
        conflicts: &[Conflict],
        services: &BTreeMap<ServiceKey, Announced>,
        node: &str,
        now: Instant,
    ) -> Vec<Notice> {
        self.told.retain(|_, at| now.saturating_duration_since(*at) < QUIET * 10);
        let mut out = Vec::new();
        for c in conflicts {
            if self.told.get(&(c.ip, c.mac)).is_some_and(|at| now.saturating_duration_since(*at) < QUIET) {
                continue;
            }
            self.told.insert((c.ip, c.mac), now);
            out.push(match &c.node {
                Some(other) => Notice::warning(
                    diagnose::ADDRESS_CONFLICT,
                    Subject::LogOnly,
                    diagnose::node_claims(c.ip, c.mac, other, c.kept),
                ),
                None => {
                    let subject = services
                        .iter()
                        .find(|(_, a)| a.ips.contains(&c.ip))
                        .map_or(Subject::LogOnly, |(key, a)| on_service(key, &a.uid));
                    let note = diagnose::stranger_claims(c.ip, c.mac, node, c.kept);
                    Notice::warning(diagnose::ADDRESS_CONFLICT, subject, note)
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::Problem;

    fn problem(uid: &str, note: &str) -> Problem {
        Problem { uid: uid.into(), note: note.into(), labels: BTreeMap::new() }
    }

    /// A restarted speaker hears a peer answer before it has heard the peer's MACs: that is no stranger.
    #[test]
    fn a_claim_by_an_unknown_mac_waits_for_a_peer_to_name_it() {
        let ip = IpAddr::from([198, 19, 0, 1]);
        let (peer, stranger) = (Mac([2, 0, 0, 0, 0, 2]), Mac([0x52, 0x54, 0, 0, 0, 9]));
        let claim = |mac| Conflict { ip, mac, node: None, kept: false };
        let (mut memory, t0, unknown) = (ConflictMemory::default(), Instant::now(), BTreeMap::new());
        assert!(memory.identify(vec![claim(peer), claim(stranger)], &unknown, t0).is_empty(), "both wait");
        let t1 = t0 + STRANGER_AFTER / 2;
        assert!(memory.identify(vec![claim(peer)], &unknown, t1).is_empty(), "still waiting, kept once");
        let macs = BTreeMap::from([(peer.0, "node-2".to_string())]);
        let named = memory.identify(Vec::new(), &macs, t1);
        assert_eq!(named, vec![Conflict { node: Some("node-2".into()), ..claim(peer) }], "the peer named it");
        assert!(memory.identify(Vec::new(), &macs, t1).is_empty(), "the stranger still waits");
        let told = memory.identify(Vec::new(), &macs, t0 + STRANGER_AFTER);
        assert_eq!(told, vec![claim(stranger)], "nobody named it: a stranger's");
        assert!(memory.identify(Vec::new(), &macs, t0 + STRANGER_AFTER * 2).is_empty(), "told once");
        let flood: Vec<Conflict> =
            (0..1000u32).map(|i| Conflict { ip: IpAddr::from(i.to_be_bytes()), ..claim(stranger) }).collect();
        let at_once = memory.identify(flood, &unknown, t0);
        assert_eq!(at_once.len(), 1000 - UNSURE_MAX, "a flood waits in a bounded list; the rest is told at once");
        let later = memory.identify(Vec::new(), &unknown, t0 + STRANGER_AFTER);
        assert_eq!(later.len(), UNSURE_MAX, "and the waiting ones after the wait: none lost");
    }

    #[test]
    fn unannounced_is_told_by_the_reporter_on_change_and_its_end_logged() {
        let (a, b) = (ServiceKey::new("ns", "a"), ServiceKey::new("ns", "b"));
        let before = BTreeMap::from([(a.clone(), problem("ua", "no node")), (b.clone(), problem("ub", "none"))]);
        let mut now = Announcements { reporter: true, ..Announcements::default() };
        now.unannounced.insert(a.clone(), problem("ua", "no node"));
        assert_eq!(unannounced(&before, &now).len(), 1, "a unchanged: nothing; b healed: one log line");
        assert_eq!(unannounced(&before, &now)[0].subject, Subject::LogOnly);
        now.unannounced.insert(a.clone(), problem("ua", "other reason"));
        let told = unannounced(&before, &now);
        assert_eq!(told[0].subject, on_service(&a, "ua"));
        assert!(told[0].warning && told[0].note == "other reason");
        now.reporter = false;
        assert!(unannounced(&BTreeMap::new(), &now).is_empty(), "only the reporter speaks");
    }

    #[test]
    fn the_channel_is_told_broken_naming_peers_and_healed_once() {
        let none = BTreeSet::new();
        let two = BTreeSet::from(["node-2".to_string(), "node-3".to_string()]);
        assert_eq!(liveness_channel(&none, &none, 7946), None);
        let broken = liveness_channel(&none, &two, 7946).expect("broken");
        assert_eq!(broken.reason, diagnose::LIVENESS_CHANNEL_BROKEN);
        assert!(broken.note.contains("node-2, node-3 over UDP 7946"), "{}", broken.note);
        assert!(!broken.note.contains("  "), "no runs of spaces: {:?}", broken.note);
        assert_eq!(liveness_channel(&two, &two, 7946), None);
        assert_eq!(liveness_channel(&two, &none, 7946).map(|n| n.reason), Some(diagnose::LIVENESS_CHANNEL_HEALED));
    }

    #[test]
    fn every_note_reads_as_one_line_without_runs_of_spaces() {
        let ip: IpAddr = "198.19.0.1".parse().expect("ip");
        for note in [
            diagnose::STRICT_ARP_MISSING.to_string(),
            diagnose::stranger_claims(ip, Mac([2, 0, 0, 0, 0, 9]), "node-1", true),
            diagnose::stranger_claims(ip, Mac([2, 0, 0, 0, 0, 9]), "node-1", false),
            diagnose::node_claims(ip, Mac([2, 0, 0, 0, 0, 9]), "node-2", true),
            diagnose::channel_broken(&["node-2"], 7946),
        ] {
            assert!(!note.contains("  ") && !note.contains('\n'), "{note:?}");
        }
    }

    #[test]
    fn strict_arp_is_told_when_it_goes_missing_and_logged_when_back() {
        assert!(strict_arp(false, true).is_some_and(|n| n.warning && n.subject == Subject::Node));
        assert!(strict_arp(true, false).is_some_and(|n| !n.warning && n.subject == Subject::LogOnly));
        assert_eq!(strict_arp(true, true), None);
        assert_eq!(strict_arp(false, false), None);
    }

    #[test]
    fn a_stranger_is_told_on_its_service_once_a_minute_and_a_node_in_the_log() {
        let ip: IpAddr = "198.19.0.1".parse().expect("ip");
        let a = ServiceKey::new("ns", "a");
        let services = BTreeMap::from([(
            a.clone(),
            Announced { uid: "ua".into(), ips: BTreeSet::from([ip]), interfaces: Default::default() },
        )]);
        let stranger = Conflict { ip, mac: Mac([2, 0, 0, 0, 0, 9]), node: None, kept: false };
        let node = Conflict { ip, mac: Mac([2, 0, 0, 0, 0, 8]), node: Some("node-2".into()), kept: true };
        let mut memory = ConflictMemory::default();
        let t0 = Instant::now();
        let told = memory.notices(&[stranger.clone(), node], &services, "node-1", t0);
        assert_eq!(told.len(), 2);
        assert_eq!(told[0].subject, on_service(&a, "ua"));
        assert_eq!(told[1].subject, Subject::LogOnly);
        assert!(
            memory
                .notices(std::slice::from_ref(&stranger), &services, "node-1", t0 + Duration::from_secs(5))
                .is_empty()
        );
        assert_eq!(memory.notices(&[stranger], &services, "node-1", t0 + QUIET).len(), 1);
    }
}

//! An ARP and NDP prober for tests and humans: sends who-has requests (IPv4) or neighbour solicitations (IPv6)
//! on an interface and reports every MAC that answers, so "exactly one node answers" can be checked (run it
//! inside the `host` namespace).

use super::{LabError, Result};
use ferrolb_speaker::wire::Mac;
use ferrolb_speaker::wire::arp::{ArpFrame, Operation};
use ferrolb_speaker::wire::ndp::{self, NdpFrame};
use pnet_datalink::Channel;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A raw socket on `iface` and the request for one target, sent from the interface's own address of the
/// target's family.
struct Prober {
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    source: IpAddr,
    mac: Mac,
    request: Vec<u8>,
}

impl Prober {
    fn open(iface: &str, target: IpAddr, read_timeout: Duration) -> Result<Self> {
        let err = |e: String| LabError::Usage(format!("arping on {iface}: {e}"));
        let nic = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
            .ok_or_else(|| err("no such interface".into()))?;
        let mac = Mac(nic.mac.ok_or_else(|| err("no MAC".into()))?.octets());
        // A global source of the target's family: answers go back to it (link-local would do, but the lab's
        // neighbours know the global one).
        let source = nic
            .ips
            .iter()
            .map(|n| n.ip())
            .find(|ip| match (ip, target) {
                (IpAddr::V4(_), IpAddr::V4(_)) => true,
                (IpAddr::V6(v6), IpAddr::V6(_)) => !v6.is_unicast_link_local(),
                _ => false,
            })
            .ok_or_else(|| err(format!("no address of {target}'s family")))?;
        let config = pnet_datalink::Config { read_timeout: Some(read_timeout), ..Default::default() };
        let (tx, rx) = match pnet_datalink::channel(&nic, config).map_err(|e| err(e.to_string()))? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(err("not Ethernet".into())),
        };
        let request = match (source, target) {
            (IpAddr::V4(spa), IpAddr::V4(tpa)) => ArpFrame {
                eth_dst: Mac::BROADCAST,
                eth_src: mac,
                operation: Operation::Request,
                sha: mac,
                spa,
                tha: Mac::ZERO,
                tpa,
            }
            .to_bytes()
            .to_vec(),
            (IpAddr::V6(src), IpAddr::V6(target)) => {
                let group = ndp::solicited_node(target);
                NdpFrame {
                    eth_dst: ndp::multicast_mac(group),
                    eth_src: mac,
                    src,
                    dst: group,
                    kind: ndp::Kind::Solicitation,
                    target,
                    link_layer: Some(mac),
                }
                .to_bytes()
            }
            _ => return Err(err("address families differ".into())),
        };
        Ok(Self { tx, rx, source, mac, request })
    }
}

/// The answering MAC if the frame answers a request for `target` asked from `source`: an ARP reply, or a
/// neighbour advertisement (to the asker, or to all-nodes) for the target.
fn answer(frame: &[u8], target: IpAddr, source: IpAddr) -> Option<Mac> {
    match (target, source) {
        (IpAddr::V4(target), IpAddr::V4(source)) => {
            let reply = ArpFrame::parse(frame).ok()?;
            (reply.operation == Operation::Reply && reply.spa == target && reply.tpa == source).then_some(reply.sha)
        }
        (IpAddr::V6(target), IpAddr::V6(source)) => {
            let advert = NdpFrame::parse(frame).ok()?;
            let to_us = advert.dst == source || advert.dst == ndp::ALL_NODES;
            (matches!(advert.kind, ndp::Kind::Advertisement { .. }) && advert.target == target && to_us)
                .then(|| advert.link_layer.unwrap_or(advert.eth_src))
        }
        _ => None,
    }
}

/// Sends `count` requests for `target` from `iface`, 100 ms apart, and returns the MACs that answered.
pub fn arping(iface: &str, target: IpAddr, count: usize, wait: Duration) -> Result<BTreeSet<String>> {
    let Prober { mut tx, mut rx, source, request, .. } = Prober::open(iface, target, Duration::from_millis(20))?;
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_millis(100 * count as u64) + wait;
    let mut sent = 0;
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if sent < count && Instant::now() >= next_send {
            let _ = tx.send_to(&request, None);
            sent += 1;
            next_send += Duration::from_millis(100);
        }
        let Ok(frame) = rx.next() else { continue };
        if let Some(mac) = answer(frame, target, source) {
            answered.insert(mac.to_string());
        }
    }
    Ok(answered)
}

/// Listens on `iface` for `duration` without sending anything, and returns the sender MAC of every gratuitous
/// ARP about `target` (a request or reply whose sender and target address are both `target`), one per frame.
pub fn gratuitous(iface: &str, target: std::net::Ipv4Addr, duration: Duration) -> Result<Vec<String>> {
    let Prober { mut rx, .. } = Prober::open(iface, IpAddr::V4(target), Duration::from_millis(20))?;
    let deadline = Instant::now() + duration;
    let mut senders = Vec::new();
    while Instant::now() < deadline {
        let Ok(frame) = rx.next() else { continue };
        if let Ok(arp) = ArpFrame::parse(frame)
            && arp.spa == target
            && arp.tpa == target
        {
            senders.push(arp.sha.to_string());
        }
    }
    Ok(senders)
}

/// Round-trip times of `count` single ARP requests for `target` (one outstanding at a time, 20 ms apart);
/// requests unanswered within `timeout` are left out.
pub fn rtt(iface: &str, target: IpAddr, count: usize, timeout: Duration) -> Result<Vec<Duration>> {
    let Prober { mut tx, mut rx, source, request, .. } = Prober::open(iface, target, Duration::from_millis(5))?;
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = Instant::now();
        let _ = tx.send_to(&request, None);
        while sent.elapsed() < timeout {
            let Ok(frame) = rx.next() else { continue };
            if answer(frame, target, source).is_some() {
                rtts.push(sent.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(rtts)
}

/// What watching one address's ARP answers over time saw.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WatchReport {
    /// Samples taken (one request each, answers collected until the next).
    pub samples: u64,
    /// Samples nobody answered.
    pub unanswered: u64,
    /// Samples more than one MAC answered.
    pub several: u64,
    /// Times the single answering MAC differed from the previous single answering MAC.
    pub changes: u64,
    /// Every MAC that answered, with how many samples it answered in.
    pub macs: std::collections::BTreeMap<String, u64>,
    /// Time from the start to the end of the last sample with several answerers (0: none), in ms.
    #[serde(default)]
    pub last_several_ms: u64,
}

/// Asks for `target` every `interval` for `duration` and counts who answered each time: ownership changes and
/// samples with no or several answerers.
pub fn watch(iface: &str, target: IpAddr, interval: Duration, duration: Duration) -> Result<WatchReport> {
    let Prober { mut tx, mut rx, source, request, .. } = Prober::open(iface, target, Duration::from_millis(5))?;
    let mut report = WatchReport::default();
    let mut last_single: Option<String> = None;
    let start = Instant::now();
    let end = start + duration;
    while Instant::now() < end {
        let sample_end = Instant::now() + interval;
        let _ = tx.send_to(&request, None);
        let mut answered = BTreeSet::new();
        while Instant::now() < sample_end {
            let Ok(frame) = rx.next() else { continue };
            if let Some(mac) = answer(frame, target, source) {
                answered.insert(mac.to_string());
            }
        }
        report.samples += 1;
        for mac in &answered {
            *report.macs.entry(mac.clone()).or_default() += 1;
        }
        match answered.len() {
            0 => report.unanswered += 1,
            1 => {
                let only = answered.into_iter().next();
                if last_single.is_some() && last_single != only {
                    report.changes += 1;
                }
                last_single = only;
            }
            _ => {
                report.several += 1;
                report.last_several_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            }
        }
    }
    Ok(report)
}

/// Claims `ip` for this interface's MAC the way a host with a clashing static address does: gratuitous ARP
/// (request and reply form) or an unsolicited neighbour advertisement, `count` times 200 ms apart.
pub fn claim(iface: &str, ip: IpAddr, count: usize) -> Result<String> {
    let Prober { mut tx, mac, .. } = Prober::open(iface, ip, Duration::from_millis(5))?;
    for i in 0..count {
        for frame in ferrolb_speaker::wire::announcements(mac, ip) {
            let _ = tx.send_to(&frame, None);
        }
        if i + 1 < count {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(mac.to_string())
}

//! An ARP prober for tests and humans: sends who-has requests on an interface and reports every MAC that
//! answers, so "exactly one node answers" can be checked (run it inside the `host` namespace).

use super::{LabError, Result};
use ferrolb_speaker::arp::{ArpFrame, Mac, Operation};
use pnet_datalink::Channel;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// A raw socket on `iface` and the who-has request for one target, sent from the interface's own address.
struct Prober {
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    source: Ipv4Addr,
    request: [u8; ferrolb_speaker::arp::FRAME_LEN],
}

impl Prober {
    fn open(iface: &str, target: Ipv4Addr, read_timeout: Duration) -> Result<Self> {
        let err = |e: String| LabError::Usage(format!("arping on {iface}: {e}"));
        let nic = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
            .ok_or_else(|| err("no such interface".into()))?;
        let mac = Mac(nic.mac.ok_or_else(|| err("no MAC".into()))?.octets());
        let source = nic
            .ips
            .iter()
            .find_map(|n| match n.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| err("no IPv4 address".into()))?;
        let config = pnet_datalink::Config { read_timeout: Some(read_timeout), ..Default::default() };
        let (tx, rx) = match pnet_datalink::channel(&nic, config).map_err(|e| err(e.to_string()))? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(err("not Ethernet".into())),
        };
        let request = ArpFrame {
            eth_dst: Mac::BROADCAST,
            eth_src: mac,
            operation: Operation::Request,
            sha: mac,
            spa: source,
            tha: Mac::ZERO,
            tpa: target,
        }
        .to_bytes();
        Ok(Self { tx, rx, source, request })
    }
}

/// The frame if it answers a who-has for `target` asked from `source`.
fn answer(frame: &[u8], target: Ipv4Addr, source: Ipv4Addr) -> Option<ArpFrame> {
    let reply = ArpFrame::parse(frame).ok()?;
    (reply.operation == Operation::Reply && reply.spa == target && reply.tpa == source).then_some(reply)
}

/// Sends `count` requests for `target` from `iface`, 100 ms apart, and returns the MACs that answered.
pub fn arping(iface: &str, target: Ipv4Addr, count: usize, wait: Duration) -> Result<BTreeSet<String>> {
    let Prober { mut tx, mut rx, source, request } = Prober::open(iface, target, Duration::from_millis(20))?;
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
        if let Some(reply) = answer(frame, target, source) {
            answered.insert(reply.sha.to_string());
        }
    }
    Ok(answered)
}

/// Round-trip times of `count` single ARP requests for `target` (one outstanding at a time, 20 ms apart);
/// requests unanswered within `timeout` are left out.
pub fn rtt(iface: &str, target: Ipv4Addr, count: usize, timeout: Duration) -> Result<Vec<Duration>> {
    let Prober { mut tx, mut rx, source, request } = Prober::open(iface, target, Duration::from_millis(5))?;
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
pub fn watch(iface: &str, target: Ipv4Addr, interval: Duration, duration: Duration) -> Result<WatchReport> {
    let Prober { mut tx, mut rx, source, request } = Prober::open(iface, target, Duration::from_millis(5))?;
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
            if let Some(reply) = answer(frame, target, source) {
                answered.insert(reply.sha.to_string());
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
/// (request and reply form), `count` times 200 ms apart.
pub fn claim(iface: &str, ip: Ipv4Addr, count: usize) -> Result<String> {
    let Prober { mut tx, .. } = Prober::open(iface, ip, Duration::from_millis(5))?;
    let nic = pnet_datalink::interfaces().into_iter().find(|i| i.name == iface);
    let mac = Mac(nic.and_then(|n| n.mac).map(|m| m.octets()).unwrap_or([0; 6]));
    for i in 0..count {
        for frame in
            [ferrolb_speaker::arp::gratuitous_request(mac, ip), ferrolb_speaker::arp::gratuitous_reply(mac, ip)]
        {
            let _ = tx.send_to(&frame, None);
        }
        if i + 1 < count {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(mac.to_string())
}

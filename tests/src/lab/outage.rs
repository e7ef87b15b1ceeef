//! A client that measures outages: probes an address every `interval` over UDP, TCP or DNS and reports the longest
//! gap between consecutive answers, and which node answered first and last (run it in the `host` namespace;
//! `ferrolb-lab prober`). The first answer is also announced on stderr (`first answer from <node>`) as it
//! arrives, so a caller can start a fault once the prober demonstrably sees the service, not after a guess.

use super::{LabError, Result};
use serde::Serialize;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one probing run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Longest time without an answer, in ms (the client-observed outage plus at most one interval).
    pub max_gap_ms: f64,
    /// Probes sent.
    pub sent: u64,
    /// Answers received.
    pub answered: u64,
    /// Node that answered first.
    pub first: String,
    /// Node that answered last.
    pub last: String,
}

fn report(times: &[(Instant, String)], start: Instant, end: Instant, sent: u64) -> Report {
    let mut max_gap = Duration::ZERO;
    let mut prev = start;
    for (t, _) in times {
        max_gap = max_gap.max(t.saturating_duration_since(prev));
        prev = *t;
    }
    max_gap = max_gap.max(end.saturating_duration_since(prev));
    Report {
        max_gap_ms: max_gap.as_secs_f64() * 1000.0,
        sent,
        answered: times.len() as u64,
        first: times.first().map(|(_, n)| n.clone()).unwrap_or_default(),
        last: times.last().map(|(_, n)| n.clone()).unwrap_or_default(),
    }
}

/// Says on stderr that the first answer came, from whom.
fn announce_first(times: &[(Instant, String)], node: &str) {
    if times.is_empty() {
        eprintln!("first answer from {node}");
    }
}

/// UDP: a sender thread every `interval`, answers timestamped as they arrive.
pub fn udp(target: SocketAddr, interval: Duration, duration: Duration) -> Result<Report> {
    let err = |e: std::io::Error| LabError::Usage(format!("prober udp {target}: {e}"));
    let socket = UdpSocket::bind(if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).map_err(err)?;
    socket.connect(target).map_err(err)?;
    socket.set_read_timeout(Some(Duration::from_millis(5))).map_err(err)?;
    let sender = socket.try_clone().map_err(err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_sender = stop.clone();
    let sending = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop_sender.load(Ordering::Relaxed) {
            let _ = sender.send(format!("{sent}").as_bytes());
            sent += 1;
            std::thread::sleep(interval);
        }
        sent
    });
    let start = Instant::now();
    let mut times = Vec::new();
    let mut buf = [0u8; 256];
    while start.elapsed() < duration {
        if let Ok(n) = socket.recv(&mut buf) {
            let node = String::from_utf8_lossy(&buf[..n]).split_whitespace().next().unwrap_or("").to_string();
            announce_first(&times, &node);
            times.push((Instant::now(), node));
        }
    }
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap_or(0);
    Ok(report(&times, start, end, sent))
}

/// Runs `attempt` every `interval` for `duration`, each in its own thread, and times the answers: an attempt
/// waiting on a dead owner must not hold up the next, or the outage would be a multiple of its timeout instead of
/// the interval. `attempt` gets the attempt's number and returns who answered, if anyone did.
fn every_interval<F>(interval: Duration, duration: Duration, attempt: F) -> Report
where
    F: Fn(u64) -> Option<String> + Send + Sync + 'static,
{
    let attempt = Arc::new(attempt);
    let start = Instant::now();
    let times: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut running = Vec::new();
    let mut sent = 0;
    while start.elapsed() < duration {
        let began = Instant::now();
        let (times, attempt, number) = (times.clone(), attempt.clone(), sent);
        sent += 1;
        running.push(std::thread::spawn(move || {
            if let Some(node) = attempt(number)
                && let Ok(mut times) = times.lock()
            {
                announce_first(&times, &node);
                times.push((Instant::now(), node));
            }
        }));
        running.retain(|a| !a.is_finished());
        if let Some(rest) = interval.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let end = Instant::now();
    for a in running {
        let _ = a.join();
    }
    let mut times = times.lock().map(|t| t.clone()).unwrap_or_default();
    times.sort_by_key(|(at, _)| *at);
    // Attempts still in flight at the end answer after it; the run is measured up to the end.
    times.retain(|(at, _)| *at <= end);
    report(&times, start, end, sent)
}

/// TCP: a new connection every `interval`, each of which must connect and greet within `budget`.
pub fn tcp(target: SocketAddr, interval: Duration, duration: Duration) -> Result<Report> {
    let budget = interval.max(Duration::from_millis(50));
    Ok(every_interval(interval, duration, move |_| {
        let mut s = TcpStream::connect_timeout(&target, budget).ok()?;
        s.set_read_timeout(Some(budget)).ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }))
}

/// The DNS query the `dns` prober sends: `hostname.bind` TXT in class CH (which a CoreDNS with the `chaos`
/// plugin answers with its host name, the pod's name), with `id`. Written out rather than taken from a DNS
/// library: one fixed question of 31 bytes, and the prober must not depend on a resolver's retries and caching.
pub fn chaos_hostname_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // no flags, one question
    q.extend_from_slice(b"\x08hostname\x04bind\x00");
    q.extend_from_slice(&[0, 16, 0, 3]); // TXT, CH
    q
}

/// The first TXT string of an answer to [`chaos_hostname_query`] (`None` for anything else: an error, another
/// question, a truncated message).
pub fn chaos_hostname_answer(msg: &[u8], query: &[u8]) -> Option<String> {
    let question = query.get(12..)?;
    let is_response = msg.get(2)? & 0x80 != 0;
    let no_error = msg.get(3)? & 0x0f == 0;
    let answers = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    if !is_response || !no_error || answers == 0 || msg.get(12..12 + question.len())? != question {
        return None;
    }
    let mut at = 12 + question.len();
    // The answer's owner name: a compression pointer (2 bytes) or labels up to the root.
    if msg.get(at)? & 0xc0 == 0xc0 {
        at += 2;
    } else {
        while *msg.get(at)? != 0 {
            at += 1 + usize::from(*msg.get(at)?);
        }
        at += 1;
    }
    let rr_type = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    let rdlength = usize::from(u16::from_be_bytes([*msg.get(at + 8)?, *msg.get(at + 9)?]));
    let rdata = msg.get(at + 10..at + 10 + rdlength)?;
    let text_len = usize::from(*rdata.first()?);
    if rr_type != 16 {
        return None;
    }
    Some(String::from_utf8_lossy(rdata.get(1..1 + text_len)?).into_owned())
}

/// DNS over UDP as a resolver asks: every `interval` a query from a new socket (a new source port, so the
/// service's conntrack entries do not pin every query to one backend), each waiting up to 1 s for its answer; the
/// node is the answering server's host name (`hostname.bind`).
pub fn dns(target: SocketAddr, interval: Duration, duration: Duration) -> Result<Report> {
    Ok(every_interval(interval, duration, move |number| {
        let socket = UdpSocket::bind(if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).ok()?;
        let query = chaos_hostname_query(number as u16);
        socket.connect(target).ok()?;
        socket.send(&query).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).ok()?;
        chaos_hostname_answer(&buf[..n], &query)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chaos_answer_yields_the_servers_name_and_anything_else_none() {
        let query = chaos_hostname_query(7);
        assert_eq!(query.len(), 31);
        // CoreDNS's answer: the question echoed, then TXT "coredns-0" under a pointer to the question's name.
        let mut answer = query.clone();
        answer[2] = 0x84; // response, authoritative
        answer[7] = 1; // one answer
        answer.extend_from_slice(&[0xc0, 12, 0, 16, 0, 3, 0, 0, 0, 0, 0, 10, 9]);
        answer.extend_from_slice(b"coredns-0");
        assert_eq!(chaos_hostname_answer(&answer, &query).as_deref(), Some("coredns-0"));
        let mut refused = answer.clone();
        refused[3] = 5;
        assert_eq!(chaos_hostname_answer(&refused, &query), None, "an error is no answer");
        assert!(chaos_hostname_answer(&answer, &chaos_hostname_query(8)).is_some(), "ids are the caller's to match");
        assert_eq!(chaos_hostname_answer(&answer[..answer.len() - 3], &query), None, "truncated");
        assert_eq!(chaos_hostname_answer(&query, &query), None, "a query is no answer");
    }
}

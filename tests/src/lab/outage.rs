//! A client that measures outages: probes an address every `interval` over UDP or TCP and reports the longest
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

/// TCP: a new connection every `interval`, each in its own thread so that one waiting on a dead owner does not
/// hold up the next (each must connect and greet within `budget`). Sequential attempts would make the outage a
/// multiple of the connect timeout instead of the interval.
pub fn tcp(target: SocketAddr, interval: Duration, duration: Duration) -> Result<Report> {
    let start = Instant::now();
    let budget = interval.max(Duration::from_millis(50));
    let times: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut attempts = Vec::new();
    let mut sent = 0;
    while start.elapsed() < duration {
        let began = Instant::now();
        sent += 1;
        let times = times.clone();
        attempts.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect_timeout(&target, budget) else { return };
            let _ = s.set_read_timeout(Some(budget));
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf)
                && n > 0
            {
                let node = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                if let Ok(mut times) = times.lock() {
                    announce_first(&times, &node);
                    times.push((Instant::now(), node));
                }
            }
        }));
        attempts.retain(|a| !a.is_finished());
        if let Some(rest) = interval.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let end = Instant::now();
    for attempt in attempts {
        let _ = attempt.join();
    }
    let mut times = times.lock().map(|t| t.clone()).unwrap_or_default();
    times.sort_by_key(|(at, _)| *at);
    // Attempts still in flight at the end answer after it; the run is measured up to the end.
    times.retain(|(at, _)| *at <= end);
    Ok(report(&times, start, end, sent))
}

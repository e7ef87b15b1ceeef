//! One request/response exchange over TCP or UDP with the lab's echo servers, run inside a namespace
//! (`ferrolb-lab exec host -- ferrolb-lab probe …`). Not to be confused with the outage measurement
//! ([`super::outage`]) or the speaker's RFC 5227 ARP probes.

use super::{LabError, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Connects, reads the greeting line (the serving node's name).
pub fn tcp(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let err = |e: std::io::Error| LabError::Usage(format!("tcp {addr}: {e}"));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).map_err(err)?;
    let _ = stream.write_all(b"");
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Sends one datagram, returns the reply (`<node> <payload>`).
pub fn udp(addr: SocketAddr, payload: &str, timeout: Duration) -> Result<String> {
    let err = |e: std::io::Error| LabError::Usage(format!("udp {addr}: {e}"));
    let socket = UdpSocket::bind(if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).map_err(err)?;
    socket.set_read_timeout(Some(timeout)).map_err(err)?;
    socket.connect(addr).map_err(err)?;
    socket.send(payload.as_bytes()).map_err(err)?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            LabError::Usage(format!("udp {addr}: no answer within {timeout:?}"))
        }
        _ => err(e),
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

//! Plain identifiers the allocation modules share: a Service, a port, an address family.

pub use ferrolb_crds::service::ServiceKey;
use std::fmt;
use std::net::IpAddr;

/// A `(protocol, port)` pair; TCP/53 and UDP/53 are different keys and may share an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Service port.
    pub port: i32,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

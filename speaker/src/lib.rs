//! ferrolb-speaker: decides which node answers for each address and answers ARP (IPv4) or neighbour discovery
//! (IPv6) for it.
//!
//! The folders say what is pure and what does I/O (docs/design.md §1.3):
//! - [`model`] (pure): Kubernetes objects to election facts, the election, the plan (this node's desired
//!   state), the claim rules, liveness rules, signs of life, interface choice, and every word said to users.
//! - [`wire`] (pure): Ethernet, ARP and neighbour-discovery frames, and which of the two a frame takes.
//! - [`datapath`] (I/O): the announcer, raw-socket responders, multicast groups, the host's interfaces and
//!   sysctls, netlink notifications.
//! - [`gossip`] (I/O): the liveness protocol's sockets.
//! - [`kube`] (I/O): trimmed watch caches, the ServiceL2Status writer, Events.
//! - [`telemetry`]: counters the hot paths bump, and `/metrics`.
//! - [`simulation`] (pure): the liveness protocol of thousands of speakers on a virtual clock (tests, bench).
//!
//! [`run`] starts them and wires them together; `planner` is what one wake does. Neither decides anything.

pub mod datapath;
pub mod error;
pub mod gossip;
pub mod kube;
pub mod model;
mod planner;
pub mod run;
pub mod settings;
pub mod simulation;
pub mod telemetry;
pub mod wake;
pub mod wire;

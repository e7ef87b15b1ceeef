//! ferrolb-speaker: decides which node answers for each address and answers ARP for it.
//!
//! Built so far: the pure parts. [`arp`] is the wire format and the accept/reply decision; [`election`] picks
//! one owner per address from what every speaker sees. The raw-socket I/O, the liveness protocol between
//! speakers and the Kubernetes shell come next (see the README's status table).

pub mod arp;
pub mod diagnose;
pub mod election;
pub mod error;
pub mod iface;
pub mod liveness;
pub mod raw;
pub mod report;
pub mod run;
pub mod view;

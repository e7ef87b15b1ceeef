//! ferrolb-controller: hands out addresses from IPAddressPools to LoadBalancer Services.
//!
//! The decisions live in pure modules ([`pool`], [`service`], [`selector`], [`allocator`]) over plain data, with
//! no client, clock or socket inside; the Kubernetes I/O around them gathers inputs and applies outputs.

pub mod allocator;
pub mod error;
pub mod events;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod misplaced;
pub mod pool;
pub mod protection;
pub mod refusal;
pub mod replay;
pub mod run;
pub mod service;

/// Label selectors, shared with the speaker.
pub use ferrolb_crds::selector;
pub mod status;
pub mod trim;

pub use allocator::{Allocator, Assignment, Outcome, PoolUsage, Refusal};
pub use pool::{AddrRange, Family, PoolConfig, PoolProblem, resolve_pools};
pub use service::{PortKey, ServiceIntent, ServiceKey};

//! The speaker's Kubernetes I/O: watch caches trimmed to what the plan reads ([`stores`], [`trim`]), the
//! long-lived ServiceL2Status writer that retries ([`status`]), and the one Event publisher ([`events`]).

pub mod events;
pub mod status;
pub mod stores;
pub mod trim;

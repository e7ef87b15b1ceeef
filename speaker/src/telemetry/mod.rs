//! What the speaker counts ([`stats`]) and how `/metrics` shows it ([`metrics`]).

pub mod metrics;
pub mod stats;

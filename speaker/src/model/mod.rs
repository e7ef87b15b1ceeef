//! The speaker's decisions, as plain functions over plain data: no socket, no API client, no clock read
//! (time is passed in). Nothing here imports [`crate::datapath`], [`crate::gossip`], [`crate::kube`] or
//! [`crate::telemetry`] (tests/tests/layout.rs checks it).

pub mod claim;
pub mod diagnose;
pub mod digest;
pub mod election;
pub mod facts;
pub mod interfaces;
pub mod life_signs;
pub mod liveness;
pub mod membership;
pub mod notices;
pub mod plan;
pub mod status;

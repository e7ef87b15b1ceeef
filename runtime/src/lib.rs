//! What ferrolb's two binaries share that is not a decision: watch caches, Event publishing, the
//! `/metrics` `/healthz` `/readyz` server and logging setup. Decisions live in the binaries' pure modules.

pub mod configuration_state;
pub mod events;
pub mod http;
pub mod logging;
pub mod watch;

/// Everything the shared plumbing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The health/metrics server could not listen.
    #[error("serving {addr}: {source}")]
    Serve {
        /// Listen address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

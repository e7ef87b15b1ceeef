//! The speaker's error type.

/// Everything the speaker's I/O can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A raw socket could not be opened or used.
    #[error("raw socket on {interface}: {source}")]
    RawSocket {
        /// Interface name.
        interface: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A pattern of the interface exclusion list is not a regular expression.
    #[error("interface exclusion {pattern:?} is not a valid regular expression: {reason}")]
    BadExclusion {
        /// The pattern as given.
        pattern: String,
        /// What the regex parser said.
        reason: String,
    },
    /// The watch caches never became ready.
    #[error("watch caches did not sync: {0}")]
    CacheSync(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The controller's error type.

/// Everything the controller's I/O can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The watch caches never became ready.
    #[error("watch caches did not sync: {0}")]
    CacheSync(String),
    /// Serving metrics or health failed.
    #[error("serving {addr}: {source}")]
    Serve {
        /// Listen address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Leadership was lost; the process stops so it can never write alongside the new leader.
    #[error("lost the leader lease {0}")]
    LostLease(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

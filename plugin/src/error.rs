//! What the plugin can fail with, and the exit code of each.

/// Everything a subcommand can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig could be read (and not running in a cluster).
    #[error("cannot reach a cluster: {0} (set KUBECONFIG or pass --kubeconfig)")]
    NoKubeconfig(String),
    /// The Service named does not exist.
    #[error("Service {namespace}/{name} not found")]
    ServiceNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The Service is not of type LoadBalancer, so no load balancer looks at it.
    #[error(
        "Service {namespace}/{name} is of type {kind}, not LoadBalancer: ferrolb only gives addresses to type: LoadBalancer"
    )]
    NotLoadBalancer {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its `spec.type`.
        kind: String,
    },
    /// The Service argument cannot be a Service's name.
    #[error("{0:?} is not a Service: give NAME, NAMESPACE/NAME, or NAME -n NAMESPACE")]
    BadTarget(String),
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// The process exit code: 2 for a wrong argument (as clap's usage errors), 3 when no cluster can be reached,
    /// 4 for a missing Service, 5 for a Service that is not a LoadBalancer, 1 for API failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Kube(_) => 1,
            Self::BadTarget(_) => 2,
            Self::NoKubeconfig(_) => 3,
            Self::ServiceNotFound { .. } => 4,
            Self::NotLoadBalancer { .. } => 5,
        }
    }
}

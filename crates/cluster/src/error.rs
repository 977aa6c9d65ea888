//! The cluster's one error type. Each variant decides the HTTP status the proxy answers
//! with ([`ClusterError::status`]).

/// Errors of cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd (the metadata store) failed or is unreachable.
    #[error("etcd at {endpoints}: {msg}")]
    Etcd { endpoints: String, msg: String },
    /// The log broker failed or is unreachable.
    #[error("log broker at {url}: {msg}")]
    Log { url: String, msg: String },
    /// A shard has no node that can serve it right now (being assigned, or its nodes died).
    #[error("{0}")]
    Unavailable(String),
    /// The request is wrong (the message names what).
    #[error("{0}")]
    Invalid(String),
    /// A named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A node answered a forwarded request with an error.
    #[error("node {node}: {msg}")]
    Node {
        node: String,
        status: u16,
        msg: String,
    },
    /// Storage or engine failure on this process.
    #[error("{0}")]
    Engine(#[from] magpie_engine::EngineError),
    /// Metadata in etcd that does not decode.
    #[error("metadata at {key}: {msg}")]
    Meta { key: String, msg: String },
}

impl ClusterError {
    /// The HTTP status a client gets for this error.
    pub fn status(&self) -> u16 {
        match self {
            ClusterError::Invalid(_) => 400,
            ClusterError::NotFound(_) => 404,
            ClusterError::Node { status, .. } => *status,
            ClusterError::Etcd { .. } | ClusterError::Log { .. } | ClusterError::Unavailable(_) => {
                503
            }
            ClusterError::Engine(_) => 500,
            ClusterError::Meta { .. } => 500,
        }
    }
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

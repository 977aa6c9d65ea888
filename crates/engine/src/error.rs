//! The engine's one error type. The server maps each variant to an HTTP status in exactly
//! one place (`magpie-server`'s `error.rs`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "collection '{0}' does not exist; list collections with POST /v2/vectordb/collections/list"
    )]
    CollectionNotFound(String),
    #[error("collection '{0}' already exists")]
    CollectionExists(String),
    #[error("database '{0}' does not exist")]
    DatabaseNotFound(String),
    #[error("alias '{0}' does not exist")]
    AliasNotFound(String),
    #[error("partition '{partition}' does not exist in collection '{collection}'")]
    PartitionNotFound {
        collection: String,
        partition: String,
    },
    #[error("partition '{0}' already exists")]
    PartitionExists(String),
    #[error("field '{field}' does not exist in collection '{collection}'")]
    FieldNotFound { collection: String, field: String },
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("row {row}, field '{field}': {msg}")]
    Row {
        row: usize,
        field: String,
        msg: String,
    },
    #[error("invalid filter: {0}")]
    Filter(#[from] crate::filter::FilterError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt data: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("index error: {0}")]
    Index(#[source] magpie_index::IndexError),
    /// A search or query stopped by its cancel flag (`SearchRequest::cancel`,
    /// `Engine::query_with`): its caller's time limit passed, or its client went away.
    #[error("the search or query was cancelled before it finished")]
    Cancelled,
    #[error("the write-ahead log failed earlier ({0}); the database is read-only until restarted")]
    WalPoisoned(String),
    #[error("engine is shutting down")]
    ShuttingDown,
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl From<magpie_index::IndexError> for EngineError {
    fn from(e: magpie_index::IndexError) -> Self {
        match e {
            magpie_index::IndexError::Cancelled => EngineError::Cancelled,
            e => EngineError::Index(e),
        }
    }
}

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| EngineError::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

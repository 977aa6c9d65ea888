//! The app crate's one error type. Its variant decides the class of failure (the
//! server maps caller mistakes to 4xx, missing things to 404, faults to 5xx); engine
//! errors pass through unchanged so they keep their own classes.

use magpie_engine::EngineError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The caller asked for something impossible (bad path, empty query, bad setting).
    #[error("{0}")]
    BadRequest(String),
    /// A collection is not an app collection of the kind asked for.
    #[error("{0}")]
    NotAnAppCollection(String),
    /// A stored item (an image file) does not exist or may not be served.
    #[error("{0}")]
    NotFound(String),
    /// The app's own state file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A server that a [`crate::text::Store`] works through refused a request.
    #[error("the server refused: {0}")]
    Remote(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl AppError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        AppError::BadRequest(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, AppError>;

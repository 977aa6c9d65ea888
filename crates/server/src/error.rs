//! The one place where engine errors become HTTP responses.
//!
//! Every error is returned as Milvus's envelope `{"code": <non-zero>, "message": "..."}`
//! with a matching HTTP status (4xx for caller mistakes, 5xx for server faults).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_app::AppError;
use magpie_engine::EngineError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: i32,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 1100,
            message: msg.into(),
        }
    }
    pub fn new(status: StatusCode, code: i32, msg: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: msg.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use EngineError::*;
        let (status, code) = match &e {
            CollectionNotFound(_) => (StatusCode::NOT_FOUND, 100),
            DatabaseNotFound(_) => (StatusCode::NOT_FOUND, 800),
            AliasNotFound(_) => (StatusCode::NOT_FOUND, 1600),
            PartitionNotFound { .. } => (StatusCode::NOT_FOUND, 200),
            FieldNotFound { .. } => (StatusCode::BAD_REQUEST, 1701),
            CollectionExists(_) | PartitionExists(_) => (StatusCode::CONFLICT, 65535),
            Schema(_) | Row { .. } | InvalidArgument(_) => (StatusCode::BAD_REQUEST, 1100),
            Filter(_) => (StatusCode::BAD_REQUEST, 1100),
            Index(_) => (StatusCode::BAD_REQUEST, 1100),
            Io { .. } | Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, 65535),
            WalPoisoned(_) | ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, 65535),
            Cancelled => (StatusCode::REQUEST_TIMEOUT, 65535),
        };
        if status.is_server_error() {
            tracing::error!("{e}");
        }
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Engine(e) => e.into(),
            AppError::BadRequest(m) => ApiError::bad_request(m),
            AppError::NotAnAppCollection(m) => ApiError::new(StatusCode::NOT_FOUND, 100, m),
            AppError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, 404, m),
            AppError::Remote(m) => ApiError::new(StatusCode::BAD_GATEWAY, 65535, m),
            e @ AppError::Io { .. } => {
                tracing::error!("{e}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 65535, e.to_string())
            }
        }
    }
}

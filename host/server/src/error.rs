//! Error responses: a status, a stable code and a message that says what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarry_host::CallError;
use quarry_host::plugins::contract::StrategyError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429s: the quota, and when to retry.
    pub quota: Option<&'static str>,
    pub retry_after: Option<u64>,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `quota_exceeded`, `strategy_failed`,
    /// `timeout`, `unavailable`, `internal`.
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
    /// The quota a 429 names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), quota: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e:#}; this is a bug in Quarry (please report it)"))
    }

    /// A host error answering a caller's request: the host's messages say what was wrong with it.
    pub fn from_host(e: anyhow::Error) -> Self {
        ApiError::bad_request(format!("{e:#}"))
    }

    /// A plugin call's failure: the caller's input, the strategy, or the host's capacity.
    pub fn from_call(e: CallError) -> Self {
        let message = e.to_string();
        match e {
            CallError::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            CallError::Capacity(_) => {
                let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                error.retry_after = Some(1);
                error
            }
            CallError::OverBudget(message) => {
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
                error.quota = Some("compute_per_second");
                error.retry_after = Some(1);
                error
            }
            CallError::OverStorage(_) => {
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
                error.quota = Some("stored_bytes");
                // Stored bytes do not drain with time: retry once something was deleted.
                error.retry_after = Some(60);
                error
            }
            CallError::Host(e) => ApiError::from_host(e),
            // The strategy says the request (or the route's config and grants) is what is wrong.
            CallError::Strategy { error: StrategyError::InvalidInput(_) | StrategyError::Unsupported(_) | StrategyError::NotFound(_), .. } => {
                ApiError::bad_request(message)
            }
            CallError::Strategy { error: StrategyError::Denied(_), .. } => ApiError::forbidden(message),
            CallError::HostFault { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
            CallError::MemoryLimit { .. }
            | CallError::Panicked { .. }
            | CallError::ResultTooLarge { .. }
            | CallError::Trapped { .. }
            | CallError::Strategy { .. }
            | CallError::InvalidResult { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "strategy_failed", message),
        }
    }
}

/// The metrics outcome of a plugin call's failure.
pub fn outcome(e: &CallError) -> &'static str {
    match e {
        CallError::Timeout { .. } => "timeout",
        CallError::MemoryLimit { .. } => "memory_limit",
        CallError::Panicked { .. } | CallError::Trapped { .. } => "crashed",
        CallError::ResultTooLarge { .. } | CallError::InvalidResult { .. } => "invalid_result",
        CallError::Strategy { .. } => "strategy_error",
        CallError::Capacity(_) => "capacity",
        CallError::OverBudget(_) => "over_budget",
        CallError::OverStorage(_) => "over_storage",
        CallError::HostFault { .. } => "host_fault",
        CallError::Host(_) => "rejected",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message, quota: self.quota.map(str::to_string) } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(quota) = self.quota {
            response.extensions_mut().insert(RefusedOn(quota));
        }
        response
    }
}

/// Marks a response refused on a quota, so the metrics count refusals made deep in a call
/// (a compute budget spent mid-call, a write past the storage quota) like those at admission.
#[derive(Clone, Copy)]
pub struct RefusedOn(pub &'static str);

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        match rejection {
            MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonSyntaxError(e) => ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text())),
            JsonDataError(e) => ApiError::bad_request(format!("the body does not match the request schema (see /openapi.json): {}", e.body_text())),
            BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the body is over the server's limit (`max_body_bytes`, or `max_plugin_bytes` for plugins); send smaller batches",
    )
}

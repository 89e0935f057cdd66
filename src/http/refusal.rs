//! The one shape of a refused HTTP request: a GraphQL-style error body, never stored.
//!
//! Owns: that shape, for every route that refuses something.

use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A refusal: `{"errors": [{"message": …}]}` with `status`, `Cache-Control: no-store`.
pub fn graphql_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(json!({"errors": [{"message": message}]}))).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

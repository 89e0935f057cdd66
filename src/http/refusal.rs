//! The one shape of a refused HTTP request, on every route: a GraphQL-style error body
//! `{"errors": [{"message": …, "extensions": {"code": …}}]}`, never stored. The code is stable
//! (clients and operators switch on it; the message is for people) and says the status.
//!
//! Owns: the codes (listed in the README's "Refusals"), their statuses and the shape.

use axum::http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Declares [`Code`] with each code's text and status, and [`Code::ALL`]: one list, so that
/// no code can be left out of the others (or of the README, which a test compares with it).
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $status:ident;)*) => {
        /// Why a request was refused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as sent in `extensions.code`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }

            /// The status every refusal with this code has.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

codes! {
    /// Not a request this route understands: a body that cannot be read or is not a GraphQL
    /// request, a URL that is not one, an upgrade that is not a GraphQL WebSocket.
    BadRequest = "BAD_REQUEST", BAD_REQUEST;
    /// A request a browser on another site could have sent (Apollo Router's CSRF rule).
    CsrfPrevented = "CSRF_PREVENTED", BAD_REQUEST;
    /// No credentials, or ones this gateway does not accept (with `WWW-Authenticate: Bearer`).
    Unauthenticated = "UNAUTHENTICATED", UNAUTHORIZED;
    /// A WebSocket opened by a page of another site.
    ForbiddenOrigin = "FORBIDDEN_ORIGIN", FORBIDDEN;
    /// No such route (or asset), or the webhooks of a provider without a secret.
    NotFound = "NOT_FOUND", NOT_FOUND;
    /// The route exists, not with this method (`Allow` lists the ones it has).
    MethodNotAllowed = "METHOD_NOT_ALLOWED", METHOD_NOT_ALLOWED;
    /// A body over its route's bound.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE", PAYLOAD_TOO_LARGE;
    /// A content type this route does not take.
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE", UNSUPPORTED_MEDIA_TYPE;
    /// A webhook delivery with a header or body missing or unreadable.
    WebhookMalformed = "WEBHOOK_MALFORMED", BAD_REQUEST;
    /// A webhook delivery no configured secret signs.
    WebhookBadSignature = "WEBHOOK_BAD_SIGNATURE", UNAUTHORIZED;
    /// A webhook delivery whose timestamp is too far from now.
    WebhookStaleTimestamp = "WEBHOOK_STALE_TIMESTAMP", BAD_REQUEST;
    /// A webhook delivery with too many signatures, or too long a signature header.
    WebhookOversizedSignature = "WEBHOOK_OVERSIZED_SIGNATURE", BAD_REQUEST;
    /// A signed webhook delivery for a business no account has.
    WebhookUnknownAccount = "WEBHOOK_UNKNOWN_ACCOUNT", UNPROCESSABLE_ENTITY;
    /// The answer could not be written.
    InternalError = "INTERNAL_ERROR", INTERNAL_SERVER_ERROR;
    /// The request took longer than `GATEWAY_REQUEST_TIMEOUT`.
    RequestTimeout = "REQUEST_TIMEOUT", SERVICE_UNAVAILABLE;
    /// Every subscription connection (`GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS`), or every
    /// callback subscription (`GATEWAY_MAX_CALLBACK_SUBSCRIPTIONS`), is taken.
    SubscriptionsFull = "SUBSCRIPTIONS_FULL", SERVICE_UNAVAILABLE;
    /// A callback subscription (`callback/1.0`) not sent by the router (its shared secret).
    CallbackForbidden = "CALLBACK_FORBIDDEN", FORBIDDEN;
    /// A callback subscription whose `extensions.subscription` is missing or malformed.
    CallbackMalformed = "CALLBACK_MALFORMED", BAD_REQUEST;
    /// A callback URL outside `GATEWAY_SUBSCRIPTION_CALLBACK_URLS` (or callbacks are off).
    CallbackUrlNotAllowed = "CALLBACK_URL_NOT_ALLOWED", FORBIDDEN;
    /// The router did not confirm the callback subscription's `check` (the protocol asks for
    /// a 4xx then).
    CallbackCheckFailed = "CALLBACK_CHECK_FAILED", BAD_REQUEST;
}

/// The refusal: `code`'s status, `{"errors": [{"message": …, "extensions": {"code": …}}]}`,
/// `Cache-Control: no-store`.
pub fn refuse(code: Code, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": code.as_str()}}]});
    let mut response = (code.status(), Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if code == Code::Unauthenticated {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

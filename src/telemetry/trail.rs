//! The access trail for personal data: one line per answered GraphQL request (and per stream
//! when it ends): who (never a secret), which operation, how many sessions, which request.
//! Not to be confused with `access/`, which decides who may ask; this only writes down who did.
//!
//! Owns: the trail's line format, its target (`checkout_gateway::access`, which `RUST_LOG`
//! can silence or route apart from the rest) and how long an operation's name in a log line
//! may be.

use std::io::Write;
use std::sync::OnceLock;

use tracing_appender::non_blocking::NonBlocking;

use super::{LogFormat, REQUEST_ID};

/// The log writer and format (see [`install`]).
static WRITER: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

/// Writes the trail straight to `writer`, in `format`: a line per request through the full
/// tracing formatter halved the throughput of cached answers.
pub(super) fn install(writer: NonBlocking, format: LogFormat) {
    let _ = WRITER.set((writer, format));
}

/// The most characters of an operation's name that reach a log line: a client chooses the
/// name, up to the body's bound, and a log line of it costs every reader of the logs.
pub const OPERATION_NAME_MAX_CHARS: usize = 100;

/// `name` cut to `OPERATION_NAME_MAX_CHARS` characters (on a character boundary).
pub fn bounded_name(name: &str) -> &str {
    // A name of at most that many bytes has at most that many characters.
    if name.len() <= OPERATION_NAME_MAX_CHARS {
        return name;
    }
    match name.char_indices().nth(OPERATION_NAME_MAX_CHARS) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

/// One trail line: `client` read `sessions` sessions through `operation`, in the current
/// request (its id from the task, if any).
pub fn write(client: &str, operation: &str, sessions: usize) {
    if !tracing::enabled!(target: "checkout_gateway::access", tracing::Level::INFO) {
        return;
    }
    // Callers pass bounded names already; a line is never longer for one that did not.
    let operation = bounded_name(operation);
    let Some((writer, format)) = WRITER.get() else {
        // No writer of ours (tests that install no subscriber of their own): an ordinary event.
        tracing::info!(target: "checkout_gateway::access", client, operation, sessions, "access");
        return;
    };
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    let line = match format {
        LogFormat::Json => {
            let text = |value: &str| serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into());
            format!(
                "{{\"timestamp\":\"{timestamp}\",\"level\":\"INFO\",\"target\":\"checkout_gateway::access\",\"message\":\"access\",\"client\":{},\"operation\":{},\"sessions\":{sessions},\"request_id\":{}}}\n",
                text(client),
                text(operation),
                text(&request_id)
            )
        }
        LogFormat::Text => format!(
            "{timestamp}  INFO checkout_gateway::access: access client={client:?} operation={operation:?} sessions={sessions} request_id={request_id}\n"
        ),
    };
    let _ = writer.clone().write_all(line.as_bytes());
}

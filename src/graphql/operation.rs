//! An operation's name, as a request gives it or its document does, and the name as a metrics
//! label (from a bounded set).
//!
//! Owns: reading the name (parsing the document once; execution reuses the parse) and which
//! names become labels.

use crate::telemetry::trail::bounded_name;

/// Operation names as labels: the first `max` distinct names seen, then `other`. Names come
/// from clients; without a bound each new one would add series to `/metrics` forever.
#[derive(Debug)]
pub struct OperationLabels {
    max: usize,
    seen: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl OperationLabels {
    pub fn new(max: usize) -> Self {
        Self { max, seen: std::sync::RwLock::new(std::collections::HashSet::new()) }
    }

    /// The label for `request`'s operation: `operationName`, else the name in the document
    /// (parsed once; execution reuses the parse); `anonymous`, `invalid_name` or `other`.
    pub fn label(&self, request: &mut async_graphql::Request) -> String {
        let Some(name) = operation_name(request) else { return ANONYMOUS.to_owned() };
        if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return "invalid_name".to_owned();
        }
        if self.seen.read().is_ok_and(|seen| seen.contains(&name)) {
            return name;
        }
        let Ok(mut seen) = self.seen.write() else { return "other".to_owned() };
        if seen.len() < self.max {
            seen.insert(name.clone());
            return name;
        }
        "other".to_owned()
    }
}

/// What an operation without a name is called in labels and the access trail.
const ANONYMOUS: &str = "anonymous";

/// [`operation_name`], or [`ANONYMOUS`] without one.
pub fn operation_or_anonymous(request: &mut async_graphql::Request) -> String {
    operation_name(request).unwrap_or_else(|| ANONYMOUS.to_owned())
}

/// The name of the operation `request` runs: `operationName`, else the name of the
/// document's only operation (parsed once; execution reuses the parse), cut to what a log
/// line takes ([`bounded_name`]); `None` without one.
pub fn operation_name(request: &mut async_graphql::Request) -> Option<String> {
    if let Some(name) = &request.operation_name {
        return Some(bounded_name(name).to_owned());
    }
    match request.parsed_query().map(|document| &document.operations) {
        Ok(async_graphql::parser::types::DocumentOperations::Multiple(operations))
            if operations.len() == 1 =>
        {
            operations.keys().next().map(|name| bounded_name(name).to_owned())
        }
        _ => None,
    }
}

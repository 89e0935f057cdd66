//! An operation's name, as a request gives it or its document does, and the name as a metrics
//! label (from a bounded set).
//!
//! Owns: reading the name (parsing the document once; execution reuses the parse) and which
//! names become labels.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::{HistogramVec, IntCounterVec};

use crate::telemetry::metrics::Operation;
use crate::telemetry::trail::bounded_name;

/// Operation names as labels: the first `max` distinct names seen, then `other`. Names come
/// from clients; without a bound each new one would add series to `/metrics` forever.
#[derive(Debug)]
pub struct OperationLabels {
    max: usize,
    seen: RwLock<HashMap<String, Arc<Operation>>>,
    /// The labels not counted against `max`, each made on its first use (its series appears
    /// once it has a count).
    anonymous: OnceLock<Arc<Operation>>,
    invalid_name: OnceLock<Arc<Operation>>,
    other: OnceLock<Arc<Operation>>,
    counters: IntCounterVec,
    durations: HistogramVec,
}

impl OperationLabels {
    /// Labels for `counters` (labelled `operation`, `outcome`) and `durations` (`operation`).
    pub fn new(max: usize, counters: &IntCounterVec, durations: &HistogramVec) -> Self {
        Self {
            max,
            seen: RwLock::default(),
            anonymous: OnceLock::new(),
            invalid_name: OnceLock::new(),
            other: OnceLock::new(),
            counters: counters.clone(),
            durations: durations.clone(),
        }
    }

    /// The label for `request`'s operation: `operationName`, else the name in the document
    /// (parsed once; execution reuses the parse); `anonymous`, `invalid_name` or `other`.
    pub fn label(&self, request: &mut async_graphql::Request) -> Arc<Operation> {
        let Some(name) = operation_name(request) else { return self.fixed(&self.anonymous, ANONYMOUS) };
        if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return self.fixed(&self.invalid_name, "invalid_name");
        }
        if let Some(operation) = self.seen.read().ok().and_then(|seen| seen.get(&name).cloned()) {
            return operation;
        }
        let Ok(mut seen) = self.seen.write() else { return self.fixed(&self.other, "other") };
        if let Some(operation) = seen.get(&name) {
            return operation.clone();
        }
        if seen.len() < self.max {
            let operation = self.operation(&name);
            seen.insert(name, operation.clone());
            return operation;
        }
        self.fixed(&self.other, "other")
    }

    /// The operation of a fixed `label`, kept in `cell`.
    fn fixed(&self, cell: &OnceLock<Arc<Operation>>, label: &str) -> Arc<Operation> {
        cell.get_or_init(|| self.operation(label)).clone()
    }

    fn operation(&self, label: &str) -> Arc<Operation> {
        Arc::new(Operation::new(label, &self.counters, &self.durations))
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

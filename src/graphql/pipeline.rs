//! The one way a GraphQL operation runs, whatever carried it (HTTP, WebSocket, Server-Sent
//! Events): admission (trusted documents, then APQ) → the parsed document (cached by text) →
//! the shape limits → the operation's name → a request scope and the schema that runs it
//! (strict, or prevalidated for a document that passed strict validation before) → execution
//! → the trail (the access trail, and the operations' metrics: count, outcome, duration).
//!
//! Owns: that order and what each step hands the next. Transports only say who asks (a
//! [`Client`] in the request's data, or in a WebSocket connection's) and carry the answer; a
//! replayed answer (`cache::responses`) is the HTTP layer's, checked here against the same
//! admission before it is sent.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_graphql::{Data, Executor, ServerError};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::access::Client;
use crate::cache::responses::StoredResponse;
use crate::graphql::answers::Answers;
use crate::graphql::documents::{Admission, Admitted};
use crate::graphql::fanout::Fanout;
use crate::graphql::limits::{self, ShapeLimits};
use crate::graphql::operation::{operation_or_anonymous, OperationLabels};
use crate::graphql::{DocumentCache, GatewaySchema, Prepared, RequestScope};
use crate::telemetry::metrics::{Metrics, Operation};
use crate::telemetry::trail;

/// The pipeline's parts, as the application builds them.
pub struct Stages {
    pub schema: GatewaySchema,
    /// The same schema validating nothing: for documents that passed the strict one before
    /// (validation was 44 % of an executed request; their limits held then and hold now).
    pub prevalidated_schema: GatewaySchema,
    pub documents: DocumentCache,
    pub shape_limits: ShapeLimits,
    /// Operation names as metrics labels, from a bounded set.
    pub operations: OperationLabels,
    /// What may run (trusted documents) and the texts behind APQ hashes.
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    /// The answers-by-type counters the resolvers count with; a replay counts its sessions.
    pub answers: Arc<Answers>,
    /// Subscriptions asked alike, run once.
    pub fanout: Arc<Fanout>,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages")
            .field("shape_limits", &self.shape_limits)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// The pipeline, shared by every transport: one pointer to clone (a WebSocket connection
/// takes its own copy as its executor).
#[derive(Clone, Debug)]
pub struct Pipeline(Arc<Stages>);

/// A request that ran, with what the transport needs to send (and keep) its answer.
#[derive(Debug)]
pub struct Executed {
    pub response: async_graphql::Response,
    /// The operation's metrics label and series.
    pub operation: Arc<Operation>,
    /// How it passed the trusted documents: who else may be sent this answer.
    pub admitted: Admitted,
    /// Until when the whole answer may be reused; `None`: not at all.
    pub reusable_until: Option<Instant>,
    /// Sessions the answer holds.
    pub sessions: usize,
    /// It never ran (it did not parse or validate): a request error, without `data`.
    pub not_run: bool,
}

/// What the gate let through: how, and its parsed document's record.
struct Gated {
    admitted: Admitted,
    prepared: Prepared,
    /// The document passed strict validation before: the prevalidated schema runs it.
    validated: bool,
}

/// Who asks, as the trail and admission need it.
struct Caller {
    name: Arc<str>,
    via_router: bool,
}

impl Caller {
    /// The client in the request's data (HTTP, SSE), else in the connection's (WebSocket).
    fn of(request: &Data, session: Option<&Data>) -> Caller {
        match stream_data::<Client>(request, session) {
            Some(client) => Caller { name: client.name.clone(), via_router: client.via_router },
            None => {
                // Every transport puts one in; a constant, so that no path allocates for it.
                static UNKNOWN: OnceLock<Arc<str>> = OnceLock::new();
                Caller { name: UNKNOWN.get_or_init(|| Arc::from("unknown")).clone(), via_router: false }
            }
        }
    }
}

/// The client put in `data` (a request's or a WebSocket connection's), if any.
pub fn client_in(data: &Data) -> Option<&Client> {
    data_in(data)
}

/// The `T` put in `data`, if any.
fn data_in<T: std::any::Any>(data: &Data) -> Option<&T> {
    data.get(&std::any::TypeId::of::<T>())?.downcast_ref::<T>()
}

/// The `T` of a streamed operation: in its request's data (HTTP, SSE, callbacks), else in its
/// connection's (WebSocket), as resolvers find it.
pub fn stream_data<'a, T: std::any::Any>(request: &'a Data, session: Option<&'a Data>) -> Option<&'a T> {
    data_in(request).or_else(|| session.and_then(data_in))
}

impl Pipeline {
    pub fn new(stages: Stages) -> Self {
        Self(Arc::new(stages))
    }

    /// Admission, the parsed document and the shape limits; a refusal is written to the trail.
    fn gate(&self, request: &mut async_graphql::Request, caller: &Caller) -> Result<Gated, ServerError> {
        let refused = |error: ServerError| {
            trail::write(&caller.name, "refused", 0);
            error
        };
        let admitted = self.0.admission.admit(request, caller.via_router).map_err(refused)?;
        let prepared = self.0.documents.prepare(request);
        let validated = prepared.validated();
        // A document that ran before passed these checks then: they depend on nothing else.
        if !validated {
            if let Ok(document) = request.parsed_query() {
                limits::check(document, self.0.shape_limits)
                    .map_err(|reason| refused(ServerError::new(reason, None)))?;
            }
        }
        Ok(Gated { admitted, prepared, validated })
    }

    fn schema(&self, gated: &Gated) -> &GatewaySchema {
        if gated.validated {
            &self.0.prevalidated_schema
        } else {
            &self.0.schema
        }
    }

    /// Runs `request` (its [`Client`] in its data) to one answer, or says why it may not run.
    /// Counted by operation label and outcome, timed from here, and written to the trail.
    pub async fn run(&self, mut request: async_graphql::Request) -> Result<Executed, ServerError> {
        let started = Instant::now();
        let caller = Caller::of(&request.data, None);
        let gated = self.gate(&mut request, &caller)?;
        let operation = self.0.operations.label(&mut request);
        let scope = RequestScope::default();
        let response = self.schema(&gated).execute(request.data(scope.clone())).await;
        let not_run = never_ran(&response);
        if !not_run && !gated.validated {
            gated.prepared.mark_validated();
        }
        let sessions = scope.sessions();
        self.record(&caller.name, &operation, response.is_ok(), sessions, started);
        Ok(Executed {
            reusable_until: scope.reusable_until(response.is_err()),
            response,
            operation,
            admitted: gated.admitted,
            sessions,
            not_run,
        })
    }

    /// Runs `request` as a stream of answers (a subscription, or any operation a client wants
    /// streamed); a subscription asked alike by others shares their execution (`fanout`). Its
    /// trail is written when the stream ends (completed, or the client left),
    /// with how many answers were sent. A stream is not counted in the operations' metrics, so
    /// its line names it by its own name (cut to a log line's bound), not by a label: the
    /// labels' bounded set is there for `/metrics`.
    pub fn stream(
        &self,
        mut request: async_graphql::Request,
        session: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        let caller = Caller::of(&request.data, session.as_deref());
        let gated = match self.gate(&mut request, &caller) {
            Ok(gated) => gated,
            Err(error) => {
                return futures::stream::once(async { async_graphql::Response::from_errors(vec![error]) })
                    .boxed()
            }
        };
        let operation = operation_or_anonymous(&mut request);
        let mut trail = StreamTrail { client: caller.name, operation, sent: 0 };
        let answers = self
            .0
            .fanout
            .subscribe(request, session, |request, session| self.execution(request, session, gated));
        answers
            .map(move |response| {
                // The whole trail is moved in (not just its counter), so it is written when
                // the stream is dropped.
                let trail = &mut trail;
                trail.sent += 1;
                response
            })
            .boxed()
    }

    /// One execution of a gated streamed operation, with its own request scope.
    fn execution(
        &self,
        request: async_graphql::Request,
        session: Option<Arc<Data>>,
        gated: Gated,
    ) -> BoxStream<'static, async_graphql::Response> {
        let request = request.data(RequestScope::default());
        let answers = Executor::execute_stream(self.schema(&gated), request, session);
        let Gated { prepared, validated, .. } = gated;
        let mut first = true;
        answers
            .map(move |response| {
                if std::mem::take(&mut first) && !validated && !never_ran(&response) {
                    prepared.mark_validated();
                }
                response
            })
            .boxed()
    }

    /// Whether `stored`, an answer kept from an earlier run, may be sent to `client` instead
    /// of running: one check of the admission verdict it was kept with. If so, it is counted
    /// and written to the trail like a run, its sessions counted as answers, and its duration
    /// is the time since `started` (when the transport began looking for it).
    pub fn replays(&self, stored: &StoredResponse, client: &Client, started: Instant) -> bool {
        if !self.0.admission.may_replay(stored.admitted, client.via_router, &stored.operation.label) {
            return false;
        }
        self.0.metrics.response_cache_hits.inc();
        self.0.answers.replayed(stored.sessions);
        self.record(&client.name, &stored.operation, true, stored.sessions, started);
        true
    }

    /// The trail of one answer: counted by operation and outcome (ok: no GraphQL errors), its
    /// duration since `started` observed by operation, and the access trail's line.
    fn record(&self, client: &str, operation: &Operation, ok: bool, sessions: usize, started: Instant) {
        operation.record(ok, started.elapsed());
        trail::write(client, &operation.label, sessions);
    }
}

/// A request that never ran (it did not parse or validate) has only errors without a path.
pub fn never_ran(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && response.is_err()
        && response.errors.iter().all(|error| error.path.is_empty())
}

/// Streams (WebSocket, SSE) run operations through the pipeline: each operation gets the
/// same gate, its own request scope (so aliases cannot multiply the session budget) and its
/// trail, like one sent over HTTP.
impl Executor for Pipeline {
    async fn execute(&self, request: async_graphql::Request) -> async_graphql::Response {
        match self.run(request).await {
            Ok(executed) => executed.response,
            Err(error) => async_graphql::Response::from_errors(vec![error]),
        }
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        self.stream(request, session_data)
    }
}

/// The access trail of one streamed operation, written when it ends: who, which operation,
/// and how many answers (sessions) it was sent.
struct StreamTrail {
    client: Arc<str>,
    operation: String,
    sent: usize,
}

impl Drop for StreamTrail {
    fn drop(&mut self) {
        trail::write(&self.client, &self.operation, self.sent);
    }
}

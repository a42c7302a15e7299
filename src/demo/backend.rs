//! A small, fake clinical API for `portcullis demo` and the integration tests.
//!
//! The sidecar needs something realistic to sit in front of without anyone
//! standing up a real EHR. This backend mirrors the shape of the partner API
//! Portcullis is usually deployed in front of: reviewed clinical notes with
//! SOAP sections, links between an EHR's patient ids and local patient ids,
//! and a review action that emits an event. Every record is obviously fake.
//!
//! It deliberately behaves like a careful clinical backend so the sidecar is
//! exercised against good habits: error bodies never echo identifiers back,
//! request bodies are size-capped, and nothing derived from a path, query or
//! body is ever logged, because in production those carry patient data.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::header::{HeaderMap, HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use fixtures::{ClinicalNote, DEMO_LINK, DEMO_NOTES, DEMO_PATIENTS};

/// Largest request body accepted; clinical link requests are tiny, so
/// anything bigger is a client bug or abuse and is refused with 413.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest identifier or label accepted in a link request, in characters.
const MAX_FIELD_CHARS: usize = 128;
/// How long a client may take to deliver a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept`, so a persistent failure (such as running
/// out of file descriptors) does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// How many `X-Portcullis-Org` values are remembered, newest kept.
const MAX_SEEN_ORGS: usize = 256;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const PORTCULLIS_ORG: HeaderName = HeaderName::from_static("x-portcullis-org");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Why the demo backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DemoBackendError {
    /// The listening socket could not be opened, typically because the port
    /// is taken; callers wanting any free port should pass `127.0.0.1:0`.
    #[error("cannot bind the demo backend to {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
}

/// A running demo backend.
///
/// The server lives in a background task so the demo command and tests can
/// start it, point the sidecar at [`DemoBackend::local_addr`], and inspect
/// what it saw. Dropping the handle also stops the server, so a failing test
/// cannot leak a listener; call [`DemoBackend::shutdown`] to wait for it.
pub struct DemoBackend {
    local_addr: SocketAddr,
    shared: Shared,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl DemoBackend {
    /// Binds `addr` (use `127.0.0.1:0` for an ephemeral port) and serves in a
    /// spawned tokio task, so it must be called from within a tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<DemoBackend, DemoBackendError> {
        let bind_error = |source| DemoBackendError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let shared = Shared::new(Store::seeded());
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(DemoBackend {
            local_addr,
            shared,
            stop,
            task,
        })
    }

    /// The address actually bound, which is how callers learn the ephemeral
    /// port chosen by the operating system.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Events emitted so far (`clinical_note.reviewed` …), oldest first, as
    /// `serde_json::Value`, so tests and the webhook relay can check exactly
    /// what the backend would have announced.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// The `X-Portcullis-Org` values received so far, oldest first (at most
    /// the latest 256), so tests can check which identity the sidecar
    /// asserted without the backend ever reflecting it in a response.
    pub fn seen_orgs(&self) -> Vec<String> {
        self.shared.lock().seen_orgs.iter().cloned().collect()
    }

    /// Stops accepting and ends the task, giving open connections a short
    /// grace period to finish the request they are serving.
    pub async fn shutdown(self) {
        // A send error only means the server task has already ended.
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            debug!(error = %err, "demo backend task ended abnormally");
        }
    }
}

/// Accepts connections until told to stop, then winds the open ones down.
async fn accept_loop(listener: TcpListener, shared: Shared, mut stop: watch::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // An error means the handle was dropped: stop just the same.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                Err(err) => {
                    debug!(error = %err, "demo backend failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        debug!("demo backend aborted connections still open after the grace period");
    }
    // Dropping the set aborts whatever is left.
}

/// Serves one HTTP/1.1 connection with keep-alive, closing it gracefully
/// when the backend is stopped.
async fn serve_connection(stream: TcpStream, shared: Shared, mut stop: watch::Receiver<()>) {
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        debug!(error = %err, "demo backend connection ended with an error");
    }
}

/// Answers one request: routes it, then applies the headers every response
/// carries. Only the method and status are logged, never the path or query.
async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let request_id = request.headers().get(REQUEST_ID).cloned();
    if let Some(org) = org_header(request.headers()) {
        shared.lock().record_org(org);
    }
    let mut response = dispatch(shared, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    if let Some(request_id) = request_id {
        response.headers_mut().insert(REQUEST_ID, request_id);
    }
    debug!(%method, status = response.status().as_u16(), "demo backend answered");
    response
}

/// The identity the sidecar asserted, if it sent a readable one.
fn org_header(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(PORTCULLIS_ORG)?.to_str().ok()?;
    Some(value.to_owned())
}

/// Matches the request to a route and runs its handler.
async fn dispatch(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let route = Route::parse(request.uri().path()).ok_or(ApiError::NotFound("No such route."))?;
    let allowed = route.method();
    if request.method() != allowed {
        return Err(ApiError::MethodNotAllowed(allowed));
    }
    let query = Query::parse(request.uri().query().unwrap_or_default());
    match route {
        Route::Health => Ok(respond(StatusCode::OK, Payload::Health {})),
        Route::ClinicalNotes => get_clinical_notes(shared, &query),
        Route::ReviewNote(note_id) => review_note(shared, &note_id),
        Route::PatientLink => post_patient_link(shared, request).await,
        Route::ExternalLink => get_external_link(shared, &query),
    }
}

/// The endpoints this backend serves.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    ClinicalNotes,
    ReviewNote(String),
    PatientLink,
    ExternalLink,
}

impl Route {
    /// Recognises a path; `None` means the path is not served at all.
    fn parse(path: &str) -> Option<Route> {
        match path {
            "/healthz" => Some(Route::Health),
            "/v1/clinical-notes" => Some(Route::ClinicalNotes),
            "/v1/patients/link" => Some(Route::PatientLink),
            "/v1/patients/external-link" => Some(Route::ExternalLink),
            _ => {
                let raw_id = path
                    .strip_prefix("/v1/clinical-notes/")?
                    .strip_suffix("/review")?;
                let usable = !raw_id.is_empty() && !raw_id.contains('/');
                usable.then(|| Route::ReviewNote(percent_decode(raw_id, false)))
            }
        }
    }

    /// The one method each route answers to, reported in `Allow` on a 405.
    fn method(&self) -> Method {
        match self {
            Route::ReviewNote(_) | Route::PatientLink => Method::POST,
            Route::Health | Route::ClinicalNotes | Route::ExternalLink => Method::GET,
        }
    }
}

/// `GET /v1/clinical-notes`: one note by local id, the latest note of a
/// linked patient, or the list of reviewed notes.
fn get_clinical_notes(shared: &Shared, query: &Query) -> Result<Response<Full<Bytes>>, ApiError> {
    let note_local_id = query.field("note_local_id")?;
    let external = ExternalKey::from_query(query)?;
    let payload = {
        let store = shared.lock();
        match (note_local_id, external) {
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
                "Use note_local_id or an external patient id, not both.",
            )),
            (Some(note_local_id), None) => store
                .reviewed_note(note_local_id)
                .ok_or(ApiError::NotFound("No reviewed note with that id."))
                .map(|clinical_note| Payload::Note { clinical_note }),
            (None, Some(key)) => linked_patient_note(&store, &key)
                .map(|clinical_note| Payload::Note { clinical_note }),
            (None, None) => Ok(Payload::Notes {
                clinical_notes: store.reviewed_notes(),
            }),
        }
    }?;
    Ok(respond(StatusCode::OK, payload))
}

/// The latest reviewed note of the patient an external id is linked to.
fn linked_patient_note(store: &Store, key: &ExternalKey) -> Result<ClinicalNote, ApiError> {
    let link = store.link(key).ok_or(ApiError::NotFound(
        "No patient is linked to that external id.",
    ))?;
    store
        .latest_reviewed_note_for(&link.patient_local_id)
        .ok_or(ApiError::NotFound("No reviewed note for that patient."))
}

/// `POST /v1/clinical-notes/{note_id}/review`: marks a note reviewed and, the
/// first time only, records a `clinical_note.reviewed` event.
fn review_note(shared: &Shared, note_id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let clinical_note = shared
        .lock()
        .review(note_id)
        .ok_or(ApiError::NotFound("No note with that id."))?;
    Ok(respond(StatusCode::OK, Payload::Note { clinical_note }))
}

/// `POST /v1/patients/link`: creates (201) or re-points (200) the link from
/// an external patient id to a local patient.
async fn post_patient_link(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = read_json_body(request).await?;
    let link = serde_json::from_slice::<LinkRequest>(&body)
        .map_err(|_| {
            ApiError::InvalidRequest("The body must be a JSON object with string fields.")
        })?
        .validate()?;
    let created = shared.lock().save_link(link.clone())?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(
        status,
        Payload::LinkSaved {
            link: SavedLink { link, created },
        },
    ))
}

/// `GET /v1/patients/external-link`: reports whether an external patient id
/// is linked, and to whom.
fn get_external_link(shared: &Shared, query: &Query) -> Result<Response<Full<Bytes>>, ApiError> {
    let key = ExternalKey::from_query(query)?.ok_or(ApiError::InvalidRequest(
        "external_system and external_patient_id are required.",
    ))?;
    let link = shared.lock().link(&key);
    Ok(respond(
        StatusCode::OK,
        Payload::LinkLookup {
            linked: link.is_some(),
            link,
        },
    ))
}

/// Reads a JSON request body, refusing other content types, bodies over
/// [`MAX_BODY_BYTES`] and clients too slow to send theirs.
async fn read_json_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::InvalidRequest(
            "Content-Type must be application/json.",
        ));
    }
    if declared_length(request.headers()).is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let limited = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect())
        .await
        .map_err(|_| ApiError::BodyTimeout)?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::InvalidRequest(
            "The request body could not be read.",
        )),
    }
}

/// Whether the request declares a JSON body; parameters such as `charset`
/// are allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// The `Content-Length` the client declared, if it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Everything a handler can refuse a request with. Messages are fixed text
/// so that no identifier or body content is ever reflected to the caller.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("This route does not accept that method.")]
    MethodNotAllowed(Method),
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("{0} must be a non-empty string of at most {MAX_FIELD_CHARS} characters.")]
    InvalidField(&'static str),
    #[error("The request body is larger than {} KiB.", MAX_BODY_BYTES / 1024)]
    PayloadTooLarge,
    #[error("The request body was not received in time.")]
    BodyTimeout,
    #[error("patient_local_id does not name a known patient.")]
    UnknownPatient,
}

impl ApiError {
    /// The HTTP status and the stable machine-readable code for the error.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::InvalidRequest(_) | ApiError::InvalidField(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::UnknownPatient => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_patient"),
        }
    }

    /// Renders the error as the API's JSON error body.
    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, error) = self.status_and_code();
        let message = self.to_string();
        let mut response = respond(status, Payload::Error { error, message });
        if let ApiError::MethodNotAllowed(allowed) = self {
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
        response
    }
}

/// Every response body: `ok` plus the payload's own fields.
#[derive(Serialize)]
struct Envelope {
    ok: bool,
    #[serde(flatten)]
    payload: Payload,
}

/// The bodies this API returns, each flattened next to `ok`.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload {
    Health {},
    Note {
        clinical_note: ClinicalNote,
    },
    Notes {
        clinical_notes: Vec<ClinicalNote>,
    },
    LinkSaved {
        link: SavedLink,
    },
    LinkLookup {
        linked: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        link: Option<Link>,
    },
    Error {
        error: &'static str,
        message: String,
    },
}

/// Serialises a payload as a JSON response with the headers every answer
/// carries. Clinical data must never be cached by intermediaries.
fn respond(status: StatusCode, payload: Payload) -> Response<Full<Bytes>> {
    let ok = !matches!(payload, Payload::Error { .. });
    let (status, body) = match serde_json::to_vec(&Envelope { ok, payload }) {
        Ok(body) => (status, Bytes::from(body)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(
                br#"{"ok":false,"error":"internal","message":"Response could not be encoded."}"#,
            ),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, JSON);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Decoded query parameters, in order. When a name repeats, the first value
/// wins, so a smuggled second value cannot override the first.
struct Query(Vec<(String, String)>);

impl Query {
    /// Splits and decodes a raw query string with form-urlencoded rules.
    fn parse(raw: &str) -> Query {
        let pairs = raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name, true), percent_decode(value, true))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `name`, if present.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name`, held to the same rules as body fields:
    /// present but blank or overlong is a client error, not "absent".
    fn field(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            Some(value) if !is_valid_field(value) => Err(ApiError::InvalidField(name)),
            other => Ok(other),
        }
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in
/// query strings). Malformed escapes are kept literally and invalid UTF-8 is
/// replaced, so decoding never fails.
fn percent_decode(raw: &str, plus_is_space: bool) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = if byte == b'%' {
            escaped_byte(bytes, index)
        } else {
            None
        };
        match escaped {
            Some(value) => {
                decoded.push(value);
                index += 3;
            }
            None => {
                decoded.push(if plus_is_space && byte == b'+' {
                    b' '
                } else {
                    byte
                });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The byte encoded by the `%XX` escape starting at `percent`, if well formed.
fn escaped_byte(bytes: &[u8], percent: usize) -> Option<u8> {
    let high = hex_digit(*bytes.get(percent + 1)?)?;
    let low = hex_digit(*bytes.get(percent + 2)?)?;
    Some(high << 4 | low)
}

/// The value of one hexadecimal digit.
fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

/// Identifies a patient in an external system: the key of a patient link.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ExternalKey {
    system: String,
    patient_id: String,
}

impl ExternalKey {
    /// Reads `external_system` and `external_patient_id` from a query. Both
    /// absent is `None`; only one of them, or an invalid one, is an error.
    fn from_query(query: &Query) -> Result<Option<ExternalKey>, ApiError> {
        let system = query.field("external_system")?;
        let patient_id = query.field("external_patient_id")?;
        match (system, patient_id) {
            (None, None) => Ok(None),
            (Some(system), Some(patient_id)) => Ok(Some(ExternalKey {
                system: system.to_owned(),
                patient_id: patient_id.to_owned(),
            })),
            _ => Err(ApiError::InvalidRequest(
                "external_system and external_patient_id must be given together.",
            )),
        }
    }
}

/// The body of `POST /v1/patients/link` before validation. Fields are
/// optional here so a missing field gets a precise 400, not a parse error.
#[derive(Deserialize)]
struct LinkRequest {
    external_system: Option<String>,
    external_patient_id: Option<String>,
    patient_local_id: Option<String>,
    display_label: Option<String>,
}

impl LinkRequest {
    /// Checks every field and produces the link to store.
    fn validate(self) -> Result<Link, ApiError> {
        let display_label = self
            .display_label
            .map(|label| checked_field(Some(label), "display_label"))
            .transpose()?;
        Ok(Link {
            external_system: checked_field(self.external_system, "external_system")?,
            external_patient_id: checked_field(self.external_patient_id, "external_patient_id")?,
            patient_local_id: checked_field(self.patient_local_id, "patient_local_id")?,
            display_label,
        })
    }
}

/// Requires a present, valid field; see [`is_valid_field`].
fn checked_field(value: Option<String>, name: &'static str) -> Result<String, ApiError> {
    value
        .filter(|text| is_valid_field(text))
        .ok_or(ApiError::InvalidField(name))
}

/// Identifiers and labels must be non-blank and at most [`MAX_FIELD_CHARS`]
/// characters, which keeps every stored or looked-up value small.
fn is_valid_field(text: &str) -> bool {
    !text.trim().is_empty() && text.chars().count() <= MAX_FIELD_CHARS
}

/// A link from an external patient id to a local patient.
#[derive(Clone, Debug, Serialize)]
struct Link {
    external_system: String,
    external_patient_id: String,
    patient_local_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_label: Option<String>,
}

impl Link {
    /// The external id this link is stored under.
    fn key(&self) -> ExternalKey {
        ExternalKey {
            system: self.external_system.clone(),
            patient_id: self.external_patient_id.clone(),
        }
    }
}

/// A link as returned by `POST /v1/patients/link`, saying whether it is new.
#[derive(Serialize)]
struct SavedLink {
    #[serde(flatten)]
    link: Link,
    created: bool,
}

/// The backend's state, shared by every connection.
#[derive(Clone)]
struct Shared(Arc<Mutex<Store>>);

impl Shared {
    /// Wraps a store for sharing across connection tasks.
    fn new(store: Store) -> Shared {
        Shared(Arc::new(Mutex::new(store)))
    }

    /// Locks the store. A panic while it was held cannot leave it half
    /// written (every change is a single push or insert), so a poisoned lock
    /// is simply taken over rather than failing every later request.
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Patients, notes, links and emitted events, all in memory.
struct Store {
    patients: BTreeSet<&'static str>,
    notes: Vec<ClinicalNote>,
    links: BTreeMap<ExternalKey, Link>,
    events: Vec<Value>,
    seen_orgs: VecDeque<String>,
}

impl Store {
    /// The fixture data every backend starts from.
    fn seeded() -> Store {
        let link = Link {
            external_system: DEMO_LINK.external_system.to_owned(),
            external_patient_id: DEMO_LINK.external_patient_id.to_owned(),
            patient_local_id: DEMO_LINK.patient_local_id.to_owned(),
            display_label: Some(DEMO_LINK.display_label.to_owned()),
        };
        Store {
            patients: DEMO_PATIENTS.iter().map(|&(id, _name)| id).collect(),
            notes: DEMO_NOTES.to_vec(),
            links: BTreeMap::from([(link.key(), link)]),
            events: Vec::new(),
            seen_orgs: VecDeque::new(),
        }
    }

    /// A reviewed note by the caller's local id; drafts are never served.
    fn reviewed_note(&self, note_local_id: &str) -> Option<ClinicalNote> {
        self.notes
            .iter()
            .find(|note| note.reviewed && note.note_local_id == note_local_id)
            .copied()
    }

    /// All reviewed notes, oldest first.
    fn reviewed_notes(&self) -> Vec<ClinicalNote> {
        self.notes
            .iter()
            .filter(|note| note.reviewed)
            .copied()
            .collect()
    }

    /// The most recent reviewed note of a patient.
    fn latest_reviewed_note_for(&self, patient_local_id: &str) -> Option<ClinicalNote> {
        self.notes
            .iter()
            .rev()
            .find(|note| note.reviewed && note.patient_local_id == patient_local_id)
            .copied()
    }

    /// The link stored for an external id, if any.
    fn link(&self, key: &ExternalKey) -> Option<Link> {
        self.links.get(key).cloned()
    }

    /// Stores a link, replacing any previous one for the same external id.
    /// Returns whether the link is new.
    fn save_link(&mut self, link: Link) -> Result<bool, ApiError> {
        if !self.patients.contains(link.patient_local_id.as_str()) {
            return Err(ApiError::UnknownPatient);
        }
        Ok(self.links.insert(link.key(), link).is_none())
    }

    /// Marks a note reviewed, found by its id or its local id (demo scripts
    /// may hold either). Only the first review emits an event.
    fn review(&mut self, note_id: &str) -> Option<ClinicalNote> {
        let note = self
            .notes
            .iter_mut()
            .find(|note| note.id == note_id || note.note_local_id == note_id)?;
        if !note.reviewed {
            note.reviewed = true;
            self.events.push(serde_json::json!({
                "type": "clinical_note.reviewed",
                "data": { "note_id": note.id, "patient_local_id": note.patient_local_id },
            }));
        }
        Some(*note)
    }

    /// Remembers an asserted organisation, forgetting the oldest beyond
    /// [`MAX_SEEN_ORGS`] so a long demo cannot grow memory without bound.
    fn record_org(&mut self, org: String) {
        if self.seen_orgs.len() == MAX_SEEN_ORGS {
            self.seen_orgs.pop_front();
        }
        self.seen_orgs.push_back(org);
    }
}

/// The fake clinical data every backend starts from, kept apart from request
/// handling so the demo's story can change without touching the server.
/// Every value is obviously fake: ids carry `demo` and all text starts with
/// "Demo", so nobody mistakes it for a real record in a screenshot or a log.
mod fixtures {
    use serde::Serialize;

    /// A clinical note with its SOAP sections. Notes only ever come from these
    /// fixtures, so their text is static; only the review flag changes at runtime.
    #[derive(Clone, Copy, Debug, Serialize)]
    pub(super) struct ClinicalNote {
        pub(super) id: &'static str,
        pub(super) note_local_id: &'static str,
        pub(super) patient_local_id: &'static str,
        pub(super) reviewed: bool,
        pub(super) sections: SoapSections,
        pub(super) transcript: &'static str,
    }

    /// The subjective / objective / assessment / plan parts of a note, the
    /// structure the partner API uses for reviewed notes.
    #[derive(Clone, Copy, Debug, Serialize)]
    pub(super) struct SoapSections {
        pub(super) subjective: &'static str,
        pub(super) objective: &'static str,
        pub(super) assessment: &'static str,
        pub(super) plan: &'static str,
    }

    /// A link between an external patient id and a local patient that exists
    /// before any request arrives, so lookups work from the first call.
    pub(super) struct SeedLink {
        pub(super) external_system: &'static str,
        pub(super) external_patient_id: &'static str,
        pub(super) patient_local_id: &'static str,
        pub(super) display_label: &'static str,
    }

    /// Local patient ids with the display names they stand for. The names only
    /// help people reading the fixtures: the API never returns patient names.
    pub(super) const DEMO_PATIENTS: [(&str, &str); 2] = [
        ("local_pat_demo_123", "Demo Patient One"),
        ("local_pat_demo_124", "Demo Patient Two"),
    ];

    /// Seeded notes, oldest first: "latest" for a patient means last here. The
    /// unreviewed one exists for the review endpoint.
    pub(super) const DEMO_NOTES: [ClinicalNote; 3] = [
        ClinicalNote {
            id: "note_demo_122",
            note_local_id: "local_note_demo_122",
            patient_local_id: "local_pat_demo_123",
            reviewed: true,
            sections: SoapSections {
                subjective: "Demo patient reports trouble sleeping.",
                objective: "Demo vitals within range.",
                assessment: "Demo intake note for testing.",
                plan: "Demo plan: review sleep habits at follow-up.",
            },
            transcript: "Demo intake transcript text only.",
        },
        ClinicalNote {
            id: "note_demo_123",
            note_local_id: "local_note_demo_123",
            patient_local_id: "local_pat_demo_123",
            reviewed: true,
            sections: SoapSections {
                subjective: "Demo patient reports improved sleep.",
                objective: "Demo vitals stable.",
                assessment: "Demo follow-up note for testing.",
                plan: "Demo plan: continue current care plan.",
            },
            transcript: "Demo transcript text only.",
        },
        ClinicalNote {
            id: "note_demo_124",
            note_local_id: "local_note_demo_124",
            patient_local_id: "local_pat_demo_124",
            reviewed: false,
            sections: SoapSections {
                subjective: "Demo patient reports a mild cough.",
                objective: "Demo temperature normal.",
                assessment: "Demo draft note awaiting review.",
                plan: "Demo plan: fluids and rest.",
            },
            transcript: "Demo draft transcript text only.",
        },
    ];

    /// The demo EHR's id for Demo Patient One, linked from the start.
    pub(super) const DEMO_LINK: SeedLink = SeedLink {
        external_system: "demo_ehr",
        external_patient_id: "ehr_demo_456",
        patient_local_id: "local_pat_demo_123",
        display_label: "Demo patient link",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::combinators::BoxBody;
    use hyper::body::{Body, Frame};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::json;

    type TestBody = BoxBody<Bytes, Infallible>;

    /// A started backend plus a client pointed at it.
    struct Harness {
        backend: DemoBackend,
        client: Client<HttpConnector, TestBody>,
    }

    /// What a test needs from a response.
    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        json: Value,
    }

    impl Harness {
        async fn start() -> Harness {
            let addr = SocketAddr::from(([127, 0, 0, 1], 0));
            let backend = DemoBackend::start(addr).await.expect("demo backend starts");
            let client = Client::builder(TokioExecutor::new()).build_http();
            Harness { backend, client }
        }

        async fn send(&self, request: http::request::Builder, body: TestBody) -> Reply {
            let request = request.body(body).expect("valid test request");
            let response = self.client.request(request).await.expect("backend answers");
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(
                headers.get(CONTENT_TYPE),
                Some(&JSON),
                "every reply is JSON"
            );
            let json = serde_json::from_slice(&bytes).expect("JSON body");
            Reply {
                status,
                headers,
                json,
            }
        }

        fn request(&self, method: Method, path: &str) -> http::request::Builder {
            let uri = format!("http://{}{}", self.backend.local_addr(), path);
            Request::builder().method(method).uri(uri)
        }

        async fn get(&self, path: &str) -> Reply {
            self.send(self.request(Method::GET, path), empty()).await
        }

        async fn post_json(&self, path: &str, body: &Value) -> Reply {
            let request = self
                .request(Method::POST, path)
                .header(CONTENT_TYPE, "application/json");
            self.send(request, full(body.to_string())).await
        }
    }

    fn empty() -> TestBody {
        full(Bytes::new())
    }

    fn full(bytes: impl Into<Bytes>) -> TestBody {
        Full::new(bytes.into()).boxed()
    }

    /// A body of unknown length, so the client sends it chunked and the
    /// server cannot reject it from `Content-Length` alone.
    struct Chunked(VecDeque<Bytes>);

    impl Body for Chunked {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    fn new_link() -> Value {
        json!({
            "external_system": "demo_ehr",
            "external_patient_id": "ehr_demo_789",
            "patient_local_id": "local_pat_demo_124",
            "display_label": "Demo patient link",
        })
    }

    fn seeded_note_123() -> Value {
        json!({
            "id": "note_demo_123",
            "note_local_id": "local_note_demo_123",
            "patient_local_id": "local_pat_demo_123",
            "reviewed": true,
            "sections": {
                "subjective": "Demo patient reports improved sleep.",
                "objective": "Demo vitals stable.",
                "assessment": "Demo follow-up note for testing.",
                "plan": "Demo plan: continue current care plan.",
            },
            "transcript": "Demo transcript text only.",
        })
    }

    fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
        assert_eq!(reply.status, status, "body: {}", reply.json);
        assert_eq!(reply.json["ok"], json!(false));
        assert_eq!(reply.json["error"], json!(code));
        assert!(reply.json["message"].is_string());
    }

    #[tokio::test]
    async fn healthz_reports_ok() {
        let harness = Harness::start().await;
        let reply = harness.get("/healthz").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json, json!({ "ok": true }));
        assert_eq!(
            reply.headers.get(CACHE_CONTROL).map(HeaderValue::as_bytes),
            Some(&b"no-store"[..])
        );
    }

    #[tokio::test]
    async fn serves_the_seeded_note_by_local_id() {
        let harness = Harness::start().await;
        let reply = harness
            .get("/v1/clinical-notes?note_local_id=local_note_demo_123")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.json,
            json!({ "ok": true, "clinical_note": seeded_note_123() })
        );
    }

    #[tokio::test]
    async fn percent_decodes_query_values() {
        let harness = Harness::start().await;
        let reply = harness
            .get("/v1/clinical-notes?note_local_id=local%5Fnote%5fdemo_123&unused=a+b")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json["clinical_note"]["id"], json!("note_demo_123"));
    }

    #[tokio::test]
    async fn serves_the_latest_reviewed_note_of_a_linked_patient() {
        let harness = Harness::start().await;
        let reply = harness
            .get("/v1/clinical-notes?external_system=demo_ehr&external_patient_id=ehr_demo_456")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.json,
            json!({ "ok": true, "clinical_note": seeded_note_123() })
        );
    }

    #[tokio::test]
    async fn lists_only_reviewed_notes() {
        let harness = Harness::start().await;
        let reply = harness.get("/v1/clinical-notes").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json["ok"], json!(true));
        let notes = reply.json["clinical_notes"].as_array().expect("a list");
        let ids: Vec<&str> = notes
            .iter()
            .filter_map(|note| note["id"].as_str())
            .collect();
        assert_eq!(ids, ["note_demo_122", "note_demo_123"]);
        assert!(notes.iter().all(|note| note["reviewed"] == json!(true)));
    }

    #[tokio::test]
    async fn unknown_or_unreviewed_notes_are_404_without_echoing_the_id() {
        let harness = Harness::start().await;
        for id in ["local_note_secret_999", "local_note_demo_124"] {
            let reply = harness
                .get(&format!("/v1/clinical-notes?note_local_id={id}"))
                .await;
            assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
            assert_eq!(
                reply.json["message"],
                json!("No reviewed note with that id.")
            );
            assert!(!reply.json.to_string().contains(id));
        }
        let unlinked = harness
            .get("/v1/clinical-notes?external_system=demo_ehr&external_patient_id=ehr_secret_1")
            .await;
        assert_error(&unlinked, StatusCode::NOT_FOUND, "not_found");
        assert!(!unlinked.json.to_string().contains("ehr_secret_1"));
    }

    #[tokio::test]
    async fn ambiguous_or_partial_note_queries_are_400() {
        let harness = Harness::start().await;
        for query in [
            "external_system=demo_ehr",
            "external_patient_id=ehr_demo_456",
            "note_local_id=",
            "note_local_id=local_note_demo_123&external_system=demo_ehr&external_patient_id=ehr_demo_456",
        ] {
            let reply = harness.get(&format!("/v1/clinical-notes?{query}")).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }

    #[tokio::test]
    async fn link_is_created_then_updated_then_found() {
        let harness = Harness::start().await;
        let created = harness.post_json("/v1/patients/link", &new_link()).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let mut expected = new_link();
        expected["created"] = json!(true);
        assert_eq!(created.json, json!({ "ok": true, "link": expected }));

        let mut relabelled = new_link();
        relabelled["display_label"] = json!("Demo patient link, renamed");
        let updated = harness.post_json("/v1/patients/link", &relabelled).await;
        assert_eq!(updated.status, StatusCode::OK);
        assert_eq!(updated.json["link"]["created"], json!(false));

        let found = harness
            .get("/v1/patients/external-link?external_system=demo_ehr&external_patient_id=ehr_demo_789")
            .await;
        assert_eq!(found.status, StatusCode::OK);
        assert_eq!(
            found.json,
            json!({ "ok": true, "linked": true, "link": relabelled })
        );
    }

    #[tokio::test]
    async fn external_link_lookup_reports_seeded_missing_and_invalid() {
        let harness = Harness::start().await;
        let seeded = harness
            .get("/v1/patients/external-link?external_system=demo_ehr&external_patient_id=ehr_demo_456")
            .await;
        assert_eq!(seeded.status, StatusCode::OK);
        assert_eq!(seeded.json["linked"], json!(true));
        assert_eq!(
            seeded.json["link"]["patient_local_id"],
            json!("local_pat_demo_123")
        );

        let missing = harness
            .get("/v1/patients/external-link?external_system=demo_ehr&external_patient_id=ehr_demo_000")
            .await;
        assert_eq!(missing.status, StatusCode::OK);
        assert_eq!(missing.json, json!({ "ok": true, "linked": false }));

        for query in [
            "",
            "?external_system=demo_ehr",
            "?external_patient_id=ehr_demo_456",
        ] {
            let reply = harness
                .get(&format!("/v1/patients/external-link{query}"))
                .await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }

    #[tokio::test]
    async fn invalid_link_bodies_are_400() {
        let harness = Harness::start().await;
        let too_long = "x".repeat(MAX_FIELD_CHARS + 1);
        let mut bodies = vec![
            json!([]),
            json!({ "external_system": 7, "external_patient_id": "e", "patient_local_id": "local_pat_demo_123" }),
        ];
        for field in ["external_system", "external_patient_id", "patient_local_id"] {
            for bad in [Value::Null, json!(""), json!("   "), json!(too_long)] {
                let mut body = new_link();
                body[field] = bad;
                bodies.push(body);
            }
        }
        for body in &bodies {
            let reply = harness.post_json("/v1/patients/link", body).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
        }

        let malformed = harness
            .request(Method::POST, "/v1/patients/link")
            .header(CONTENT_TYPE, "application/json; charset=utf-8");
        let reply = harness.send(malformed, full("{\"external_system\":")).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

        let wrong_type = harness
            .request(Method::POST, "/v1/patients/link")
            .header(CONTENT_TYPE, "text/plain");
        let reply = harness.send(wrong_type, full(new_link().to_string())).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }

    #[tokio::test]
    async fn link_to_an_unknown_patient_is_422() {
        let harness = Harness::start().await;
        let mut body = new_link();
        body["patient_local_id"] = json!("local_pat_demo_999");
        let reply = harness.post_json("/v1/patients/link", &body).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "unknown_patient");
        assert!(!reply.json.to_string().contains("local_pat_demo_999"));
    }

    #[tokio::test]
    async fn oversized_link_bodies_are_413() {
        let harness = Harness::start().await;
        let oversized = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);

        let declared = harness
            .request(Method::POST, "/v1/patients/link")
            .header(CONTENT_TYPE, "application/json");
        let reply = harness.send(declared, full(oversized.clone())).await;
        assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

        let chunks = oversized
            .chunks(8 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let streamed = harness
            .request(Method::POST, "/v1/patients/link")
            .header(CONTENT_TYPE, "application/json");
        let reply = harness.send(streamed, Chunked(chunks).boxed()).await;
        assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    }

    #[tokio::test]
    async fn review_emits_one_event_only_the_first_time() {
        let harness = Harness::start().await;
        assert!(harness.backend.events().is_empty());

        let first = harness
            .post_json("/v1/clinical-notes/note_demo_124/review", &json!({}))
            .await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.json["clinical_note"]["id"], json!("note_demo_124"));
        assert_eq!(first.json["clinical_note"]["reviewed"], json!(true));
        let event = json!({
            "type": "clinical_note.reviewed",
            "data": { "note_id": "note_demo_124", "patient_local_id": "local_pat_demo_124" },
        });
        assert_eq!(harness.backend.events(), std::slice::from_ref(&event));

        let again = harness
            .send(
                harness.request(
                    Method::POST,
                    "/v1/clinical-notes/local_note_demo_124/review",
                ),
                empty(),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(harness.backend.events(), [event]);

        let now_served = harness
            .get("/v1/clinical-notes?note_local_id=local_note_demo_124")
            .await;
        assert_eq!(now_served.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn reviewing_an_unknown_note_is_404() {
        let harness = Harness::start().await;
        let reply = harness
            .send(
                harness.request(Method::POST, "/v1/clinical-notes/note_demo_999/review"),
                empty(),
            )
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        assert!(harness.backend.events().is_empty());
    }

    #[tokio::test]
    async fn unknown_routes_are_404() {
        let harness = Harness::start().await;
        for path in [
            "/",
            "/v1/clinical-notes/",
            "/v1/clinical-notes//review",
            "/v1/patients",
        ] {
            let reply = harness.get(path).await;
            assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
        }
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow() {
        let harness = Harness::start().await;
        let cases = [
            (Method::POST, "/healthz", "GET"),
            (Method::DELETE, "/v1/clinical-notes", "GET"),
            (Method::GET, "/v1/patients/link", "POST"),
            (Method::PUT, "/v1/patients/external-link", "GET"),
            (
                Method::GET,
                "/v1/clinical-notes/note_demo_124/review",
                "POST",
            ),
        ];
        for (method, path, allow) in cases {
            let reply = harness.send(harness.request(method, path), empty()).await;
            assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            assert_eq!(
                reply.headers.get(ALLOW).map(HeaderValue::as_bytes),
                Some(allow.as_bytes())
            );
        }
        assert!(harness.backend.events().is_empty());
    }

    #[tokio::test]
    async fn request_id_is_echoed_on_success_and_error() {
        let harness = Harness::start().await;
        for path in ["/healthz", "/nowhere"] {
            let request = harness
                .request(Method::GET, path)
                .header(REQUEST_ID, "req-demo-1");
            let reply = harness.send(request, empty()).await;
            assert_eq!(
                reply.headers.get(REQUEST_ID).map(HeaderValue::as_bytes),
                Some(&b"req-demo-1"[..])
            );
        }
        let without = harness.get("/healthz").await;
        assert!(without.headers.get(REQUEST_ID).is_none());
    }

    #[tokio::test]
    async fn org_header_is_recorded_but_never_reflected() {
        let harness = Harness::start().await;
        let request = harness
            .request(
                Method::GET,
                "/v1/clinical-notes?note_local_id=local_note_demo_123",
            )
            .header(PORTCULLIS_ORG, "org_demo_acme");
        let reply = harness.send(request, empty()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.json.to_string().contains("org_demo_acme"));
        assert!(reply
            .headers
            .values()
            .all(|value| value.as_bytes() != b"org_demo_acme"));
        harness.get("/healthz").await;
        assert_eq!(harness.backend.seen_orgs(), ["org_demo_acme"]);
    }

    #[tokio::test]
    async fn binding_a_taken_port_fails_with_the_address() {
        let harness = Harness::start().await;
        let taken = harness.backend.local_addr();
        match DemoBackend::start(taken).await {
            Err(DemoBackendError::Bind { addr, .. }) => assert_eq!(addr, taken),
            Ok(_) => panic!("a second backend bound a taken port"),
        }
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let harness = Harness::start().await;
        assert_eq!(harness.get("/healthz").await.status, StatusCode::OK);
        let addr = harness.backend.local_addr();
        tokio::time::timeout(Duration::from_secs(10), harness.backend.shutdown())
            .await
            .expect("shutdown completes even with a kept-alive connection");
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn query_values_follow_form_urlencoded_rules() {
        let query = Query::parse("a=one+two&b=%41%2b%zz%4&c&a=second&d=caf%C3%A9&e=%FF");
        assert_eq!(query.get("a"), Some("one two"));
        assert_eq!(query.get("b"), Some("A+%zz%4"));
        assert_eq!(query.get("c"), Some(""));
        assert_eq!(query.get("d"), Some("café"));
        assert_eq!(query.get("e"), Some("\u{FFFD}"));
        assert_eq!(query.get("missing"), None);
    }

    #[test]
    fn overlong_query_values_are_rejected() {
        let raw = format!("note_local_id={}", "n".repeat(MAX_FIELD_CHARS + 1));
        let query = Query::parse(&raw);
        assert!(matches!(
            query.field("note_local_id"),
            Err(ApiError::InvalidField("note_local_id"))
        ));
        assert!(matches!(query.field("absent"), Ok(None)));
    }

    #[test]
    fn seen_orgs_keep_only_the_newest() {
        let mut store = Store::seeded();
        for n in 0..MAX_SEEN_ORGS + 2 {
            store.record_org(format!("org_demo_{n}"));
        }
        assert_eq!(store.seen_orgs.len(), MAX_SEEN_ORGS);
        assert_eq!(
            store.seen_orgs.front().map(String::as_str),
            Some("org_demo_2")
        );
    }

    #[test]
    fn a_poisoned_store_keeps_serving() {
        let shared = Shared::new(Store::seeded());
        let holder = shared.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = holder.lock();
            panic!("poison the demo store");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.0.is_poisoned());
        assert_eq!(shared.lock().reviewed_notes().len(), 2);
    }

    #[test]
    fn routes_are_recognised_exactly() {
        assert_eq!(Route::parse("/healthz"), Some(Route::Health));
        assert_eq!(
            Route::parse("/v1/clinical-notes/note%5Fdemo+1/review"),
            Some(Route::ReviewNote("note_demo+1".to_owned()))
        );
        assert_eq!(Route::parse("/v1/clinical-notes/a/b/review"), None);
        assert_eq!(Route::parse("/healthz/"), None);
    }
}

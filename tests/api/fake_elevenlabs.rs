//! A fake ElevenLabs: an HTTP server (axum) speaking the real API's request
//! and response shapes for the voice endpoints voicehub uses (see
//! docs/elevenlabs.md), recording every request and
//! answering injected faults on demand. It is the only fake in the suite.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use secrecy::SecretString;
use serde_json::{Value, json};
use voicehub::{
    config::ProviderConfig,
    provider::{ElevenLabsConfig, RetryPolicy},
};

pub(crate) const API_KEY: &str = "xi-test-key-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Add,
    Get,
    /// `GET /v2/voices`: a lookup of several voices by id.
    Lookup,
    Edit,
    Delete,
}

/// An injected answer, used once by the next request to its route.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Answer with this status and JSON body (and optional extra headers).
    Respond {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
    /// Wait this long, then answer normally.
    Slow(Duration),
}

impl Fault {
    pub(crate) fn status(status: u16, body: Value) -> Self {
        Fault::Respond {
            status,
            body,
            headers: Vec::new(),
        }
    }
    pub(crate) fn too_many_concurrent() -> Self {
        Self::status(
            429,
            json!({"detail": {"status": "too_many_concurrent_requests", "message": "Too many concurrent requests for your plan."}}),
        )
    }
    pub(crate) fn system_busy_new_style() -> Self {
        Self::status(
            429,
            json!({"detail": {"type": "rate_limit_error", "code": "system_busy", "status": "system_busy", "message": "System busy, retry with backoff.", "request_id": "req_1"}}),
        )
    }
    pub(crate) fn server_error() -> Self {
        Self::status(
            500,
            json!({"detail": {"status": "internal_error", "message": "Internal Server Error"}}),
        )
    }
    pub(crate) fn unavailable() -> Self {
        Self::status(503, json!({"detail": "Service Unavailable"}))
    }
    pub(crate) fn voice_limit() -> Self {
        Self::status(
            400,
            json!({"detail": {"status": "voice_limit_reached", "message": "You have reached your maximum amount of custom voices (10 / 10)."}}),
        )
    }
    pub(crate) fn invalid_api_key() -> Self {
        Self::status(
            401,
            json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
        )
    }
    pub(crate) fn unprocessable_files() -> Self {
        Self::status(
            422,
            json!({"detail": [{"loc": ["body", "files", 0], "msg": "Expected UploadFile, received: <class 'str'>", "type": "value_error"}]}),
        )
    }
    pub(crate) fn not_found_404() -> Self {
        Self::status(
            404,
            json!({"detail": {"status": "voice_not_found", "message": "A voice with the voice_id was not found."}}),
        )
    }
    pub(crate) fn not_found_400() -> Self {
        Self::status(
            400,
            json!({"detail": {"status": "voice_not_found", "message": "A voice with the voice_id was not found."}}),
        )
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) route: Route,
    pub(crate) voice_id: Option<String>,
    pub(crate) api_key: Option<String>,
    /// Multipart text fields, in order.
    pub(crate) texts: Vec<(String, String)>,
    /// Multipart file parts: (field name, file name, content type, size).
    pub(crate) files: Vec<(String, String, String, usize)>,
}

impl Recorded {
    fn bodiless(route: Route, voice_id: &str, headers: &HeaderMap) -> Self {
        Recorded {
            route,
            voice_id: Some(voice_id.to_owned()),
            api_key: api_key(headers),
            texts: Vec::new(),
            files: Vec::new(),
        }
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FakeVoice {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) files: usize,
    /// What GET /v1/voices/{id} reports about its readiness.
    pub(crate) report: Report,
}

/// The readiness fields of a voice as ElevenLabs reports them. The default
/// is a ready instant clone.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) category: &'static str,
    pub(crate) requires_verification: bool,
    pub(crate) is_verified: bool,
    /// Professional clones: model id → state (`queued`, `fine_tuning`, `fine_tuned`, `failed`, ...).
    pub(crate) fine_tuning_state: BTreeMap<String, String>,
    pub(crate) fine_tuning_message: BTreeMap<String, String>,
    pub(crate) safety_control: Option<&'static str>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            category: "cloned",
            requires_verification: false,
            is_verified: false,
            fine_tuning_state: BTreeMap::new(),
            fine_tuning_message: BTreeMap::new(),
            safety_control: None,
        }
    }
}

impl Report {
    /// An instant clone that awaits voice verification.
    pub(crate) fn awaiting_verification() -> Self {
        Report {
            requires_verification: true,
            ..Report::default()
        }
    }

    /// A professional clone whose training for `eleven_multilingual_v2` is in `state`.
    pub(crate) fn professional(state: &str) -> Self {
        Report {
            category: "professional",
            fine_tuning_state: [("eleven_multilingual_v2".to_owned(), state.to_owned())].into(),
            ..Report::default()
        }
    }
}

#[derive(Default)]
struct Inner {
    in_flight: usize,
    max_in_flight: usize,
    voices: HashMap<String, FakeVoice>,
    requests: Vec<Recorded>,
    faults: HashMap<Route, VecDeque<Fault>>,
    next_id: u64,
    default_report: Report,
    /// The largest page a search returns, whatever `page_size` asks (the
    /// real API may return fewer voices than asked for).
    page_limit: Option<usize>,
    /// Until then, every other request fails (see [`FakeElevenLabs::storm`]).
    storm_until: Option<std::time::Instant>,
    storm_count: u64,
    /// The account's custom voice slots: a create beyond them is refused
    /// with `voice_limit_reached`, as ElevenLabs does.
    voice_limit: Option<usize>,
    /// Every voice ever created here: its id and its `voicehub_id` label.
    created: Vec<(String, Option<String>)>,
}

impl Inner {
    /// The storm's answer to the next request: 429 and 500 in turn for
    /// every other request while it lasts.
    fn storm_fault(&mut self) -> Option<Fault> {
        if self.storm_until? <= std::time::Instant::now() {
            return None;
        }
        self.storm_count += 1;
        match self.storm_count % 4 {
            1 => Some(Fault::too_many_concurrent()),
            3 => Some(Fault::server_error()),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct FakeElevenLabs {
    pub(crate) url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeElevenLabs {
    /// Starts the fake on 127.0.0.1:0; it lives as long as the test's runtime.
    pub(crate) async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/voices/add", post(add))
            .route("/v1/voices/{id}", get(get_voice))
            .route("/v2/voices", get(lookup))
            .route("/v1/voices/{id}", delete(delete_voice))
            .route("/v1/voices/{id}/edit", post(edit))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                count_in_flight,
            ))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeElevenLabs { url, inner }
    }

    /// voicehub's provider configuration pointing here, with quick retries
    /// and a short timeout so fault tests stay fast.
    pub(crate) fn provider_config(&self) -> ProviderConfig {
        ProviderConfig::ElevenLabs(ElevenLabsConfig {
            base_url: self.url.parse().unwrap(),
            api_key: SecretString::from(API_KEY.to_owned()),
            timeout: Duration::from_millis(400),
            max_concurrency: 4,
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                budget: Duration::from_secs(10),
            },
        })
    }

    /// For `lasting`, half of all answers, on every route, are 429 or 500.
    pub(crate) fn storm(&self, lasting: Duration) {
        self.inner.lock().unwrap().storm_until = Some(std::time::Instant::now() + lasting);
    }

    /// The next `times` requests to `route` get `fault`.
    pub(crate) fn inject(&self, route: Route, times: usize, fault: Fault) {
        let mut inner = self.inner.lock().unwrap();
        let queue = inner.faults.entry(route).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub(crate) fn calls(&self, route: Route) -> usize {
        self.requests().iter().filter(|r| r.route == route).count()
    }

    pub(crate) fn voice(&self, id: &str) -> Option<FakeVoice> {
        self.inner.lock().unwrap().voices.get(id).cloned()
    }

    /// The most requests that were being answered at the same moment.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }

    /// What new voices will report until changed.
    /// Searches return at most `limit` voices per page from now on.
    pub(crate) fn set_page_limit(&self, limit: usize) {
        self.inner.lock().unwrap().page_limit = Some(limit);
    }

    /// Puts a voice at the fake as if made elsewhere in the account (by
    /// someone other than voicehub).
    pub(crate) fn add_voice(&self, id: &str, voice: FakeVoice) {
        self.inner
            .lock()
            .unwrap()
            .voices
            .insert(id.to_owned(), voice);
    }

    /// The ids of the voices the fake holds.
    pub(crate) fn voice_ids(&self) -> Vec<String> {
        self.inner.lock().unwrap().voices.keys().cloned().collect()
    }

    pub(crate) fn set_default_report(&self, report: Report) {
        self.inner.lock().unwrap().default_report = report;
    }

    /// Changes what the voice reports from now on.
    pub(crate) fn set_report(&self, id: &str, report: Report) {
        self.inner
            .lock()
            .unwrap()
            .voices
            .get_mut(id)
            .expect("fake voice")
            .report = report;
    }

    /// As [`FakeElevenLabs::set_report`], for a voice that may be gone.
    pub(crate) fn set_report_if_held(&self, id: &str, report: Report) {
        if let Some(voice) = self.inner.lock().unwrap().voices.get_mut(id) {
            voice.report = report;
        }
    }

    /// Every voice ever created here, deleted ones included: its id and the
    /// voicehub voice its `voicehub_id` label names.
    pub(crate) fn created(&self) -> Vec<(String, Option<String>)> {
        self.inner.lock().unwrap().created.clone()
    }

    /// The account holds at most `limit` voices from now on.
    pub(crate) fn set_voice_limit(&self, limit: usize) {
        self.inner.lock().unwrap().voice_limit = Some(limit);
    }

    /// Replaces a voice's labels, as someone with the account may at any time.
    pub(crate) fn set_labels(&self, id: &str, labels: BTreeMap<String, String>) {
        self.inner
            .lock()
            .unwrap()
            .voices
            .get_mut(id)
            .expect("fake voice")
            .labels = labels;
    }

    /// Removes a voice as if deleted at ElevenLabs by someone else.
    pub(crate) fn forget(&self, id: &str) {
        self.inner.lock().unwrap().voices.remove(id);
    }

    pub(crate) fn voice_count(&self) -> usize {
        self.inner.lock().unwrap().voices.len()
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

/// Counts requests in progress; the guard also counts down a request the
/// client abandoned (its future is dropped).
async fn count_in_flight(
    State(inner): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    struct Leave(Arc<Mutex<Inner>>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.lock().unwrap().in_flight -= 1;
        }
    }
    {
        let mut state = inner.lock().unwrap();
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
    }
    let _leave = Leave(inner);
    next.run(request).await
}

fn error(status: u16, body: Value) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-trace-id", "fake-trace".parse().unwrap());
    response
}

fn ok(body: Value) -> Response {
    error(200, body)
}

/// Records the request, then applies a queued fault for the route, if any.
async fn begin(inner: &Arc<Mutex<Inner>>, recorded: Recorded) -> Option<Response> {
    let route = recorded.route;
    let key_ok = recorded.api_key.as_deref() == Some(API_KEY);
    let fault = {
        let mut inner = inner.lock().unwrap();
        inner.requests.push(recorded);
        let queued = inner.faults.get_mut(&route).and_then(VecDeque::pop_front);
        queued.or_else(|| inner.storm_fault())
    };
    match fault {
        Some(Fault::Respond {
            status,
            body,
            headers,
        }) => {
            let mut response = error(status, body);
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            return Some(response);
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if !key_ok {
        return Some(error(
            401,
            json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
        ));
    }
    None
}

fn api_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("xi-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_form(
    route: Route,
    voice_id: Option<String>,
    headers: &HeaderMap,
    mut form: Multipart,
) -> Recorded {
    let mut recorded = Recorded {
        route,
        voice_id,
        api_key: api_key(headers),
        texts: Vec::new(),
        files: Vec::new(),
    };
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        match field.file_name().map(str::to_owned) {
            Some(file_name) => {
                let content_type = field.content_type().unwrap_or_default().to_owned();
                let size = field.bytes().await.map(|b| b.len()).unwrap_or_default();
                recorded.files.push((name, file_name, content_type, size));
            }
            None => recorded
                .texts
                .push((name, field.text().await.unwrap_or_default())),
        }
    }
    recorded
}

fn labels_of(recorded: &Recorded) -> BTreeMap<String, String> {
    recorded
        .text("labels")
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}

async fn add(State(inner): Shared, headers: HeaderMap, form: Multipart) -> Response {
    let recorded = read_form(Route::Add, None, &headers, form).await;
    let (name, files_as_text) = (
        recorded.text("name").map(str::to_owned),
        recorded.texts.iter().any(|(n, _)| n == "files"),
    );
    let voice = FakeVoice {
        name: name.clone().unwrap_or_default(),
        description: recorded.text("description").map(str::to_owned),
        labels: labels_of(&recorded),
        files: recorded.files.iter().filter(|f| f.0 == "files").count(),
        report: inner.lock().unwrap().default_report.clone(),
    };
    // Like a real server, the fake finishes what it started when the client
    // goes away (a timeout): the voice exists even if nobody hears of it.
    tokio::spawn(add_received(inner, recorded, voice, name, files_as_text))
        .await
        .unwrap()
}

async fn add_received(
    inner: Arc<Mutex<Inner>>,
    recorded: Recorded,
    voice: FakeVoice,
    name: Option<String>,
    files_as_text: bool,
) -> Response {
    if let Some(response) = begin(&inner, recorded).await {
        return response;
    }
    if files_as_text || voice.files == 0 {
        return Fault::unprocessable_files().into_response_now();
    }
    if name.is_none_or(|n| n.is_empty()) {
        return error(
            422,
            json!({"detail": [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}]}),
        );
    }
    let mut inner = inner.lock().unwrap();
    if inner
        .voice_limit
        .is_some_and(|limit| inner.voices.len() >= limit)
    {
        return Fault::voice_limit().into_response_now();
    }
    inner.next_id += 1;
    let voice_id = format!("FakeVoice{:011}", inner.next_id);
    let tag = voice.labels.get("voicehub_id").cloned();
    inner.created.push((voice_id.clone(), tag));
    inner.voices.insert(voice_id.clone(), voice);
    ok(json!({"voice_id": voice_id, "requires_verification": false}))
}

impl Fault {
    fn into_response_now(self) -> Response {
        match self {
            Fault::Respond { status, body, .. } => error(status, body),
            Fault::Slow(_) => error(500, json!({})),
        }
    }
}

fn not_found() -> Response {
    error(
        400,
        json!({"detail": {"status": "voice_not_found", "message": "A voice with the voice_id was not found."}}),
    )
}

async fn get_voice(State(inner): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let recorded = Recorded::bodiless(Route::Get, &id, &headers);
    if let Some(response) = begin(&inner, recorded).await {
        return response;
    }
    let Some(voice) = inner.lock().unwrap().voices.get(&id).cloned() else {
        return not_found();
    };
    ok(voice_json(&id, &voice))
}

/// `GET /v2/voices`: with `voice_ids=…`, the voices it knows of those asked
/// for, as one page; otherwise a paged search. Query pairs are recorded as
/// the request's texts.
async fn lookup(State(inner): Shared, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let url = reqwest::Url::parse(&format!("http://fake/?{}", query.unwrap_or_default())).unwrap();
    let texts: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let recorded = Recorded {
        route: Route::Lookup,
        voice_id: None,
        api_key: api_key(&headers),
        texts,
        files: Vec::new(),
    };
    let ids: Vec<String> = recorded
        .texts
        .iter()
        .filter(|(k, _)| k == "voice_ids")
        .map(|(_, v)| v.clone())
        .collect();
    if let Some(response) = begin(&inner, recorded).await {
        return response;
    }
    if ids.len() > 100 {
        return error(
            422,
            json!({"detail": [{"loc": ["query", "voice_ids"], "msg": "at most 100 voice ids", "type": "value_error"}]}),
        );
    }
    let query = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let inner = inner.lock().unwrap();
    if !ids.is_empty() {
        let voices: Vec<Value> = ids
            .iter()
            .filter_map(|id| inner.voices.get(id).map(|voice| voice_json(id, voice)))
            .collect();
        return ok(json!({
            "voices": voices,
            "has_more": false,
            "total_count": voices.len(),
            "next_page_token": null,
        }));
    }
    // A search: voices whose name, description or label values contain
    // `search`, in pages of `page_size` (10 by default, at most 100), with
    // an opaque `next_page_token` (here, the offset).
    let search = query("search").unwrap_or_default().to_lowercase();
    let page_size = query("page_size")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, inner.page_limit.unwrap_or(100));
    let offset = query("next_page_token")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut matching: Vec<(&String, &FakeVoice)> = inner
        .voices
        .iter()
        .filter(|(_, v)| {
            v.name.to_lowercase().contains(&search)
                || v.description
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&search))
                || v.labels
                    .values()
                    .any(|l| l.to_lowercase().contains(&search))
        })
        .collect();
    matching.sort_by_key(|(id, _)| *id);
    let total = matching.len();
    let voices: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(id, voice)| voice_json(id, voice))
        .collect();
    let next = offset + voices.len();
    ok(json!({
        "voices": voices,
        "has_more": next < total,
        "total_count": total,
        "next_page_token": if next < total { Value::from(next.to_string()) } else { Value::Null },
    }))
}

/// A voice as `GET /v1/voices/{id}` and `GET /v2/voices` show it.
fn voice_json(id: &str, voice: &FakeVoice) -> Value {
    json!({
        "voice_id": id,
        "name": voice.name,
        "category": voice.report.category,
        "description": voice.description,
        "labels": voice.labels,
        "samples": (0..voice.files).map(|i| json!({
            "sample_id": format!("sample{i}"), "file_name": format!("sample{i}.wav"),
            "mime_type": "audio/wav", "size_bytes": 1024, "hash": "0"
        })).collect::<Vec<_>>(),
        "fine_tuning": {
            "is_allowed_to_fine_tune": voice.report.category == "professional",
            "state": voice.report.fine_tuning_state, "message": voice.report.fine_tuning_message,
            "verification_failures": [], "verification_attempts_count": 0, "manual_verification_requested": false
        },
        "voice_verification": {
            "requires_verification": voice.report.requires_verification, "is_verified": voice.report.is_verified,
            "verification_failures": [], "verification_attempts_count": 0
        },
        "preview_url": format!("https://storage.fake-elevenlabs.invalid/{id}/preview.mp3"),
        "available_for_tiers": [],
        "high_quality_base_model_ids": ["eleven_multilingual_v2"],
        "safety_control": voice.report.safety_control,
        "sharing": null,
        "settings": null,
    })
}

async fn edit(
    State(inner): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Multipart,
) -> Response {
    let recorded = read_form(Route::Edit, Some(id.clone()), &headers, form).await;
    let name = recorded.text("name").map(str::to_owned);
    let description = recorded.text("description").map(str::to_owned);
    let labels = recorded.text("labels").map(|_| labels_of(&recorded));
    if let Some(response) = begin(&inner, recorded).await {
        return response;
    }
    let Some(name) = name else {
        return error(
            422,
            json!({"detail": [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}]}),
        );
    };
    let mut inner = inner.lock().unwrap();
    let Some(voice) = inner.voices.get_mut(&id) else {
        return not_found();
    };
    voice.name = name;
    if description.is_some() {
        voice.description = description;
    }
    if let Some(labels) = labels {
        voice.labels = labels;
    }
    ok(json!({"status": "ok"}))
}

async fn delete_voice(
    State(inner): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let recorded = Recorded::bodiless(Route::Delete, &id, &headers);
    if let Some(response) = begin(&inner, recorded).await {
        return response;
    }
    match inner.lock().unwrap().voices.remove(&id) {
        Some(_) => ok(json!({"status": "ok"})),
        None => not_found(),
    }
}

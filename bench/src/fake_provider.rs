//! A fast fake ElevenLabs for the benchmark: the endpoints the status
//! engine and CreateVoiceClone use (`POST /v1/voices/add`,
//! `GET /v1/voices/{id}`, and `GET /v2/voices?voice_ids=…` to look up many
//! at once), answering in ElevenLabs' shapes after a fixed latency, and
//! counting what it was asked. Unlike the test suite's fake it
//! records no request bodies and injects no faults: it must cost the
//! benchmark as little as possible.
//!
//! Readiness: a voice created through `add` becomes ready at a time drawn
//! from `ready_after` (until then it reports an instant clone awaiting
//! verification, which voicehub treats as still processing); an id the
//! fake never created (a voice the benchmark wrote into storage directly)
//! is ready or not as the benchmark sets it, ready at first.

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// What the fake knows about a voice it created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Created {
    /// When `add` answered.
    pub(crate) added_at: Instant,
    /// From when on `GET` reports it ready.
    pub(crate) ready_at: Instant,
    /// Answers about this voice so far (alone or in a lookup).
    pub(crate) asked: u64,
}

struct Inner {
    latency: Duration,
    ready_after: Range<Duration>,
    gets: AtomicU64,
    answered: AtomicU64,
    next_id: AtomicU64,
    others_ready: AtomicBool,
    voices: Mutex<HashMap<String, Created>>,
}

/// A running fake; it lives as long as the benchmark's runtime.
#[derive(Clone)]
pub(crate) struct FakeProvider {
    /// Its base URL, for `ELEVENLABS_BASE_URL`.
    pub(crate) url: String,
    inner: Arc<Inner>,
}

/// The API key the fake expects (any non-empty key works; this one is shown in logs).
pub(crate) const API_KEY: &str = "xi-bench-key";

impl FakeProvider {
    /// Starts the fake on 127.0.0.1:0: every answer after `latency`; voices
    /// it creates become ready after a uniformly random delay in `ready_after`.
    pub(crate) async fn start(
        latency: Duration,
        ready_after: Range<Duration>,
    ) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            latency,
            ready_after,
            gets: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            others_ready: AtomicBool::new(true),
            voices: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/v1/voices/add", post(add))
            .route("/v1/voices/{id}", get(voice))
            .route("/v2/voices", get(lookup))
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeProvider {
            url: format!("http://{addr}"),
            inner,
        })
    }

    /// The environment that points a voicehub server at this fake.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VOICEHUB_PROVIDER", "elevenlabs".into()),
            ("ELEVENLABS_API_KEY", API_KEY.into()),
            ("ELEVENLABS_BASE_URL", self.url.clone()),
        ]
    }

    /// `GET` requests answered so far (a lookup of many voices is one).
    pub(crate) fn gets(&self) -> u64 {
        self.inner.gets.load(Ordering::Relaxed)
    }

    /// Voices answered about so far: one per `GET /v1/voices/{id}`, one per
    /// voice in a lookup.
    pub(crate) fn answered(&self) -> u64 {
        self.inner.answered.load(Ordering::Relaxed)
    }

    /// Whether voices the fake did not create report ready (at first they do).
    pub(crate) fn set_others_ready(&self, ready: bool) {
        self.inner.others_ready.store(ready, Ordering::Relaxed);
    }

    /// The voice the fake created as `provider_voice_id`.
    pub(crate) fn created(&self, provider_voice_id: &str) -> Option<Created> {
        self.inner.voices.lock().get(provider_voice_id).copied()
    }
}

type Shared = State<Arc<Inner>>;

/// Reads (and drops) the upload, then answers like ElevenLabs' `voices/add`.
async fn add(State(inner): Shared, mut form: Multipart) -> Response {
    while let Ok(Some(field)) = form.next_field().await {
        if field.bytes().await.is_err() {
            return StatusCode::BAD_REQUEST.into_response();
        }
    }
    tokio::time::sleep(inner.latency).await;
    let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("bench{n:016}");
    let now = Instant::now();
    let range = &inner.ready_after;
    let span = u64::try_from(range.end.saturating_sub(range.start).as_nanos()).unwrap_or(u64::MAX);
    let offset = Duration::from_nanos(fastrand::u64(0..=span));
    inner.voices.lock().insert(
        id.clone(),
        Created {
            added_at: now,
            ready_at: now + range.start + offset,
            asked: 0,
        },
    );
    Json(json!({"voice_id": id, "requires_verification": false})).into_response()
}

/// Answers like ElevenLabs' `GET /v1/voices/{id}` (the fields voicehub
/// reads, plus enough of the rest to be a realistic body to parse).
async fn voice(State(inner): Shared, Path(id): Path<String>) -> Response {
    tokio::time::sleep(inner.latency).await;
    inner.gets.fetch_add(1, Ordering::Relaxed);
    Json(voice_json(&inner, &id)).into_response()
}

/// Answers like ElevenLabs' `GET /v2/voices?voice_ids=…`: one page with
/// every voice asked about.
async fn lookup(State(inner): Shared, RawQuery(query): RawQuery) -> Response {
    tokio::time::sleep(inner.latency).await;
    inner.gets.fetch_add(1, Ordering::Relaxed);
    let query = query.unwrap_or_default();
    let voices: Vec<Value> = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("voice_ids="))
        .map(|id| voice_json(&inner, id))
        .collect();
    Json(json!({
        "voices": voices,
        "has_more": false,
        "total_count": voices.len(),
        "next_page_token": null,
    }))
    .into_response()
}

/// One voice in ElevenLabs' shape, counted as answered.
fn voice_json(inner: &Inner, id: &str) -> Value {
    inner.answered.fetch_add(1, Ordering::Relaxed);
    let ready = match inner.voices.lock().get_mut(id) {
        Some(created) => {
            created.asked += 1;
            Instant::now() >= created.ready_at
        }
        None => inner.others_ready.load(Ordering::Relaxed),
    };
    json!({
        "voice_id": id,
        "name": "bench voice",
        "category": "cloned",
        "description": null,
        "labels": {"accent": "neutral"},
        "samples": [{
            "sample_id": "sample0", "file_name": "sample0.wav",
            "mime_type": "audio/wav", "size_bytes": 1024, "hash": "0"
        }],
        "fine_tuning": {
            "is_allowed_to_fine_tune": false, "state": {}, "message": {},
            "verification_failures": [], "verification_attempts_count": 0,
            "manual_verification_requested": false
        },
        "voice_verification": {
            "requires_verification": !ready, "is_verified": false,
            "verification_failures": [], "verification_attempts_count": 0
        },
        "preview_url": format!("https://storage.fake-elevenlabs.invalid/{id}/preview.mp3"),
        "available_for_tiers": [],
        "high_quality_base_model_ids": ["eleven_multilingual_v2"],
        "safety_control": null,
        "sharing": null,
        "settings": null,
    })
}

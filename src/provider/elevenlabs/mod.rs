//! The ElevenLabs voice API over HTTP (reqwest, rustls). The endpoints,
//! answers and error bodies this relies on, with their sources, are in
//! `docs/elevenlabs.md`.
//!
//! Guarantees:
//! - every attempt has a timeout, and at most `max_concurrency` requests are
//!   in flight at once (ElevenLabs limits concurrent requests per plan; a
//!   permit is held only while a request is on the wire, not while backing off);
//! - 429 and 5xx answers and transport failures are retried with exponential
//!   backoff and full jitter, honouring `Retry-After`/`retry-after-ms`, within
//!   a bounded number of retries and total time; other 4xx are never retried.
//!   Creating a voice is not idempotent at ElevenLabs, so a create is retried
//!   here only when it cannot have been processed (429, connection
//!   failures); any other failure (a 5xx, which a gateway may send after
//!   ElevenLabs made the voice, a timeout, a reset) is returned as an
//!   unknown outcome, for the write path to resolve by the voice's tag;
//! - error bodies are read in all three shapes ElevenLabs sends (`detail` as
//!   an object with `code`/`status`/`message`, as a 422 array, as a string);
//! - the API key is sent as a sensitive header and never logged.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use reqwest::{
    Method, RequestBuilder, StatusCode, Url,
    header::{HeaderMap, HeaderValue},
    multipart::{Form, Part},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::{sync::Semaphore, time::Instant};
use uuid::Uuid;

mod errors;
mod readiness;

use errors::classify;
use readiness::{VoiceDetails, VoicesPage};

/// The most ids one `GET /v2/voices` lookup takes (and its largest page).
const LOOKUP_LIMIT: usize = 100;

/// The most pages one search for a tag reads.
const MAX_SEARCH_PAGES: usize = 50;

/// The most pages one listing of every voice reads (100,000 voices).
const MAX_LIST_PAGES: usize = 1_000;

/// The part of a `GET /v2/voices?search=` page a tag search reads.
#[derive(Deserialize)]
struct SearchPage {
    voices: Vec<SearchedVoice>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct SearchedVoice {
    #[serde(rename = "voice_id")]
    provider_voice_id: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, serde_json::Value>>,
}

impl SearchedVoice {
    /// The voice as voicehub's, if it carries a well-formed tag.
    fn tagged(self) -> Option<TaggedVoice> {
        let labels = self.labels?;
        let label = |key: &str| labels.get(key)?.as_str().map(str::to_owned);
        Some(TaggedVoice {
            voicehub_id: label(TAG_LABEL)?.parse().ok()?,
            installation: label(INSTALLATION_LABEL),
            provider_voice_id: self.provider_voice_id,
        })
    }
}

use crate::metrics::{EndpointLabel, Metrics, ProviderLabels};

use super::{
    CloneRequest, Cloned, INSTALLATION_LABEL, ProviderError, TAG_LABEL, TaggedVoice, Verdict,
    VoiceEdit, VoiceProvider, tagged,
};

/// How transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles each time (with full jitter).
    pub base_delay: Duration,
    /// Cap of one backoff.
    pub max_delay: Duration,
    /// Total time one call may take, retries included.
    pub budget: Duration,
}

impl RetryPolicy {
    /// `max_retries` within `budget`, backing off from half a second up to
    /// eight seconds apart (ElevenLabs asks clients to back off; a few
    /// seconds lets a busy system recover without stalling a caller for long).
    #[must_use]
    pub fn new(max_retries: u32, budget: Duration) -> Self {
        RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            budget,
        }
    }
}

/// How to reach ElevenLabs, and how hard to try.
#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    /// `https://api.elevenlabs.io`, a residency host, or a test server.
    pub base_url: Url,
    /// Sent as `xi-api-key`.
    pub api_key: SecretString,
    /// Timeout of one attempt (uploads of 50 MiB included).
    pub timeout: Duration,
    /// Most requests in flight at once.
    pub max_concurrency: usize,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

/// The ElevenLabs client.
pub(crate) struct ElevenLabs {
    http: reqwest::Client,
    base_url: Url,
    api_key: HeaderValue,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    retry: RetryPolicy,
    metrics: Metrics,
    /// Sent as the installation label of every voice made or edited.
    installation: Uuid,
}

/// Whether a request may be sent again after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotency {
    Idempotent,
    /// Retried only when the provider surely did not act on it.
    NotIdempotent,
}

impl ElevenLabs {
    /// # Errors
    /// The API key is not a valid header value, or the HTTP client cannot be built.
    pub(crate) fn new(
        config: ElevenLabsConfig,
        metrics: &Metrics,
        installation: Uuid,
    ) -> anyhow::Result<Self> {
        let mut api_key = HeaderValue::from_str(config.api_key.expose_secret()).map_err(|_| {
            anyhow::anyhow!("ELEVENLABS_API_KEY contains characters not allowed in a header")
        })?;
        api_key.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("voicehub/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ElevenLabs {
            http,
            base_url: config.base_url,
            api_key,
            timeout: config.timeout,
            in_flight: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            retry: config.retry,
            metrics: metrics.clone(),
            installation,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        // Segments are escaped one by one, so an id can never change the path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One page of `GET /v2/voices` (of the largest size, without the
    /// costly total) with these query pairs, read as `T`.
    async fn voices_page<'a, T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<T, ProviderError> {
        let mut url = self.url(&["v2", "voices"]);
        url.query_pairs_mut()
            .append_pair("page_size", &LOOKUP_LIMIT.to_string())
            .append_pair("include_total_count", "false")
            .extend_pairs(pairs);
        let body = self
            .call(op, Idempotency::Idempotent, || self.http.get(url.clone()))
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Protocol(format!("{op} answer: {e}")))
    }

    /// Sends one logical call, retrying transient failures as the module
    /// documentation says, and counts it (outcome, latency, retries) under
    /// its endpoint `op`. Returns the successful response's body.
    async fn call(
        &self,
        op: &'static str,
        idempotency: Idempotency,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Bytes, ProviderError> {
        let started = Instant::now();
        let result = self.call_with_retries(op, idempotency, build).await;
        let endpoint = EndpointLabel { endpoint: op };
        self.metrics
            .provider_duration
            .get_or_create(&endpoint)
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(ProviderError::class, |_| "ok");
        self.metrics
            .provider_calls
            .get_or_create(&ProviderLabels {
                endpoint: op,
                outcome,
            })
            .inc();
        result
    }

    async fn call_with_retries(
        &self,
        op: &'static str,
        idempotency: Idempotency,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Bytes, ProviderError> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let attempt = self.attempt(&build).await;
            let (error, retry_after) = match attempt {
                Ok(body) => return Ok(body),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient {
                    error,
                    retry_after,
                    surely_unprocessed,
                    answered,
                }) => {
                    if idempotency == Idempotency::NotIdempotent && !surely_unprocessed {
                        return Err(ProviderError::OutcomeUnknown {
                            detail: error.to_string(),
                            may_still_run: !answered,
                        });
                    }
                    (error, retry_after)
                }
            };
            retries += 1;
            let delay = backoff(&self.retry, retries).max(retry_after.unwrap_or_default());
            if retries > self.retry.max_retries || started.elapsed() + delay > self.retry.budget {
                tracing::warn!(op, retries = retries - 1, error = %error, "voice provider call failed, giving up");
                return Err(error);
            }
            tracing::info!(op, retry = retries, ?delay, error = %error, "voice provider call failed, retrying");
            self.metrics
                .provider_retries
                .get_or_create(&EndpointLabel { endpoint: op })
                .inc();
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, build: &impl Fn() -> RequestBuilder) -> Result<Bytes, Failure> {
        // Held only for the request itself: a call backing off must not starve others.
        let _permit = self.in_flight.acquire().await.map_err(|_| {
            Failure::Final(ProviderError::Unavailable("provider client closed".into()))
        })?;
        let response = build()
            .header("xi-api-key", self.api_key.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| Failure::Transient {
                surely_unprocessed: e.is_connect(),
                answered: false,
                error: ProviderError::Unavailable(transport_message(&e)),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| Failure::Transient {
            surely_unprocessed: false,
            answered: false,
            error: ProviderError::Unavailable(transport_message(&e)),
            retry_after: None,
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let error = classify(status, &body);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(Failure::Transient {
                error,
                retry_after,
                // Only a 429 says the request was refused before any work. A
                // 5xx may come from a gateway after ElevenLabs acted (a 504
                // on a create that succeeded behind it).
                surely_unprocessed: status == StatusCode::TOO_MANY_REQUESTS,
                answered: true,
            })
        } else {
            Err(Failure::Final(error))
        }
    }
}

enum Failure {
    Final(ProviderError),
    Transient {
        error: ProviderError,
        retry_after: Option<Duration>,
        /// The provider cannot have acted on the request.
        surely_unprocessed: bool,
        /// An answer came back (a 5xx): the request is over, whatever it did.
        /// Otherwise (a timeout, a reset) it may still be running there.
        answered: bool,
    },
}

fn transport_message(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "connection failed".into()
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base·2^(n-1))].
fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .base_delay
        .saturating_mul(1u32 << (retry - 1).min(16))
        .min(policy.max_delay);
    let unit = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
    ceiling.mul_f64(unit)
}

/// `retry-after-ms` (milliseconds) or `Retry-After` (seconds), when present.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

#[derive(Deserialize)]
struct AddVoiceResponse {
    #[serde(rename = "voice_id")]
    provider_voice_id: String,
    #[serde(default)]
    requires_verification: bool,
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

#[async_trait::async_trait]
impl VoiceProvider for ElevenLabs {
    fn name(&self) -> &'static str {
        "elevenlabs"
    }

    async fn clone_voice(&self, request: CloneRequest) -> Result<Cloned, ProviderError> {
        let url = self.url(&["v1", "voices", "add"]);
        let body = self
            .call("voices.add", Idempotency::NotIdempotent, || {
                let mut form = Form::new().text("name", request.name.clone()).text(
                    "remove_background_noise",
                    request.remove_background_noise.to_string(),
                );
                if let Some(description) = &request.description {
                    form = form.text("description", description.clone());
                }
                form = form.text(
                    "labels",
                    labels_json(&tagged(
                        &request.labels,
                        request.voicehub_id,
                        self.installation,
                    )),
                );
                for file in &request.files {
                    // Bytes clone is a reference count: a retry re-sends without copying.
                    let part = Part::stream_with_length(file.data.clone(), file.data.len() as u64)
                        .file_name(file.filename.clone());
                    let part = match part.mime_str(&file.content_type) {
                        Ok(p) => p,
                        Err(_) => {
                            Part::stream_with_length(file.data.clone(), file.data.len() as u64)
                                .file_name(file.filename.clone())
                        }
                    };
                    form = form.part("files", part);
                }
                self.http.request(Method::POST, url.clone()).multipart(form)
            })
            .await?;
        let added: AddVoiceResponse = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Protocol(format!("voices/add answer: {e}")))?;
        Ok(Cloned {
            provider_voice_id: added.provider_voice_id,
            requires_verification: added.requires_verification,
        })
    }

    async fn check_voice(&self, provider_voice_id: &str) -> Result<Verdict, ProviderError> {
        let url = self.url(&["v1", "voices", provider_voice_id]);
        let body = self
            .call("voices.get", Idempotency::Idempotent, || {
                self.http.get(url.clone())
            })
            .await?;
        let details: VoiceDetails = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Protocol(format!("voice answer: {e}")))?;
        Ok(details.verdict())
    }

    fn lookup_limit(&self) -> usize {
        LOOKUP_LIMIT
    }

    async fn check_voices(
        &self,
        voice_ids: &[&str],
    ) -> Result<HashMap<String, Verdict>, ProviderError> {
        let ids = voice_ids
            .iter()
            .take(LOOKUP_LIMIT)
            .map(|id| ("voice_ids", *id));
        let page: VoicesPage = self.voices_page("voices.lookup", ids).await?;
        Ok(page
            .voices
            .into_iter()
            .filter(|voice| voice_ids.contains(&voice.provider_voice_id.as_str()))
            .map(|mut voice| {
                (
                    std::mem::take(&mut voice.provider_voice_id),
                    voice.verdict(),
                )
            })
            .collect())
    }

    async fn find_tagged(&self, voicehub_id: Uuid) -> Result<Option<String>, ProviderError> {
        let tag = voicehub_id.to_string();
        let installation = self.installation.to_string();
        let mut token: Option<String> = None;
        // The search matches labels among other fields; only the voice whose
        // tag is exactly ours counts. Bounded, in case paging never ends.
        for _ in 0..MAX_SEARCH_PAGES {
            let query = std::iter::once(("search", tag.as_str()))
                .chain(token.as_deref().map(|t| ("next_page_token", t)));
            let page: SearchPage = self.voices_page("voices.search", query).await?;
            if let Some(found) = page.voices.into_iter().find_map(|v| {
                let tagged = v.tagged()?;
                let ours = tagged.installation.is_none_or(|i| i == installation);
                (tagged.voicehub_id == voicehub_id && ours).then_some(tagged.provider_voice_id)
            }) {
                return Ok(Some(found));
            }
            match page.next_page_token.filter(|_| page.has_more) {
                Some(next) => token = Some(next),
                None => return Ok(None),
            }
        }
        Err(ProviderError::Protocol(format!(
            "voices search for {tag} did not end within {MAX_SEARCH_PAGES} pages"
        )))
    }

    async fn list_tagged(&self) -> Result<Vec<TaggedVoice>, ProviderError> {
        let mut tagged = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let query = token.as_deref().map(|t| ("next_page_token", t));
            let page: SearchPage = self.voices_page("voices.list", query).await?;
            tagged.extend(page.voices.into_iter().filter_map(SearchedVoice::tagged));
            match page.next_page_token.filter(|_| page.has_more) {
                Some(next) => token = Some(next),
                None => return Ok(tagged),
            }
        }
        Err(ProviderError::Protocol(format!(
            "listing voices did not end within {MAX_LIST_PAGES} pages"
        )))
    }

    async fn edit_voice(
        &self,
        provider_voice_id: &str,
        edit: VoiceEdit,
    ) -> Result<(), ProviderError> {
        let url = self.url(&["v1", "voices", provider_voice_id, "edit"]);
        // Setting the same metadata twice is harmless, so edits retry freely.
        self.call("voices.edit", Idempotency::Idempotent, || {
            let mut form = Form::new().text("name", edit.name.clone());
            if let Some(description) = &edit.description {
                form = form.text("description", description.clone());
            }
            if let Some(labels) = &edit.labels {
                form = form.text(
                    "labels",
                    labels_json(&tagged(labels, edit.voicehub_id, self.installation)),
                );
            }
            self.http.request(Method::POST, url.clone()).multipart(form)
        })
        .await
        .map(drop)
    }

    async fn delete_voice(&self, provider_voice_id: &str) -> Result<(), ProviderError> {
        let url = self.url(&["v1", "voices", provider_voice_id]);
        self.call("voices.delete", Idempotency::Idempotent, || {
            self.http.delete(url.clone())
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_retry_after_is_read() {
        let policy = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            budget: Duration::from_secs(10),
        };
        for retry in 1..10 {
            assert!(backoff(&policy, retry) <= Duration::from_millis(400));
        }
        assert!(backoff(&policy, 1) <= Duration::from_millis(100));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
    }
}

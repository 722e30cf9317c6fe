//! The gRPC surface: `voicehub.v1.VoiceService` (here) and
//! `voicehub.v1.WebhookService` (`webhooks.rs`).
//!
//! Handlers are thin: the interceptor has authenticated the caller; a
//! handler reads the caller, turns the request into checked values
//! (`validate.rs`, before touching storage or the provider), runs one store
//! read or one write-path operation, and converts the answer. Every failure
//! is an [`Error`] turned into a `Status` in one place (`error.rs`).

mod batcher;
mod intake;
mod limits;
mod lookups;
mod methods;
mod observe;
mod page_token;
mod snapshots;
mod validate;
mod watch;
mod webhooks;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

pub(crate) use limits::{DoorLimits, LimitLayer};
pub(crate) use observe::ObserveLayer;
pub(crate) use validate::MAX_REQUEST_BYTES;
pub(crate) use watch::Watches;
pub(crate) use webhooks::WebhookApi;

use crate::{
    audio,
    auth::{Authenticator, ValidUntil, caller},
    error::{Error, jitter},
    events::Hub,
    pb::{self, voice_service_server::VoiceServiceServer},
    store::Store,
    write_path::WritePath,
};

/// The VoiceService implementation.
#[derive(Clone)]
pub(crate) struct VoiceApi {
    store: Store,
    writes: WritePath,
    /// Parses uploaded samples, out of this process.
    audio: Arc<audio::Checker>,
    hub: Arc<Hub>,
    /// GetVoice's shared reads.
    lookups: Arc<lookups::Lookups>,
    /// The open watch streams and their limits.
    watches: Arc<Watches>,
    /// Ends every watch stream (with UNAVAILABLE) when the server stops.
    shutdown: CancellationToken,
    /// What a create must bring besides its samples.
    intake: IntakePolicy,
}

/// What CreateVoiceClone requires and reports besides the audio check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntakePolicy {
    /// A create without a consent is INVALID_ARGUMENT.
    pub(crate) require_consent: bool,
    /// What the sample quality report judges against.
    pub(crate) quality: audio::QualityThresholds,
}

/// The most bytes of a caller's `user-agent` recorded.
const MAX_USER_AGENT_BYTES: usize = 512;

/// The service as mounted on the server: every call passes the authenticator first.
pub(crate) type AuthenticatedVoiceService =
    InterceptedService<VoiceServiceServer<VoiceApi>, Authenticator>;

impl VoiceApi {
    /// The API over storage (reads, counted in `metrics`), the write path,
    /// and this replica's hub and open streams (watches).
    #[must_use]
    #[allow(clippy::too_many_arguments)] // the service's parts, each once
    pub(crate) fn new(
        store: Store,
        metrics: &crate::metrics::Metrics,
        writes: WritePath,
        audio: Arc<audio::Checker>,
        hub: Arc<Hub>,
        watches: Arc<Watches>,
        shutdown: CancellationToken,
        intake: IntakePolicy,
    ) -> Self {
        VoiceApi {
            lookups: lookups::lookups(store.clone(), metrics),
            store,
            writes,
            audio,
            hub,
            watches,
            shutdown,
            intake,
        }
    }

    /// Wraps the API in the auth interceptor; the only way it is mounted.
    /// Requests may be as large as CreateVoiceClone's limits allow, no larger.
    #[must_use]
    pub(crate) fn into_service(self, auth: Authenticator) -> AuthenticatedVoiceService {
        let server = VoiceServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES);
        InterceptedService::new(server, auth)
    }

    async fn create(
        &self,
        request: Request<pb::CreateVoiceCloneRequest>,
    ) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let caller_address =
            crate::connections::peer_of(request.extensions()).map(|a| a.to_string());
        let user_agent = request
            .metadata()
            .get("user-agent")
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .map(|v| truncated(&v, MAX_USER_AGENT_BYTES).to_owned());
        let (mut new, samples) =
            validate::create_request(request.into_inner(), self.intake.require_consent)?;
        let filenames = new.samples.iter().map(|s| s.filename.clone()).collect();
        let report = self.report(filenames, &samples).await?;
        if let Some(refusal) = report.refusal() {
            return Err(Error::invalid("samples", refusal.message.clone()));
        }
        new.intake.report = Some(report);
        new.intake.caller_address = caller_address;
        new.intake.user_agent = user_agent;
        let answer = self.writes.create(user.0, new).await?;
        let intake = match answer.intake {
            Some(intake) => Some(intake),
            // A repeated request_id: the first call's record stands.
            None => self.store.intake(answer.voice.id).await?,
        };
        Ok(intake::with_intake(answer.voice.into(), intake.as_ref()))
    }

    /// The quality report on `samples`, after the audio check.
    async fn report(
        &self,
        filenames: Vec<String>,
        samples: &[audio::Sample],
    ) -> Result<audio::Report, Error> {
        let figures = validate::audio_verdicts(samples, self.audio.check(samples).await)?;
        Ok(audio::judge(filenames, figures, &self.intake.quality))
    }

    async fn analyze(
        &self,
        request: Request<pb::AnalyzeSamplesRequest>,
    ) -> Result<pb::AnalyzeSamplesResponse, Error> {
        caller(&request)?;
        let (filenames, samples) = validate::analyze_request(request.into_inner())?;
        let report = self.report(filenames, &samples).await?;
        Ok(pb::AnalyzeSamplesResponse {
            report: Some((&report).into()),
        })
    }

    async fn update(&self, request: Request<pb::UpdateVoiceRequest>) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let (id, patch) = validate::update_request(request.into_inner())?;
        Ok(self.writes.update(user.0, id, patch).await?.into())
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<pb::DeleteVoiceResponse, Error> {
        let user = caller(&request)?;
        let id = validate::voice_id("voice_id", &request.get_ref().voice_id)?;
        self.writes.delete(user.0, id).await?;
        Ok(pb::DeleteVoiceResponse {})
    }

    async fn get(&self, request: Request<pb::GetVoiceRequest>) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let id = validate::voice_id("voice_id", &request.get_ref().voice_id)?;
        let (voice, intake) = self
            .lookups
            .read(lookups::Lookup { caller: user.0, id })
            .await?
            .ok_or(Error::NotFound("voice"))?;
        Ok(intake::with_intake(voice.into(), intake.as_ref()))
    }

    async fn list(
        &self,
        request: Request<pb::ListUserVoicesRequest>,
    ) -> Result<pb::ListUserVoicesResponse, Error> {
        let user = caller(&request)?;
        let (query, listing) = validate::list_request(user.0, request.into_inner())?;
        let page = self.store.list(&query).await?;
        Ok(pb::ListUserVoicesResponse {
            next_page_token: page.next.map(|c| listing.encode(c)).unwrap_or_default(),
            voices: page.voices.into_iter().map(Into::into).collect(),
        })
    }

    async fn watch(
        &self,
        request: Request<pb::WatchVoiceStatusRequest>,
    ) -> Result<watch::EventStream, Error> {
        let user = caller(&request)?;
        let until = request.extensions().get::<ValidUntil>().map(|v| v.0);
        let ids = validate::watch_request(request.into_inner())?;
        watch::open(
            &self.hub,
            &self.watches,
            self.shutdown.clone(),
            (user.0, until),
            ids,
        )
        .await
    }
}

#[tonic::async_trait]
impl pb::voice_service_server::VoiceService for VoiceApi {
    async fn create_voice_clone(
        &self,
        request: Request<pb::CreateVoiceCloneRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        // On the heap: the create's future (samples, audio checks, the
        // write path) is large, and a create is rare beside the allocation.
        answer(&self.store, Box::pin(self.create(request)).await)
    }

    async fn get_voice(
        &self,
        request: Request<pb::GetVoiceRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        answer(&self.store, self.get(request).await)
    }

    async fn list_user_voices(
        &self,
        request: Request<pb::ListUserVoicesRequest>,
    ) -> Result<Response<pb::ListUserVoicesResponse>, Status> {
        answer(&self.store, self.list(request).await)
    }

    async fn update_voice(
        &self,
        request: Request<pb::UpdateVoiceRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        answer(&self.store, self.update(request).await)
    }

    async fn delete_voice(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<Response<pb::DeleteVoiceResponse>, Status> {
        answer(&self.store, self.delete(request).await)
    }

    type WatchVoiceStatusStream = watch::EventStream;

    async fn watch_voice_status(
        &self,
        request: Request<pb::WatchVoiceStatusRequest>,
    ) -> Result<Response<Self::WatchVoiceStatusStream>, Status> {
        answer(&self.store, self.watch(request).await)
    }

    async fn analyze_samples(
        &self,
        request: Request<pb::AnalyzeSamplesRequest>,
    ) -> Result<Response<pb::AnalyzeSamplesResponse>, Status> {
        answer(&self.store, self.analyze(request).await)
    }
}

/// A handler's result as the call's answer: a storage failure that is only
/// every pool connection being busy while the database answers is shed
/// (RESOURCE_EXHAUSTED, come back in a moment), not reported as storage
/// down: a load balancer or client that backs off on UNAVAILABLE would
/// treat a busy replica as a broken one.
fn answer<T>(store: &Store, result: Result<T, Error>) -> Result<Response<T>, Status> {
    result
        .map(Response::new)
        .map_err(|e| Status::from(shed_saturated(store, e)))
}

/// `err`, or RESOURCE_EXHAUSTED with a RetryInfo if it is a saturated pool.
pub(crate) fn shed_saturated(store: &Store, err: Error) -> Error {
    match err {
        Error::Storage(e) if store.saturated(&e) => {
            shed("every storage connection of this replica is busy")
        }
        other => other,
    }
}

/// RESOURCE_EXHAUSTED with a retry a moment from now (spread, so shed
/// callers do not all come back at once).
pub(crate) fn shed(why: &str) -> Error {
    Error::Busy {
        message: format!("{why}; retry after the RetryInfo delay, here or on another replica"),
        retry_after: Duration::from_millis(100) + jitter(Duration::from_millis(900)),
    }
}

/// `value` cut to at most `max` bytes, at a character boundary.
fn truncated(value: &str, max: usize) -> &str {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

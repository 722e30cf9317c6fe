//! The gRPC surface: `voicehub.v1.VoiceService` over the store.
//!
//! Handlers are thin: authenticate (the interceptor already did; we read the
//! caller), validate every field before touching storage or the provider,
//! run one store call or one write-path operation, convert. Every failure is
//! an [`Error`] turned into a `Status` in one place.

mod audio;
mod convert;
mod page_token;
mod validate;
mod watch;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

pub use convert::timestamp;
pub use validate::{MAX_REQUEST_BYTES, NewVoice};

use crate::{
    auth::{Authenticator, caller},
    error::Error,
    events::Hub,
    pb::{self, voice_service_server::VoiceServiceServer},
    store::{ListQuery, Store},
    voices::Voices,
};
use page_token::Listing;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u64 = 200;

/// The VoiceService implementation.
#[derive(Clone)]
pub struct VoiceApi {
    store: Store,
    voices: Voices,
    hub: Arc<Hub>,
    /// Ends every watch stream (with UNAVAILABLE) when the server stops.
    shutdown: CancellationToken,
}

/// The service as mounted on the server: every call passes the authenticator first.
pub type AuthenticatedVoiceService =
    InterceptedService<VoiceServiceServer<VoiceApi>, Authenticator>;

impl VoiceApi {
    pub fn new(store: Store, voices: Voices, hub: Arc<Hub>, shutdown: CancellationToken) -> Self {
        VoiceApi {
            store,
            voices,
            hub,
            shutdown,
        }
    }

    /// Wraps the API in the auth interceptor; the only way it is mounted.
    /// Requests may be as large as CreateVoiceClone's limits allow, no larger.
    pub fn into_service(self, auth: Authenticator) -> AuthenticatedVoiceService {
        let server = VoiceServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES);
        InterceptedService::new(server, auth)
    }

    async fn create(
        &self,
        request: Request<pb::CreateVoiceCloneRequest>,
    ) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let new = validate::create_request(request.into_inner())?;
        Ok(self.voices.create(user.0, new).await?.into())
    }

    async fn update(&self, request: Request<pb::UpdateVoiceRequest>) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let (id, patch) = validate::update_request(request.into_inner())?;
        Ok(self.voices.update(user.0, id, patch).await?.into())
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<pb::DeleteVoiceResponse, Error> {
        let user = caller(&request)?;
        let id = convert::parse_voice_id("voice_id", &request.get_ref().voice_id)?;
        self.voices.delete(user.0, id).await?;
        Ok(pb::DeleteVoiceResponse {})
    }

    async fn get(&self, request: Request<pb::GetVoiceRequest>) -> Result<pb::Voice, Error> {
        let user = caller(&request)?;
        let id = convert::parse_voice_id("voice_id", &request.get_ref().voice_id)?;
        let voice = self.store.get_visible(user.0, id).await?;
        voice.map(Into::into).ok_or(Error::NotFound("voice"))
    }

    async fn list(
        &self,
        request: Request<pb::ListUserVoicesRequest>,
    ) -> Result<pb::ListUserVoicesResponse, Error> {
        let user = caller(&request)?;
        let pb::ListUserVoicesRequest {
            page_size,
            page_token,
            scope,
            status,
        } = request.into_inner();
        let limit = match u64::try_from(page_size) {
            Err(_) => return Err(Error::invalid("page_size", "must not be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let listing = Listing {
            user: user.0,
            scope: convert::parse_scope(scope)?,
            status: convert::parse_status_filter(status)?,
        };
        let after = listing.decode(&page_token)?;
        let page = self
            .store
            .list(&ListQuery {
                caller: user.0,
                scope: listing.scope,
                status: listing.status,
                after,
                limit,
            })
            .await?;
        Ok(pb::ListUserVoicesResponse {
            next_page_token: page.next.map(|c| listing.encode(c)).unwrap_or_default(),
            voices: page.voices.into_iter().map(Into::into).collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::voice_service_server::VoiceService for VoiceApi {
    async fn create_voice_clone(
        &self,
        request: Request<pb::CreateVoiceCloneRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        Ok(Response::new(self.create(request).await?))
    }

    async fn get_voice(
        &self,
        request: Request<pb::GetVoiceRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        Ok(Response::new(self.get(request).await?))
    }

    async fn list_user_voices(
        &self,
        request: Request<pb::ListUserVoicesRequest>,
    ) -> Result<Response<pb::ListUserVoicesResponse>, Status> {
        Ok(Response::new(self.list(request).await?))
    }

    async fn update_voice(
        &self,
        request: Request<pb::UpdateVoiceRequest>,
    ) -> Result<Response<pb::Voice>, Status> {
        Ok(Response::new(self.update(request).await?))
    }

    async fn delete_voice(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<Response<pb::DeleteVoiceResponse>, Status> {
        Ok(Response::new(self.delete(request).await?))
    }

    type WatchVoiceStatusStream = watch::EventStream;

    async fn watch_voice_status(
        &self,
        request: Request<pb::WatchVoiceStatusRequest>,
    ) -> Result<Response<Self::WatchVoiceStatusStream>, Status> {
        let user = caller(&request)?;
        let ids = request.into_inner().voice_ids;
        let stream =
            watch::open(&self.store, &self.hub, self.shutdown.clone(), user.0, ids).await?;
        Ok(Response::new(stream))
    }
}

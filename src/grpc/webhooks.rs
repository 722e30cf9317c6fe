//! `voicehub.v1.WebhookService`: a user's webhook endpoints.
//!
//! Every handler reads the caller (authenticated by the interceptor),
//! checks the request before touching storage, and passes the caller to the
//! store, which matches it in SQL: another user's endpoint is NOT_FOUND, as
//! one that does not exist. A secret is returned only by the call that made
//! it, and never logged.

use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use uuid::Uuid;

use super::{answer, validate};
use crate::{
    auth::{Authenticator, caller},
    error::Error,
    pb::{self, webhook_service_server::WebhookServiceServer},
    store::{EndpointCreated, EndpointPatch, NewEndpoint, Owed, Store, WebhookEndpoint},
    webhooks::{self, EVENT_TYPES, WebhookSettings},
};

/// The paths UpdateWebhookEndpoint may name.
const UPDATE_PATHS: [&str; 4] = ["url", "description", "event_types", "enabled"];

/// The WebhookService implementation.
#[derive(Clone)]
pub(crate) struct WebhookApi {
    store: Store,
    settings: WebhookSettings,
    /// The CloudEvents `source` of test events.
    source: String,
}

/// The service as mounted: every call passes the authenticator first.
pub(crate) type AuthenticatedWebhookService =
    InterceptedService<WebhookServiceServer<WebhookApi>, Authenticator>;

impl WebhookApi {
    pub(crate) fn new(store: Store, settings: WebhookSettings, source: String) -> Self {
        WebhookApi {
            store,
            settings,
            source,
        }
    }

    /// Wraps the API in the auth interceptor; the only way it is mounted.
    pub(crate) fn into_service(self, auth: Authenticator) -> AuthenticatedWebhookService {
        InterceptedService::new(WebhookServiceServer::new(self), auth)
    }

    async fn create(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<pb::CreateWebhookEndpointResponse, Error> {
        let user = caller(&request)?;
        let request = request.into_inner();
        let secret = new_secret()?;
        let new = NewEndpoint {
            url: self.url("url", &request.url)?,
            description: validate::description("description", &request.description)?,
            event_types: event_types("event_types", request.event_types)?,
            secret: secret.clone(),
        };
        let max = self.settings.max_endpoints_per_user;
        match self.store.create_endpoint(user.0, new, max.into()).await? {
            EndpointCreated::Created(endpoint) => Ok(pb::CreateWebhookEndpointResponse {
                endpoint: Some(to_pb(*endpoint)),
                secret,
            }),
            EndpointCreated::LimitReached => Err(Error::ResourceExhausted(format!(
                "at most {max} webhook endpoints per user; delete one first"
            ))),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<pb::ListWebhookEndpointsResponse, Error> {
        let user = caller(&request)?;
        let endpoints = self.store.endpoints(user.0).await?;
        Ok(pb::ListWebhookEndpointsResponse {
            endpoints: endpoints.into_iter().map(to_pb).collect(),
        })
    }

    async fn update(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<pb::WebhookEndpoint, Error> {
        let user = caller(&request)?;
        let request = request.into_inner();
        let endpoint = request
            .endpoint
            .ok_or_else(|| Error::invalid("endpoint", "is required"))?;
        let id = endpoint_id("endpoint.endpoint_id", &endpoint.endpoint_id)?;
        let mut patch = EndpointPatch::default();
        for path in validate::mask_paths(request.update_mask, &UPDATE_PATHS)? {
            match path.as_str() {
                "url" => patch.url = Some(self.url("endpoint.url", &endpoint.url)?),
                "description" => {
                    patch.description = Some(validate::description(
                        "endpoint.description",
                        &endpoint.description,
                    )?);
                }
                "event_types" => {
                    patch.event_types = Some(event_types(
                        "endpoint.event_types",
                        endpoint.event_types.clone(),
                    )?);
                }
                "enabled" => patch.enabled = Some(endpoint.enabled),
                other => return Err(validate::unknown_path(other, &UPDATE_PATHS)),
            }
        }
        let updated = self.store.update_endpoint(user.0, id, patch).await?;
        updated
            .map(to_pb)
            .ok_or(Error::NotFound("webhook endpoint"))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<pb::DeleteWebhookEndpointResponse, Error> {
        let user = caller(&request)?;
        let id = endpoint_id("endpoint_id", &request.get_ref().endpoint_id)?;
        if self.store.delete_endpoint(user.0, id).await? {
            Ok(pb::DeleteWebhookEndpointResponse {})
        } else {
            Err(Error::NotFound("webhook endpoint"))
        }
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<pb::RotateWebhookSecretResponse, Error> {
        let user = caller(&request)?;
        let id = endpoint_id("endpoint_id", &request.get_ref().endpoint_id)?;
        let secret = new_secret()?;
        let overlap = chrono::Duration::from_std(self.settings.secret_overlap)
            .unwrap_or(chrono::Duration::MAX);
        let until = crate::store::now() + overlap;
        let rotated = self
            .store
            .rotate_secret(user.0, id, secret.clone(), until)
            .await?;
        match rotated {
            Some(_) => Ok(pb::RotateWebhookSecretResponse {
                secret,
                previous_secret_expires_at: Some(pb::timestamp(until)),
            }),
            None => Err(Error::NotFound("webhook endpoint")),
        }
    }

    async fn send_test(
        &self,
        request: Request<pb::SendTestWebhookRequest>,
    ) -> Result<pb::SendTestWebhookResponse, Error> {
        let user = caller(&request)?;
        let id = endpoint_id("endpoint_id", &request.get_ref().endpoint_id)?;
        let (event_id, payload) = webhooks::test_event(&self.source, id);
        let event = Owed {
            owner: user.0,
            event_id: event_id.clone(),
            event_type: webhooks::TEST_EVENT_TYPE.into(),
            payload,
        };
        match self.store.queue_test_delivery(user.0, id, event).await? {
            Some(true) => Ok(pb::SendTestWebhookResponse { event_id }),
            Some(false) => Err(Error::FailedPrecondition(
                "the webhook endpoint is disabled; enable it first",
            )),
            None => Err(Error::NotFound("webhook endpoint")),
        }
    }

    async fn list_attempts(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<pb::ListWebhookDeliveriesResponse, Error> {
        let user = caller(&request)?;
        let request = request.into_inner();
        let id = endpoint_id("endpoint_id", &request.endpoint_id)?;
        let limit = match request.page_size {
            0 => 20,
            n @ 1..=100 => u64::try_from(n).unwrap_or(20),
            _ => return Err(Error::invalid("page_size", "must be 0 (20) to 100")),
        };
        let attempts = self.store.attempts(user.0, id, limit).await?;
        let attempts = attempts.ok_or(Error::NotFound("webhook endpoint"))?;
        Ok(pb::ListWebhookDeliveriesResponse {
            attempts: attempts
                .into_iter()
                .map(|a| pb::WebhookAttempt {
                    event_id: a.event_id,
                    event_type: a.event_type,
                    attempted_at: Some(pb::timestamp(a.at)),
                    http_status: a.http_status.unwrap_or_default(),
                    latency_ms: a.latency_ms,
                    error: a.error.unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// `value` as an endpoint's URL, as these settings allow.
    fn url(&self, field: &'static str, value: &str) -> Result<String, Error> {
        webhooks::check_url(value, self.settings.allow_private)
            .map(String::from)
            .map_err(|refused| Error::invalid(field, refused.to_string()))
    }
}

fn new_secret() -> Result<String, Error> {
    webhooks::new_secret().map_err(|e| Error::Unavailable {
        what: "the random number generator",
        detail: e.to_string(),
    })
}

fn endpoint_id(field: &str, value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value.trim())
        .map_err(|_| Error::invalid(field, "must be an endpoint id (a UUID)"))
}

/// Event types, each one of `docs/events.md`'s, without repeats, in the
/// order given.
fn event_types(field: &str, types: Vec<String>) -> Result<Vec<String>, Error> {
    let mut seen = Vec::with_capacity(types.len());
    for (i, kind) in types.into_iter().enumerate() {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("must be one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if seen.contains(&kind) {
            return Err(Error::invalid(format!("{field}[{i}]"), "is given twice"));
        }
        seen.push(kind);
    }
    Ok(seen)
}

/// An endpoint as its owner sees it: everything but its secrets.
fn to_pb(endpoint: WebhookEndpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        endpoint_id: endpoint.id.to_string(),
        url: endpoint.url,
        description: endpoint.description,
        event_types: endpoint
            .event_types
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        enabled: endpoint.enabled,
        disabled_reason: endpoint.disabled_reason,
        created_at: Some(pb::timestamp(endpoint.created_at)),
        updated_at: Some(pb::timestamp(endpoint.updated_at)),
    }
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        answer(&self.store, self.create(request).await)
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        answer(&self.store, self.list(request).await)
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        answer(&self.store, self.update(request).await)
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        answer(&self.store, self.delete(request).await)
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        answer(&self.store, self.rotate(request).await)
    }

    async fn send_test_webhook(
        &self,
        request: Request<pb::SendTestWebhookRequest>,
    ) -> Result<Response<pb::SendTestWebhookResponse>, Status> {
        answer(&self.store, self.send_test(request).await)
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        answer(&self.store, self.list_attempts(request).await)
    }
}

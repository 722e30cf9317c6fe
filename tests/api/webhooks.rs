//! WebhookService: a user's endpoints, their secrets, and the URLs they may
//! not have. (Malformed requests are rows of `abuse.rs`'s table.)

use base64::Engine;
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{
    self, CreateWebhookEndpointRequest, DeleteWebhookEndpointRequest, ListWebhookEndpointsRequest,
    RotateWebhookSecretRequest, UpdateWebhookEndpointRequest,
};

use crate::helpers::{
    Backend, TestApp, WebhookClient, assert_invalid_field, spawn_app, spawn_app_with,
};

fn endpoint(url: &str) -> CreateWebhookEndpointRequest {
    CreateWebhookEndpointRequest {
        url: url.into(),
        description: "cache invalidation".into(),
        event_types: vec![],
    }
}

async fn create(client: &mut WebhookClient, url: &str) -> pb::CreateWebhookEndpointResponse {
    client
        .create_webhook_endpoint(endpoint(url))
        .await
        .unwrap_or_else(|status| panic!("creating {url}: {status:?}"))
        .into_inner()
}

async fn listed(client: &mut WebhookClient) -> Vec<pb::WebhookEndpoint> {
    client
        .list_webhook_endpoints(ListWebhookEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .endpoints
}

/// The 32 bytes of a `whsec_` secret.
fn secret_bytes(secret: &str) -> Vec<u8> {
    let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64")
}

async fn endpoint_rows(app: &TestApp) -> u64 {
    use sea_orm::{EntityTrait, PaginatorTrait};
    voicehub::store::entity::webhook_endpoint::Entity::find()
        .count(&app.db)
        .await
        .unwrap()
}

async fn an_endpoint_is_created_listed_updated_rotated_and_deleted_by_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.webhooks(Uuid::new_v4());
    let created = create(&mut client, "https://hooks.example.com/voicehub").await;
    assert_eq!(secret_bytes(&created.secret).len(), 32);
    let made = created.endpoint.unwrap();
    assert!(made.enabled);
    assert!(made.event_types.is_empty(), "all types");
    assert_eq!(listed(&mut client).await, vec![made.clone()]);

    let mut changed = made.clone();
    changed.url = "https://other.example.com/hook".into();
    changed.event_types = vec!["voicehub.voice.completed.v1".into()];
    changed.enabled = false;
    changed.description = "ready voices only".into();
    let updated = client
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(changed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into(), "event_types".into(), "enabled".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.url, "https://other.example.com/hook");
    assert_eq!(updated.event_types, ["voicehub.voice.completed.v1"]);
    assert!(!updated.enabled);
    assert_eq!(updated.description, made.description, "not in the mask");
    assert_eq!(listed(&mut client).await, vec![updated.clone()]);

    let rotated = client
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            endpoint_id: made.endpoint_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secret_bytes(&rotated.secret).len(), 32);
    assert_ne!(rotated.secret, created.secret);
    let until = rotated.previous_secret_expires_at.unwrap();
    let overlap = until.seconds - chrono::Utc::now().timestamp();
    assert!(
        (86_400 - overlap).abs() < 60,
        "the old secret signs for the documented overlap: {overlap} s"
    );
    // The secrets are stored, and never shown again.
    let row = {
        use sea_orm::EntityTrait;
        voicehub::store::entity::webhook_endpoint::Entity::find_by_id(
            made.endpoint_id.parse::<Uuid>().unwrap(),
        )
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(row.secret, rotated.secret);
    assert_eq!(
        row.previous_secret.as_deref(),
        Some(created.secret.as_str())
    );
    assert!(
        !format!("{row:?}").contains("whsec_"),
        "Debug hides secrets"
    );

    client
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: made.endpoint_id.clone(),
        })
        .await
        .unwrap();
    assert!(listed(&mut client).await.is_empty());
    let again = client
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: made.endpoint_id,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}

async fn another_users_endpoint_is_not_found_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.webhooks(Uuid::new_v4());
    let mut bob = app.webhooks(Uuid::new_v4());
    let hers = create(&mut alice, "https://alice.example.com/hook")
        .await
        .endpoint
        .unwrap();
    assert!(listed(&mut bob).await.is_empty(), "Bob lists only his own");
    let mut stolen = hers.clone();
    stolen.url = "https://bob.example.com/hook".into();
    let update = bob
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(stolen),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into()],
            }),
        })
        .await
        .unwrap_err();
    let rotate = bob
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            endpoint_id: hers.endpoint_id.clone(),
        })
        .await
        .unwrap_err();
    let delete = bob
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: hers.endpoint_id.clone(),
        })
        .await
        .unwrap_err();
    for status in [update, rotate, delete] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), "webhook endpoint not found");
    }
    assert_eq!(listed(&mut alice).await, vec![hers], "untouched");
}

async fn urls_inside_the_network_are_refused_naming_url_and_nothing_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.webhooks(Uuid::new_v4());
    for url in [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://100.64.0.1/",
        "https://user:secret@hooks.example.com/",
        "hooks.example.com",
    ] {
        let status = client
            .create_webhook_endpoint(endpoint(url))
            .await
            .expect_err(url);
        assert_invalid_field(&status, "url");
        println!("{url}: {}", status.message());
    }
    assert_eq!(endpoint_rows(&app).await, 0);
    // Nor may an endpoint be moved there.
    let made = create(&mut client, "https://hooks.example.com/")
        .await
        .endpoint
        .unwrap();
    let mut moved = made.clone();
    moved.url = "https://192.168.1.1/".into();
    let status = client
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(moved),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "endpoint.url");
    assert_eq!(listed(&mut client).await, vec![made]);
}

async fn the_development_flag_allows_http_and_loopback(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.webhooks.allow_private = true).await;
    let mut client = app.webhooks(Uuid::new_v4());
    let made = create(&mut client, "http://127.0.0.1:9/hook").await;
    assert_eq!(made.endpoint.unwrap().url, "http://127.0.0.1:9/hook");
}

async fn endpoints_beyond_the_per_user_limit_are_resource_exhausted(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.webhooks.max_endpoints_per_user = 2).await;
    let mut client = app.webhooks(Uuid::new_v4());
    create(&mut client, "https://a.example.com/").await;
    create(&mut client, "https://b.example.com/").await;
    let status = client
        .create_webhook_endpoint(endpoint("https://c.example.com/"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 2 webhook endpoints"));
    // Another user has a limit of their own.
    create(&mut app.webhooks(Uuid::new_v4()), "https://c.example.com/").await;
    assert_eq!(endpoint_rows(&app).await, 3);
}

crate::on_both_backends!(
    an_endpoint_is_created_listed_updated_rotated_and_deleted_by_its_owner,
    another_users_endpoint_is_not_found_everywhere,
    urls_inside_the_network_are_refused_naming_url_and_nothing_is_stored,
    the_development_flag_allows_http_and_loopback,
    endpoints_beyond_the_per_user_limit_are_resource_exhausted,
);

//! Webhook deliveries, received by a server in the test that verifies every
//! signature with the `standardwebhooks` crate (code written by others, not
//! voicehub's): retries keep the `webhook-id`, 410 disables, a rotation
//! signs with both secrets, another user's endpoint hears nothing, a host
//! that resolves to loopback is refused, and a killed process's pending
//! deliveries arrive after a restart.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use serde_json::Value;
use uuid::Uuid;
use voicehub::{
    pb::{self, CreateWebhookEndpointRequest, RotateWebhookSecretRequest},
    store::entity::{webhook_attempt, webhook_delivery},
};

use crate::helpers::{
    Backend, JWT_SECRET, TestApp, WebhookClient, create_voice, serve, spawn_app_with, wait_for,
};

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    signatures: String,
    /// Whether `standardwebhooks` verified it with each secret the
    /// receiver knows, in the order they were given.
    verified: Vec<bool>,
    body: Value,
    answered: u16,
}

#[derive(Default)]
struct Inner {
    secrets: Vec<String>,
    /// The answers to give, in order; 200 once they are used up.
    script: VecDeque<u16>,
    received: Vec<Received>,
}

/// An HTTP endpoint that records and verifies what it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Inner>>);

impl Receiver {
    /// Starts it on loopback; its URL.
    async fn start(&self) -> String {
        let app = Router::new()
            .route("/hook", post(receive))
            // Sends the caller on to /hook: voicehub must not follow.
            .route(
                "/moved",
                post(|| async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, "/hook")],
                    )
                }),
            )
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn knows(&self, secret: &str) {
        self.0.lock().unwrap().secrets.push(secret.to_owned());
    }

    fn answer(&self, statuses: &[u16]) {
        self.0.lock().unwrap().script.extend(statuses);
    }

    fn received(&self) -> Vec<Received> {
        self.0.lock().unwrap().received.clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let mut inner = receiver.0.lock().unwrap();
    let verified = inner
        .secrets
        .iter()
        .map(|secret| {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(body.as_bytes(), &headers)
                .is_ok()
        })
        .collect();
    let answered = inner.script.pop_front().unwrap_or(200);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    inner.received.push(Received {
        id: header("webhook-id"),
        signatures: header("webhook-signature"),
        verified,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

async fn endpoint(client: &mut WebhookClient, url: &str, types: &[&str]) -> (String, String) {
    let made = client
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: url.into(),
            description: String::new(),
            event_types: types.iter().map(ToString::to_string).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    (made.endpoint.unwrap().endpoint_id, made.secret)
}

/// A server whose webhooks may go to loopback over http, retried quickly.
async fn app_for_webhooks(schedule: &[u64]) -> TestApp {
    let schedule: Vec<Duration> = schedule
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    spawn_app_with(Backend::Postgres, move |c| {
        c.webhooks.allow_private = true;
        c.webhooks.timeout = Duration::from_secs(2);
        c.webhooks.retry_schedule = schedule;
    })
    .await
}

/// The caller's endpoints, once the first is disabled (or after 5 s).
async fn until_disabled(webhooks: &mut WebhookClient) -> Vec<pb::WebhookEndpoint> {
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = webhooks
            .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
            .await
            .unwrap()
            .into_inner()
            .endpoints;
        if !listed[0].enabled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    listed
}

async fn deliveries(app: &TestApp) -> Vec<webhook_delivery::Model> {
    use sea_orm::EntityTrait;
    webhook_delivery::Entity::find().all(&app.db).await.unwrap()
}

/// The deliveries, once some are queued and none is pending (or after 10 s).
async fn until_settled(app: &TestApp) -> Vec<webhook_delivery::Model> {
    for _ in 0..400 {
        let stored = deliveries(app).await;
        if !stored.is_empty() && stored.iter().all(|d| d.state != "pending") {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    deliveries(app).await
}

async fn attempts(app: &TestApp) -> Vec<webhook_attempt::Model> {
    use sea_orm::{EntityTrait, QueryOrder};
    webhook_attempt::Entity::find()
        .order_by_asc(webhook_attempt::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_500_then_a_200_is_one_success_with_the_same_webhook_id_on_both_attempts() {
    let app = app_for_webhooks(&[0, 100, 100]).await;
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let user = Uuid::new_v4();
    let (_, secret) = endpoint(&mut app.webhooks(user), &url, &[]).await;
    receiver.knows(&secret);
    receiver.answer(&[500]);
    let voice = create_voice(&mut app.client(user), "Announced").await;

    wait_for(Duration::from_secs(10), || receiver.received().len() >= 2).await;
    let seen = receiver.received();
    println!("{seen:#?}");
    assert_eq!(seen.len(), 2, "one retry after the 500");
    assert_eq!(
        seen.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 200]
    );
    assert_eq!(seen[0].id, seen[1].id, "the same webhook-id");
    assert_eq!(seen[0].id, format!("{}:{}", voice.voice_id, voice.revision));
    for r in &seen {
        assert_eq!(
            r.verified,
            [true],
            "standardwebhooks verifies the signature"
        );
        assert_eq!(r.body["type"], "voicehub.voice.created.v1");
        assert_eq!(r.body["subject"], voice.voice_id);
    }
    let stored = until_settled(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, "delivered");
    assert_eq!(stored[0].attempts, 2);
    let tried: Vec<Option<i32>> = attempts(&app).await.iter().map(|a| a.http_status).collect();
    assert_eq!(tried, [Some(500), Some(200)]);
}

#[tokio::test]
async fn another_users_endpoint_never_receives_a_users_events() {
    let app = app_for_webhooks(&[0]).await;
    let (theirs, mine) = (Receiver::default(), Receiver::default());
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (_, secret) = endpoint(&mut app.webhooks(alice), &mine.start().await, &[]).await;
    mine.knows(&secret);
    let (bobs, _) = endpoint(&mut app.webhooks(bob), &theirs.start().await, &[]).await;
    for i in 0..3 {
        create_voice(&mut app.client(alice), &format!("Alice's {i}")).await;
    }
    wait_for(Duration::from_secs(10), || mine.received().len() >= 3).await;
    assert_eq!(mine.received().len(), 3);
    assert!(mine.received().iter().all(|r| r.verified == [true]));
    let queued_for_bob = deliveries(&app)
        .await
        .iter()
        .filter(|d| d.endpoint_id.to_string() == bobs)
        .count();
    assert_eq!(queued_for_bob, 0, "nothing is queued for Bob's endpoint");
    assert!(theirs.received().is_empty());
}

#[tokio::test]
async fn an_endpoint_answering_410_is_disabled_with_that_reason() {
    let app = app_for_webhooks(&[0, 100, 100]).await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let mut webhooks = app.webhooks(user);
    endpoint(&mut webhooks, &receiver.start().await, &[]).await;
    receiver.answer(&[410]);
    create_voice(&mut app.client(user), "Gone").await;
    wait_for(Duration::from_secs(10), || !receiver.received().is_empty()).await;
    let listed = until_disabled(&mut webhooks).await;
    assert!(!listed[0].enabled);
    assert_eq!(listed[0].disabled_reason, "the endpoint answered 410 Gone");
    assert_eq!(receiver.received().len(), 1, "no retry after 410");
    // Later events are not queued for a disabled endpoint.
    create_voice(&mut app.client(user), "After").await;
    app.until_published().await;
    assert_eq!(deliveries(&app).await.len(), 1);
}

#[tokio::test]
async fn during_a_rotation_both_secrets_verify() {
    let app = app_for_webhooks(&[0]).await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let mut webhooks = app.webhooks(user);
    let (id, old) = endpoint(&mut webhooks, &receiver.start().await, &[]).await;
    let new = webhooks
        .rotate_webhook_secret(RotateWebhookSecretRequest { endpoint_id: id })
        .await
        .unwrap()
        .into_inner()
        .secret;
    receiver.knows(&old);
    receiver.knows(&new);
    create_voice(&mut app.client(user), "Rotated").await;
    wait_for(Duration::from_secs(10), || !receiver.received().is_empty()).await;
    let seen = receiver.received();
    let first = &seen[0];
    println!("webhook-signature: {}", first.signatures);
    assert_eq!(first.signatures.split(' ').count(), 2);
    assert_eq!(first.verified, [true, true], "the old and the new secret");
}

#[tokio::test]
async fn a_host_that_resolves_to_loopback_is_refused_at_delivery() {
    // The development flag is off: the URL is https and names a host, so
    // it is accepted when made; at delivery the host resolves to loopback.
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.webhooks.retry_schedule = vec![Duration::ZERO];
    })
    .await;
    let receiver = Receiver::default();
    let port = receiver.start().await.split(':').nth(2).unwrap().to_owned();
    let user = Uuid::new_v4();
    let url = format!("https://localhost:{port}");
    endpoint(&mut app.webhooks(user), &url, &[]).await;
    create_voice(&mut app.client(user), "Refused").await;
    let mut tried = Vec::new();
    for _ in 0..200 {
        tried = attempts(&app).await;
        if !tried.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("{tried:?}");
    let error = tried[0].error.clone().unwrap_or_default();
    assert!(error.contains("not public"), "{error}");
    assert_eq!(tried[0].http_status, None);
    assert!(receiver.received().is_empty(), "nothing reached loopback");
}

#[tokio::test]
async fn deliveries_pending_when_the_process_is_killed_arrive_after_a_restart() {
    let receiver = Receiver::default();
    let url = receiver.start().await;
    // Down for the first attempts.
    receiver.answer(&[503; 6]);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("VOICEHUB_JWT_SECRET", JWT_SECRET),
        ("VOICEHUB_WEBHOOK_ALLOW_PRIVATE", "true"),
        ("VOICEHUB_WEBHOOK_RETRY_SCHEDULE", "0s,2s,2s,2s,2s,2s"),
        ("VOICEHUB_WEBHOOK_TIMEOUT", "2s"),
    ];
    let first = serve(dir.path(), &env);
    let user = Uuid::new_v4();
    let mut webhooks = pb::webhook_service_client::WebhookServiceClient::with_interceptor(
        first.channel(),
        crate::helpers::Bearer(bearer(user)),
    );
    let (_, secret) = endpoint(&mut webhooks, &url, &[]).await;
    receiver.knows(&secret);
    let mut client = first.client(user);
    let mut ids = Vec::new();
    for i in 0..3 {
        let voice = create_voice(&mut client, &format!("Pending {i}")).await;
        ids.push(format!("{}:{}", voice.voice_id, voice.revision));
    }
    wait_for(Duration::from_secs(10), || receiver.received().len() >= 3).await;
    drop(first); // SIGKILL, with three deliveries pending
    let refused = receiver.received().len();

    let _second = serve(dir.path(), &env);
    wait_for(Duration::from_secs(20), || {
        receiver
            .received()
            .iter()
            .filter(|r| r.answered == 200)
            .count()
            >= 3
    })
    .await;
    let seen = receiver.received();
    let delivered: Vec<&str> = seen
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.id.as_str())
        .collect();
    println!(
        "{refused} attempts refused before the kill, {} in all",
        seen.len()
    );
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "each delivered once, after the restart");
    assert!(seen.iter().all(|r| r.verified == [true]));
}

/// The `authorization` header of `user` for a spawned process.
fn bearer(user: Uuid) -> String {
    let token = voicehub::auth::Authenticator::new(&crate::helpers::auth_config())
        .mint(user, Duration::from_hours(1))
        .unwrap();
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_test_event_is_delivered_and_every_attempt_is_listed_newest_first() {
    let app = app_for_webhooks(&[0, 100, 100]).await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let mut webhooks = app.webhooks(user);
    // Only completions: a test event is sent whatever the endpoint asked for.
    let (id, secret) = endpoint(
        &mut webhooks,
        &receiver.start().await,
        &["voicehub.voice.completed.v1"],
    )
    .await;
    receiver.knows(&secret);
    receiver.answer(&[502]);
    let event_id = webhooks
        .send_test_webhook(pb::SendTestWebhookRequest {
            endpoint_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .event_id;
    wait_for(Duration::from_secs(10), || receiver.received().len() >= 2).await;
    let seen = receiver.received();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.id == event_id && r.verified == [true])
    );
    assert_eq!(seen[1].body["type"], "voicehub.webhook.test.v1");
    assert_eq!(seen[1].body["data"]["endpoint_id"], id);
    until_settled(&app).await;

    let listed = webhooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: id.clone(),
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    println!("{listed:#?}");
    let statuses: Vec<i32> = listed.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, [200, 502], "newest first");
    assert!(listed.iter().all(|a| a.event_id == event_id));
    assert_eq!(listed[1].error, "answered 502 Bad Gateway");
    // Another user sees neither the endpoint's attempts nor may test it.
    let mut other = app.webhooks(Uuid::new_v4());
    let listing = other
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: id.clone(),
            page_size: 0,
        })
        .await
        .unwrap_err();
    let testing = other
        .send_test_webhook(pb::SendTestWebhookRequest { endpoint_id: id })
        .await
        .unwrap_err();
    for status in [listing, testing] {
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
}

#[tokio::test]
async fn an_endpoint_failing_every_attempt_for_too_long_is_disabled_with_that_reason() {
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_schedule = vec![Duration::ZERO, Duration::from_millis(300)];
        c.webhooks.disable_after = Duration::from_millis(200);
    })
    .await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let mut webhooks = app.webhooks(user);
    endpoint(&mut webhooks, &receiver.start().await, &[]).await;
    receiver.answer(&[500, 500]);
    create_voice(&mut app.client(user), "Failing").await;
    wait_for(Duration::from_secs(10), || receiver.received().len() >= 2).await;
    let listed = until_disabled(&mut webhooks).await;
    println!("{:?}", listed[0].disabled_reason);
    assert!(!listed[0].enabled, "disabled after failing for 200 ms");
    assert!(
        listed[0]
            .disabled_reason
            .starts_with("every attempt failed since "),
        "{}",
        listed[0].disabled_reason
    );
    assert_eq!(app.metric("voicehub_webhook_endpoints_disabled_total"), 1);
    // Enabling it again starts afresh.
    let mut enabled = listed[0].clone();
    enabled.enabled = true;
    let enabled = webhooks
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            endpoint: Some(enabled),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(enabled.enabled);
    assert!(enabled.disabled_reason.is_empty());
}

#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let a = app_for_webhooks(&[0, 100]).await;
    let b = crate::helpers::replica_of(
        &a,
        &crate::fake_elevenlabs::FakeElevenLabs::start().await,
        |c| {
            c.webhooks.allow_private = true;
            c.webhooks.timeout = Duration::from_secs(2);
        },
    )
    .await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let (_, secret) = endpoint(&mut a.webhooks(user), &receiver.start().await, &[]).await;
    receiver.knows(&secret);
    // Changes stored on both replicas; both replicas' deliverers run.
    for i in 0..10 {
        let on = if i % 2 == 0 { &a } else { &b };
        create_voice(&mut on.client(user), &format!("Twice {i}")).await;
    }
    a.until_published().await;
    wait_for(Duration::from_secs(10), || receiver.received().len() >= 10).await;
    let settled = until_settled(&a).await;
    let seen = receiver.received();
    let mut ids: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    println!(
        "{} deliveries, {} requests, {} distinct webhook-ids",
        settled.len(),
        seen.len(),
        ids.len()
    );
    assert_eq!(settled.len(), 10);
    assert!(
        settled
            .iter()
            .all(|d| d.state == "delivered" && d.attempts == 1)
    );
    assert_eq!(seen.len(), 10, "each event once");
    assert_eq!(ids.len(), 10);
    assert!(seen.iter().all(|r| r.verified == [true]));
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let app = app_for_webhooks(&[0]).await;
    let receiver = Receiver::default();
    let user = Uuid::new_v4();
    let moved = receiver.start().await.replace("/hook", "/moved");
    endpoint(&mut app.webhooks(user), &moved, &[]).await;
    create_voice(&mut app.client(user), "Moved").await;
    let settled = until_settled(&app).await;
    assert_eq!(settled.len(), 1);
    assert_eq!(
        settled[0].state, "failed",
        "given up: the schedule has one attempt"
    );
    let tried = attempts(&app).await;
    println!("{tried:?}");
    assert_eq!(tried[0].http_status, Some(307));
    assert!(
        receiver.received().is_empty(),
        "the redirect's target was never called"
    );
}

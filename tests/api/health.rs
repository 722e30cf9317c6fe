use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{
    helpers::{Backend, spawn_app, spawn_app_with},
    on_both_backends,
};

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

async fn health_is_serving_for_the_server_and_each_of_its_services(backend: Backend) {
    let app = spawn_app(backend).await;
    for service in ["", "voicehub.v1.VoiceService", "voicehub.v1.WebhookService"] {
        let status = app
            .health()
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

on_both_backends!(health_is_serving_for_the_server_and_each_of_its_services);

#[tokio::test]
async fn reflection_lists_the_services_and_health_without_a_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "voicehub.v1.VoiceService",
        "voicehub.v1.WebhookService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn health_goes_not_serving_when_shutdown_begins() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut watch = app
        .health()
        .watch(check("voicehub.v1.VoiceService"))
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    app.shutdown.cancel();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a health update before the stream closes")
        .expect("stream still open when NOT_SERVING is sent")
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn health_goes_not_serving_when_storage_becomes_unreachable() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.health_interval = Duration::from_millis(20);
    })
    .await;
    let mut watch = app.health().watch(check("")).await.unwrap().into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    // Closing the shared pool makes every later ping fail, as a lost database would.
    app.store.clone().close().await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("health reports the outage")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn server_stops_cleanly_on_shutdown() {
    let app = spawn_app(Backend::Sqlite).await;
    app.shutdown.cancel();
    let server = take_server(app);
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// Moves the server's join handle out of the app (which is dropped, cancelling again: harmless).
fn take_server(mut app: crate::helpers::TestApp) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    std::mem::replace(&mut app.server, tokio::spawn(async { Ok(()) }))
}

/// Server connections of the test's database that wait for a lock.
async fn lock_waiters(db: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

#[tokio::test]
async fn health_stays_serving_and_calls_are_shed_while_the_serving_pool_is_saturated() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_app_with(Backend::Postgres, |c| {
        // One connection for LISTEN, one to serve: easy to saturate.
        c.database.max_connections = 2;
        // The production default: waits for a connection end within the checks below.
        c.database.acquire_timeout = Duration::from_secs(1);
        c.health_interval = Duration::from_millis(100);
    })
    .await;
    let user = uuid::Uuid::new_v4();
    crate::helpers::create_voice(&mut app.client(user), "Locked out").await;
    // The test's own connection locks the voices table: a read of it holds
    // the serving connection while it waits, and the next reads wait for
    // the pool.
    let txn = app.db.begin().await.unwrap();
    txn.execute_unprepared("LOCK TABLE voices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Listings: each is a statement of its own (GetVoice calls in flight
    // together would share one, and one connection).
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.client(user);
            tokio::spawn(async move {
                client
                    .list_user_voices(voicehub::pb::ListUserVoicesRequest {
                        scope: voicehub::pb::VoiceScope::Owned as i32,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            })
        })
        .collect();
    while lock_waiters(&app.db).await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fifteen checks, 100 ms apart: past the ping's 750 ms bound several times.
    let mut health = app.health();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = crate::helpers::serving_status(&mut health).await;
        assert_eq!(status, ServingStatus::Serving, "the database answers");
    }
    assert!(
        lock_waiters(&app.db).await > 0,
        "still saturated throughout"
    );
    txn.rollback().await.unwrap();
    // The reader holding the connection is served once the lock is gone;
    // those that waited for the pool past its timeout were shed, told when
    // to come back: RESOURCE_EXHAUSTED, never UNAVAILABLE (the database
    // answered throughout).
    let (mut served, mut shed) = (0, 0);
    for reader in readers {
        match reader.await.unwrap() {
            Ok(()) => served += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let retry = tonic_types::StatusExt::get_details_retry_info(&status)
                    .and_then(|info| info.retry_delay)
                    .expect("a shed call says when to come back");
                assert!(retry <= Duration::from_secs(1), "{retry:?}");
                assert!(status.message().contains("busy"), "{status:?}");
                shed += 1;
            }
            Err(status) => panic!("a reader failed otherwise: {status:?}"),
        }
    }
    println!("{served} readers served, {shed} shed while the pool was saturated");
    assert!(served >= 1 && shed >= 1, "{served} served, {shed} shed");
}

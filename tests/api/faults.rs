//! The fault suite: a dependency goes away mid-run; the service answers
//! fast with a code the caller can act on, reports it through health, and
//! recovers by itself. Each case counts rows and provider requests too.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;
use voicehub::{
    config::{Config, Limits},
    pb::{self, GetVoiceRequest},
    store::{self, Visibility, VoiceStatus},
};

use crate::{
    fake_elevenlabs::{Fault, Report, Route},
    helpers::{
        Backend, Client, create_request, create_voice, elevenlabs, next, serving_status,
        spawn_app_with, spawn_app_with_fake, voice, wait_for, watch,
    },
    pg_server::PgServer,
    redis_server::RedisServer,
};

/// The fast-failure bound the service promises.
const BOUND: Duration = Duration::from_secs(2);

fn get(voice_id: &str) -> Request<GetVoiceRequest> {
    let mut request = Request::new(GetVoiceRequest {
        voice_id: voice_id.to_owned(),
    });
    // A caller that waits no longer than the bound: a hang would show as
    // DEADLINE_EXCEEDED, not UNAVAILABLE.
    request.set_timeout(BOUND);
    request
}

/// `config` on the private PostgreSQL at `url`, with voicehub's own
/// defaults for the storage timeouts and the health interval
/// (`VOICEHUB_DB_ACQUIRE_TIMEOUT`, `_STATEMENT_TIMEOUT`, `_CALL_TIMEOUT`,
/// `VOICEHUB_HEALTH_INTERVAL`), which the other tests relax.
fn on_private_postgres(config: &mut Config, url: String) {
    config.database.url = url.into();
    config.database.acquire_timeout = Duration::from_secs(1);
    config.database.statement_timeout = Duration::from_millis(1500);
    config.database.call_timeout = Duration::from_millis(1800);
    config.health_interval = Duration::from_secs(1);
}

#[tokio::test]
async fn postgres_stopped_answers_unavailable_within_the_bound_and_health_follows_it_both_ways() {
    let pg = PgServer::start();
    let url = pg.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        on_private_postgres(c, url);
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Before the outage").await;
    // Health changes, with when they arrived, read as they come.
    let mut stream = app
        .health()
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (tx, mut health) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(change)) = stream.next().await {
            let _ = tx.send((change.status, Instant::now()));
        }
    });
    assert_eq!(
        health.recv().await.unwrap().0,
        ServingStatus::Serving as i32
    );

    pg.stop();
    let stopped = Instant::now();
    let started = Instant::now();
    let err = client.get_voice(get(&voice.voice_id)).await.unwrap_err();
    println!(
        "GetVoice with PostgreSQL stopped: {:?} in {:?}",
        err.code(),
        started.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("postgres"), "no internals: {err:?}");
    // A caller's own deadline shorter than the bound is honoured.
    let mut short = get(&voice.voice_id);
    short.set_timeout(Duration::from_millis(300));
    let err = client.get_voice(short).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let started = Instant::now();
    let err = client
        .create_voice_clone(create_request("During the outage"))
        .await
        .unwrap_err();
    println!(
        "CreateVoiceClone with PostgreSQL stopped: {:?} in {:?}",
        err.code(),
        started.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
    let (status, at) = tokio::time::timeout(BOUND, health.recv())
        .await
        .expect("NOT_SERVING within the bound")
        .unwrap();
    let after = at.saturating_duration_since(stopped);
    println!("health NOT_SERVING {after:?} after the stop");
    assert_eq!(status, ServingStatus::NotServing as i32);
    assert!(after <= BOUND, "{after:?}");

    pg.resume();
    let resumed = Instant::now();
    let (status, at) = tokio::time::timeout(BOUND, health.recv())
        .await
        .expect("SERVING again within the bound")
        .unwrap();
    println!(
        "health SERVING {:?} after the restart",
        at.saturating_duration_since(resumed)
    );
    assert_eq!(status, ServingStatus::Serving as i32);
    let stored = client
        .get_voice(get(&voice.voice_id))
        .await
        .unwrap()
        .into_inner();
    println!(
        "GetVoice answered {:?} after the restart",
        resumed.elapsed()
    );
    assert_eq!(stored.voice_id, voice.voice_id);

    // Nothing of the refused create was kept, here or at the provider.
    assert_eq!(app.voice_rows().await, 1);
    assert_eq!(fake.calls(Route::Add), 1);
    let created = create_voice(&mut client, create_request("After the outage")).await;
    assert_eq!(created.status(), pb::VoiceStatus::Processing);
    assert_eq!(app.voice_rows().await, 2);
}

/// The pool hands out connections without pinging them first (a round trip
/// on every statement's path). When PostgreSQL ends every session (a fast
/// restart, as in a failover), the idle pooled connections are all broken;
/// a read that meets one is run again on a fresh connection, so no call
/// after the restart fails. Without the second try, each broken connection
/// fails one call with UNAVAILABLE.
#[tokio::test]
async fn after_postgres_ends_every_session_reads_on_broken_pooled_connections_still_succeed() {
    let pg = PgServer::start();
    let url = pg.url();
    let (app, _fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        on_private_postgres(c, url);
        c.database.max_connections = 4;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Across a restart").await;
    // Eight reads at once: every connection of the pool is opened and idle.
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut client, id) = (client.clone(), voice.voice_id.clone());
        reads.spawn(async move { client.get_voice(get(&id)).await });
    }
    while let Some(read) = reads.join_next().await {
        read.unwrap().unwrap();
    }
    pg.stop();
    pg.resume();
    let mut failed = Vec::new();
    for _ in 0..8 {
        if let Err(status) = client.get_voice(get(&voice.voice_id)).await {
            failed.push(status.code());
        }
        let list = client
            .list_user_voices(pb::ListUserVoicesRequest::default())
            .await;
        if let Err(status) = list {
            failed.push(status.code());
        }
    }
    println!("16 reads after the restart, failed: {failed:?}");
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn postgres_hung_mid_statement_answers_unavailable_within_the_bound_and_recovers_by_itself() {
    let pg = PgServer::start();
    let url = pg.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        on_private_postgres(c, url.clone());
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Before the hang").await;
    let mut health = app.health();
    let locker = sea_orm::Database::connect(&url).await.unwrap();

    // A read whose statement reaches PostgreSQL and waits there (behind a
    // lock this test holds) when the whole server freezes: the statement
    // is sent, no answer will come, and PostgreSQL's own statement_timeout
    // cannot fire.
    let mut reader = client.clone();
    let mut request = get(&voice.voice_id);
    // Longer than the bound: what ends the call is the server's own.
    request.set_timeout(Duration::from_secs(10));
    let (lock, in_flight) = frozen_mid_statement(
        &pg,
        &locker,
        "LOCK TABLE voices IN ACCESS EXCLUSIVE MODE",
        async move { reader.get_voice(request).await.map(|_| ()) },
    )
    .await;
    let frozen = Instant::now();
    until_health(&mut health, ServingStatus::NotServing, frozen).await;
    println!("health NOT_SERVING {:?} after the freeze", frozen.elapsed());
    let (result, took) = in_flight.await.unwrap();
    let err = result.unwrap_err();
    println!(
        "GetVoice in flight when PostgreSQL froze: {:?} after {took:?}",
        err.code()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(took <= BOUND, "{took:?}");
    assert!(!err.message().contains("postgres"), "no internals: {err:?}");
    let started = Instant::now();
    let err = client.get_voice(get(&voice.voice_id)).await.unwrap_err();
    println!(
        "GetVoice sent while PostgreSQL is frozen: {:?} in {:?}",
        err.code(),
        started.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let started = Instant::now();
    let err = client
        .create_voice_clone(create_request("During the hang"))
        .await
        .unwrap_err();
    println!(
        "CreateVoiceClone while PostgreSQL is frozen: {:?} in {:?}",
        err.code(),
        started.elapsed()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() <= BOUND, "{:?}", started.elapsed());

    pg.thaw();
    lock.rollback().await.unwrap();
    let thawed = Instant::now();
    let stored = until_answered(&mut client, &voice.voice_id, thawed).await;
    assert_eq!(stored.voice_id, voice.voice_id);
    until_health(&mut health, ServingStatus::Serving, thawed).await;
    println!("health SERVING {:?} after the thaw", thawed.elapsed());

    // A write cut mid-transaction: the voice row is updated, its event
    // waits (the outbox is locked) when the server freezes. Nothing of it
    // may be kept.
    let events_before = app.outbox_rows().await;
    let mut writer = client.clone();
    let request = rename(&stored, "Cut mid-transaction");
    let (lock, in_flight) = frozen_mid_statement(
        &pg,
        &locker,
        "LOCK TABLE voice_events IN EXCLUSIVE MODE",
        async move { writer.update_voice(request).await.map(|_| ()) },
    )
    .await;
    let (result, took) = in_flight.await.unwrap();
    let err = result.unwrap_err();
    println!(
        "UpdateVoice frozen mid-transaction: {:?} after {took:?}",
        err.code()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(took <= BOUND, "{took:?}");
    pg.thaw();
    lock.rollback().await.unwrap();
    let after = until_answered(&mut client, &voice.voice_id, Instant::now()).await;
    assert_eq!(after.name, stored.name, "the cut update was rolled back");
    assert_eq!(after.revision, stored.revision);
    assert_eq!(
        app.outbox_rows().await,
        events_before,
        "and its event with it"
    );
    // The row is not left locked by the cut transaction.
    let updated = client
        .update_voice(rename(&stored, "After the hang"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "After the hang");
    assert_eq!(updated.revision, stored.revision + 1);

    // Nothing of the refused create was kept, here or at the provider.
    assert_eq!(app.voice_rows().await, 1);
    assert_eq!(fake.calls(Route::Add), 1);
}

#[tokio::test]
async fn a_clone_storage_does_not_answer_for_is_kept_and_adopted_never_deleted() {
    let pg = PgServer::start();
    let url = pg.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        on_private_postgres(c, url);
        c.engine.adopt_after = Duration::ZERO;
        elevenlabs(c).timeout = Duration::from_secs(5);
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    // The clone takes 1.5 s at the provider; PostgreSQL freezes once the
    // voice is reserved, so the provider's id cannot be recorded.
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_millis(1500)));
    let mut creating = client.clone();
    let create = tokio::spawn(async move {
        let mut request = Request::new(create_request("Unrecorded"));
        request.set_timeout(Duration::from_secs(10));
        creating.create_voice_clone(request).await
    });
    while app.voice_rows().await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.freeze();
    let created = create
        .await
        .unwrap()
        .expect("the caller gets the voice it can follow")
        .into_inner();
    println!(
        "CreateVoiceClone whose record storage did not answer: {:?}, provider id {:?}",
        created.status(),
        created.provider_voice_id
    );
    assert_eq!(created.status(), pb::VoiceStatus::Processing);
    // The answer may leave before the provider's (slow) clone does: the
    // clone runs on, detached from the call.
    wait_for(Duration::from_secs(10), || fake.voice_count() == 1).await;
    assert_eq!(fake.voice_count(), 1, "the provider voice is kept");
    assert_eq!(fake.calls(Route::Delete), 0);

    pg.thaw();
    // The status engine finds it by its tag and completes it.
    let mut completed = None;
    for _ in 0..100 {
        if let Ok(step) = app.worker.run_once().await
            && step.completed > 0
        {
            completed = Some(step);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        completed.is_some(),
        "the voice completes once storage is back"
    );
    let voice = client
        .get_voice(get(&created.voice_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voice.status(), pb::VoiceStatus::Completed);
    assert_eq!(fake.voice_ids(), vec![voice.provider_voice_id.clone()]);
    assert_eq!(fake.calls(Route::Add), 1, "cloned once");
    assert_eq!(fake.calls(Route::Delete), 0);
    assert!(app.orphans().await.is_empty());
    assert_eq!(app.voice_rows().await, 1);
}

/// An UpdateVoice of `voice`'s name to `name`, with a deadline longer than
/// the bound (so what ends it is the server's own).
fn rename(voice: &pb::Voice, name: &str) -> Request<pb::UpdateVoiceRequest> {
    let mut renamed = voice.clone();
    renamed.name = name.into();
    let mut request = Request::new(pb::UpdateVoiceRequest {
        voice: Some(renamed),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
    });
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Starts `call` so that its statement reaches PostgreSQL and waits there,
/// behind `lock_sql` held by `locker`, then freezes the whole server: the
/// statement is sent, no answer will come, and PostgreSQL's own
/// statement_timeout cannot fire. Returns the lock (to release after the
/// thaw) and the call, which yields its outcome and how long it took.
async fn frozen_mid_statement(
    pg: &PgServer,
    locker: &sea_orm::DatabaseConnection,
    lock_sql: &str,
    call: impl Future<Output = Result<(), tonic::Status>> + Send + 'static,
) -> (
    sea_orm::DatabaseTransaction,
    tokio::task::JoinHandle<(Result<(), tonic::Status>, Duration)>,
) {
    let lock = hold(locker, lock_sql).await;
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let result = call.await;
        (result, started.elapsed())
    });
    until_waiting_on_a_lock(locker).await;
    pg.freeze();
    (lock, in_flight)
}

/// A transaction on `db` that holds the lock `sql` takes until it ends.
async fn hold(db: &sea_orm::DatabaseConnection, sql: &str) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(sql).await.unwrap();
    txn
}

/// Returns once a session of the server waits for a lock.
async fn until_waiting_on_a_lock(db: &sea_orm::DatabaseConnection) {
    use sea_orm::ConnectionTrait;
    let waiting = sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
    );
    loop {
        let row = db.query_one_raw(waiting.clone()).await.unwrap().unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The voice, from the first GetVoice that answers within the bound of `since`.
async fn until_answered(client: &mut Client, voice_id: &str, since: Instant) -> pb::Voice {
    loop {
        if let Ok(voice) = client.get_voice(get(voice_id)).await {
            println!("GetVoice answered {:?} after the thaw", since.elapsed());
            return voice.into_inner();
        }
        assert!(
            since.elapsed() <= BOUND,
            "GetVoice answers within the bound of the thaw"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns once health reports `want`, which must come within the bound of `since`.
async fn until_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    want: ServingStatus,
    since: Instant,
) {
    while serving_status(health).await != want {
        assert!(since.elapsed() <= BOUND, "health {want:?} within the bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_create_while_redis_is_down_succeeds_at_once_and_completes_once_redis_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
        // voicehub's defaults: VOICEHUB_REDIS_TIMEOUT, and the creation
        // rate, which is counted in Redis.
        c.redis_timeout = Duration::from_secs(1);
        c.limits = Limits::DEFAULT;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    // Watched from before the outage, on this replica.
    let first = create_voice(&mut client, "Before").await;
    let mut watching = watch(&mut client, &[]).await;
    let snapshot = next(&mut watching).await.unwrap().voice.unwrap();
    assert_eq!(snapshot.voice_id, first.voice_id);

    redis.stop();
    let started = Instant::now();
    let created = client
        .create_voice_clone(create_request("While Redis is down"))
        .await
        .expect("storage is the truth: the create succeeds")
        .into_inner();
    let took = started.elapsed();
    println!("CreateVoiceClone with Redis down: {took:?}");
    assert!(took < BOUND, "{took:?}");
    assert_eq!(created.status(), pb::VoiceStatus::Processing);
    assert_eq!(
        app.metric("voicehub_quota_unchecked_total"),
        1,
        "the creation rate could not be counted: the create went ahead"
    );
    assert!(app.worker.run_once().await.is_err(), "the queue is away");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut completed = 0;
    while completed < 2 {
        assert!(Instant::now() < deadline, "never completed");
        if let Ok(step) = app.worker.run_once().await {
            completed += step.completed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both voices completed by the status engine alone, once each, and the
    // watcher heard of the one created during the outage.
    assert_eq!(app.voice_rows().await, 2);
    assert_eq!(fake.calls(Route::Add), 2);
    let mut heard = None;
    while heard.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(10), next(&mut watching))
            .await
            .expect("the terminal state reaches the watcher")
            .unwrap();
        let voice = event.voice.unwrap();
        if voice.voice_id == created.voice_id && voice.status() == pb::VoiceStatus::Completed {
            heard = Some(voice);
        }
    }
}

/// The chaos soak of seed 17229510574828378081 found this: fred ends a
/// client whose first connection fails unless told otherwise, so a replica
/// started while Redis was away served for good without a queue, events or
/// wake-ups, and the voices created on it stayed PROCESSING.
#[tokio::test]
async fn a_replica_started_while_redis_is_down_uses_it_once_it_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
        c.redis_timeout = Duration::from_secs(1);
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    let mut watching = watch(&mut client, &[]).await;
    let created = create_voice(&mut client, "Started without Redis").await;
    assert!(app.worker.run_once().await.is_err(), "the queue is away");

    redis.restart();
    let back = Instant::now();
    let mut completed = 0;
    while completed < 1 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the replica never used Redis after it came back"
        );
        if let Ok(step) = app.worker.run_once().await {
            completed += step.completed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a replica started while Redis was down completed its voice {:?} after Redis came back",
        back.elapsed()
    );
    // Its watcher hears it: events pass through the same Redis (generous:
    // the event reader's blocking read is replayed after the reconnect).
    loop {
        let event = tokio::time::timeout(Duration::from_mins(1), watching.message())
            .await
            .expect("the watcher hears the voice COMPLETED")
            .expect("the stream does not fail")
            .expect("the stream stays open");
        let voice = event.voice.unwrap();
        if voice.voice_id == created.voice_id && voice.status() == pb::VoiceStatus::Completed {
            break;
        }
    }
    println!(
        "its watcher heard it {:?} after Redis came back",
        back.elapsed()
    );
    assert_eq!(fake.calls(Route::Add), 1);
    assert!(app.metric("voicehub_redis_reconnects_total{connection=\"commands\"}") >= 1);
}

#[tokio::test]
async fn after_the_event_reader_was_away_watch_streams_catch_up_from_storage() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
    })
    .await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let watched = create_voice(&mut client, "Watched").await;
    let mut explicit = watch(&mut client, &[&watched.voice_id]).await;
    let mut all = watch(&mut client, &[]).await;
    for stream in [&mut explicit, &mut all] {
        let snapshot = next(stream).await.unwrap();
        assert!(snapshot.snapshot);
        assert_eq!(snapshot.voice.unwrap().voice_id, watched.voice_id);
    }

    // A voice created while the streams are open: the all-voices stream
    // hears of it by its events alone.
    let later = create_voice(&mut client, "Created while watched").await;
    loop {
        let voice = next(&mut all).await.unwrap().voice.unwrap();
        if voice.voice_id == later.voice_id && voice.revision == later.revision {
            break;
        }
    }

    // Three changes whose events are lost (written to storage alone, as if
    // their entries went with a Redis that died before this replica read them).
    for id in [&watched.voice_id, &later.voice_id] {
        app.execute(&format!(
            "UPDATE voices SET status = 'completed', revision = revision + 1 WHERE id = '{id}'"
        ))
        .await;
    }
    let new = app
        .insert(voice(
            user,
            Visibility::Private,
            VoiceStatus::Processing,
            store::now(),
        ))
        .await;
    redis.restart();

    // Generous: the reader's blocking read is replayed after the reconnect
    // first, and the machine may be busy with the rest of the suite.
    let completed = tokio::time::timeout(Duration::from_mins(1), explicit.message())
        .await
        .expect("the explicit watch catches up")
        .expect("the stream does not fail")
        .expect("the stream stays open");
    let completed = completed.voice.unwrap();
    assert_eq!(completed.voice_id, watched.voice_id);
    assert_eq!(completed.status(), pb::VoiceStatus::Completed);
    assert_eq!(completed.revision, watched.revision + 1);
    assert!(
        next(&mut explicit).await.is_none(),
        "then it ends: all terminal"
    );
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_mins(1), all.message())
            .await
            .expect("the all-voices watch catches up")
            .expect("the stream does not fail")
            .expect("the stream stays open");
        let voice = event.voice.unwrap();
        seen.push((voice.voice_id.clone(), voice.status()));
    }
    seen.sort();
    let mut expected = vec![
        (watched.voice_id.clone(), pb::VoiceStatus::Completed),
        (later.voice_id.clone(), pb::VoiceStatus::Completed),
        (new.id.to_string(), pb::VoiceStatus::Processing),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(app.metric("voicehub_watch_resyncs_total") >= 1);
}

#[tokio::test]
async fn a_watcher_that_stops_reading_costs_one_state_and_then_gets_the_latest() {
    use prost_types::FieldMask;
    use voicehub::pb::UpdateVoiceRequest;
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Rename 0").await;
    // A reader with a small HTTP/2 window, so its stream backs up in the
    // server rather than in the client's buffers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(8 * 1024))
        .connect()
        .await
        .unwrap();
    let mut reader = pb::voice_service_client::VoiceServiceClient::with_interceptor(
        channel,
        crate::helpers::Bearer(format!(
            "Bearer {}",
            app.auth.mint(user, Duration::from_hours(1)).unwrap()
        )),
    );
    let mut stream = watch(&mut reader, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);

    // The watcher reads nothing while the voice changes 1,000 times.
    for i in 1..=1_000 {
        let request = UpdateVoiceRequest {
            voice: Some(pb::Voice {
                voice_id: voice.voice_id.clone(),
                name: format!("Rename {i}"),
                description: format!("{i:>4} ").repeat(90),
                ..pb::Voice::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["name".into(), "description".into()],
            }),
        };
        client.update_voice(request).await.unwrap();
    }
    let coalesced = app.metric("voicehub_events_coalesced_total");
    let handed = app.metric("voicehub_events_delivered_total");
    println!("while not reading: {handed} handed to the stream, {coalesced} coalesced");
    // What the server holds for the stream is bounded: HTTP/2's send buffer
    // (hyper's 400 KiB at most) and, behind it, its mailbox's one state of
    // the voice; every later change replaced the one before.
    assert!(coalesced > handed, "{coalesced} coalesced, {handed} handed");

    // Reading again, it reaches the latest state, in revision order.
    let mut received = 0;
    let mut last = 0;
    loop {
        let event = next(&mut stream).await.unwrap().voice.unwrap();
        assert!(event.revision > last, "in order");
        last = event.revision;
        received += 1;
        if event.name == "Rename 1000" {
            break;
        }
    }
    println!("then read {received} states, the last one the latest");
    assert!(received < 1_000);
    // Every change was handed to the stream or replaced by a newer one (the
    // creation's event may count too, if it came after the subscription).
    let total = app.metric("voicehub_events_delivered_total")
        + app.metric("voicehub_events_coalesced_total");
    assert!((1_000..=1_001).contains(&total), "{total}");
}

#[tokio::test]
async fn redis_killed_restarted_and_flushed_mid_run_still_ends_every_voice_and_tells_watchers() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
        c.run_worker = true;
    })
    .await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(create_voice(&mut client, &format!("Through it all {i}")).await);
    }
    let mut all = watch(&mut client, &[]).await;
    for _ in 0..10 {
        assert!(next(&mut all).await.unwrap().snapshot);
    }

    // Mid-run: Redis dies; meanwhile the provider finishes every voice;
    // Redis comes back empty, then is flushed once more.
    redis.stop();
    for voice in &ids {
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");

    // The watcher hears every voice complete.
    let mut completed = std::collections::BTreeSet::new();
    while completed.len() < ids.len() {
        // Generous: recovery waits on reconnect backoffs, and the machine
        // may be busy with the rest of the suite.
        let event = tokio::time::timeout(Duration::from_mins(1), all.message())
            .await
            .expect("every terminal state reaches the watcher")
            .expect("the stream does not fail")
            .expect("the stream stays open");
        let voice = event.voice.unwrap();
        if voice.status() == pb::VoiceStatus::Completed {
            completed.insert(voice.voice_id);
        }
    }
    // Storage agrees, and nothing was lost or made twice.
    for voice in &ids {
        let stored = client
            .get_voice(GetVoiceRequest {
                voice_id: voice.voice_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
    }
    assert_eq!(app.voice_rows().await, 10);
    assert_eq!(fake.calls(Route::Add), 10);
    assert_eq!(
        fake.voice_ids().len(),
        10,
        "no provider voice without a row"
    );
}

#[tokio::test]
async fn a_reschedule_a_frozen_redis_cut_off_is_handed_back_when_it_answers_again() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
        // Longer than the test: only a hand-back makes the voice due again.
        c.engine.claim_lease = Duration::from_mins(10);
    })
    .await;
    fake.set_default_report(Report::awaiting_verification());
    let voice = create_voice(&mut app.client(Uuid::new_v4()), "Cut off").await;
    // The step waits at the provider; Redis freezes meanwhile, so the
    // step's reschedule (still PROCESSING) cannot reach it.
    fake.inject(Route::Lookup, 1, Fault::Slow(Duration::from_secs(2)));
    fake.inject(Route::Get, 1, Fault::Slow(Duration::from_secs(2)));
    let worker = app.worker.clone();
    let step = tokio::spawn(async move { worker.run_once().await });
    wait_for(Duration::from_secs(10), || {
        fake.calls(Route::Lookup) + fake.calls(Route::Get) > 0
    })
    .await;
    redis.freeze();
    let step = step.await.unwrap().expect("the step itself succeeds");
    assert_eq!((step.claimed, step.rescheduled), (1, 1), "{step:?}");
    redis.thaw();
    // The next step that reaches Redis hands it back: due now, claimed now,
    // not ten minutes later.
    let mut claimed = 0;
    for _ in 0..50 {
        if let Ok(step) = app.worker.run_once().await {
            claimed = step.claimed;
            if claimed > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(claimed, 1, "voice {} is due again", voice.voice_id);
}

#[tokio::test]
async fn after_redis_reconnects_the_engine_puts_back_queue_entries_it_lost() {
    use voicehub::status_engine::DueQueue;
    let redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(url.into());
    })
    .await;
    fake.set_default_report(Report::awaiting_verification());
    let voice = create_voice(&mut app.client(Uuid::new_v4()), "Lost in a failover").await;
    assert_eq!(app.worker.run_once().await.unwrap().claimed, 1);
    // The queue loses the entry, as when a primary dies before its replica
    // has the last writes: nothing tells voicehub but the reconnection.
    let (client, queue) = crate::helpers::queue_of(&app).await;
    queue
        .finish(&[voice.voice_id.parse().unwrap()])
        .await
        .unwrap();
    client.quit().await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.claimed, 0, "lost: {step:?}");
    assert!(
        redis
            .cli(&["CLIENT", "KILL", "TYPE", "normal"])
            .trim()
            .parse::<u32>()
            .unwrap()
            > 0
    );
    wait_for(Duration::from_secs(10), || {
        app.metric("voicehub_redis_reconnects_total{connection=\"commands\"}") >= 1
    })
    .await;
    // The next step reconciles with storage, and the voice is due again.
    let mut step = app.worker.run_once().await;
    for _ in 0..50 {
        if step.as_ref().is_ok_and(|s| s.claimed > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        step = app.worker.run_once().await;
    }
    let step = step.unwrap();
    assert!(step.reconciled, "{step:?}");
    assert_eq!(step.claimed, 1, "{step:?}");
}

#[tokio::test]
async fn a_provider_storm_while_thirty_voices_are_created_and_watched_ends_each_once() {
    use std::collections::{BTreeMap, BTreeSet};
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| c.run_worker = true).await;
    let user = Uuid::new_v4();
    let mut all = watch(&mut app.client(user), &[]).await;
    // For a minute, half of every answer is a 429 or a 500, while a voice
    // is created every 2 s.
    fake.storm(Duration::from_secs(62));
    let creates: Vec<_> = (0..30u64)
        .map(|i| {
            let mut client = app.client(user);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2 * i)).await;
                let mut request = create_request(&format!("Storm {i}"));
                request.request_id = format!("storm-{i}");
                // A client that retries with the same request_id.
                for attempt in 1..=20 {
                    match client.create_voice_clone(request.clone()).await {
                        Ok(voice) => return (voice.into_inner(), attempt),
                        Err(status) if status.code() == Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Err(status) => panic!("create {i}: {status:?}"),
                    }
                }
                panic!("create {i} never answered")
            })
        })
        .collect();
    let mut attempts = BTreeMap::new();
    for create in creates {
        let (voice, tries) = create.await.unwrap();
        attempts.insert(voice.voice_id, tries);
    }
    assert_eq!(attempts.len(), 30, "30 distinct voices");

    // Every voice ends terminal, and the watcher hears it.
    let mut ended = BTreeMap::new();
    while ended.len() < 30 {
        let event = tokio::time::timeout(Duration::from_mins(1), next(&mut all))
            .await
            .expect("every voice ends")
            .unwrap();
        let voice = event.voice.unwrap();
        if matches!(
            voice.status(),
            pb::VoiceStatus::Completed | pb::VoiceStatus::Failed
        ) {
            ended.insert(voice.voice_id.clone(), voice.status());
        }
    }
    let completed = ended
        .values()
        .filter(|s| **s == pb::VoiceStatus::Completed)
        .count();
    println!(
        "storm: {} client attempts, {} provider requests, {completed} COMPLETED, {} FAILED",
        attempts.values().sum::<u32>(),
        fake.requests().len(),
        30 - completed
    );
    assert_eq!(app.voice_rows().await, 30, "no duplicate row");
    // Retries within bounds: per voice, at most 4 clone requests (1 + 3
    // retries) per attempt of its client.
    let mut adds: BTreeMap<String, u32> = BTreeMap::new();
    for request in fake.requests() {
        if request.route == Route::Add {
            let labels: serde_json::Value =
                serde_json::from_str(request.text("labels").unwrap()).unwrap();
            *adds
                .entry(labels["voicehub_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for (voice, tries) in &attempts {
        let sent = adds.get(voice).copied().unwrap_or_default();
        assert!(
            sent <= 4 * tries,
            "{voice}: {sent} clone requests for {tries} attempts"
        );
    }
    // No provider voice without a row, and none cloned twice.
    let held: BTreeSet<String> = {
        use sea_orm::EntityTrait;
        store::entity::voice::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|v| v.provider_voice_id)
            .collect()
    };
    let at_provider: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    assert_eq!(held, at_provider);
    assert_eq!(
        completed,
        at_provider.len(),
        "each provider voice is a COMPLETED one"
    );
}

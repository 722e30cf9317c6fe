//! Several replicas on one PostgreSQL and one Redis, and Redis misbehaving.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use sea_orm::EntityTrait;
use secrecy::SecretString;
use uuid::Uuid;
use voicehub::{
    events::{self, STREAM_FIELD, VoiceEvent},
    pb::{self, GetVoiceRequest, ListUserVoicesRequest},
    status_engine::{Claim, DueQueue},
    store::{VoiceStatus, entity::voice},
};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, Fault, Report, Route},
    helpers::{
        Backend, TestApp, create_request, create_voice, next, queue_of, redis_of, replica_of,
        serve_replica_of, spawn_app_with_fake, wait_for, watch,
    },
    redis_server::RedisServer,
};

async fn status_of(app: &TestApp, user: Uuid, voice_id: &str) -> pb::VoiceStatus {
    let request = GetVoiceRequest {
        voice_id: voice_id.to_owned(),
    };
    app.client(user)
        .get_voice(request)
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn a_watcher_on_one_replica_sees_a_completion_made_by_another() {
    let (a, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let b = replica_of(&a, &fake, |_| {}).await;
    let user = Uuid::new_v4();
    let mut on_a = a.client(user);
    let voice = create_voice(&mut on_a, "Shared").await;
    let mut stream = watch(&mut on_a, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);

    let step = b.worker.run_once().await.unwrap();
    assert_eq!(step.completed, 1, "replica B did the work: {step:?}");
    let event = next(&mut stream).await.unwrap();
    assert_eq!(
        event.voice.unwrap().status(),
        pb::VoiceStatus::Completed,
        "seen on replica A"
    );
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn no_voice_is_checked_twice_inside_a_lease() {
    let (a, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let b = replica_of(&a, &fake, |_| {}).await;
    a.worker.run_once().await.unwrap(); // start-up reconciliation: the queue is live
    let mut client = a.client(Uuid::new_v4());
    for i in 0..3 {
        create_voice(&mut client, &format!("Leased {i}")).await;
    }
    // Another replica's worker holds the claims (as if in the middle of its checks).
    let (_redis, queue) = queue_of(&a).await;
    let Claim::Claimed { ids, .. } = queue.claim(10, Duration::from_secs(30)).await.unwrap() else {
        panic!("the queue is intact");
    };
    assert_eq!(ids.len(), 3);
    for _ in 0..3 {
        let step = b.worker.run_once().await.unwrap();
        assert_eq!(step.claimed, 0, "{step:?}");
    }
    assert_eq!(fake.calls(Route::Get), 0, "nobody checked a leased voice");
}

#[tokio::test]
async fn a_dead_replicas_claims_are_finished_by_another_after_the_lease() {
    let (a, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let b = replica_of(&a, &fake, |_| {}).await;
    a.worker.run_once().await.unwrap(); // start-up reconciliation: the queue is live
    let user = Uuid::new_v4();
    let mut client = b.client(user);
    let mut voices = Vec::new();
    for i in 0..3 {
        voices.push(create_voice(&mut client, &format!("Orphaned {i}")).await);
    }
    let lease = Duration::from_millis(300);
    let (redis, queue) = queue_of(&a).await;
    let Claim::Claimed { ids, .. } = queue.claim(10, lease).await.unwrap() else {
        panic!()
    };
    assert_eq!(ids.len(), 3);
    // Replica A dies holding its claims.
    redis.quit().await;
    drop((queue, a));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut completed = 0;
    while completed < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never took over the expired claims"
        );
        completed += b.worker.run_once().await.unwrap().completed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for voice in &voices {
        assert_eq!(
            status_of(&b, user, &voice.voice_id).await,
            pb::VoiceStatus::Completed
        );
    }
}

/// An app on a private Redis that a test may flush, stop and restart.
async fn app_on_private_redis(redis: &RedisServer) -> (TestApp, FakeElevenLabs) {
    let url = redis.url();
    spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(SecretString::from(url));
        c.redis_timeout = Duration::from_millis(300);
    })
    .await
}

#[tokio::test]
async fn voices_processing_during_a_redis_flushall_still_settle() {
    let redis = RedisServer::start();
    let (app, fake) = app_on_private_redis(&redis).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let mut voices = Vec::new();
    for i in 0..3 {
        voices.push(create_voice(&mut client, &format!("Flushed {i}")).await);
    }
    app.worker.run_once().await.unwrap();
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    fake.set_default_report(Report::default());
    for voice in &voices {
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    let lost = app.worker.run_once().await.unwrap();
    assert!(
        lost.reconciled,
        "the missing marker triggered a rebuild: {lost:?}"
    );
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.completed, 3, "{step:?}");
    for voice in &voices {
        assert_eq!(
            status_of(&app, user, &voice.voice_id).await,
            pb::VoiceStatus::Completed
        );
    }
}

#[tokio::test]
async fn a_redis_restart_loses_no_event_for_watchers_and_storage_rpcs_keep_working() {
    let mut redis = RedisServer::start();
    let (app, fake) = app_on_private_redis(&redis).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Survivor").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);
    app.worker.run_once().await.unwrap();

    redis.stop();
    // Storage-only calls do not need Redis.
    client
        .get_voice(GetVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap();
    client
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap();
    // Creating needs Redis only to queue the check; reconciliation catches up.
    fake.set_default_report(Report::default());
    let during = create_voice(&mut client, "Born in an outage").await;
    assert!(
        app.worker.run_once().await.is_err(),
        "the worker notices the outage"
    );
    fake.set_report(&voice.provider_voice_id, Report::default());

    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut completed = 0;
    while completed < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never recovered"
        );
        if let Ok(step) = app.worker.run_once().await {
            completed += step.completed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = next(&mut stream).await.unwrap();
    assert_eq!(
        event.voice.unwrap().status(),
        pb::VoiceStatus::Completed,
        "the watcher got the terminal state"
    );
    assert!(next(&mut stream).await.is_none());
    assert_eq!(
        status_of(&app, user, &during.voice_id).await,
        pb::VoiceStatus::Completed
    );
}

#[tokio::test]
async fn a_redis_outage_longer_than_max_age_leaves_a_voice_ready_at_the_provider_completed() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, move |c| {
        c.redis_url = Some(SecretString::from(url));
        c.redis_timeout = Duration::from_millis(300);
        c.sync_max_age = Duration::from_secs(1);
    })
    .await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Outlasted").await;
    assert_eq!(app.worker.run_once().await.unwrap().rescheduled, 1);

    // Redis goes away for longer than the voice's maximum age; meanwhile
    // the provider finishes the voice.
    redis.stop();
    fake.set_report(&voice.provider_voice_id, Report::default());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        app.worker.run_once().await.is_err(),
        "the outage is noticed"
    );
    redis.restart();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never settled");
        if let Ok(step) = app.worker.run_once().await
            && step.completed + step.failed > 0
        {
            assert_eq!((step.completed, step.failed), (1, 0), "{step:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_of(&app, user, &voice.voice_id).await,
        pb::VoiceStatus::Completed,
        "asked once more at its deadline, and ready"
    );
    assert_eq!(fake.calls(Route::Delete), 0);
    assert!(fake.voice(&voice.provider_voice_id).is_some());
}

#[tokio::test]
async fn an_event_with_a_field_this_build_does_not_know_reaches_a_watcher() {
    let (app, _fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let user = Uuid::new_v4();
    let created = create_voice(&mut app.client(user), "Newer").await;
    let mut client = app.client(user);
    let mut stream = watch(&mut client, &[&created.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);

    // A replica of a newer build publishes the completion with a field
    // (number 15) that this build's decoder does not know.
    let mut stored = voice::Entity::find_by_id(created.voice_id.parse::<Uuid>().unwrap())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    stored.status = VoiceStatus::Completed;
    stored.revision += 1;
    let mut bytes = VoiceEvent::stored(&stored, voicehub::store::Change::Completed).encode();
    bytes.extend_from_slice(&[15 << 3 | 2, 5]);
    bytes.extend_from_slice(b"newer");
    let (redis, prefix) = redis_of(&app).await;
    let _: String = redis
        .commands
        .xadd(
            events::stream_key(&prefix),
            false,
            None,
            "*",
            (STREAM_FIELD, Bytes::from(bytes)),
        )
        .await
        .unwrap();
    redis.quit().await;

    let event = next(&mut stream).await.expect("the event is delivered");
    let delivered = event.voice.unwrap();
    assert_eq!(delivered.status(), pb::VoiceStatus::Completed);
    assert_eq!(delivered.revision, stored.revision);
    assert!(
        next(&mut stream).await.is_none(),
        "terminal: the stream ends"
    );
}

#[tokio::test]
async fn events_redis_refuses_still_reach_this_replicas_watchers() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voices = [
        create_voice(&mut client, "Refused 1").await,
        create_voice(&mut client, "Refused 2").await,
    ];
    let ids: Vec<&str> = voices.iter().map(|v| v.voice_id.as_str()).collect();
    let mut stream = watch(&mut client, &ids).await;
    for _ in &voices {
        assert!(next(&mut stream).await.unwrap().snapshot);
    }
    // The event stream's key now holds a string: every XADD of the batch's
    // pipeline fails with WRONGTYPE.
    let (redis, prefix) = redis_of(&app).await;
    let key = events::stream_key(&prefix);
    let _: () = redis.commands.del(&key).await.unwrap();
    let _: () = redis
        .commands
        .set(&key, "not a stream", None, None, false)
        .await
        .unwrap();
    for voice in &voices {
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.completed, 2, "{step:?}");
    for _ in &voices {
        let voice = next(&mut stream).await.unwrap().voice.unwrap();
        assert_eq!(voice.status(), pb::VoiceStatus::Completed);
    }
    assert_eq!(app.outbox_rows().await, 2, "kept for the other replicas");
    let published = app.metric("voicehub_events_published_total");
    // The relay hands the events to this replica's watchers first, then
    // counts the backlog: the gauge follows the deliveries by a moment.
    wait_for(Duration::from_secs(5), || {
        app.metric("voicehub_outbox_backlog") >= 1
    })
    .await;
    assert!(
        app.metric("voicehub_outbox_backlog") >= 1,
        "the backlog shows"
    );
    let _: () = redis.commands.del(&key).await.unwrap();
    // Once the bus takes them again, the retrying relay publishes and prunes them.
    for _ in 0..100 {
        if app.outbox_rows().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.outbox_rows().await, 0);
    assert_eq!(app.metric("voicehub_events_published_total"), published + 2);
    assert_eq!(app.metric("voicehub_outbox_backlog"), 0);
}

/// Makes every XADD to `app`'s event stream fail (WRONGTYPE) until [`accept_events`].
async fn refuse_events(app: &TestApp) {
    let (redis, prefix) = redis_of(app).await;
    let key = events::stream_key(&prefix);
    let _: () = redis.commands.del(&key).await.unwrap();
    let _: () = redis
        .commands
        .set(&key, "not a stream", None, None, false)
        .await
        .unwrap();
    redis.quit().await;
}

/// Undoes [`refuse_events`].
async fn accept_events(app: &TestApp) {
    let (redis, prefix) = redis_of(app).await;
    let _: () = redis
        .commands
        .del(events::stream_key(&prefix))
        .await
        .unwrap();
    redis.quit().await;
}

#[tokio::test]
async fn a_change_whose_replica_stops_between_commit_and_publish_reaches_a_watcher_on_another() {
    let (mut a, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let b = replica_of(&a, &fake, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let voice = create_voice(&mut a.client(user), "Outboxed").await;
    let mut on_b = b.client(user);
    let mut stream = watch(&mut on_b, &[&voice.voice_id]).await;
    let snapshot = next(&mut stream).await.unwrap();
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.voice.unwrap().revision, voice.revision);

    a.until_published().await;
    // Replica A stores the completion, but the bus refuses its event, and A
    // stops before it could publish it: the change is committed, unpublished.
    refuse_events(&a).await;
    fake.set_report(&voice.provider_voice_id, Report::default());
    assert_eq!(a.worker.run_once().await.unwrap().completed, 1);
    a.stop().await;
    assert_eq!(a.outbox_rows().await, 1, "the event waits in the outbox");

    // B heard of A's commit (LISTEN) and publishes A's leftover once the bus takes it.
    accept_events(&b).await;
    let event = next(&mut stream)
        .await
        .expect("the change reaches B's watcher");
    let delivered = event.voice.unwrap();
    assert_eq!(delivered.status(), pb::VoiceStatus::Completed);
    assert_eq!(delivered.revision, voice.revision + 1);
    assert!(
        next(&mut stream).await.is_none(),
        "terminal: the stream ends"
    );
    b.until_published().await; // published events are pruned
    assert_eq!(
        b.metric("voicehub_events_published_total"),
        1,
        "B published it"
    );
    assert_eq!(b.metric("voicehub_outbox_backlog"), 0);
}

#[tokio::test]
async fn a_change_whose_process_is_killed_between_commit_and_publish_reaches_a_watcher_on_another()
{
    let (b, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let voice = create_voice(&mut b.client(user), "Killed before publishing").await;
    let mut client = b.client(user);
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);

    b.until_published().await;
    // Process A (`voicehub serve`, the same database, Redis and prefix, its
    // worker on) settles the voice while the bus refuses events, and is
    // killed with the change committed and its event unpublished.
    refuse_events(&b).await;
    let (a, _dir) = serve_replica_of(&b, &fake, &[]);
    fake.set_report(&voice.provider_voice_id, Report::default());
    let id: Uuid = voice.voice_id.parse().unwrap();
    for _ in 0..200 {
        let row = voice::Entity::find_by_id(id)
            .one(&b.db)
            .await
            .unwrap()
            .unwrap();
        if row.status == VoiceStatus::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a); // SIGKILL
    let row = voice::Entity::find_by_id(id)
        .one(&b.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, VoiceStatus::Completed, "A settled the voice");
    assert_eq!(b.outbox_rows().await, 1, "its event was left in the outbox");

    accept_events(&b).await;
    let delivered = next(&mut stream).await.unwrap().voice.unwrap();
    assert_eq!(delivered.status(), pb::VoiceStatus::Completed);
    assert_eq!(delivered.revision, row.revision);
    assert!(
        next(&mut stream).await.is_none(),
        "terminal: the stream ends"
    );
    b.until_published().await; // published by B, then pruned
    assert_eq!(
        b.metric("voicehub_events_published_total"),
        2,
        "the creation and A's completion"
    );
}

#[tokio::test]
async fn an_entry_of_another_deployment_on_the_same_prefix_is_reported_and_left_for_its_owner() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.engine.claim_lease = Duration::from_millis(300);
    })
    .await;
    let user = Uuid::new_v4();
    let ours = create_voice(&mut app.client(user), "Ours").await;
    // Another deployment, same Redis and prefix, its own database.
    let (_redis, theirs) = queue_of(&app).await;
    let foreign = Uuid::now_v7();
    theirs.enqueue(foreign, Duration::ZERO).await.unwrap();

    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.claimed, 2, "{step:?}");
    assert_eq!(step.completed, 1, "ours is checked as usual");
    assert_eq!(app.metric("voicehub_sync_unknown_ids_total"), 1);
    assert_eq!(
        status_of(&app, user, &ours.voice_id).await,
        pb::VoiceStatus::Completed
    );
    assert_eq!(fake.calls(Route::Add), 1);
    // Not dropped: once our lease ends, its owner claims it.
    let mut claimed = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Claim::Claimed { ids, .. } = theirs.claim(10, Duration::from_secs(30)).await.unwrap()
            && !ids.is_empty()
        {
            claimed = ids;
            break;
        }
    }
    assert_eq!(claimed, vec![foreign]);
}

/// A step that runs longer than its claim lease (the provider is slow)
/// keeps its voice: the worker renews the leases of what it holds, so
/// another replica claims nothing meanwhile and the voice is checked once.
/// Without the renewal the 600-ms lease runs out mid-step and the other
/// replica takes the voice too.
#[tokio::test]
async fn a_step_longer_than_its_claim_lease_keeps_its_voices_by_renewing_them() {
    let lease = Duration::from_millis(600);
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.engine.claim_lease = lease;
        if let voicehub::config::ProviderConfig::ElevenLabs(provider) = &mut c.provider {
            provider.timeout = Duration::from_secs(10);
        }
    })
    .await;
    let user = Uuid::new_v4();
    let voice = create_voice(&mut app.client(user), "Slow to check").await;
    fake.inject(Route::Get, 1, Fault::Slow(Duration::from_secs(3)));
    let step = tokio::spawn({
        let worker = app.worker.clone();
        async move { worker.run_once().await }
    });
    // Another replica: the same queue, as another process sees it.
    let (_redis, other) = queue_of(&app).await;
    let (mut renewed, mut taken) = (0, Vec::new());
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(lease / 4).await;
        renewed += app.worker.renew_claims().await.unwrap();
        if let Claim::Claimed { ids, .. } = other.claim(10, Duration::from_secs(30)).await.unwrap()
        {
            taken.extend(ids);
        }
    }
    let step = step.await.unwrap().unwrap();
    println!("{renewed} renewals while the step ran; taken by the other replica: {taken:?}");
    assert!(taken.is_empty(), "the other replica took {taken:?}");
    assert!(renewed >= 2, "renewed {renewed} times");
    assert_eq!(step.completed, 1, "{step:?}");
    assert_eq!(fake.calls(Route::Get), 1, "checked once");
    assert_eq!(
        status_of(&app, user, &voice.voice_id).await,
        pb::VoiceStatus::Completed
    );
    assert_eq!(app.worker.renew_claims().await.unwrap(), 0, "nothing held");
}

#[tokio::test]
async fn a_create_the_provider_refuses_leaves_no_queue_entry_behind() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::unprocessable_files());
    let refused = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Refused"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(app.voice_rows().await, 0, "the reservation was released");
    let (redis, prefix) = redis_of(&app).await;
    let queued: i64 = redis
        .commands
        .zcard(format!("{prefix}:sync:due"))
        .await
        .unwrap();
    assert_eq!(queued, 0, "and taken off the queue");
    assert_eq!(app.metric("voicehub_sync_unknown_ids_total"), 0);
}

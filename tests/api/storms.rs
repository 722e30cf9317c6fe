//! Reconnect storms: thousands of watch streams opening at once on a
//! replica whose storage pool is small (as when another replica stops and
//! its streams all come over). Every stream opens or is shed with
//! RESOURCE_EXHAUSTED and when to come back, never UNAVAILABLE; health
//! stays SERVING, polled every 100 ms; the snapshots are read in a few
//! dozen batches, not one query per stream.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;
use voicehub::{
    pb::{VoiceStatusEvent, WatchVoiceStatusRequest},
    store::{Visibility, VoiceStatus},
};

use crate::helpers::{
    Backend, Client, TestApp, replica_of, serving_status, spawn_app_with, spawn_app_with_fake,
};

/// Health of `app`, checked every 100 ms on a connection of its own until
/// `done`; every answer, in order.
fn poll_health(
    app: &TestApp,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<ServingStatus>> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    );
    tokio::spawn(async move {
        let mut answers = Vec::new();
        while !done.load(Ordering::Relaxed) {
            answers.push(serving_status(&mut health).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answers
    })
}

/// The delay a shed or ended call asks for, if it carries one.
fn retry_delay(status: &Status) -> Option<Duration> {
    tonic_types::StatusExt::get_details_retry_info(status).and_then(|info| info.retry_delay)
}

/// Opens a watch on `voice` (or, with `None`, on all the caller's voices)
/// and reads its first message.
async fn open(
    client: &mut Client,
    voice: Option<Uuid>,
) -> Result<(tonic::Streaming<VoiceStatusEvent>, VoiceStatusEvent), Status> {
    let request = WatchVoiceStatusRequest {
        voice_ids: voice.map(|v| v.to_string()).into_iter().collect(),
    };
    let mut stream = client.watch_voice_status(request).await?.into_inner();
    let first = stream.message().await?.expect("a snapshot first");
    Ok((stream, first))
}

/// Users, each with one PROCESSING voice, so every stream stays open.
async fn users_with_a_processing_voice(app: &TestApp, users: usize) -> Vec<(Uuid, Uuid)> {
    let mut seeded = Vec::new();
    for _ in 0..users {
        let user = Uuid::new_v4();
        let voice = app
            .seed(user, Visibility::Private, VoiceStatus::Processing)
            .await;
        seeded.push((user, voice.id));
    }
    seeded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_opening_at_once_on_a_two_connection_pool_open_or_are_shed() {
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.database.max_connections = 2;
        c.database.acquire_timeout = Duration::from_secs(1);
        c.health_interval = Duration::from_millis(100);
    })
    .await;
    // A hundred users on a connection each, a hundred streams each (the
    // per-user limit): half watch the user's voice by id, half all of the
    // user's voices.
    let users = users_with_a_processing_voice(&app, 100).await;
    let batches_before = app.metric("voicehub_watch_snapshot_batches_total");
    let reads_before = app.metric("voicehub_watch_snapshot_reads_total");
    let resyncs_before = app.metric("voicehub_watch_resyncs_total");
    let done = Arc::new(AtomicBool::new(false));
    let health = poll_health(&app, done.clone());

    let started = Instant::now();
    let mut opening = Vec::new();
    for (n, (user, voice)) in users.iter().enumerate() {
        let client = app.client_on_own_connection(*user);
        for i in 0..100 {
            let mut client = client.clone();
            let watched = (i % 2 == 0).then_some(*voice);
            let voice = *voice;
            opening.push(tokio::spawn(async move {
                open(&mut client, watched).await.map(|(stream, first)| {
                    assert!(first.snapshot);
                    assert_eq!(first.voice.unwrap().voice_id, voice.to_string());
                    (n, stream)
                })
            }));
        }
    }
    let (mut open_streams, mut shed) = (Vec::new(), Vec::new());
    for outcome in opening {
        match outcome.await.unwrap() {
            Ok(opened) => open_streams.push(opened),
            Err(status) if status.code() == Code::ResourceExhausted => {
                shed.push(retry_delay(&status).expect("a shed stream says when to come back"));
            }
            Err(status) => panic!("a stream failed to open otherwise: {status:?}"),
        }
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    let batches = app.metric("voicehub_watch_snapshot_batches_total") - batches_before;
    let reads = app.metric("voicehub_watch_snapshot_reads_total") - reads_before;
    let resyncs = app.metric("voicehub_watch_resyncs_total") - resyncs_before;
    println!(
        "10000 streams over 100 connections, pool of 2: {} open, {} shed (retry in {:?} to {:?}) in {took:?}; \
         {reads} snapshot reads in {batches} batches (at most {} queries; {resyncs} resyncs); health SERVING in {} of {} polls",
        open_streams.len(),
        shed.len(),
        shed.iter().min(),
        shed.iter().max(),
        2 * batches,
        health
            .iter()
            .filter(|s| **s == ServingStatus::Serving)
            .count(),
        health.len(),
    );
    assert_eq!(open_streams.len() + shed.len(), 10_000);
    assert!(!health.is_empty());
    assert!(
        health.iter().all(|s| *s == ServingStatus::Serving),
        "{health:?}"
    );
    assert!(reads >= open_streams.len() as u64);
    // A few dozen batches, not one query per stream.
    assert!(batches <= 200, "{batches} batches for {reads} reads");
    // The open streams are live: those of the first user hear a rename.
    let (user, voice) = users[0];
    let mut renamed = voicehub::pb::Voice {
        voice_id: voice.to_string(),
        name: "Renamed in the storm".into(),
        ..Default::default()
    };
    app.client(user)
        .update_voice(voicehub::pb::UpdateVoiceRequest {
            voice: Some(renamed.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap();
    let mut heard = 0;
    for (n, stream) in &mut open_streams {
        if *n == 0 {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("the rename arrives")
                .unwrap()
                .unwrap();
            renamed = event.voice.unwrap();
            assert_eq!(renamed.name, "Renamed in the storm");
            heard += 1;
        }
    }
    println!("{heard} open streams of the first user heard the rename");
    assert!(heard > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_streams_of_a_stopping_replica_reopen_on_the_other() {
    let (mut a, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let b = replica_of(&a, &fake, |c| {
        c.database.max_connections = 2;
        c.database.acquire_timeout = Duration::from_secs(1);
        c.health_interval = Duration::from_millis(100);
    })
    .await;
    let users = users_with_a_processing_voice(&a, 50).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for (user, voice) in &users {
        let on_a = a.client_on_own_connection(*user);
        let on_b = b.client_on_own_connection(*user);
        for i in 0..100 {
            let (mut on_a, mut on_b, opened) = (on_a.clone(), on_b.clone(), opened.clone());
            let watched = (i % 2 == 0).then_some(*voice);
            watchers.push(tokio::spawn(async move {
                let (mut stream, _) = open(&mut on_a, watched).await.expect("open on A");
                opened.fetch_add(1, Ordering::Relaxed);
                let ended = stream.message().await.expect_err("A ends the stream");
                assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
                let mut delay = retry_delay(&ended).expect("told when to come back");
                // What a client does: wait as told, reconnect elsewhere,
                // and wait again if shed.
                let mut shed = 0;
                loop {
                    tokio::time::sleep(delay).await;
                    match open(&mut on_b, watched).await {
                        Ok((stream, first)) => {
                            assert!(first.snapshot);
                            return (Instant::now(), shed, stream);
                        }
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            shed += 1;
                            delay = retry_delay(&status).expect("told when to come back");
                        }
                        Err(status) => panic!("reopening on B failed: {status:?}"),
                    }
                }
            }));
        }
    }
    while opened.load(Ordering::Relaxed) < 5_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let health = poll_health(&b, done.clone());
    let stopped = Instant::now();
    a.stop().await;
    let mut reopened = Vec::new();
    let mut sheds = 0;
    for watcher in watchers {
        let (at, shed, stream) = tokio::time::timeout(Duration::from_mins(1), watcher)
            .await
            .expect("every stream reopens within a minute")
            .unwrap();
        reopened.push(at.duration_since(stopped));
        sheds += shed;
        drop(stream);
    }
    done.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    reopened.sort();
    println!(
        "5000 streams reopened on B: first {:?}, median {:?}, last {:?} after A began to stop; \
         {sheds} sheds on the way; health of B SERVING in {} of {} polls",
        reopened[0],
        reopened[2_500],
        reopened[4_999],
        health
            .iter()
            .filter(|s| **s == ServingStatus::Serving)
            .count(),
        health.len(),
    );
    assert_eq!(reopened.len(), 5_000);
    assert!(
        health.iter().all(|s| *s == ServingStatus::Serving),
        "{health:?}"
    );
    // Spread over the reconnect window, all within it and a margin.
    assert!(
        reopened[4_999] < voicehub::error::RECONNECT_SPREAD + Duration::from_secs(10),
        "{:?}",
        reopened[4_999]
    );
}

use std::time::Duration;

use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{self, UpdateVoiceRequest, WatchVoiceStatusRequest};

use crate::{
    fake_elevenlabs::Report,
    helpers::{
        Backend, assert_invalid_field, create_request, create_voice, next, spawn_app_with_fake,
        watch,
    },
    on_both_backends,
};

const WATCH_STREAMS: &str = "voicehub_watch_streams";

async fn bad_watch_requests_are_refused_before_the_stream_starts(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let private = create_voice(&mut app.client(bob), "Bob's").await;
    let mut client = app.client(alice);
    let request = |ids: Vec<String>| WatchVoiceStatusRequest { voice_ids: ids };
    let status = client
        .watch_voice_status(request(vec![private.voice_id.clone()]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another user's private voice"
    );
    let status = client
        .watch_voice_status(request(vec![Uuid::new_v4().to_string()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "a voice that does not exist");
    let status = client
        .watch_voice_status(request(vec!["nope".into()]))
        .await
        .unwrap_err();
    assert_invalid_field(&status, "voice_ids[0]");
    let many = (0..101).map(|_| Uuid::new_v4().to_string()).collect();
    let status = client.watch_voice_status(request(many)).await.unwrap_err();
    assert_invalid_field(&status, "voice_ids");
    assert_eq!(
        app.metric(WATCH_STREAMS),
        0,
        "refused watches hold no subscription"
    );
}

async fn watching_all_my_voices_shows_processing_ones_then_every_change(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let processing = create_voice(&mut client, "Waiting").await;
    let done = create_voice(&mut client, "Done").await;
    fake.set_report(&done.provider_voice_id, Report::default());
    app.worker.run_once().await.unwrap();
    // Someone else's voice never shows up in my feed.
    create_voice(&mut app.client(Uuid::new_v4()), "Theirs").await;

    let mut stream = watch(&mut client, &[]).await;
    let snapshot = next(&mut stream).await.unwrap();
    assert!(snapshot.snapshot);
    assert_eq!(
        snapshot.voice.unwrap().voice_id,
        processing.voice_id,
        "only PROCESSING voices in the snapshot"
    );

    let created = create_voice(&mut client, "New").await;
    // With Redis, events of the set-up above may still be in flight: real
    // changes of my voices, only older than this test's interest.
    let event = loop {
        let event = next(&mut stream).await.unwrap();
        if event.voice.as_ref().unwrap().voice_id != done.voice_id {
            break event;
        }
    };
    assert!(!event.snapshot);
    assert_eq!(
        event.voice.unwrap().voice_id,
        created.voice_id,
        "a voice created later appears"
    );
    fake.set_report(&processing.provider_voice_id, Report::default());
    fake.set_report(&created.provider_voice_id, Report::default());
    assert_eq!(app.worker.run_once().await.unwrap().completed, 2);
    let mut completed = Vec::new();
    for _ in 0..2 {
        let voice = next(&mut stream).await.unwrap().voice.unwrap();
        assert_eq!(voice.status(), pb::VoiceStatus::Completed);
        completed.push(voice.voice_id);
    }
    completed.sort();
    let mut expected = vec![processing.voice_id, created.voice_id];
    expected.sort();
    assert_eq!(completed, expected);
    // The feed stays open for what comes next.
    let pending = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    assert!(pending.is_err(), "the all-voices stream stays open");
}

async fn a_watcher_that_does_not_read_still_gets_the_terminal_state(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Busy").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    // The watcher reads nothing while many changes happen.
    let mut current = voice.clone();
    for i in 0..40 {
        current.name = format!("Name {i}");
        let request = UpdateVoiceRequest {
            voice: Some(current.clone()),
            update_mask: Some(FieldMask {
                paths: vec!["name".into()],
            }),
        };
        current = client.update_voice(request).await.unwrap().into_inner();
    }
    fake.set_report(&voice.provider_voice_id, Report::default());
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);

    let mut revisions = Vec::new();
    let mut last = None;
    while let Some(event) = next(&mut stream).await {
        let v = event.voice.unwrap();
        revisions.push(v.revision);
        last = Some(v);
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "never an older revision after a newer one: {revisions:?}"
    );
    let last = last.unwrap();
    assert_eq!(
        last.status(),
        pb::VoiceStatus::Completed,
        "the terminal state arrived"
    );
    assert_eq!(last.name, "Name 39");
}

async fn a_disconnected_watcher_frees_its_subscription(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Watched").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);
    assert_eq!(app.metric(WATCH_STREAMS), 1);
    drop(stream);
    drop(client);
    // The server learns of the cancelled stream from the client's RST_STREAM.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.metric(WATCH_STREAMS) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn server_shutdown_ends_watch_streams_with_unavailable(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Cut short").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);
    app.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
}

async fn a_terminal_voice_is_sent_once_and_the_stream_ends(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Ready").await;
    app.worker.run_once().await.unwrap();
    let mut public_request = create_request("Public");
    public_request.visibility = pb::Visibility::Public as i32;
    let public = create_voice(&mut app.client(Uuid::new_v4()), public_request).await;
    // Explicit ids may name someone else's public voice.
    let mut stream = watch(&mut client, &[&voice.voice_id, &public.voice_id]).await;
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.voice.unwrap().status(), pb::VoiceStatus::Completed);
    let second = next(&mut stream).await.unwrap().voice.unwrap();
    assert_eq!(second.voice_id, public.voice_id);
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    assert_eq!(
        next(&mut stream).await.unwrap().voice.unwrap().status(),
        pb::VoiceStatus::Completed
    );
    assert!(next(&mut stream).await.is_none());
}

on_both_backends!(
    bad_watch_requests_are_refused_before_the_stream_starts,
    watching_all_my_voices_shows_processing_ones_then_every_change,
    a_watcher_that_does_not_read_still_gets_the_terminal_state,
    a_disconnected_watcher_frees_its_subscription,
    server_shutdown_ends_watch_streams_with_unavailable,
    a_terminal_voice_is_sent_once_and_the_stream_ends,
);

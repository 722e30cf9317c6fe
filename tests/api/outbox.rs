//! Whatever commits an event wakes the relay: with the reconcile interval
//! an hour away, the event of every write path is published at once, and a
//! watcher on another replica hears it.

use std::time::{Duration, Instant};

use uuid::Uuid;
use voicehub::pb::{UpdateVoiceRequest, Voice, VoiceStatus};

use crate::{
    fake_elevenlabs::FakeElevenLabs,
    helpers::{Backend, TestApp, create_voice, next, replica_of, spawn_app_with, watch},
};

/// The voice an event carries.
fn heard(event: voicehub::pb::VoiceStatusEvent) -> Voice {
    event.voice.unwrap()
}

/// Waits until the outbox is empty; how long that took.
async fn published(app: &TestApp) -> Duration {
    let started = Instant::now();
    while app.outbox_rows().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "an event waited in the outbox for 5 s: nothing woke the relay"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn every_write_path_wakes_the_relay_itself() {
    // The outbox recheck (the relay's only timer) is an hour away.
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.outbox_recheck = Duration::from_hours(1);
    })
    .await;
    let fake = FakeElevenLabs::start().await;
    let other = replica_of(&app, &fake, |_| {}).await;
    let user = Uuid::new_v4();
    let mut stream = watch(&mut other.client(user), &[]).await;
    let mut client = app.client(user);

    // Create: the voice's provider id is attached in a commit with its event.
    let voice = create_voice(&mut app.client(user), "Published").await;
    let created = published(&app).await;
    let first = heard(next(&mut stream).await.unwrap());
    assert_eq!(first.voice_id, voice.voice_id);

    // Update.
    client
        .update_voice(UpdateVoiceRequest {
            voice: Some(Voice {
                voice_id: voice.voice_id.clone(),
                name: "Renamed".into(),
                ..Voice::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap();
    let updated = published(&app).await;
    assert_eq!(heard(next(&mut stream).await.unwrap()).name, "Renamed");

    // The status engine settles it (the simulated provider is ready after 1 s).
    let mut completed = 0;
    while completed == 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        completed = app.worker.run_once().await.unwrap().completed;
    }
    let settled = published(&app).await;
    assert_eq!(
        heard(next(&mut stream).await.unwrap()).status(),
        VoiceStatus::Completed
    );

    // Delete.
    client
        .delete_voice(voicehub::pb::DeleteVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap();
    let deleted = published(&app).await;
    assert_eq!(
        heard(next(&mut stream).await.unwrap()).status(),
        VoiceStatus::Deleted
    );
    println!(
        "published after: create {created:?}, update {updated:?}, settle {settled:?}, delete {deleted:?}"
    );
    for took in [created, updated, settled, deleted] {
        assert!(
            took < Duration::from_secs(1),
            "{took:?}: at once, not on a timer"
        );
    }
}

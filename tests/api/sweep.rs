//! The provider sweep: deletes the tagged provider voices no live voicehub
//! voice holds, never a voice without the tag, and clears recorded orphans.

use std::collections::BTreeSet;

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel};
use uuid::{NoContext, Timestamp, Uuid};
use voicehub::{
    status_engine::Swept,
    store::{Visibility, VoiceStatus, entity::provider_orphan},
};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, FakeVoice, Report, Route},
    helpers::{Backend, TestApp, spawn_app_with_fake, voice},
    on_both_backends,
};

fn provider_voice(labels: &[(&str, String)]) -> FakeVoice {
    FakeVoice {
        name: "a voice".into(),
        description: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        files: 1,
        report: Report::default(),
    }
}

fn tagged(id: Uuid) -> FakeVoice {
    provider_voice(&[("voicehub_id", id.to_string())])
}

/// Stores a voice in `status` whose provider voice (tagged) is at the fake;
/// returns its provider voice id.
async fn stored_with_provider_voice(
    app: &TestApp,
    fake: &FakeElevenLabs,
    status: VoiceStatus,
) -> String {
    let mut row = voice(
        Uuid::new_v4(),
        Visibility::Private,
        status,
        chrono::Utc::now(),
    );
    // The helper's provider ids are short; the full id keeps them apart.
    row.provider_voice_id = Some(format!("pv-{}", row.id.simple()));
    let row = app.insert(row).await;
    let provider_voice_id = row.provider_voice_id.clone().unwrap();
    fake.add_voice(&provider_voice_id, tagged(row.id));
    provider_voice_id
}

async fn the_sweep_deletes_what_no_live_voice_holds_and_never_an_untagged_voice(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let live = stored_with_provider_voice(&app, &fake, VoiceStatus::Completed).await;
    let processing = stored_with_provider_voice(&app, &fake, VoiceStatus::Processing).await;
    let failed = stored_with_provider_voice(&app, &fake, VoiceStatus::Failed).await;
    let deleted = stored_with_provider_voice(&app, &fake, VoiceStatus::Deleted).await;
    // A second clone of the live voice (a create that cloned twice).
    let live_id = fake.voice(&live).unwrap().labels["voicehub_id"]
        .parse()
        .unwrap();
    fake.add_voice("second-clone", tagged(live_id));
    // Tagged for a voice with no row: reserved long ago, or a moment ago
    // (its row may still be on its way: spared by the grace period).
    let long_ago = Uuid::new_v7(Timestamp::from_unix(NoContext, 1_700_000_000, 0));
    fake.add_voice("lost-long-ago", tagged(long_ago));
    fake.add_voice("just-reserved", tagged(Uuid::now_v7()));
    // Not voicehub's: no tag.
    fake.add_voice(
        "someone-elses",
        provider_voice(&[("accent", "british".into())]),
    );
    // A provider voice recorded as an orphan (its deletion failed before).
    fake.add_voice("recorded-orphan", provider_voice(&[]));
    provider_orphan::Model {
        id: Uuid::now_v7(),
        provider: "elevenlabs".into(),
        provider_voice_id: "recorded-orphan".into(),
        voice_id: None,
        reason: "storage failed to record the cloned voice".into(),
        created_at: chrono::Utc::now(),
    }
    .into_active_model()
    .insert(&app.db)
    .await
    .unwrap();
    // Several pages of voices to list.
    fake.set_page_limit(3);

    let swept = app
        .sweeper
        .run_once()
        .await
        .unwrap()
        .expect("the lease was free");
    assert_eq!(
        swept,
        Swept {
            tagged: 7,
            deleted: 4,
            orphans_cleared: 1,
            failed: 0
        }
    );
    let left: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    let expected: BTreeSet<String> = [
        live,
        processing,
        "just-reserved".into(),
        "someone-elses".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        left, expected,
        "deleted: {failed}, {deleted}, the second clone, the lost one, the orphan"
    );
    assert_eq!(fake.calls(Route::Delete), 5);
    assert!(
        provider_orphan::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .is_empty(),
        "the orphan is forgotten once gone"
    );
}

async fn a_sweep_the_provider_refuses_is_counted_and_tried_again(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.sync.sweep_every = std::time::Duration::from_millis(50);
    })
    .await;
    let failed = stored_with_provider_voice(&app, &fake, VoiceStatus::Failed).await;
    fake.inject(
        Route::Delete,
        4,
        crate::fake_elevenlabs::Fault::server_error(),
    );
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!((swept.deleted, swept.failed), (0, 1), "{swept:?}");
    assert!(fake.voice(&failed).is_some());
    // The next interval's sweep deletes it.
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!((swept.deleted, swept.failed), (1, 0), "{swept:?}");
    assert!(fake.voice(&failed).is_none());
}

on_both_backends!(
    the_sweep_deletes_what_no_live_voice_holds_and_never_an_untagged_voice,
    a_sweep_the_provider_refuses_is_counted_and_tried_again,
);

#[tokio::test]
async fn replicas_sharing_redis_sweep_once_per_interval() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    stored_with_provider_voice(&app, &fake, VoiceStatus::Failed).await;
    assert!(app.sweeper.run_once().await.unwrap().is_some());
    assert_eq!(
        app.sweeper.run_once().await.unwrap(),
        None,
        "this interval's lease is taken"
    );
    assert_eq!(
        fake.calls(Route::Lookup),
        1,
        "one listing, by the first sweep"
    );
}

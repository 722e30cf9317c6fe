//! The provider sweep: deletes the tagged provider voices this installation
//! discarded, never a voice without the tag or without a row here, and
//! clears recorded orphans; with nothing to do it runs no SQL.

use std::{collections::BTreeSet, time::Duration};

use uuid::{NoContext, Timestamp, Uuid};
use voicehub::{
    status_engine::Swept,
    store::{Visibility, VoiceStatus},
};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, FakeVoice, Fault, Report, Route},
    helpers::{Backend, TestApp, create_voice, spawn_app_with_fake, voice},
    on_both_backends,
};

const READS: &str = "voicehub_sql_statements_total{kind=\"read\"}";
const WRITES: &str = "voicehub_sql_statements_total{kind=\"write\"}";

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

/// Stores a voice in `status` whose provider voice is at the fake, tagged
/// with its voicehub id and, when given, `installation` (without it, as
/// voices were tagged before installations had ids); returns its provider
/// voice id.
pub(crate) async fn stored_with_provider_voice(
    app: &TestApp,
    fake: &FakeElevenLabs,
    status: VoiceStatus,
    installation: Option<Uuid>,
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
    let mut voice = tagged(row.id);
    if let Some(installation) = installation {
        voice
            .labels
            .insert("voicehub_installation".into(), installation.to_string());
    }
    fake.add_voice(&provider_voice_id, voice);
    provider_voice_id
}

async fn the_sweep_deletes_what_this_installation_discarded_and_never_an_untagged_voice(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    // Tagged as before installations had ids: this installation's, since
    // their rows are here.
    let live = stored_with_provider_voice(&app, &fake, VoiceStatus::Completed, None).await;
    let processing = stored_with_provider_voice(&app, &fake, VoiceStatus::Processing, None).await;
    let failed = stored_with_provider_voice(&app, &fake, VoiceStatus::Failed, None).await;
    let deleted = stored_with_provider_voice(&app, &fake, VoiceStatus::Deleted, None).await;
    // A second clone of the live voice (a create that cloned twice).
    let live_id = fake.voice(&live).unwrap().labels["voicehub_id"]
        .parse()
        .unwrap();
    fake.add_voice("second-clone", tagged(live_id));
    // Tagged for a voice with no row here: reserved long ago or a moment
    // ago, by another installation or before a backup was restored. Not
    // provably ours: spared.
    let long_ago = Uuid::new_v7(Timestamp::from_unix(NoContext, 1_700_000_000, 0));
    fake.add_voice("lost-long-ago", tagged(long_ago));
    fake.add_voice("just-reserved", tagged(Uuid::now_v7()));
    // Not voicehub's: no tag.
    fake.add_voice(
        "someone-elses",
        provider_voice(&[("accent", "british".into())]),
    );
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
            spared: 2,
            deleted: 3,
            ..Swept::default()
        }
    );
    let left: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    let expected: BTreeSet<String> = [
        live,
        processing,
        "lost-long-ago".into(),
        "just-reserved".into(),
        "someone-elses".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        left, expected,
        "deleted: {failed}, {deleted} and the second clone"
    );
    assert_eq!(fake.calls(Route::Delete), 3);
}

async fn a_recorded_orphan_is_retried_until_gone_and_a_sweep_with_nothing_to_do_runs_no_sql(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.sweep_every = Duration::from_millis(50);
        c.sync_max_age = Duration::from_millis(1);
    })
    .await;
    let statements = || app.metric(READS) + app.metric(WRITES);
    let next_interval = || tokio::time::sleep(Duration::from_millis(60));
    // Nothing at the provider, nothing recorded, nothing completed: no SQL.
    let before = statements();
    assert_eq!(
        app.sweeper.run_once().await.unwrap(),
        Some(Swept::default())
    );
    assert_eq!(
        statements(),
        before,
        "a sweep with nothing to do runs no SQL"
    );

    // A voice FAILED (too old) and its provider voice could not be deleted:
    // recorded as an orphan.
    fake.set_default_report(Report::awaiting_verification());
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Stubborn").await;
    fake.inject(Route::Delete, 4, Fault::server_error());
    assert_eq!(app.worker.run_once().await.unwrap().failed, 1);
    assert_eq!(app.orphans().await.len(), 1);

    // The provider still refuses: by its tag and by its record, counted,
    // and kept for the next sweep.
    next_interval().await;
    fake.inject(Route::Delete, 4, Fault::server_error());
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!(
        swept,
        Swept {
            tagged: 1,
            failed: 1,
            ..Swept::default()
        },
        "one deletion for the listed voice and its record"
    );
    assert_eq!(app.orphans().await.len(), 1);
    next_interval().await;
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!(
        swept,
        Swept {
            tagged: 1,
            deleted: 1,
            orphans_cleared: 1,
            ..Swept::default()
        }
    );
    assert!(fake.voice(&voice.provider_voice_id).is_none());
    assert!(app.orphans().await.is_empty(), "forgotten once gone");
    // Nothing left: the next sweep runs no SQL again.
    next_interval().await;
    let before = statements();
    assert_eq!(
        app.sweeper.run_once().await.unwrap(),
        Some(Swept::default())
    );
    assert_eq!(statements(), before);
}

async fn a_sweep_the_provider_refuses_is_counted_and_tried_again(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.sweep_every = Duration::from_millis(50);
    })
    .await;
    let failed = stored_with_provider_voice(&app, &fake, VoiceStatus::Failed, None).await;
    fake.inject(Route::Delete, 4, Fault::server_error());
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!((swept.deleted, swept.failed), (0, 1), "{swept:?}");
    assert!(fake.voice(&failed).is_some());
    // The next interval's sweep deletes it.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!((swept.deleted, swept.failed), (1, 0), "{swept:?}");
    assert!(fake.voice(&failed).is_none());
}

on_both_backends!(
    the_sweep_deletes_what_this_installation_discarded_and_never_an_untagged_voice,
    a_sweep_the_provider_refuses_is_counted_and_tried_again,
    a_recorded_orphan_is_retried_until_gone_and_a_sweep_with_nothing_to_do_runs_no_sql,
);

#[tokio::test]
async fn replicas_sharing_redis_sweep_once_per_interval() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    stored_with_provider_voice(&app, &fake, VoiceStatus::Failed, None).await;
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

//! The status engine on one replica: SQLite with the in-process queue and bus,
//! and PostgreSQL with Redis. Tests drive single worker steps.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tonic::Streaming;
use uuid::Uuid;
use voicehub::pb::{self, DeleteVoiceRequest, VoiceStatusEvent};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, Fault, Report, Route},
    helpers::{
        Backend, Client, TestApp, basic, create_voice, get_voice, next, spawn_app_with_fake,
        test_engine_config, watch,
    },
    on_both_backends,
};

const READS: &str = "voicehub_sql_statements_total{kind=\"read\"}";
const WRITES: &str = "voicehub_sql_statements_total{kind=\"write\"}";

fn status(event: &VoiceStatusEvent) -> pb::VoiceStatus {
    event.voice.as_ref().unwrap().status()
}

async fn a_watcher_sees_processing_then_completed_and_storage_agrees(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Narrator").await;
    let mut stream = watch(&mut client, &[&voice.voice_id]).await;
    let first = next(&mut stream).await.unwrap();
    assert!(first.snapshot);
    assert_eq!(status(&first), pb::VoiceStatus::Processing);

    let step = app.worker.run_once().await.unwrap();
    assert_eq!(
        (step.claimed, step.rescheduled, step.completed),
        (1, 1, 0),
        "verification pending: {step:?}"
    );
    fake.set_report(
        &voice.provider_voice_id,
        Report {
            is_verified: true,
            ..Report::awaiting_verification()
        },
    );
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.completed, 1, "{step:?}");

    let done = next(&mut stream).await.unwrap();
    assert!(!done.snapshot);
    assert_eq!(status(&done), pb::VoiceStatus::Completed);
    let completed = done.voice.unwrap();
    assert!(completed.preview_url.contains(&voice.provider_voice_id));
    assert!(completed.revision > first.voice.unwrap().revision);
    assert!(
        next(&mut stream).await.is_none(),
        "every watched voice is terminal: the stream ends"
    );

    let stored = get_voice(&mut client, &voice.voice_id).await;
    // Events carry the consent flag, not the owner's intake record.
    assert_eq!(basic(stored.clone()), completed);
    assert!(stored.completed_at.is_some());
    assert_eq!(
        stored.labels,
        [("accent".to_owned(), "british".to_owned())].into(),
        "the caller's labels, untouched by completion"
    );
    assert_eq!(
        stored.provider_labels,
        [
            ("accent".to_owned(), "british".to_owned()),
            ("gender".to_owned(), "female".to_owned()),
            ("language".to_owned(), "en-GB".to_owned()),
        ]
        .into(),
        "the provider's labels as it reports them, without voicehub's tag"
    );
}

async fn provider_failures_become_failed_with_a_reason(backend: Backend) {
    enum Case {
        Report(Report),
        Forgotten,
    }
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let mut failed_training = Report::professional("failed");
    failed_training.fine_tuning_message = [(
        "eleven_multilingual_v2".to_owned(),
        "audio too noisy".to_owned(),
    )]
    .into();
    let banned = Report {
        safety_control: Some("BAN"),
        ..Report::default()
    };
    for (case, expected) in [
        (
            Case::Report(failed_training),
            "training failed at the provider: audio too noisy",
        ),
        (Case::Report(banned), "banned"),
        // One "not found" is a reading; the second, a while later, with no
        // voice carrying its tag in the listing, a verdict.
        (Case::Forgotten, "voice no longer exists at the provider"),
    ] {
        let voice = create_voice(&mut client, "Doomed").await;
        let gone = !matches!(case, Case::Report(_));
        match case {
            Case::Report(report) => fake.set_report(&voice.provider_voice_id, report),
            Case::Forgotten => fake.forget(&voice.provider_voice_id),
        }
        let mut stream = watch(&mut client, &[&voice.voice_id]).await;
        assert!(next(&mut stream).await.unwrap().snapshot);
        let deletes = fake.calls(Route::Delete);
        if gone {
            let step = app.worker.run_once().await.unwrap();
            assert_eq!((step.failed, step.rescheduled), (0, 1), "{step:?}");
            tokio::time::sleep(test_engine_config().confirm_gone_after * 2).await;
        }
        let step = app.worker.run_once().await.unwrap();
        assert_eq!(step.failed, 1, "{expected}: {step:?}");
        assert_eq!(
            fake.calls(Route::Delete),
            deletes + usize::from(!gone),
            "{expected}: a FAILED voice's provider voice is deleted, unless already gone"
        );
        if !gone {
            assert!(fake.voice(&voice.provider_voice_id).is_none(), "{expected}");
        }
        let failed = next(&mut stream).await.unwrap().voice.unwrap();
        assert_eq!(failed.status(), pb::VoiceStatus::Failed);
        assert!(
            failed.failure_reason.contains(expected),
            "{expected}: {}",
            failed.failure_reason
        );
        assert!(next(&mut stream).await.is_none());
    }
}

async fn a_professional_clone_follows_its_training_state(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Pro").await;
    for state in [
        "not_started",
        "queued",
        "fine_tuning",
        "delayed",
        "fine_tuning",
    ] {
        fake.set_report(&voice.provider_voice_id, Report::professional(state));
        let step = app.worker.run_once().await.unwrap();
        assert_eq!((step.rescheduled, step.completed), (1, 0), "{state}");
    }
    fake.set_report(&voice.provider_voice_id, Report::professional("fine_tuned"));
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    let stored = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(stored.status(), pb::VoiceStatus::Completed);
}

async fn a_voice_past_its_maximum_age_is_asked_once_more_then_fails_and_is_deleted_at_the_provider(
    backend: Backend,
) {
    let (app, fake) =
        spawn_app_with_fake(backend, |c| c.sync_max_age = Duration::from_millis(1)).await;
    fake.set_default_report(Report::awaiting_verification());
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Slowpoke").await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.failed, 1, "{step:?}");
    assert_eq!(fake.calls(Route::Get), 1, "asked once more at its deadline");
    let stored = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(stored.status(), pb::VoiceStatus::Failed);
    assert!(
        stored.failure_reason.contains("gave up"),
        "{}",
        stored.failure_reason
    );
    assert_eq!(fake.calls(Route::Delete), 1);
    assert_eq!(
        fake.voice_count(),
        0,
        "the failed voice holds no slot at the provider"
    );
    assert!(app.orphans().await.is_empty());
}

async fn a_voice_ready_at_the_provider_completes_even_past_its_maximum_age(backend: Backend) {
    let (app, fake) =
        spawn_app_with_fake(backend, |c| c.sync_max_age = Duration::from_millis(1)).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Late but ready").await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.completed, step.failed), (1, 0), "{step:?}");
    let stored = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(stored.status(), pb::VoiceStatus::Completed);
    assert_eq!(fake.calls(Route::Delete), 0);
    assert!(fake.voice(&voice.provider_voice_id).is_some());
}

async fn a_failed_voice_the_provider_will_not_delete_is_recorded_as_an_orphan(backend: Backend) {
    let (app, fake) =
        spawn_app_with_fake(backend, |c| c.sync_max_age = Duration::from_millis(1)).await;
    fake.set_default_report(Report::awaiting_verification());
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Stubborn").await;
    fake.inject(Route::Delete, 4, Fault::server_error());
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.failed, 1, "{step:?}");
    assert_eq!(
        get_voice(&mut client, &voice.voice_id).await.status(),
        pb::VoiceStatus::Failed,
        "the failure stands"
    );
    let orphans = app.orphans().await;
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].provider_voice_id, voice.provider_voice_id);
    assert_eq!(
        orphans[0].voice_id.map(|id| id.to_string()),
        Some(voice.voice_id.clone())
    );
    assert!(
        fake.voice(&voice.provider_voice_id).is_some(),
        "still there, and on record"
    );
}

async fn an_idle_step_is_one_queue_round_trip_and_no_sql(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    // The first step reconciles the queue with storage (start-up work).
    assert!(app.worker.run_once().await.unwrap().reconciled);
    let statements = || app.metric(READS) + app.metric(WRITES);
    let round_trips = || app.metric("voicehub_queue_round_trips_total");
    let (before, trips) = (statements(), round_trips());
    for _ in 0..5 {
        let step = app.worker.run_once().await.unwrap();
        assert_eq!(step.claimed, 0);
        assert!(!step.reconciled);
    }
    assert_eq!(statements(), before, "idle steps ran SQL");
    assert_eq!(
        round_trips(),
        trips + 5,
        "one queue round trip per idle step"
    );
}

/// An app whose queue holds five voices still awaiting verification, past
/// the start-up step, so the next step claims and reschedules all five.
async fn five_voices_awaiting_verification(
    backend: Backend,
) -> (TestApp, FakeElevenLabs, Client, Vec<pb::Voice>) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let mut client = app.client(Uuid::new_v4());
    let mut voices = Vec::new();
    for i in 0..5 {
        voices.push(create_voice(&mut client, &format!("Voice {i}")).await);
    }
    app.worker.run_once().await.unwrap();
    (app, fake, client, voices)
}

/// The provider voice ids a lookup asked about, and its other query pairs.
fn lookup_query(fake: &FakeElevenLabs) -> (BTreeSet<String>, Vec<(String, String)>) {
    let requests = fake.requests();
    let lookup = requests.iter().rfind(|r| r.route == Route::Lookup).unwrap();
    let (ids, rest): (Vec<_>, Vec<_>) = lookup
        .texts
        .iter()
        .cloned()
        .partition(|(k, _)| k == "voice_ids");
    (ids.into_iter().map(|(_, v)| v).collect(), rest)
}

async fn voices_checked_together_share_one_lookup_and_one_left_out_is_asked_alone(
    backend: Backend,
) {
    let (app, fake, mut client, voices) =
        Box::pin(five_voices_awaiting_verification(backend)).await;
    for voice in &voices[..4] {
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    fake.forget(&voices[4].provider_voice_id);
    let (lookups, gets) = (fake.calls(Route::Lookup), fake.calls(Route::Get));
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(
        (step.claimed, step.completed, step.rescheduled),
        (5, 4, 1),
        "the one not found is checked again before it is believed: {step:?}"
    );
    assert_eq!(
        fake.calls(Route::Lookup),
        lookups + 1,
        "one lookup for five"
    );
    assert_eq!(
        fake.calls(Route::Get),
        gets + 1,
        "only the voice the lookup left out is asked about alone"
    );
    let (asked, rest) = lookup_query(&fake);
    let expected: BTreeSet<String> = voices.iter().map(|v| v.provider_voice_id.clone()).collect();
    assert_eq!(asked, expected);
    for pair in [("page_size", "100"), ("include_total_count", "false")] {
        assert!(
            rest.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "{rest:?}"
        );
    }
    tokio::time::sleep(test_engine_config().confirm_gone_after * 2).await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.failed), (1, 1), "{step:?}");
    let gone = get_voice(&mut client, &voices[4].voice_id).await;
    assert_eq!(gone.status(), pb::VoiceStatus::Failed);
    assert!(
        gone.failure_reason.contains("no longer exists"),
        "{}",
        gone.failure_reason
    );
    for voice in &voices[..4] {
        let stored = get_voice(&mut client, &voice.voice_id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
        assert!(stored.preview_url.contains(&voice.provider_voice_id));
    }
}

async fn a_failed_lookup_reschedules_its_voices_and_a_refused_one_becomes_single_checks(
    backend: Backend,
) {
    let (app, fake, mut client, voices) =
        Box::pin(five_voices_awaiting_verification(backend)).await;
    fake.set_default_report(Report::default());
    for voice in &voices {
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    // Down through every retry: nothing is decided, everything is rescheduled.
    fake.inject(Route::Lookup, 4, Fault::server_error());
    let gets = fake.calls(Route::Get);
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(
        (step.claimed, step.rescheduled, step.completed, step.failed),
        (5, 5, 0, 0),
        "{step:?}"
    );
    assert_eq!(fake.calls(Route::Get), gets, "an outage is not a refusal");
    for voice in &voices {
        let stored = get_voice(&mut client, &voice.voice_id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Processing);
    }
    // Refused (a 422 for the query itself): each voice is asked about alone.
    fake.inject(
        Route::Lookup,
        1,
        Fault::status(
            422,
            serde_json::json!({"detail": [{"loc": ["query", "voice_ids"], "msg": "field required", "type": "value_error"}]}),
        ),
    );
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.completed), (5, 5), "{step:?}");
    assert_eq!(fake.calls(Route::Get), gets + 5);
}

async fn claimed_voices_are_read_with_one_query(backend: Backend) {
    let (app, ..) = Box::pin(five_voices_awaiting_verification(backend)).await;
    let (reads, writes) = (app.metric(READS), app.metric(WRITES));
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (5, 5), "{step:?}");
    assert_eq!(
        app.metric(READS),
        reads + 1,
        "five claimed voices, one read"
    );
    assert_eq!(
        app.metric(WRITES),
        writes,
        "nothing changed, nothing written"
    );
}

async fn a_step_reschedules_all_its_voices_in_one_queue_round_trip(backend: Backend) {
    let (app, ..) = Box::pin(five_voices_awaiting_verification(backend)).await;
    let round_trips = || app.metric("voicehub_queue_round_trips_total");
    let before = round_trips();
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (5, 5), "{step:?}");
    assert_eq!(
        round_trips(),
        before + 2,
        "one claim and one reschedule for all five, whatever the batch"
    );
}

/// Five voices on the queue, of which the provider now reports the first
/// three ready and the last two banned, watched by their owner past the
/// snapshots (whose revisions are returned by voice id).
async fn three_ready_two_banned(
    backend: Backend,
) -> (
    TestApp,
    Client,
    Vec<pb::Voice>,
    Streaming<VoiceStatusEvent>,
    BTreeMap<String, i64>,
) {
    let (app, fake, mut client, voices) =
        Box::pin(five_voices_awaiting_verification(backend)).await;
    let banned = Report {
        safety_control: Some("BAN"),
        ..Report::default()
    };
    for (i, voice) in voices.iter().enumerate() {
        let report = if i < 3 {
            Report::default()
        } else {
            banned.clone()
        };
        fake.set_report(&voice.provider_voice_id, report);
    }
    let ids: Vec<&str> = voices.iter().map(|v| v.voice_id.as_str()).collect();
    let mut stream = watch(&mut client, &ids).await;
    let mut revisions = BTreeMap::new();
    for _ in &voices {
        let snapshot = next(&mut stream).await.unwrap();
        assert!(snapshot.snapshot);
        let voice = snapshot.voice.unwrap();
        revisions.insert(voice.voice_id, voice.revision);
    }
    (app, client, voices, stream, revisions)
}

async fn a_mixed_batch_settles_in_one_statement_per_status_and_every_watcher_hears(
    backend: Backend,
) {
    let (app, mut client, voices, mut stream, _) = Box::pin(three_ready_two_banned(backend)).await;
    let (reads, writes) = (app.metric(READS), app.metric(WRITES));
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(
        (step.claimed, step.completed, step.failed),
        (5, 3, 2),
        "{step:?}"
    );
    assert_eq!(
        app.metric(READS),
        reads + 2,
        "one read for the batch, one of who holds the failed voices' provider voices"
    );
    assert_eq!(
        app.metric(WRITES),
        writes + 2,
        "one statement for the completions, one for the failures"
    );
    let mut heard = BTreeMap::new();
    for _ in &voices {
        let voice = next(&mut stream).await.unwrap().voice.unwrap();
        heard.insert(voice.voice_id.clone(), voice.status());
    }
    for (i, voice) in voices.iter().enumerate() {
        let expected = if i < 3 {
            pb::VoiceStatus::Completed
        } else {
            pb::VoiceStatus::Failed
        };
        assert_eq!(heard.get(&voice.voice_id), Some(&expected), "{i}");
        let stored = get_voice(&mut client, &voice.voice_id).await;
        assert_eq!(stored.status(), expected, "storage agrees for {i}");
        if i < 3 {
            assert!(
                stored.preview_url.contains(&voice.provider_voice_id),
                "each voice gets its own preview: {}",
                stored.preview_url
            );
        } else {
            assert!(stored.failure_reason.contains("banned"), "{stored:?}");
        }
    }
}

/// SQL that makes storage refuse (`refuse`) or accept again every write
/// that would make a voice FAILED: an injected fault in the batch's second
/// statement.
fn refuse_failed_writes(backend: Backend, refuse: bool) -> &'static str {
    match (backend, refuse) {
        (Backend::Postgres, true) => {
            "CREATE FUNCTION refuse_failed() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
             CREATE TRIGGER refuse_failed BEFORE UPDATE ON voices FOR EACH ROW \
             WHEN (NEW.status = 'failed') EXECUTE FUNCTION refuse_failed();"
        }
        (Backend::Postgres, false) => {
            "DROP TRIGGER refuse_failed ON voices; DROP FUNCTION refuse_failed();"
        }
        (Backend::Sqlite, true) => {
            "CREATE TRIGGER refuse_failed BEFORE UPDATE ON voices \
             WHEN NEW.status = 'failed' BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
        }
        (Backend::Sqlite, false) => "DROP TRIGGER refuse_failed;",
    }
}

async fn a_batch_whose_write_fails_is_stored_not_at_all_and_checked_again(backend: Backend) {
    let (app, mut client, voices, mut stream, revisions) =
        Box::pin(three_ready_two_banned(backend)).await;

    app.execute(refuse_failed_writes(backend, true)).await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(
        (step.claimed, step.completed, step.failed, step.rescheduled),
        (5, 0, 0, 5),
        "the batch is checked again: {step:?}"
    );
    for voice in &voices {
        assert_eq!(
            get_voice(&mut client, &voice.voice_id).await.status(),
            pb::VoiceStatus::Processing,
            "the completions in the same batch were not stored either"
        );
    }

    app.execute(refuse_failed_writes(backend, false)).await;
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.completed, step.failed), (3, 2), "{step:?}");
    // Nothing was published for the refused write: the first event after
    // each snapshot is the one stored change.
    for _ in &voices {
        let event = next(&mut stream).await.unwrap();
        let voice = event.voice.unwrap();
        assert!(!event.snapshot);
        assert_eq!(voice.revision, revisions[&voice.voice_id] + 1);
        assert_ne!(voice.status(), pb::VoiceStatus::Processing);
    }
}

async fn a_deleted_voice_leaves_the_queue_without_a_provider_check(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Brief").await;
    client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice.voice_id,
        })
        .await
        .unwrap();
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.completed, step.failed), (1, 0, 0));
    assert_eq!(fake.calls(Route::Get), 0);
    assert_eq!(
        app.worker.run_once().await.unwrap().claimed,
        0,
        "finished, not rescheduled"
    );
}

async fn a_provider_outage_reschedules_instead_of_failing(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Patient").await;
    fake.inject(Route::Get, 4, Fault::server_error());
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.rescheduled, step.failed), (1, 0), "{step:?}");
    // The next check (due at once: the test's backoff is zero) finds it ready.
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    assert_eq!(
        fake.calls(Route::Get),
        5,
        "four failed attempts (retries included), then one answer for {}",
        voice.voice_id
    );
}

on_both_backends!(
    a_watcher_sees_processing_then_completed_and_storage_agrees,
    provider_failures_become_failed_with_a_reason,
    a_professional_clone_follows_its_training_state,
    a_voice_past_its_maximum_age_is_asked_once_more_then_fails_and_is_deleted_at_the_provider,
    a_voice_ready_at_the_provider_completes_even_past_its_maximum_age,
    a_failed_voice_the_provider_will_not_delete_is_recorded_as_an_orphan,
    an_idle_step_is_one_queue_round_trip_and_no_sql,
    claimed_voices_are_read_with_one_query,
    a_step_reschedules_all_its_voices_in_one_queue_round_trip,
    a_mixed_batch_settles_in_one_statement_per_status_and_every_watcher_hears,
    a_batch_whose_write_fails_is_stored_not_at_all_and_checked_again,
    a_deleted_voice_leaves_the_queue_without_a_provider_check,
    a_provider_outage_reschedules_instead_of_failing,
    voices_checked_together_share_one_lookup_and_one_left_out_is_asked_alone,
    a_failed_lookup_reschedules_its_voices_and_a_refused_one_becomes_single_checks,
);

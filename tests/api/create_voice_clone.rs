use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{self, AudioSample, CreateVoiceCloneRequest, ListUserVoicesRequest};

use crate::{
    fake_elevenlabs::{API_KEY, FakeVoice, Fault, Report, Route},
    helpers::{
        Backend, TestApp, basic, create_request, create_voice, get_voice, mp3, spawn_app_with_fake,
        wav,
    },
    on_both_backends,
};

const MIB: usize = 1024 * 1024;

async fn create_then_get_and_list_show_the_processing_voice(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let owner = Uuid::new_v4();
    let mut client = app.client(owner);
    let voice = create_voice(&mut client, "Narrator").await;

    assert_eq!(voice.status, pb::VoiceStatus::Processing as i32);
    assert_eq!(voice.owner_user_id, owner.to_string());
    assert_eq!(voice.name, "Narrator");
    assert_eq!(voice.language, "en-GB", "language is canonicalised");
    assert_eq!(voice.category, "cloned");
    assert_eq!(voice.visibility, pb::Visibility::Private as i32);
    assert_eq!(voice.revision, 2, "reserved, then accepted by the provider");
    assert!(
        fake.voice(&voice.provider_voice_id).is_some(),
        "the provider holds the voice"
    );

    let got = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(got, voice);
    let listed = client
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    // A listing carries the consent flag, not the owner's intake record.
    assert_eq!(listed.voices, vec![basic(voice.clone())]);

    // What ElevenLabs received: one multipart POST /v1/voices/add, as its API expects.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let add = &requests[0];
    assert_eq!(add.route, Route::Add);
    assert_eq!(add.api_key.as_deref(), Some(API_KEY));
    assert_eq!(add.text("name"), Some("Narrator"));
    assert_eq!(add.text("description"), Some("Warm narrator voice"));
    assert_eq!(add.text("remove_background_noise"), Some("true"));
    let labels: serde_json::Value = serde_json::from_str(add.text("labels").unwrap()).unwrap();
    let installation = app.store.installation_id().await.unwrap().to_string();
    assert_eq!(
        labels,
        serde_json::json!({"accent": "british", "language": "en-GB", "gender": "female", "voicehub_id": voice.voice_id, "voicehub_installation": installation}),
        "the caller's labels, language and gender, and voicehub's tags: the voice's and this installation's"
    );
    assert_eq!(
        add.files,
        vec![
            (
                "files".to_owned(),
                "take-1.wav".to_owned(),
                "audio/wav".to_owned(),
                wav(1_000).len()
            ),
            (
                "files".to_owned(),
                "take-2.mp3".to_owned(),
                "audio/mpeg".to_owned(),
                mp3().len()
            ),
        ]
    );
}

fn sample(filename: &str, content_type: &str, data: Vec<u8>) -> AudioSample {
    AudioSample {
        filename: filename.into(),
        content_type: content_type.into(),
        data: data.into(),
    }
}

fn with(change: impl FnOnce(&mut CreateVoiceCloneRequest)) -> CreateVoiceCloneRequest {
    let mut request = create_request("Valid name");
    change(&mut request);
    request
}

async fn a_message_larger_than_the_sample_limits_is_refused_by_the_transport(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut nine = wav(50);
    nine.resize(9 * MIB, 0);
    let request = with(|r| {
        r.samples = (0..6)
            .map(|i| sample(&format!("{i}.wav"), "audio/wav", nine.clone()))
            .collect();
    });
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(app.voice_rows().await, 0);
    assert!(fake.requests().is_empty());
}

async fn repeating_a_request_id_returns_the_same_voice_without_a_second_clone(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let request = with(|r| r.request_id = "create-7f3a_1".into());
    let first = create_voice(&mut client, request.clone()).await;
    let second = create_voice(&mut client, request).await;
    assert_eq!(first, second);
    assert_eq!(fake.calls(Route::Add), 1);
    assert_eq!(app.voice_rows().await, 1);
    // The same key from another user is another voice.
    let other = create_voice(
        &mut app.client(Uuid::new_v4()),
        with(|r| r.request_id = "create-7f3a_1".into()),
    )
    .await;
    assert_ne!(other.voice_id, first.voice_id);
}

async fn emoji_sequences_and_tag_flags_are_names_like_any_other(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let names = [
        "👩\u{200D}💻 Coder",
        "👨\u{200D}👩\u{200D}👧 Family",
        "🏳\u{FE0F}\u{200D}🌈 Pride",
        "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} Scots",
    ];
    for name in names {
        let voice = client
            .create_voice_clone(with(|r| r.name = name.into()))
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e:?}"))
            .into_inner();
        assert_eq!(voice.name, name, "stored as sent");
    }
    assert_eq!(fake.calls(Route::Add), names.len());
    assert_eq!(app.voice_rows().await, 4);
}

async fn concurrent_requests_with_one_request_id_make_one_voice(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    // Slow the provider so both requests are in flight together.
    fake.inject(
        Route::Add,
        1,
        Fault::Slow(std::time::Duration::from_millis(200)),
    );
    let owner = Uuid::new_v4();
    let request = with(|r| r.request_id = "race".into());
    let (mut a, mut b) = (app.client(owner), app.client(owner));
    let (ra, rb) = tokio::join!(
        a.create_voice_clone(request.clone()),
        b.create_voice_clone(request.clone())
    );
    let (va, vb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
    assert_eq!(va.voice_id, vb.voice_id);
    assert_eq!(fake.calls(Route::Add), 1);
    assert_eq!(app.voice_rows().await, 1);
}

async fn a_retry_after_a_transient_failure_succeeds_with_the_same_request_id(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let request = with(|r| r.request_id = "retry-me".into());
    // 429 on every attempt: the provider surely made nothing.
    fake.inject(Route::Add, 4, Fault::too_many_concurrent());
    let status = client
        .create_voice_clone(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(app.voice_rows().await, 0, "the reservation is released");
    let voice = create_voice(&mut client, request.clone()).await;
    assert_eq!(voice.status, pb::VoiceStatus::Processing as i32);
    assert_eq!(
        create_voice(&mut client, request).await.voice_id,
        voice.voice_id
    );
    assert_eq!(
        fake.calls(Route::Add),
        5,
        "four refused attempts, then one create"
    );
}

async fn a_repeat_waits_for_the_create_still_running_and_never_gets_a_voice_then_released(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let request = with(|r| r.request_id = "refused-meanwhile".into());
    // Every attempt of the first create is a 429 whose Retry-After keeps it
    // running for about 3 s: then the provider surely made nothing, and
    // the reservation is released.
    let Fault::Respond { status, body, .. } = Fault::too_many_concurrent() else {
        unreachable!("a status")
    };
    let busy = Fault::Respond {
        status,
        body,
        headers: vec![("retry-after", "1".to_owned())],
    };
    fake.inject(Route::Add, 4, busy);
    let mut first_client = client.clone();
    let first = tokio::spawn({
        let request = request.clone();
        async move { first_client.create_voice_clone(request).await }
    });
    crate::helpers::wait_for(std::time::Duration::from_secs(10), || {
        fake.calls(Route::Add) >= 1
    })
    .await;
    // The repeat arrives while the first create runs: it waits for the
    // outcome (a release), then creates the voice itself.
    let repeat = client.create_voice_clone(request.clone()).await;
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    let repeat = repeat.expect("the repeat is answered").into_inner();
    let stored = get_voice(&mut client, &repeat.voice_id).await;
    assert!(
        !stored.provider_voice_id.is_empty(),
        "the voice it answered with exists, at the provider too"
    );
    assert_eq!(app.voice_rows().await, 1);
    assert_eq!(
        fake.calls(Route::Add),
        5,
        "four refused attempts, then one create"
    );
}

async fn the_per_user_voice_limit_is_resource_exhausted_and_freed_by_delete(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| c.max_voices_per_user = 2).await;
    let mut client = app.client(Uuid::new_v4());
    let first = create_voice(&mut client, "one").await;
    create_voice(&mut client, "two").await;
    let status = client
        .create_voice_clone(create_request("three"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains('2'), "{status:?}");
    assert_eq!(fake.calls(Route::Add), 2, "refused before the provider");
    // Another user has their own allowance.
    create_voice(&mut app.client(Uuid::new_v4()), "theirs").await;
    client
        .delete_voice(pb::DeleteVoiceRequest {
            voice_id: first.voice_id,
        })
        .await
        .unwrap();
    create_voice(&mut client, "three").await;
}

/// Makes storage fail, for real, whenever a voice named `name` is updated.
async fn fail_updates_of_voices_named(app: &TestApp, backend: Backend, name: &str) {
    let statements = match backend {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER injected_failure BEFORE UPDATE ON voices WHEN NEW.name = '{name}' \
             BEGIN SELECT RAISE(ABORT, 'injected storage failure'); END"
        )],
        Backend::Postgres => vec![
            "CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected storage failure'; END $$"
                .to_owned(),
            format!(
                "CREATE TRIGGER injected_failure BEFORE UPDATE ON voices FOR EACH ROW \
                 WHEN (NEW.name = '{name}') EXECUTE FUNCTION injected_failure()"
            ),
        ],
    };
    for sql in statements {
        app.execute(&sql).await;
    }
}

async fn a_provider_voice_that_cannot_be_recorded_is_deleted_again(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fail_updates_of_voices_named(&app, backend, "explode").await;
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("explode"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        status.message(),
        "internal error",
        "no internal detail leaks"
    );
    assert_eq!(fake.calls(Route::Add), 1);
    assert_eq!(
        fake.calls(Route::Delete),
        1,
        "compensation deleted the provider voice"
    );
    assert_eq!(fake.voice_count(), 0, "nothing orphaned at the provider");
    assert_eq!(app.voice_rows().await, 0, "nothing half-written");
    assert!(app.orphans().await.is_empty());
}

async fn an_orphan_is_recorded_when_compensation_fails_too(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fail_updates_of_voices_named(&app, backend, "explode").await;
    fake.inject(Route::Delete, 10, Fault::server_error());
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("explode"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(fake.voice_count(), 1, "the provider still holds it");
    let orphans = app.orphans().await;
    assert_eq!(orphans.len(), 1);
    let provider_voice_id = fake
        .requests()
        .iter()
        .find(|r| r.route == Route::Delete)
        .unwrap()
        .voice_id
        .clone();
    assert_eq!(
        Some(orphans[0].provider_voice_id.clone()),
        provider_voice_id
    );
    assert_eq!(orphans[0].provider, "elevenlabs");
    assert_eq!(
        fake.calls(Route::Delete),
        4,
        "deletion was retried, boundedly"
    );
}

/// Waits (polling, at most 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

async fn a_create_that_times_out_at_the_provider_is_adopted_and_its_retry_never_clones_again(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.adopt_after = std::time::Duration::ZERO;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    let request = with(|r| r.request_id = "slow-provider".into());
    // The provider answers after the client's 400 ms timeout, but makes the voice.
    fake.inject(
        Route::Add,
        1,
        Fault::Slow(std::time::Duration::from_secs(1)),
    );
    let first = create_voice(&mut client, request.clone()).await;
    assert_eq!(first.status(), pb::VoiceStatus::Processing);
    assert!(
        first.provider_voice_id.is_empty(),
        "the provider's answer was lost"
    );
    let retry = create_voice(&mut client, request.clone()).await;
    assert_eq!(
        retry.voice_id, first.voice_id,
        "the retry returns the reserved voice"
    );
    eventually("the provider made the voice", async || {
        fake.voice_count() == 1
    })
    .await;

    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.failed), (1, 0), "adopted: {step:?}");
    let adopted = get_voice(&mut client, &first.voice_id).await;
    assert!(!adopted.provider_voice_id.is_empty());
    assert_eq!(
        fake.voice(&adopted.provider_voice_id)
            .unwrap()
            .labels
            .get("voicehub_id"),
        Some(&first.voice_id),
        "found by its tag"
    );
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    assert_eq!(
        get_voice(&mut client, &first.voice_id).await.status(),
        pb::VoiceStatus::Completed
    );
    assert_eq!(fake.calls(Route::Add), 1, "cloned once");
    assert_eq!(fake.voice_count(), 1, "one voice at the provider");
    assert_eq!(app.voice_rows().await, 1, "one row");
    assert!(app.orphans().await.is_empty());
}

async fn adoption_reads_every_page_of_the_search_and_takes_only_the_exact_tag(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.adopt_after = std::time::Duration::ZERO;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    fake.inject(
        Route::Add,
        1,
        Fault::Slow(std::time::Duration::from_secs(1)),
    );
    let reserved = create_voice(&mut client, create_request("Paged")).await;
    eventually("the provider made the voice", async || {
        fake.voice_count() == 1
    })
    .await;
    // Someone else's voice that the search also matches, on the first page:
    // it mentions the id but does not carry the tag.
    fake.add_voice(
        "AAAAnotVoicehubs",
        FakeVoice {
            name: "Not ours".into(),
            description: Some(format!("copy of {}", reserved.voice_id)),
            labels: [("note".to_owned(), reserved.voice_id.clone())].into(),
            files: 1,
            report: Report::default(),
        },
    );
    fake.set_page_limit(1);
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.failed), (1, 0), "{step:?}");
    let searches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Lookup)
        .collect();
    assert_eq!(searches.len(), 2, "two pages of one voice each");
    assert_eq!(searches[1].text("next_page_token"), Some("1"));
    let adopted = get_voice(&mut client, &reserved.voice_id).await;
    assert_ne!(adopted.provider_voice_id, "AAAAnotVoicehubs");
    assert_eq!(
        fake.voice(&adopted.provider_voice_id)
            .unwrap()
            .labels
            .get("voicehub_id"),
        Some(&reserved.voice_id)
    );
    assert!(fake.voice("AAAAnotVoicehubs").is_some(), "never touched");
}

async fn a_create_the_provider_never_received_fails_with_a_reason_that_says_so(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.adopt_after = std::time::Duration::ZERO;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    // A 500 may hide a created voice; this time none does, to the create
    // and its two retries (each looked up by its tag).
    fake.inject(Route::Add, 3, Fault::server_error());
    let reserved = create_voice(&mut client, create_request("Lost")).await;
    assert_eq!(reserved.status(), pb::VoiceStatus::Processing);
    let step = app.worker.run_once().await.unwrap();
    assert_eq!(step.failed, 1, "{step:?}");
    let failed = get_voice(&mut client, &reserved.voice_id).await;
    assert_eq!(failed.status(), pb::VoiceStatus::Failed);
    assert!(
        failed.failure_reason.contains("never received"),
        "{}",
        failed.failure_reason
    );
    assert_eq!(
        fake.calls(Route::Lookup),
        4,
        "looked for by its tag after each server error, then by the status engine"
    );
    assert_eq!(fake.voice_count(), 0);
}

async fn a_reserved_voice_whose_create_was_lost_obeys_the_maximum_age(backend: Backend) {
    // Adoption would wait an hour; the maximum age is a second.
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.adopt_after = std::time::Duration::from_hours(1);
        c.sync_max_age = std::time::Duration::from_secs(1);
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    // Server errors to the create and its two retries, each looked up by
    // its tag in vain: the outcome stays unknown.
    fake.inject(Route::Add, 3, Fault::server_error());
    let reserved = create_voice(&mut client, create_request("Cut off")).await;
    assert_eq!(reserved.status(), pb::VoiceStatus::Processing);
    assert!(reserved.provider_voice_id.is_empty());
    eventually(
        "the reserved voice is resolved at its deadline",
        async || app.worker.run_once().await.unwrap().failed == 1,
    )
    .await;
    let failed = get_voice(&mut client, &reserved.voice_id).await;
    assert_eq!(failed.status(), pb::VoiceStatus::Failed);
    assert!(
        failed.failure_reason.contains("never received"),
        "the true reason, not \"still processing\": {}",
        failed.failure_reason
    );
    assert_eq!(
        fake.calls(Route::Lookup),
        4,
        "looked for by its tag after each server error, and at its deadline"
    );
    assert_eq!((fake.calls(Route::Add), fake.voice_count()), (3, 0));
    assert_eq!(app.voice_rows().await, 1);
}

async fn a_create_whose_caller_gives_up_still_finishes_and_a_retry_returns_it(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let request = with(|r| r.request_id = "impatient".into());
    // The provider answers in 300 ms, within voicehub's timeout; the caller
    // gives up as soon as the provider has the request (the call is dropped,
    // which resets its HTTP/2 stream).
    fake.inject(
        Route::Add,
        1,
        Fault::Slow(std::time::Duration::from_millis(300)),
    );
    let mut impatient = client.clone();
    let call = tokio::spawn({
        let request = request.clone();
        async move { impatient.create_voice_clone(request).await }
    });
    crate::helpers::wait_for(std::time::Duration::from_secs(10), || {
        fake.calls(Route::Add) == 1
    })
    .await;
    call.abort();
    assert!(
        call.await.unwrap_err().is_cancelled(),
        "the caller went away first"
    );
    eventually("the create finished without its caller", async || {
        app.voice_rows().await == 1 && fake.voice_count() == 1 && {
            let voices = client
                .list_user_voices(ListUserVoicesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .voices;
            voices.len() == 1 && !voices[0].provider_voice_id.is_empty()
        }
    })
    .await;
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    let retry = create_voice(&mut client, request).await;
    assert_eq!(
        retry.status(),
        pb::VoiceStatus::Completed,
        "the retry returns it"
    );
    assert_eq!(fake.calls(Route::Add), 1, "cloned once");
    assert_eq!(app.voice_rows().await, 1);
}

on_both_backends!(
    create_then_get_and_list_show_the_processing_voice,
    a_message_larger_than_the_sample_limits_is_refused_by_the_transport,
    repeating_a_request_id_returns_the_same_voice_without_a_second_clone,
    concurrent_requests_with_one_request_id_make_one_voice,
    emoji_sequences_and_tag_flags_are_names_like_any_other,
    a_retry_after_a_transient_failure_succeeds_with_the_same_request_id,
    a_repeat_waits_for_the_create_still_running_and_never_gets_a_voice_then_released,
    the_per_user_voice_limit_is_resource_exhausted_and_freed_by_delete,
    a_provider_voice_that_cannot_be_recorded_is_deleted_again,
    an_orphan_is_recorded_when_compensation_fails_too,
    a_create_that_times_out_at_the_provider_is_adopted_and_its_retry_never_clones_again,
    a_create_the_provider_never_received_fails_with_a_reason_that_says_so,
    adoption_reads_every_page_of_the_search_and_takes_only_the_exact_tag,
    a_create_whose_caller_gives_up_still_finishes_and_a_retry_returns_it,
    a_reserved_voice_whose_create_was_lost_obeys_the_maximum_age,
);

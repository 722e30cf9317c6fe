use tonic::Code;
use uuid::Uuid;
use voicehub::{
    pb::{self, GetVoiceRequest, timestamp},
    store::{Visibility, VoiceStatus},
};

use crate::{
    helpers::{Backend, assert_invalid_field, spawn_app},
    on_both_backends,
};

fn get(id: impl std::fmt::Display) -> GetVoiceRequest {
    GetVoiceRequest {
        voice_id: id.to_string(),
    }
}

async fn owner_gets_every_field_of_their_private_voice(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    let stored = app
        .seed(owner, Visibility::Private, VoiceStatus::Completed)
        .await;
    let voice = app
        .client(owner)
        .get_voice(get(stored.id))
        .await
        .unwrap()
        .into_inner();
    let expected = pb::Voice {
        voice_id: stored.id.to_string(),
        owner_user_id: owner.to_string(),
        provider_voice_id: stored.provider_voice_id.clone().unwrap(),
        name: stored.name.clone(),
        description: "a test voice".into(),
        language: "en".into(),
        gender: "female".into(),
        category: "cloned".into(),
        visibility: pb::Visibility::Private as i32,
        status: pb::VoiceStatus::Completed as i32,
        failure_reason: String::new(),
        preview_url: stored.preview_url.clone().unwrap(),
        labels: [("accent".to_owned(), "british".to_owned())].into(),
        provider_labels: [("age".to_owned(), "young".to_owned())].into(),
        created_at: Some(timestamp(stored.created_at)),
        updated_at: Some(timestamp(stored.updated_at)),
        completed_at: Some(timestamp(stored.created_at)),
        revision: 1,
        // Seeded as a voice from before intake records: none to show.
        consent: None,
        consent_recorded: false,
        sample_report: None,
    };
    assert_eq!(voice, expected);
}

async fn another_users_private_voice_is_not_found_exactly_like_a_missing_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let private = app
        .seed(bob, Visibility::Private, VoiceStatus::Completed)
        .await;
    let hidden = app
        .client(alice)
        .get_voice(get(private.id))
        .await
        .unwrap_err();
    let missing = app
        .client(alice)
        .get_voice(get(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        (hidden.code(), hidden.message()),
        (missing.code(), missing.message())
    );
}

async fn another_users_public_voice_is_readable(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let public = app
        .seed(bob, Visibility::Public, VoiceStatus::Processing)
        .await;
    let voice = app
        .client(alice)
        .get_voice(get(public.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voice.voice_id, public.id.to_string());
    assert_eq!(voice.owner_user_id, bob.to_string());
    assert_eq!(voice.status, pb::VoiceStatus::Processing as i32);
}

async fn a_deleted_voice_is_not_found_even_for_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    for visibility in [Visibility::Private, Visibility::Public] {
        let deleted = app.seed(owner, visibility, VoiceStatus::Deleted).await;
        let status = app
            .client(owner)
            .get_voice(get(deleted.id))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let status = app
            .client(Uuid::new_v4())
            .get_voice(get(deleted.id))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
}

async fn failed_and_processing_voices_are_returned_to_their_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    let failed = app
        .seed(owner, Visibility::Private, VoiceStatus::Failed)
        .await;
    let voice = app
        .client(owner)
        .get_voice(get(failed.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voice.status, pb::VoiceStatus::Failed as i32);
    assert_eq!(voice.failure_reason, "provider rejected the samples");
    assert_eq!(voice.completed_at, None);
}

async fn a_malformed_voice_id_is_invalid_argument_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client(Uuid::new_v4());
    for bad in ["", "not-a-uuid", "123", "' OR 1=1 --"] {
        let status = client.get_voice(get(bad)).await.unwrap_err();
        assert_invalid_field(&status, "voice_id");
    }
}

/// GetVoice calls in flight together share one query per batch; each
/// caller still gets exactly what the rule lets it see, and callers that
/// go away mid-batch take nobody else's answer with them.
async fn calls_in_flight_together_share_queries_and_each_sees_only_its_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let private = app
        .seed(alice, Visibility::Private, VoiceStatus::Completed)
        .await;
    let public = app
        .seed(alice, Visibility::Public, VoiceStatus::Processing)
        .await;
    let deleted = app
        .seed(bob, Visibility::Public, VoiceStatus::Deleted)
        .await;
    // (caller, voice, whether the caller may see it)
    let cases = [
        (alice, private.id, true),
        (bob, private.id, false),
        (bob, public.id, true),
        (alice, public.id, true),
        (bob, deleted.id, false),
        (alice, Uuid::now_v7(), false),
    ];
    let (alice_client, bob_client) = (app.client(alice), app.client(bob));
    let mut calls = Vec::new();
    // 90 calls per user: within a user's limit of calls in progress.
    for n in 0..180 {
        let (caller, id, visible) = cases[n % cases.len()];
        let mut client = if caller == alice {
            alice_client.clone()
        } else {
            bob_client.clone()
        };
        calls.push(tokio::spawn(async move {
            let answer = client.get_voice(get(id)).await;
            (id, visible, answer)
        }));
    }
    // Every seventh caller goes away while its call may be in a batch.
    let mut answered = 0;
    for (n, call) in calls.into_iter().enumerate() {
        if n % 7 == 3 {
            call.abort();
            continue;
        }
        let (id, visible, answer) = call.await.unwrap();
        match answer {
            Ok(voice) => {
                assert!(visible, "{id} was shown to a caller who may not see it");
                assert_eq!(voice.into_inner().voice_id, id.to_string());
            }
            Err(status) => {
                assert!(!visible, "{id}: {status:?}");
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                assert_eq!(status.message(), "voice not found");
            }
        }
        answered += 1;
    }
    assert!(answered >= 150);
    let (batches, reads) = (
        app.metric("voicehub_get_voice_batches_total"),
        app.metric("voicehub_get_voice_reads_total"),
    );
    println!("{reads} GetVoice reads in {batches} batches");
    assert!(reads >= answered, "every answered call was read: {reads}");
    assert!(batches < reads, "calls in flight together shared queries");
}

on_both_backends!(
    calls_in_flight_together_share_queries_and_each_sees_only_its_own,
    owner_gets_every_field_of_their_private_voice,
    another_users_private_voice_is_not_found_exactly_like_a_missing_one,
    another_users_public_voice_is_readable,
    a_deleted_voice_is_not_found_even_for_its_owner,
    failed_and_processing_voices_are_returned_to_their_owner,
    a_malformed_voice_id_is_invalid_argument_naming_the_field,
);

#[tokio::test]
async fn a_storage_outage_is_unavailable_and_reveals_nothing_internal() {
    let app = spawn_app(Backend::Sqlite).await;
    let owner = Uuid::new_v4();
    let voice = app
        .seed(owner, Visibility::Private, VoiceStatus::Completed)
        .await;
    app.store.clone().close().await;
    let status = app
        .client(owner)
        .get_voice(get(voice.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "storage is unavailable, try again later");
    let status = app
        .client(owner)
        .list_user_voices(pb::ListUserVoicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

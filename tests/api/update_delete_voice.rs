use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{
    self, DeleteVoiceRequest, GetVoiceRequest, ListUserVoicesRequest, UpdateVoiceRequest, Voice,
};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{
        Backend, assert_invalid_field, basic, create_request, create_voice, get_voice,
        spawn_app_with_fake,
    },
    on_both_backends,
};

fn update(voice: Voice, paths: &[&str]) -> UpdateVoiceRequest {
    UpdateVoiceRequest {
        voice: Some(voice),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(ToString::to_string).collect(),
        }),
    }
}

fn later(a: Option<&prost_types::Timestamp>, b: Option<&prost_types::Timestamp>) -> bool {
    let (a, b) = (a.unwrap(), b.unwrap());
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

async fn each_update_path_changes_its_field_and_advances_the_revision(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let created = create_voice(&mut client, "Before").await;
    // Completed first, so every revision below is an update's.
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    let created = get_voice(&mut client, &created.voice_id).await;
    let provider_id = created.provider_voice_id.clone();

    let mut changed = created.clone();
    changed.name = "  After  ".into();
    changed.description = "should be ignored: not in the mask".into();
    let v = client
        .update_voice(update(changed, &["name"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.name, "After");
    assert_eq!(v.description, created.description);
    assert_eq!(v.revision, created.revision + 1);
    assert!(later(v.updated_at.as_ref(), created.updated_at.as_ref()));
    // Stored first; the status engine pushes it to the provider.
    app.worker.run_once().await.unwrap();
    assert_eq!(
        fake.voice(&provider_id).unwrap().name,
        "After",
        "renamed at the provider"
    );

    let mut changed = v.clone();
    changed.description = "Now brighter".into();
    let v2 = client
        .update_voice(update(changed, &["description"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.description, "Now brighter");
    assert_eq!(v2.revision, v.revision + 1);
    app.worker.run_once().await.unwrap();
    assert_eq!(
        fake.voice(&provider_id).unwrap().description.as_deref(),
        Some("Now brighter")
    );

    let mut changed = v2.clone();
    changed.labels = [("use_case".to_owned(), "audiobook".to_owned())].into();
    let v3 = client
        .update_voice(update(changed, &["labels"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v3.labels,
        [("use_case".to_owned(), "audiobook".to_owned())].into()
    );
    app.worker.run_once().await.unwrap();
    let at_provider = fake.voice(&provider_id).unwrap().labels;
    assert_eq!(
        at_provider.get("use_case").map(String::as_str),
        Some("audiobook")
    );
    assert_eq!(
        at_provider.get("language").map(String::as_str),
        Some("en-GB")
    );

    let edits_before = fake.calls(Route::Edit);
    let mut changed = v3.clone();
    changed.visibility = pb::Visibility::Public as i32;
    let v4 = client
        .update_voice(update(changed, &["visibility"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v4.visibility, pb::Visibility::Public as i32);
    assert_eq!(v4.revision, v3.revision + 1);
    assert_eq!(
        app.worker.run_once().await.unwrap().claimed,
        0,
        "visibility is ours alone: nothing to push"
    );
    assert_eq!(
        fake.calls(Route::Edit),
        edits_before,
        "visibility is ours alone"
    );

    // Every edit sent the name ElevenLabs requires.
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.route == Route::Edit)
            .all(|r| r.text("name").is_some())
    );
    let got = get_voice(&mut client, &v4.voice_id).await;
    // An update's answer carries the consent flag, not the owner's intake record.
    assert_eq!(basic(got), v4);
}

async fn every_invalid_update_is_refused_naming_the_field(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Mine").await;
    let with = |change: fn(&mut Voice), paths: &[&str]| {
        let mut v = voice.clone();
        change(&mut v);
        update(v, paths)
    };
    let cases: Vec<(&str, UpdateVoiceRequest, &str)> = vec![
        ("empty mask", with(|_| {}, &[]), "update_mask"),
        (
            "no mask at all",
            UpdateVoiceRequest {
                voice: Some(voice.clone()),
                update_mask: None,
            },
            "update_mask",
        ),
        ("unknown path", with(|_| {}, &["status"]), "update_mask"),
        (
            "output-only path",
            with(|_| {}, &["provider_voice_id"]),
            "update_mask",
        ),
        (
            "no voice",
            UpdateVoiceRequest {
                voice: None,
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
            },
            "voice",
        ),
        (
            "malformed voice_id",
            with(|v| v.voice_id = "nope".into(), &["name"]),
            "voice.voice_id",
        ),
        (
            "empty name",
            with(|v| v.name = String::new(), &["name"]),
            "voice.name",
        ),
        (
            "long description",
            with(|v| v.description = "d".repeat(501), &["description"]),
            "voice.description",
        ),
        (
            "unspecified visibility",
            with(|v| v.visibility = 0, &["visibility"]),
            "voice.visibility",
        ),
        (
            "bad label key",
            with(
                |v| v.labels = [("Bad".into(), "x".into())].into(),
                &["labels"],
            ),
            "voice.labels[\"Bad\"]",
        ),
        (
            "reserved label key",
            with(
                |v| v.labels = [("voicehub_id".into(), "x".into())].into(),
                &["labels"],
            ),
            "voice.labels[\"voicehub_id\"]",
        ),
    ];
    let before = fake.requests().len();
    for (case, request, field) in cases {
        let status = client.update_voice(request).await.expect_err(case);
        assert_invalid_field(&status, field);
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "nothing reached the provider"
    );
    let unchanged = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(unchanged, voice);
}

async fn delete_removes_the_voice_at_the_provider_and_from_get_and_list(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Short-lived").await;
    client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap();
    assert!(fake.voice(&voice.provider_voice_id).is_none());
    let status = client
        .get_voice(GetVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        client
            .list_user_voices(ListUserVoicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .voices
            .is_empty()
    );
    let again = client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "deleting twice");
    assert_eq!(fake.calls(Route::Delete), 1);
    assert_eq!(app.voice_rows().await, 1, "kept for audit");
    let status = client
        .delete_voice(DeleteVoiceRequest {
            voice_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "voice_id");
}

async fn a_voice_already_gone_at_the_provider_counts_as_deleted(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    for fault in [Fault::not_found_404(), Fault::not_found_400()] {
        let voice = create_voice(&mut client, "Gone").await;
        fake.inject(Route::Delete, 1, fault);
        client
            .delete_voice(DeleteVoiceRequest {
                voice_id: voice.voice_id.clone(),
            })
            .await
            .unwrap();
        let status = client
            .get_voice(GetVoiceRequest {
                voice_id: voice.voice_id,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
}

async fn a_failing_provider_delete_leaves_the_voice_as_it_was(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Sticky").await;
    fake.inject(Route::Delete, 10, Fault::server_error());
    let status = client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        fake.calls(Route::Delete),
        4,
        "one attempt and three retries"
    );
    let still = get_voice(&mut client, &voice.voice_id).await;
    assert_eq!(still, voice);
}

async fn another_user_can_neither_update_nor_delete_a_voice_public_or_private(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (alice, bob) = (app.client(Uuid::new_v4()), app.client(Uuid::new_v4()));
    let (mut alice, mut bob) = (alice, bob);
    let private = create_voice(&mut alice, "Private").await;
    let mut public_request = create_request("Public");
    public_request.visibility = pb::Visibility::Public as i32;
    let public = create_voice(&mut alice, public_request).await;
    let calls = fake.requests().len();
    for voice in [&private, &public] {
        let mut renamed = voice.clone();
        renamed.name = "Stolen".into();
        let status = bob
            .update_voice(update(renamed, &["name"]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "update {}", voice.name);
        let status = bob
            .delete_voice(DeleteVoiceRequest {
                voice_id: voice.voice_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "delete {}", voice.name);
        let unchanged = get_voice(&mut alice, &voice.voice_id).await;
        assert_eq!(&unchanged, voice);
    }
    assert_eq!(fake.requests().len(), calls, "the provider was never asked");
    // Bob can still read the public one.
    bob.get_voice(GetVoiceRequest {
        voice_id: public.voice_id,
    })
    .await
    .unwrap();
}

async fn labels_stay_as_the_user_set_them_and_the_provider_keeps_voicehubs_tag(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let mut request = create_request("Ten labels");
    request.labels = (0..10)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let created = create_voice(&mut client, request.clone()).await;
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    let read = get_voice(&mut client, &created.voice_id).await;
    assert_eq!(read.status(), pb::VoiceStatus::Completed);
    assert_eq!(read.labels, request.labels, "exactly the caller's ten");
    assert_eq!(
        read.provider_labels.get("language").map(String::as_str),
        Some("en-GB"),
        "what the provider reports is kept apart: {:?}",
        read.provider_labels
    );
    assert!(!read.provider_labels.contains_key("voicehub_id"));

    // Read, modify, write: the ten labels as read are valid as they are.
    let mut changed = read.clone();
    changed.labels.insert("k0".into(), "changed".into());
    let updated = client
        .update_voice(update(changed.clone(), &["labels"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.labels, changed.labels);
    assert_eq!(updated.provider_labels, read.provider_labels);
    app.worker.run_once().await.unwrap();
    let at_provider = fake.voice(&created.provider_voice_id).unwrap().labels;
    assert_eq!(
        at_provider.get("voicehub_id"),
        Some(&created.voice_id),
        "an edit of the labels keeps the tag: {at_provider:?}"
    );
    assert_eq!(at_provider.get("k0").map(String::as_str), Some("changed"));
}

on_both_backends!(
    each_update_path_changes_its_field_and_advances_the_revision,
    every_invalid_update_is_refused_naming_the_field,
    delete_removes_the_voice_at_the_provider_and_from_get_and_list,
    a_voice_already_gone_at_the_provider_counts_as_deleted,
    a_failing_provider_delete_leaves_the_voice_as_it_was,
    another_user_can_neither_update_nor_delete_a_voice_public_or_private,
    labels_stay_as_the_user_set_them_and_the_provider_keeps_voicehubs_tag,
);

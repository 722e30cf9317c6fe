//! UpdateVoice stores first and the status engine pushes the stored name,
//! description and labels to the provider until it holds them: while the
//! provider fails, before a voice handed over unfinished is adopted (an update
//! while its create still runs is ABORTED), and when updates
//! race (the provider ends with the winning revision's values; a call that
//! got ABORTED changed nothing anywhere).

use std::time::Duration;

use prost_types::FieldMask;
use sea_orm::EntityTrait;
use tonic::Code;
use uuid::Uuid;
use voicehub::{
    pb::{self, UpdateVoiceRequest},
    store::entity::voice,
};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{
        Backend, Client, TestApp, create_request, create_voice, get_voice, spawn_app_with_fake,
        wait_for,
    },
    on_both_backends,
};

fn rename(voice: &pb::Voice, name: &str) -> UpdateVoiceRequest {
    let mut renamed = voice.clone();
    name.clone_into(&mut renamed.name);
    UpdateVoiceRequest {
        voice: Some(renamed),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
    }
}

async fn stored(app: &TestApp, voice_id: &str) -> voice::Model {
    voice::Entity::find_by_id(voice_id.parse::<Uuid>().unwrap())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
}

/// A COMPLETED voice of a new user, and that user's client.
async fn completed_voice(app: &TestApp) -> (Client, pb::Voice) {
    let mut client = app.client(Uuid::new_v4());
    let created = create_voice(&mut client, create_request("Original")).await;
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    let read = get_voice(&mut client, &created.voice_id).await;
    (client, read)
}

async fn an_update_while_the_provider_fails_is_stored_and_pushed_once_it_answers(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (mut client, voice) = completed_voice(&app).await;
    // Every attempt of the first push fails (one try and three retries).
    fake.inject(Route::Edit, 4, Fault::server_error());
    let updated = client
        .update_voice(rename(&voice, "Renamed in an outage"))
        .await
        .expect("stored, though the provider is failing")
        .into_inner();
    assert_eq!(updated.name, "Renamed in an outage");
    assert_eq!(updated.revision, voice.revision + 1);

    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (1, 1), "{step:?}");
    assert_eq!(fake.calls(Route::Edit), 4);
    assert_eq!(
        fake.voice(&voice.provider_voice_id).unwrap().name,
        "Original"
    );
    assert!(stored(&app, &voice.voice_id).await.push_pending);

    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (1, 0), "{step:?}");
    assert_eq!(fake.calls(Route::Edit), 5);
    assert_eq!(
        fake.voice(&voice.provider_voice_id).unwrap().name,
        "Renamed in an outage"
    );
    let row = stored(&app, &voice.voice_id).await;
    assert!(!row.push_pending);
    assert_eq!(row.revision, updated.revision, "a push is not a change");
    assert_eq!(app.worker.run_once().await.unwrap().claimed, 0, "done");
}

/// A voice seen in a listing while its create is still at the provider has
/// not been announced: an update then would be published before its
/// `created`, so it is ABORTED (a conflict that ends by itself), naming the
/// field, and changes nothing; once the create has answered it goes through.
async fn an_update_while_the_create_still_runs_is_aborted_and_changes_nothing(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    // The provider takes 300 ms to clone (inside the 400 ms timeout).
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_millis(300)));
    let mut client = app.client(Uuid::new_v4());
    let create = {
        let mut client = client.clone();
        tokio::spawn(async move { create_voice(&mut client, create_request("Draft")).await })
    };
    let reserved = loop {
        let listed = client
            .list_user_voices(pb::ListUserVoicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .voices;
        if let Some(voice) = listed.into_iter().next() {
            break voice;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        reserved.provider_voice_id.is_empty(),
        "still at the provider"
    );
    let status = client
        .update_voice(rename(&reserved, "Too early"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().starts_with("voice_id:"), "{status:?}");

    let created = create.await.unwrap();
    assert_eq!(created.name, "Draft", "the refused update changed nothing");
    assert_eq!(created.revision, reserved.revision + 1, "only its creation");
    let updated = client
        .update_voice(rename(&created, "Final title"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.revision),
        ("Final title", created.revision + 1)
    );
    app.worker.run_once().await.unwrap();
    assert_eq!(
        fake.voice(&created.provider_voice_id).unwrap().name,
        "Final title"
    );
    assert_eq!(fake.calls(Route::Edit), 1);
}

/// A create whose provider answer was lost hands its caller the voice
/// before its provider voice is known; an update then is stored at once and
/// reaches the provider voice once the status engine has adopted it.
async fn an_update_before_adoption_reaches_the_provider_once_adopted(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.adopt_after = Duration::ZERO;
    })
    .await;
    // Past the 400 ms timeout: the answer is lost, the voice still made.
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_secs(1)));
    let mut client = app.client(Uuid::new_v4());
    let handed = create_voice(&mut client, create_request("Draft")).await;
    assert!(handed.provider_voice_id.is_empty(), "the answer was lost");
    let updated = client
        .update_voice(rename(&handed, "Final title"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Final title");
    wait_for(Duration::from_secs(10), || fake.voice_count() == 1).await;
    let made = fake.voice_ids();
    assert_eq!(made.len(), 1, "the provider made the voice");
    assert_eq!(
        fake.voice(&made[0]).unwrap().name,
        "Draft",
        "cloned with the name it was created with"
    );
    app.worker.run_once().await.unwrap();
    app.worker.run_once().await.unwrap();
    let adopted = stored(&app, &handed.voice_id).await;
    assert_eq!(adopted.provider_voice_id.as_ref(), Some(&made[0]));
    assert_eq!(
        fake.voice(&made[0]).unwrap().name,
        "Final title",
        "pushed once the provider voice was adopted"
    );
    assert_eq!(fake.calls(Route::Edit), 1);
    assert!(!adopted.push_pending);
    assert_eq!(
        adopted.revision,
        updated.revision + 1,
        "adoption is no change; completion is"
    );
}

async fn racing_renames_leave_the_provider_with_the_winning_revision(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (client, voice) = completed_voice(&app).await;
    let calls = (0..6).map(|i| {
        let mut client = client.clone();
        let request = rename(&voice, &format!("Rename {i}"));
        tokio::spawn(async move { (i, client.update_voice(request).await) })
    });
    let (mut won, mut aborted) = (Vec::new(), Vec::new());
    for call in futures_util::future::join_all(calls).await {
        match call.unwrap() {
            (_, Ok(v)) => won.push(v.into_inner()),
            (i, Err(status)) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                aborted.push(format!("Rename {i}"));
            }
        }
    }
    assert_eq!(won.len() + aborted.len(), 6);
    assert!(!won.is_empty(), "one of them wins");
    let winner = won.iter().max_by_key(|v| v.revision).unwrap();
    let row = stored(&app, &voice.voice_id).await;
    assert_eq!(
        (row.name.as_str(), row.revision),
        (winner.name.as_str(), winner.revision)
    );

    app.worker.run_once().await.unwrap();
    assert_eq!(
        fake.voice(&voice.provider_voice_id).unwrap().name,
        winner.name,
        "the provider holds the winning revision's name"
    );
    let pushed: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.route == Route::Edit)
        .filter_map(|r| r.text("name").map(str::to_owned))
        .collect();
    assert_eq!(
        pushed,
        std::slice::from_ref(&winner.name),
        "one push, of the stored values"
    );
    for name in &aborted {
        assert!(
            !pushed.contains(name),
            "an ABORTED call reached the provider"
        );
    }
}

async fn a_push_under_way_is_not_crossed_by_the_push_of_a_newer_revision(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (mut client, voice) = completed_voice(&app).await;
    let first = client
        .update_voice(rename(&voice, "First"))
        .await
        .unwrap()
        .into_inner();
    // The push of "First" takes 300 ms at the provider.
    fake.inject(Route::Edit, 1, Fault::Slow(Duration::from_millis(300)));
    let pushing = {
        let worker = app.worker.clone();
        tokio::spawn(async move { worker.run_once().await })
    };
    while fake.calls(Route::Edit) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Meanwhile "Second" is stored, and another step claims the voice: the
    // push lease keeps it from pushing beside the one under way.
    let second = client
        .update_voice(rename(&first, "Second"))
        .await
        .unwrap()
        .into_inner();
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (1, 1), "{step:?}");
    assert_eq!(
        fake.calls(Route::Edit),
        1,
        "no second push while one is under way"
    );

    let step = pushing.await.unwrap().unwrap();
    assert_eq!(
        step.rescheduled, 1,
        "the voice changed during the push: again"
    );
    assert_eq!(fake.voice(&voice.provider_voice_id).unwrap().name, "First");
    app.worker.run_once().await.unwrap();
    assert_eq!(fake.calls(Route::Edit), 2);
    assert_eq!(fake.voice(&voice.provider_voice_id).unwrap().name, "Second");
    let row = stored(&app, &voice.voice_id).await;
    assert!(!row.push_pending);
    assert_eq!(
        (row.name.as_str(), row.revision),
        ("Second", second.revision)
    );
}

async fn values_the_provider_refuses_are_not_pushed_again(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (mut client, voice) = completed_voice(&app).await;
    // A 422: the values themselves are refused, so a retry would change nothing.
    fake.inject(Route::Edit, 1, Fault::unprocessable_files());
    let updated = client
        .update_voice(rename(&voice, "Refused name"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Refused name", "stored");
    let step = app.worker.run_once().await.unwrap();
    assert_eq!((step.claimed, step.rescheduled), (1, 0), "{step:?}");
    assert_eq!(fake.calls(Route::Edit), 1, "not retried");
    assert_eq!(
        fake.voice(&voice.provider_voice_id).unwrap().name,
        "Original"
    );
    assert!(
        !stored(&app, &voice.voice_id).await.push_pending,
        "given up"
    );
    assert_eq!(app.worker.run_once().await.unwrap().claimed, 0);
}

on_both_backends!(
    an_update_while_the_provider_fails_is_stored_and_pushed_once_it_answers,
    an_update_while_the_create_still_runs_is_aborted_and_changes_nothing,
    an_update_before_adoption_reaches_the_provider_once_adopted,
    racing_renames_leave_the_provider_with_the_winning_revision,
    a_push_under_way_is_not_crossed_by_the_push_of_a_newer_revision,
    values_the_provider_refuses_are_not_pushed_again,
);

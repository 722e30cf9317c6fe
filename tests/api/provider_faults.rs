//! How ElevenLabs failures reach the caller, and how they are retried.
//! The provider client is the same whatever the database, so SQLite serves.

use std::time::Duration;

use prost_types::FieldMask;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;
use voicehub::pb::{DeleteVoiceRequest, UpdateVoiceRequest};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{Backend, create_request, elevenlabs, spawn_app_with_fake},
};

#[tokio::test]
async fn too_many_concurrent_requests_is_retried_then_succeeds() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 2, Fault::too_many_concurrent());
    app.client(Uuid::new_v4())
        .create_voice_clone(create_request("Busy"))
        .await
        .unwrap();
    assert_eq!(fake.calls(Route::Add), 3);
}

#[tokio::test]
async fn a_persistent_429_is_unavailable_after_a_bounded_number_of_retries() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 100, Fault::system_busy_new_style());
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Busy"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(fake.calls(Route::Add), 4, "one attempt and max_retries = 3");
    assert_eq!(app.voice_rows().await, 0);
}

#[tokio::test]
async fn a_retry_after_beyond_the_time_budget_gives_up_at_once() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(
        Route::Add,
        1,
        Fault::Respond {
            status: 429,
            body: json!({"detail": {"status": "too_many_concurrent_requests", "message": "slow down"}}),
            headers: vec![("retry-after", "3600".into())],
        },
    );
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Busy"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(fake.calls(Route::Add), 1);
}

#[tokio::test]
async fn a_503_on_create_is_retried_because_it_cannot_have_created_a_voice() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::unavailable());
    app.client(Uuid::new_v4())
        .create_voice_clone(create_request("Retry"))
        .await
        .unwrap();
    assert_eq!(fake.calls(Route::Add), 2);
}

#[tokio::test]
async fn a_500_or_a_timeout_on_create_is_not_retried_as_it_may_hide_a_created_voice() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    fake.inject(Route::Add, 1, Fault::server_error());
    let status = client
        .create_voice_clone(create_request("Once"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(fake.calls(Route::Add), 1);
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_secs(3)));
    let status = client
        .create_voice_clone(create_request("Once"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(fake.calls(Route::Add), 2);
    assert_eq!(app.voice_rows().await, 0);
}

#[tokio::test]
async fn slow_and_failing_deletes_and_edits_are_retried() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = client
        .create_voice_clone(create_request("Retry"))
        .await
        .unwrap()
        .into_inner();
    fake.inject(Route::Edit, 2, Fault::server_error());
    let mut renamed = voice.clone();
    renamed.name = "Renamed".into();
    let request = UpdateVoiceRequest {
        voice: Some(renamed),
        update_mask: Some(FieldMask {
            paths: vec!["name".into()],
        }),
    };
    client.update_voice(request).await.unwrap();
    assert_eq!(fake.calls(Route::Edit), 3);
    fake.inject(Route::Delete, 1, Fault::Slow(Duration::from_secs(3)));
    client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice.voice_id,
        })
        .await
        .unwrap();
    assert_eq!(
        fake.calls(Route::Delete),
        2,
        "the timed-out attempt was retried"
    );
}

#[tokio::test]
async fn the_providers_voice_limit_is_resource_exhausted() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::voice_limit());
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Full"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(fake.calls(Route::Add), 1, "not retried");
    assert_eq!(app.voice_rows().await, 0);
}

#[tokio::test]
async fn a_rejected_api_key_is_internal_for_the_caller_and_not_retried() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::invalid_api_key());
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Key"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "internal error",
        "the operator's problem is not the caller's"
    );
    assert_eq!(fake.calls(Route::Add), 1);
    // A wrongly configured key is refused by the fake itself the same way.
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |c| {
        elevenlabs(c).api_key = secrecy::SecretString::from("wrong-key".to_owned());
    })
    .await;
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Key"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(fake.requests()[0].api_key.as_deref(), Some("wrong-key"));
}

#[tokio::test]
async fn a_422_from_the_provider_is_invalid_argument_with_its_message() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::unprocessable_files());
    let status = app
        .client(Uuid::new_v4())
        .create_voice_clone(create_request("Odd"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("Expected UploadFile"),
        "{status:?}"
    );
    let bad = status
        .get_details_bad_request()
        .expect("BadRequest details");
    assert_eq!(bad.field_violations[0].field, "samples");
    assert_eq!(fake.calls(Route::Add), 1);
}

#[tokio::test]
async fn updating_a_voice_gone_at_the_provider_is_failed_precondition() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = client
        .create_voice_clone(create_request("Vanished"))
        .await
        .unwrap()
        .into_inner();
    fake.inject(Route::Edit, 1, Fault::not_found_404());
    let mut renamed = voice.clone();
    renamed.name = "New".into();
    let status = client
        .update_voice(UpdateVoiceRequest {
            voice: Some(renamed),
            update_mask: Some(FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn no_more_than_max_concurrency_requests_are_in_flight_at_the_provider() {
    let (app, fake) =
        spawn_app_with_fake(Backend::Sqlite, |c| elevenlabs(c).max_concurrency = 2).await;
    // Slow answers keep requests on the wire long enough to overlap.
    fake.inject(Route::Add, 6, Fault::Slow(Duration::from_millis(150)));
    let creates = (0..6).map(|i| {
        let mut client = app.client(Uuid::new_v4());
        async move {
            client
                .create_voice_clone(create_request(&format!("Voice {i}")))
                .await
        }
    });
    for result in futures_util::future::join_all(creates).await {
        result.unwrap();
    }
    assert_eq!(fake.calls(Route::Add), 6);
    assert_eq!(fake.max_in_flight(), 2, "the limit held, and was used");
}

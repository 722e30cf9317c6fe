//! How ElevenLabs failures reach the caller, and how they are retried.
//! The provider client is the same whatever the database, so SQLite serves.

use std::time::Duration;

use prost_types::FieldMask;
use sea_orm::EntityTrait;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;
use voicehub::pb::{DeleteVoiceRequest, UpdateVoiceRequest};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{Backend, create_request, create_voice, elevenlabs, spawn_app_with_fake},
};

/// One create against a fake ElevenLabs answering with `fault` `times`
/// times: what the caller gets, how often the provider was asked, and
/// whether a voice row exists afterwards.
struct CreateCase {
    provider_answers: &'static str,
    fault: Fault,
    times: usize,
    outcome: Result<(), Code>,
    attempts: usize,
}

fn create_cases() -> Vec<CreateCase> {
    let ok = Ok(());
    vec![
        CreateCase {
            provider_answers: "429 too_many_concurrent_requests twice: retried, then created",
            fault: Fault::too_many_concurrent(),
            times: 2,
            outcome: ok,
            attempts: 3,
        },
        CreateCase {
            provider_answers: "429 system_busy (new-style body) for ever: UNAVAILABLE after max_retries = 3",
            fault: Fault::system_busy_new_style(),
            times: 100,
            outcome: Err(Code::Unavailable),
            attempts: 4,
        },
        CreateCase {
            provider_answers: "429 with a Retry-After beyond the time budget: gives up at once",
            fault: Fault::Respond {
                status: 429,
                body: json!({"detail": {"status": "too_many_concurrent_requests", "message": "slow down"}}),
                headers: vec![("retry-after", "3600".into())],
            },
            times: 1,
            outcome: Err(Code::Unavailable),
            attempts: 1,
        },
        CreateCase {
            provider_answers: "503 once: a gateway may send it after ElevenLabs acted, so the voice's tag is looked up first; none there: retried, then created",
            fault: Fault::unavailable(),
            times: 1,
            outcome: ok,
            attempts: 2,
        },
        CreateCase {
            provider_answers: "500 once: looked up by its tag first; none there: retried, then created",
            fault: Fault::server_error(),
            times: 1,
            outcome: ok,
            attempts: 2,
        },
        CreateCase {
            provider_answers: "500 for ever: looked up after each answer, retried twice, then the reserved voice is returned PROCESSING, for the status engine to adopt or fail",
            fault: Fault::server_error(),
            times: 100,
            outcome: ok,
            attempts: 3,
        },
        CreateCase {
            provider_answers: "no answer before the timeout: not retried, it may hide a created voice; the reserved voice is returned PROCESSING",
            fault: Fault::Slow(Duration::from_secs(3)),
            times: 1,
            outcome: ok,
            attempts: 1,
        },
        CreateCase {
            provider_answers: "400 voice_limit_reached: RESOURCE_EXHAUSTED, not retried",
            fault: Fault::voice_limit(),
            times: 1,
            outcome: Err(Code::ResourceExhausted),
            attempts: 1,
        },
        CreateCase {
            provider_answers: "401 invalid_api_key: INTERNAL for the caller (the operator's problem), not retried",
            fault: Fault::invalid_api_key(),
            times: 1,
            outcome: Err(Code::Internal),
            attempts: 1,
        },
        CreateCase {
            provider_answers: "422 on files: INVALID_ARGUMENT naming samples, with the provider's message",
            fault: Fault::unprocessable_files(),
            times: 1,
            outcome: Err(Code::InvalidArgument),
            attempts: 1,
        },
    ]
}

#[tokio::test]
async fn provider_failures_on_create_reach_the_caller_as_the_table_says() {
    for case in create_cases() {
        let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
        fake.inject(Route::Add, case.times, case.fault);
        let result = app
            .client(Uuid::new_v4())
            .create_voice_clone(create_request("Faulty"))
            .await;
        let what = case.provider_answers;
        assert_eq!(
            result.as_ref().map(drop).map_err(tonic::Status::code),
            case.outcome,
            "{what}: {result:?}"
        );
        assert_eq!(fake.calls(Route::Add), case.attempts, "{what}: attempts");
        let rows = u64::from(case.outcome.is_ok());
        assert_eq!(app.voice_rows().await, rows, "{what}: voice rows");
        match result {
            Err(status) if status.code() == Code::Internal => {
                assert_eq!(
                    status.message(),
                    "internal error",
                    "{what}: nothing internal leaks"
                );
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                assert!(
                    status.message().contains("Expected UploadFile"),
                    "{what}: {status:?}"
                );
                let bad = status
                    .get_details_bad_request()
                    .expect("BadRequest details");
                assert_eq!(bad.field_violations[0].field, "samples", "{what}");
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn slow_and_failing_deletes_and_edits_are_retried() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Retry").await;
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
    app.worker.run_once().await.unwrap();
    assert_eq!(
        fake.calls(Route::Edit),
        3,
        "pushed after two retried failures"
    );
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
async fn a_wrongly_configured_api_key_is_sent_refused_and_internal_for_the_caller() {
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
    assert_eq!(status.message(), "internal error");
    assert_eq!(fake.requests()[0].api_key.as_deref(), Some("wrong-key"));
    assert_eq!(fake.calls(Route::Add), 1, "not retried");
}

#[tokio::test]
async fn an_update_of_a_voice_gone_at_the_provider_is_stored_and_its_push_given_up() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Vanished").await;
    fake.inject(Route::Edit, 1, Fault::not_found_404());
    let mut renamed = voice.clone();
    renamed.name = "New".into();
    let updated = client
        .update_voice(UpdateVoiceRequest {
            voice: Some(renamed),
            update_mask: Some(FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "New", "stored");
    app.worker.run_once().await.unwrap();
    assert_eq!(fake.calls(Route::Edit), 1, "a 404 is not retried");
    let row = voicehub::store::entity::voice::Entity::find_by_id(
        updated.voice_id.parse::<Uuid>().unwrap(),
    )
    .one(&app.db)
    .await
    .unwrap()
    .unwrap();
    assert!(!row.push_pending, "nothing to push to: given up");
    assert_eq!(row.name, "New");
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

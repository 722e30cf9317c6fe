//! Consent at intake: required by default, recorded append-only with the
//! voice (caller, time, request id, address, user agent), shown to the
//! owner only, and kept after the voice is deleted.

use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use uuid::Uuid;
use voicehub::{
    pb::{self, ConsentBasis, consent::Statement},
    store::entity::voice_intake,
};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, Fault, Route},
    helpers::{
        Backend, TestApp, assert_invalid_field, consent, create_request, create_voice, get_voice,
        spawn_app_with_fake,
    },
    on_both_backends,
};

/// A change that spoils a request.
type Change = fn(&mut pb::CreateVoiceCloneRequest);

/// Nothing written anywhere, the provider not called.
async fn nothing_written(app: &TestApp, fake: &FakeElevenLabs) {
    assert_eq!(app.voice_rows().await, 0);
    let intakes = voice_intake::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(intakes, 0);
    assert_eq!(fake.requests().len(), 0);
}

async fn a_create_without_consent_or_with_a_part_missing_is_refused_naming_it(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let cases: [(&str, Change); 6] = [
        ("consent", |r| r.consent = None),
        ("consent.speaker_name", |r| {
            r.consent.as_mut().unwrap().speaker_name = "  ".into();
        }),
        ("consent.basis", |r| r.consent.as_mut().unwrap().basis = 0),
        ("consent.statement", |r| {
            r.consent.as_mut().unwrap().statement = None;
        }),
        ("consent.statement_ref.version", |r| {
            r.consent.as_mut().unwrap().statement =
                Some(Statement::StatementRef(pb::ConsentStatementRef {
                    id: "consent".into(),
                    version: "two words".into(),
                }));
        }),
        ("consent.evidence_sha256", |r| {
            r.consent.as_mut().unwrap().evidence_sha256 = "not-a-hash".into();
        }),
    ];
    for (field, change) in cases {
        let mut request = create_request("Unconsented");
        change(&mut request);
        let refused = client.create_voice_clone(request).await.unwrap_err();
        assert_invalid_field(&refused, field);
        nothing_written(&app, &fake).await;
    }
}

async fn the_consent_is_recorded_with_the_caller_and_shown_to_the_owner_only(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let owner = Uuid::new_v4();
    let mut client = app.client(owner);
    let mut request = create_request("Consented");
    request.request_id = "consent-1".into();
    request.visibility = pb::Visibility::Public.into();
    let evidence = "AB".repeat(32);
    request.consent = Some(pb::Consent {
        basis: ConsentBasis::SpeakerPermission.into(),
        statement: Some(Statement::StatementText(
            "I have Ada's written permission to clone her voice.".into(),
        )),
        evidence_sha256: evidence.clone(),
        ..consent()
    });
    let before = chrono::Utc::now();
    let created = create_voice(&mut client, request).await;
    assert!(created.consent_recorded);
    let shown = created.consent.clone().expect("the owner sees the consent");
    assert_eq!(shown.basis(), ConsentBasis::SpeakerPermission);
    assert_eq!(shown.evidence_sha256, evidence.to_lowercase());
    assert!(shown.recorded_at.is_some());

    let id: Uuid = created.voice_id.parse().unwrap();
    let row = voice_intake::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    println!("intake record: {row:?}");
    assert_eq!(row.owner_user_id, owner);
    assert_eq!(row.request_id.as_deref(), Some("consent-1"));
    assert!(row.recorded_at >= before - chrono::Duration::seconds(1));
    assert!(
        row.caller_address
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(row.user_agent.as_deref().unwrap().contains("tonic"));
    assert_eq!(row.consent_speaker_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(row.consent_basis.as_deref(), Some("speaker_permission"));
    assert!(row.sample_report.is_some());

    assert_eq!(
        get_voice(&mut client, &created.voice_id).await.consent,
        Some(shown)
    );
    let other = get_voice(&mut app.client(Uuid::new_v4()), &created.voice_id).await;
    assert_eq!(
        other.consent, None,
        "another user sees only that consent was recorded"
    );
    assert!(other.consent_recorded);
    // A listing carries the flag, not the record.
    let listed = client
        .list_user_voices(pb::ListUserVoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert!(listed[0].consent_recorded && listed[0].consent.is_none());
}

async fn the_record_outlives_the_voice_and_cannot_be_changed(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let created = create_voice(&mut client, "Deleted later").await;
    client
        .delete_voice(pb::DeleteVoiceRequest {
            voice_id: created.voice_id.clone(),
        })
        .await
        .unwrap();
    let id: Uuid = created.voice_id.parse().unwrap();
    let kept = voice_intake::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap();
    assert!(kept.is_some(), "the record outlives the voice");
    for statement in [
        "UPDATE voice_intakes SET consent_speaker_name = 'someone else'",
        "DELETE FROM voice_intakes",
    ] {
        let refused = app.db.execute_unprepared(statement).await;
        assert!(refused.is_err(), "append-only: {statement}");
    }
    let after = voice_intake::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap();
    assert_eq!(after, kept);
}

async fn a_create_the_provider_refuses_leaves_its_record_and_no_voice(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    fake.inject(Route::Add, 1, Fault::voice_limit());
    let mut request = create_request("Refused at the provider");
    request.request_id = "refused-1".into();
    let refused = app
        .client(Uuid::new_v4())
        .create_voice_clone(request)
        .await
        .unwrap_err();
    println!("refused by the provider: {refused:?}");
    assert_eq!(app.voice_rows().await, 0, "the reservation is released");
    let records = voice_intake::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(records.len(), 1, "the attempt stays on record");
    assert_eq!(records[0].request_id.as_deref(), Some("refused-1"));
}

async fn with_consent_not_required_a_create_without_it_records_none(backend: Backend) {
    let (app, _fake) = spawn_app_with_fake(backend, |c| c.require_consent = false).await;
    let mut client = app.client(Uuid::new_v4());
    let mut request = create_request("No consent needed");
    request.consent = None;
    let created = create_voice(&mut client, request).await;
    assert!(!created.consent_recorded);
    assert_eq!(created.consent, None);
    assert!(
        created.sample_report.is_some(),
        "the report is kept all the same"
    );
}

on_both_backends!(
    a_create_without_consent_or_with_a_part_missing_is_refused_naming_it,
    the_consent_is_recorded_with_the_caller_and_shown_to_the_owner_only,
    the_record_outlives_the_voice_and_cannot_be_changed,
    a_create_the_provider_refuses_leaves_its_record_and_no_voice,
    with_consent_not_required_a_create_without_it_records_none,
);

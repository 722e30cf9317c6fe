use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{
    CreateVoiceCloneRequest, DeleteVoiceRequest, GetVoiceRequest, ListUserVoicesRequest,
    UpdateVoiceRequest, WatchVoiceStatusRequest,
};

use crate::helpers::{Backend, JWT_SECRET, TestApp, spawn_app, spawn_app_with};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(claims: &serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn list_with(app: &TestApp, header: Option<&str>) -> tonic::Status {
    let request = ListUserVoicesRequest::default();
    let result = match header {
        Some(h) => app.with_authorization(h).list_user_voices(request).await,
        None => app.anonymous().list_user_voices(request).await,
    };
    result.expect_err("call must be refused")
}

#[tokio::test]
async fn every_bad_credential_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = Uuid::new_v4().to_string();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing metadata", None, "missing authorization"),
        (
            "not a bearer scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            "Bearer",
        ),
        ("empty bearer", Some("Bearer ".into()), "Bearer"),
        (
            "malformed token",
            Some("Bearer not.a.jwt".into()),
            "malformed",
        ),
        (
            "expired token",
            Some(format!(
                "Bearer {}",
                sign(&json!({"sub": user, "exp": now() - 3600}), JWT_SECRET)
            )),
            "expired",
        ),
        (
            "signed with another secret",
            Some(format!(
                "Bearer {}",
                sign(
                    &json!({"sub": user, "exp": now() + 600}),
                    "another-secret-another-secret-xx"
                )
            )),
            "signature",
        ),
        (
            "no exp claim",
            Some(format!(
                "Bearer {}",
                sign(&json!({"sub": user}), JWT_SECRET)
            )),
            "claim",
        ),
        (
            "sub is not a UUID",
            Some(format!(
                "Bearer {}",
                sign(&json!({"sub": "alice", "exp": now() + 600}), JWT_SECRET)
            )),
            "UUID",
        ),
        (
            "not valid yet (nbf an hour ahead)",
            Some(format!(
                "Bearer {}",
                sign(
                    &json!({"sub": user, "exp": now() + 7200, "nbf": now() + 3600}),
                    JWT_SECRET
                )
            )),
            "not valid yet",
        ),
        (
            "issued an hour ahead (iat)",
            Some(format!(
                "Bearer {}",
                sign(
                    &json!({"sub": user, "exp": now() + 7200, "iat": now() + 3600}),
                    JWT_SECRET
                )
            )),
            "issued in the future",
        ),
    ];
    // One spelling per user, and never the nil UUID.
    let id = Uuid::new_v4();
    let other_spellings = [
        Uuid::nil().to_string(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.to_string().to_uppercase(),
        id.simple().to_string(),
    ];
    let cases = cases.into_iter().chain(other_spellings.iter().map(|sub| {
        (
            "sub spelled otherwise, or nil",
            Some(format!(
                "Bearer {}",
                sign(&json!({"sub": sub, "exp": now() + 600}), JWT_SECRET)
            )),
            "UUID",
        )
    }));
    for (case, header, needle) in cases {
        let status = list_with(&app, header.as_deref()).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(status.message().contains(needle), "{case}: {status:?}");
    }
}

#[tokio::test]
async fn two_authorization_entries_are_refused_not_resolved() {
    let app = spawn_app(Backend::Sqlite).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let tokens = [alice, bob].map(|user| {
        format!(
            "Bearer {}",
            app.auth.mint(user, Duration::from_mins(10)).unwrap()
        )
    });
    let mut client = voicehub::pb::voice_service_client::VoiceServiceClient::with_interceptor(
        app.channel.clone(),
        move |mut request: tonic::Request<()>| {
            for token in &tokens {
                request
                    .metadata_mut()
                    .append("authorization", token.parse().unwrap());
            }
            Ok(request)
        },
    );
    let status = client
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("exactly one"), "{status:?}");
}

#[tokio::test]
async fn a_wrongly_signed_hs512_token_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": Uuid::new_v4().to_string(), "exp": now() + 600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let status = list_with(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.auth.issuer = Some("https://auth.example".into());
        c.auth.audience = Some("voicehub".into());
    })
    .await;
    let sub = Uuid::new_v4().to_string();
    let good =
        json!({"sub": sub, "exp": now() + 600, "iss": "https://auth.example", "aud": "voicehub"});
    let header = format!("Bearer {}", sign(&good, JWT_SECRET));
    app.with_authorization(&header)
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .expect("a token with the right iss and aud is accepted");
    for (case, claims) in [
        (
            "wrong issuer",
            json!({"sub": sub, "exp": now() + 600, "iss": "evil", "aud": "voicehub"}),
        ),
        (
            "wrong audience",
            json!({"sub": sub, "exp": now() + 600, "iss": "https://auth.example", "aud": "x"}),
        ),
        (
            "no issuer",
            json!({"sub": sub, "exp": now() + 600, "aud": "voicehub"}),
        ),
    ] {
        let status = list_with(&app, Some(&format!("Bearer {}", sign(&claims, JWT_SECRET)))).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
    }
}

#[tokio::test]
async fn the_minted_token_of_the_app_is_accepted() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app
        .auth
        .mint(Uuid::new_v4(), Duration::from_mins(1))
        .unwrap();
    let response = app
        .with_authorization(&format!("Bearer {token}"))
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap();
    assert!(response.into_inner().voices.is_empty());
}

#[tokio::test]
async fn every_rpc_needs_a_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut anonymous = app.anonymous();
    let refused = [
        anonymous
            .get_voice(GetVoiceRequest::default())
            .await
            .map(drop),
        anonymous
            .list_user_voices(ListUserVoicesRequest::default())
            .await
            .map(drop),
        anonymous
            .create_voice_clone(CreateVoiceCloneRequest::default())
            .await
            .map(drop),
        anonymous
            .update_voice(UpdateVoiceRequest::default())
            .await
            .map(drop),
        anonymous
            .delete_voice(DeleteVoiceRequest::default())
            .await
            .map(drop),
        anonymous
            .watch_voice_status(WatchVoiceStatusRequest::default())
            .await
            .map(drop),
    ];
    for result in refused {
        assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
    }
}

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{
    CreateVoiceCloneRequest, DeleteVoiceRequest, GetVoiceRequest, ListUserVoicesRequest,
    UpdateVoiceRequest, WatchVoiceStatusRequest,
};

use crate::helpers::{Backend, JWT_SECRET, TestApp, create_voice, spawn_app, spawn_app_with};

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
        anonymous
            .analyze_samples(voicehub::pb::AnalyzeSamplesRequest::default())
            .await
            .map(drop),
    ];
    for result in refused {
        assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn an_oversized_token_is_unauthenticated_for_its_call_and_the_connection_lives_on() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = Uuid::new_v4();
    // A stream on the same HTTP/2 connection, open across the bad call.
    let mut owner = app.client(user);
    let mut stream = owner
        .watch_voice_status(WatchVoiceStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    for size in [10 * 1024, 64 * 1024, 200 * 1024] {
        let header = format!("Bearer {}", "a".repeat(size));
        let err = app
            .with_authorization(&header)
            .list_user_voices(ListUserVoicesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{size} bytes: {err:?}");
        assert!(err.message().contains("too long"), "{size} bytes: {err:?}");
    }
    // The connection and its other calls are unharmed.
    let listed = owner
        .list_user_voices(ListUserVoicesRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().voices.is_empty());
    create_voice(&mut app.client(user), "Still watched").await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream still delivers")
        .unwrap()
        .unwrap();
    assert_eq!(event.voice.unwrap().name, "Still watched");
}

#[tokio::test]
async fn a_watch_stream_ends_unauthenticated_when_its_token_expires() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = Uuid::new_v4();
    let voice = create_voice(&mut app.client(user), "Watched briefly").await;
    // Expired 58 s ago: still inside the 60 s clock leeway, so accepted,
    // and no longer so two seconds from now.
    let token = sign(
        &json!({"sub": user.to_string(), "exp": now() - 58}),
        JWT_SECRET,
    );
    let mut stream = app
        .with_authorization(&format!("Bearer {token}"))
        .watch_voice_status(WatchVoiceStatusRequest {
            voice_ids: vec![voice.voice_id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    assert_eq!(snapshot.voice.unwrap().voice_id, voice.voice_id);
    let end = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("the stream ends when the token does")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{end:?}");
    // Its subscription is gone with it (dropped just after the last frame).
    for _ in 0..200 {
        if app.metric("voicehub_watch_streams") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.metric("voicehub_watch_streams"), 0);
}

//! Bounded resources: beyond each limit a call is RESOURCE_EXHAUSTED at
//! once, names the limit, writes nothing and calls no provider; the
//! refusals are counted.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use uuid::Uuid;
use voicehub::pb::{self, GetVoiceRequest, WatchVoiceStatusRequest};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{
        Backend, Client, TestApp, create_request, create_voice, replica_of, serving_status,
        spawn_app_with, spawn_app_with_fake,
    },
    on_both_backends,
};

fn assert_exhausted(status: &Status, words: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(words), "{status:?}");
}

/// How long the refusal says to wait.
fn retry_after(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .expect("a RetryInfo detail")
        .retry_delay
        .expect("a delay")
}

fn refusals(app: &TestApp, limit: &str) -> u64 {
    app.metric(&format!(
        "voicehub_limit_refusals_total{{limit=\"{limit}\"}}"
    ))
}

async fn open_watch(client: &mut Client) -> Result<tonic::Streaming<pb::VoiceStatusEvent>, Status> {
    client
        .watch_voice_status(WatchVoiceStatusRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

async fn watch_streams_are_bounded_per_user_and_in_all(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.limits.watches_per_user = 2;
        c.limits.watches = 3;
    })
    .await;
    let (mut alice, mut bob) = (app.client(Uuid::new_v4()), app.client(Uuid::new_v4()));
    let first = open_watch(&mut alice).await.unwrap();
    let _second = open_watch(&mut alice).await.unwrap();
    let refused = open_watch(&mut alice).await.unwrap_err();
    assert_exhausted(&refused, "at most 2 open watch streams");
    let _bobs = open_watch(&mut bob).await.unwrap();
    let refused = open_watch(&mut bob).await.unwrap_err();
    assert_exhausted(&refused, "most open watch streams");
    assert_eq!(app.metric("voicehub_watch_streams"), 3);
    assert_eq!(
        (
            refusals(&app, "watches_per_user"),
            refusals(&app, "watches")
        ),
        (1, 1)
    );

    // Closing a stream gives its place back (once the server hears of it).
    drop(first);
    let mut reopened = None;
    for _ in 0..200 {
        match open_watch(&mut alice).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "the closed stream's place was freed");
}

async fn creates_beyond_the_hourly_rate_are_refused_with_when_to_retry(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |c| c.limits.creates_per_hour = 2).await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let mut first = create_request("First");
    first.request_id = "first-take".into();
    let kept = create_voice(&mut client, first.clone()).await;
    create_voice(&mut client, "Second").await;
    let refused = client
        .create_voice_clone(create_request("Third"))
        .await
        .unwrap_err();
    assert_exhausted(&refused, "2 voice creations per hour");
    let wait = retry_after(&refused);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_hours(1),
        "{wait:?}"
    );
    // A retry of an earlier create is not a new one: it is answered.
    let again = create_voice(&mut client, first).await;
    assert_eq!(again.voice_id, kept.voice_id);
    // Another user has their own.
    create_voice(&mut app.client(Uuid::new_v4()), "Someone else's").await;
    assert_eq!(
        app.voice_rows().await,
        3,
        "the refused create wrote nothing"
    );
    assert_eq!(fake.calls(Route::Add), 3, "nor reached the provider");
    assert_eq!(refusals(&app, "create_rate"), 1);
}

on_both_backends!(
    watch_streams_are_bounded_per_user_and_in_all,
    creates_beyond_the_hourly_rate_are_refused_with_when_to_retry,
    requests_other_than_uploads_are_capped_at_64_kib,
    a_held_body_declaring_a_large_message_is_refused_at_once,
);

#[tokio::test]
async fn the_creation_rate_is_counted_across_replicas_and_by_the_day_too() {
    let (a, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.limits.creates_per_hour = 0;
        c.limits.creates_per_day = 3;
    })
    .await;
    let b = replica_of(&a, &fake, |c| {
        c.limits.creates_per_hour = 0;
        c.limits.creates_per_day = 3;
    })
    .await;
    let user = Uuid::new_v4();
    create_voice(&mut a.client(user), "On A").await;
    create_voice(&mut b.client(user), "On B").await;
    create_voice(&mut a.client(user), "On A again").await;
    let refused = b
        .client(user)
        .create_voice_clone(create_request("One too many"))
        .await
        .unwrap_err();
    assert_exhausted(&refused, "3 voice creations per day");
    assert!(retry_after(&refused) <= Duration::from_hours(24));
    assert_eq!(a.voice_rows().await, 3);
    assert_eq!(fake.calls(Route::Add), 3);
}

/// A server with one create held at the (fake) provider for 1.5 s, and
/// that create's call.
async fn with_a_create_held(
    adjust: impl FnOnce(&mut voicehub::config::Config),
) -> (
    TestApp,
    crate::fake_elevenlabs::FakeElevenLabs,
    Uuid,
    pb::Voice,
    tokio::task::JoinHandle<Result<tonic::Response<pb::Voice>, Status>>,
) {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, adjust).await;
    let user = Uuid::new_v4();
    let existing = create_voice(&mut app.client(user), "Existing").await;
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_millis(1_500)));
    let mut slow = app.client(user);
    let held = tokio::spawn(async move { slow.create_voice_clone(create_request("Slow")).await });
    for _ in 0..200 {
        if fake.calls(Route::Add) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.calls(Route::Add),
        2,
        "the slow create is at the provider"
    );
    (app, fake, user, existing, held)
}

#[tokio::test]
async fn an_upload_beyond_the_limit_is_refused_before_it_is_read_and_others_still_served() {
    let (app, fake, user, existing, held) = with_a_create_held(|c| {
        c.limits.concurrent_uploads = 1;
    })
    .await;
    let refused = app
        .client(user)
        .create_voice_clone(create_request("Second upload"))
        .await
        .unwrap_err();
    assert_exhausted(&refused, "uploads (CreateVoiceClone, AnalyzeSamples)");
    assert_eq!(retry_after(&refused), Duration::from_secs(1));
    let got = app
        .client(user)
        .get_voice(GetVoiceRequest {
            voice_id: existing.voice_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().voice_id, existing.voice_id);
    held.await.unwrap().unwrap();
    assert_eq!(app.voice_rows().await, 2, "only the admitted creates wrote");
    assert_eq!(fake.calls(Route::Add), 2);
    assert_eq!(refusals(&app, "concurrent_uploads"), 1);
    assert_eq!(app.metric("voicehub_uploads_in_flight"), 0);
    // With the slow create done, an upload is admitted again.
    create_voice(&mut app.client(user), "After").await;
}

#[tokio::test]
async fn a_unary_call_beyond_the_limit_is_refused_but_health_and_streams_are_not_counted() {
    let (app, fake, user, existing, held) = with_a_create_held(|c| {
        c.limits.concurrent_rpcs = 1;
    })
    .await;
    let refused = app
        .client(user)
        .get_voice(GetVoiceRequest {
            voice_id: existing.voice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_exhausted(&refused, "concurrent calls");
    assert_eq!(retry_after(&refused), Duration::from_secs(1));
    assert_eq!(app.metric("voicehub_rpcs_in_flight"), 1);
    assert_eq!(
        serving_status(&mut app.health()).await,
        ServingStatus::Serving
    );
    let _stream = open_watch(&mut app.client(user)).await.unwrap();
    held.await.unwrap().unwrap();
    assert_eq!(refusals(&app, "concurrent_rpcs"), 1);
    assert_eq!(fake.calls(Route::Add), 2);
    let got = app
        .client(user)
        .get_voice(GetVoiceRequest {
            voice_id: existing.voice_id,
        })
        .await;
    assert!(got.is_ok(), "{got:?}");
}

async fn requests_other_than_uploads_are_capped_at_64_kib(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let voice = create_voice(&mut client, "Small").await;
    let big = "d".repeat(1024 * 1024);
    let update = |description: String| pb::UpdateVoiceRequest {
        voice: Some(pb::Voice {
            description,
            ..voice.clone()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["description".into()],
        }),
    };
    let refused = client.update_voice(update(big.clone())).await.unwrap_err();
    println!("1 MiB UpdateVoice: {refused:?}");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("larger than this method accepts"),
        "{refused:?}"
    );
    let refused = client
        .get_voice(GetVoiceRequest { voice_id: big })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // Nothing changed; a request of a normal size still goes through on the
    // same connection.
    let stored = client
        .get_voice(GetVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.revision, voice.revision);
    let updated = client
        .update_voice(update("a fine description".into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.revision, voice.revision + 1);
}

/// A raw HTTP/2 client sends the headers of an UpdateVoice and a gRPC
/// message header declaring 50 MiB, then holds the rest: the server answers
/// OUT_OF_RANGE at once, before any of it arrives (and before reserving a
/// buffer of the declared size).
async fn a_held_body_declaring_a_large_message_is_refused_at_once(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let token = app
        .auth
        .mint(Uuid::new_v4(), Duration::from_mins(5))
        .unwrap();
    let mut declared = vec![0_u8];
    declared.extend_from_slice(&(50_u32 << 20).to_be_bytes());
    declared.extend_from_slice(b"only a little of it");
    let mut call = hold(&mut client, app.addr, ("UpdateVoice", &token), declared).await;
    let (code, _) = answer(&mut call, Duration::from_secs(5))
        .await
        .expect("answered without waiting for the body");
    assert_eq!(code, Code::OutOfRange as i32);
}

/// A call whose headers and the start of its message were sent, and whose
/// rest is held.
struct Held {
    response: h2::client::ResponseFuture,
    _body: h2::SendStream<bytes::Bytes>,
}

/// Opens a call to `method` on `client` as `token`, sends `start` of its
/// body and holds the rest.
async fn hold(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    (method, token): (&str, &str),
    start: Vec<u8>,
) -> Held {
    let mut ready = client.clone().ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/voicehub.v1.VoiceService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut body) = ready.send_request(request, false).unwrap();
    body.send_data(start.into(), false).unwrap();
    *client = ready;
    Held {
        response,
        _body: body,
    }
}

/// The gRPC status of `held` and its message, once answered within `within`;
/// `None` while it is still waiting.
async fn answer(held: &mut Held, within: Duration) -> Option<(i32, String)> {
    let response = tokio::time::timeout(within, &mut held.response)
        .await
        .ok()?;
    let (parts, mut body) = response.unwrap().into_parts();
    let headers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        while body.data().await.is_some() {}
        body.trailers().await.unwrap().unwrap()
    };
    let code = headers["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decoded(m.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

/// A `grpc-message` as text (it is percent-encoded on the wire).
fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(byte) = raw
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A message header declaring 40 bytes, then one of them.
fn trickle() -> Vec<u8> {
    let mut start = vec![0_u8];
    start.extend_from_slice(&40_u32.to_be_bytes());
    start.push(0x0a);
    start
}

#[tokio::test]
async fn one_user_holding_uploads_and_unary_bodies_leaves_the_others_served() {
    let arrival = Duration::from_secs(2);
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.limits.concurrent_uploads = 8;
        c.limits.concurrent_uploads_per_user = 2;
        c.limits.concurrent_rpcs = 20;
        c.limits.concurrent_rpcs_per_user = 5;
        c.limits.request_arrival = arrival;
        c.limits.upload_arrival = arrival;
    })
    .await;
    let (attacker, victim) = (Uuid::new_v4(), Uuid::new_v4());
    let existing = create_voice(&mut app.client(victim), "Existing").await;
    let token = app.auth.mint(attacker, Duration::from_mins(5)).unwrap();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut h2, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);

    // The attacker trickles 8 uploads and 20 unary bodies.
    let mut uploads = Vec::new();
    for _ in 0..8 {
        uploads.push(hold(&mut h2, app.addr, ("CreateVoiceClone", &token), trickle()).await);
    }
    let mut reads = Vec::new();
    for _ in 0..20 {
        reads.push(hold(&mut h2, app.addr, ("GetVoice", &token), trickle()).await);
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    for mut call in uploads.into_iter().chain(reads) {
        match answer(&mut call, Duration::from_millis(300)).await {
            None => held.push(call),
            Some((code, message)) => {
                assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
                assert!(message.contains("a user may have at most"), "{message}");
                refused += 1;
            }
        }
    }
    // Uploads are calls too: the 2 held uploads take 2 of the 5 calls.
    assert_eq!(
        (held.len(), refused),
        (2 + 3, 6 + 17),
        "held within the user's shares"
    );
    assert_eq!(refusals(&app, "concurrent_uploads_per_user"), 6);
    assert_eq!(refusals(&app, "concurrent_rpcs_per_user"), 17);

    // Calls forged in the other user's name (another secret) are refused at
    // once by the authenticator: they hold none of that user's share.
    let forged = voicehub::auth::Authenticator::new(&voicehub::auth::AuthConfig {
        secret: secrecy::SecretString::from("another secret, at least 32 bytes long".to_owned()),
        ..crate::helpers::auth_config()
    })
    .mint(victim, Duration::from_mins(5))
    .unwrap();
    for _ in 0..10 {
        let mut call = hold(&mut h2, app.addr, ("CreateVoiceClone", &forged), trickle()).await;
        let (code, _) = answer(&mut call, Duration::from_secs(2))
            .await
            .expect("answered at once");
        assert_eq!(code, Code::Unauthenticated as i32);
    }

    // Meanwhile another user uploads and reads, and health says SERVING.
    let mut client = app.client(victim);
    create_voice(&mut client, "Served while held").await;
    client
        .get_voice(GetVoiceRequest {
            voice_id: existing.voice_id,
        })
        .await
        .unwrap();
    assert_eq!(
        serving_status(&mut app.health()).await,
        ServingStatus::Serving
    );

    // The held bodies never arrive: each call ends at the arrival timeout.
    let mut ended = 0;
    for call in &mut held {
        if let Some((code, message)) = answer(call, arrival * 3).await
            && code == Code::DeadlineExceeded as i32
        {
            assert!(message.contains("did not arrive within 2 s"), "{message}");
            ended += 1;
        }
    }
    assert_eq!(ended, 5, "every held call ended");
    assert_eq!(app.metric("voicehub_uploads_in_flight"), 0);
    assert_eq!(app.metric("voicehub_rpcs_in_flight"), 0);
    assert_eq!(
        app.voice_rows().await,
        2,
        "the victim's two voices, no other"
    );
}

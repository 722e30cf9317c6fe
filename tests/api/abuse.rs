//! The abuse suite: malformed requests across every RPC, and one user
//! reaching for another's voices with every field that takes a voice id,
//! and with every kind of bad token. Each case asserts the documented code
//! (naming the field) and that nothing was written, changed or sent to the
//! provider.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use prost_types::FieldMask;
use serde_json::json;
use tonic::{Code, Status};
use uuid::Uuid;
use voicehub::{
    pb::{
        self, AudioSample, CreateVoiceCloneRequest, DeleteVoiceRequest, GetVoiceRequest,
        ListUserVoicesRequest, UpdateVoiceRequest, WatchVoiceStatusRequest,
    },
    store::{Visibility, VoiceStatus},
};

use crate::{
    fake_elevenlabs::Route,
    helpers::{
        Backend, Bearer, Client, JWT_SECRET, TestApp, WebhookClient, assert_invalid_field,
        create_request, create_voice, mp3, spawn_app_with_fake, wav,
    },
    on_both_backends,
};

const MIB: usize = 1024 * 1024;

/// One call of any RPC.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a test table, built once
enum Call {
    Create(CreateVoiceCloneRequest),
    Get(GetVoiceRequest),
    List(ListUserVoicesRequest),
    Update(UpdateVoiceRequest),
    Delete(DeleteVoiceRequest),
    Watch(WatchVoiceStatusRequest),
    Analyze(pb::AnalyzeSamplesRequest),
    CreateEndpoint(pb::CreateWebhookEndpointRequest),
    ListEndpoints,
    UpdateEndpoint(pb::UpdateWebhookEndpointRequest),
    DeleteEndpoint(pb::DeleteWebhookEndpointRequest),
    RotateSecret(pb::RotateWebhookSecretRequest),
    SendTest(pb::SendTestWebhookRequest),
    ListAttempts(pb::ListWebhookDeliveriesRequest),
}

/// One caller's clients of both services.
struct Clients {
    voices: Client,
    webhooks: WebhookClient,
}

impl Clients {
    /// The clients of `user`.
    fn of(app: &TestApp, user: Uuid) -> Self {
        Clients {
            voices: app.client(user),
            webhooks: app.webhooks(user),
        }
    }

    /// Clients that send exactly `authorization: <header>`.
    fn with_authorization(app: &TestApp, header: &str) -> Self {
        Clients {
            voices: app.with_authorization(header),
            webhooks: pb::webhook_service_client::WebhookServiceClient::with_interceptor(
                app.channel.clone(),
                Bearer(header.to_owned()),
            ),
        }
    }
}

impl Call {
    /// Makes the call; the error, if it failed (a stream that opens counts
    /// as success).
    async fn run(self, clients: &mut Clients) -> Option<Status> {
        let (voices, webhooks) = (&mut clients.voices, &mut clients.webhooks);
        match self {
            Call::Create(r) => voices.create_voice_clone(r).await.err(),
            Call::Get(r) => voices.get_voice(r).await.err(),
            Call::List(r) => voices.list_user_voices(r).await.err(),
            Call::Update(r) => voices.update_voice(r).await.err(),
            Call::Delete(r) => voices.delete_voice(r).await.err(),
            Call::Watch(r) => voices.watch_voice_status(r).await.err(),
            Call::Analyze(r) => voices.analyze_samples(r).await.err(),
            Call::CreateEndpoint(r) => webhooks.create_webhook_endpoint(r).await.err(),
            Call::ListEndpoints => webhooks
                .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
                .await
                .err(),
            Call::UpdateEndpoint(r) => webhooks.update_webhook_endpoint(r).await.err(),
            Call::DeleteEndpoint(r) => webhooks.delete_webhook_endpoint(r).await.err(),
            Call::RotateSecret(r) => webhooks.rotate_webhook_secret(r).await.err(),
            Call::SendTest(r) => webhooks.send_test_webhook(r).await.err(),
            Call::ListAttempts(r) => webhooks.list_webhook_deliveries(r).await.err(),
        }
    }
}

fn create(change: impl FnOnce(&mut CreateVoiceCloneRequest)) -> Call {
    let mut request = create_request("Abuse");
    change(&mut request);
    Call::Create(request)
}

fn sample(filename: &str, content_type: &str, data: Vec<u8>) -> AudioSample {
    AudioSample {
        filename: filename.into(),
        content_type: content_type.into(),
        data: data.into(),
    }
}

fn update(voice_id: &str, paths: &[&str], change: impl FnOnce(&mut pb::Voice)) -> Call {
    let mut voice = pb::Voice {
        voice_id: voice_id.to_owned(),
        name: "Renamed".into(),
        visibility: pb::Visibility::Private as i32,
        ..pb::Voice::default()
    };
    change(&mut voice);
    Call::Update(UpdateVoiceRequest {
        voice: Some(voice),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(ToString::to_string).collect(),
        }),
    })
}

fn list(change: impl FnOnce(&mut ListUserVoicesRequest)) -> Call {
    let mut request = ListUserVoicesRequest::default();
    change(&mut request);
    Call::List(request)
}

fn watch(ids: Vec<String>) -> Call {
    Call::Watch(WatchVoiceStatusRequest { voice_ids: ids })
}

/// The state of every voice, to compare before and after.
async fn snapshot(app: &TestApp) -> Snapshot {
    use sea_orm::{EntityTrait, QueryOrder};
    use voicehub::store::entity::{voice, webhook_endpoint};
    let voices = voice::Entity::find()
        .order_by_asc(voice::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.name, v.revision, v.status, v.visibility))
        .collect();
    let endpoints = webhook_endpoint::Entity::find()
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.url, e.secret, e.enabled, e.updated_at))
        .collect();
    (voices, endpoints)
}

/// Every voice and every webhook endpoint, by what a change would alter.
type Snapshot = (
    Vec<(Uuid, String, i64, VoiceStatus, Visibility)>,
    Vec<(Uuid, String, String, bool, chrono::DateTime<chrono::Utc>)>,
);

/// One malformed call, and the field its refusal must name.
type Case = (&'static str, Call, String);

fn cases(rows: Vec<(&'static str, Call, &str)>) -> Vec<Case> {
    rows.into_iter()
        .map(|(case, call, field)| (case, call, field.to_owned()))
        .collect()
}

/// Malformed CreateVoiceClone requests: names, samples, labels and the rest.
#[allow(clippy::too_many_lines)] // a table, one entry per case
fn bad_creates() -> Vec<Case> {
    cases(vec![
        ("empty name", create(|r| r.name.clear()), "name"),
        (
            "101-character name",
            create(|r| r.name = "n".repeat(101)),
            "name",
        ),
        (
            "control character in the name",
            create(|r| r.name = "Nar\u{7}rator".into()),
            "name",
        ),
        ("blank name", create(|r| r.name = "   ".into()), "name"),
        (
            "NUL in the name",
            create(|r| r.name = "bad\u{0}name".into()),
            "name",
        ),
        (
            "line separator in the name",
            create(|r| r.name = "two\u{2028}lines".into()),
            "name",
        ),
        (
            "Unicode tag characters in the name",
            create(|r| r.name = "tagged\u{E0041}".into()),
            "name",
        ),
        (
            "zero-width-only name",
            create(|r| r.name = "\u{200B}\u{200D}".into()),
            "name",
        ),
        (
            "a name that shows as blank (HANGUL FILLER, BRAILLE PATTERN BLANK)",
            create(|r| r.name = "\u{3164}\u{2800}".into()),
            "name",
        ),
        (
            "a zero-width joiner between letters in the name",
            create(|r| r.name = "Nar\u{200D}rator".into()),
            "name",
        ),
        (
            "right-to-left override in the name",
            create(|r| r.name = "abc\u{202E}def".into()),
            "name",
        ),
        (
            "501-character description",
            create(|r| r.description = "d".repeat(501)),
            "description",
        ),
        (
            "control character in the description",
            create(|r| r.description = "a\u{0}b".into()),
            "description",
        ),
        ("no samples", create(|r| r.samples.clear()), "samples"),
        (
            "26 samples",
            create(|r| r.samples = vec![r.samples[0].clone(); 26]),
            "samples",
        ),
        (
            "empty sample",
            create(|r| r.samples[0].data = Vec::new().into()),
            "samples[0].data",
        ),
        (
            "sample over 10 MiB",
            create(|r| {
                let mut big = wav(50);
                big.resize(10 * MIB + 1, 0);
                r.samples = vec![sample("big.wav", "audio/wav", big)];
            }),
            "samples[0].data",
        ),
        (
            "samples over 50 MiB in all",
            create(|r| {
                let mut ten = wav(50);
                ten.resize(10 * MIB, 0);
                r.samples = (0..5)
                    .map(|i| sample(&format!("{i}.wav"), "audio/wav", ten.clone()))
                    .collect();
                r.samples.push(sample("extra.wav", "audio/wav", wav(50)));
            }),
            "samples",
        ),
        (
            "empty filename",
            create(|r| r.samples[0].filename = String::new()),
            "samples[0].filename",
        ),
        (
            "filename of 256 characters",
            create(|r| r.samples[1].filename = "f".repeat(256)),
            "samples[1].filename",
        ),
        (
            "filename with a backslash",
            create(|r| r.samples[0].filename = "c:\\x.wav".into()),
            "samples[0].filename",
        ),
        (
            "filename with a path",
            create(|r| r.samples[0].filename = "../etc/passwd".into()),
            "samples[0].filename",
        ),
        (
            "text sent as audio/wav",
            create(|r| {
                r.samples[0] = sample(
                    "a.wav",
                    "audio/wav",
                    b"just some text, long enough".repeat(40),
                );
            }),
            "samples[0].data",
        ),
        (
            "PDF sent as audio/mpeg",
            create(|r| r.samples[1] = sample("b.mp3", "audio/mpeg", b"%PDF-1.7 ".repeat(100))),
            "samples[1].data",
        ),
        (
            "a bare RIFF/WAVE header",
            create(|r| r.samples[0].data = b"RIFF\x04\x00\x00\x00WAVE".to_vec().into()),
            "samples[0].data",
        ),
        (
            "a WAV signature followed by random bytes",
            create(|r| {
                let mut data = b"RIFF\x00\x10\x00\x00WAVE".to_vec();
                data.extend(
                    (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]),
                );
                r.samples[0].data = data.into();
            }),
            "samples[0].data",
        ),
        (
            "ID3 then text",
            create(|r| {
                r.samples[1].data = b"ID3\x03\x00\x00\x00\x00\x00\x00Dear diary, today I uploaded a text file as audio."
                .to_vec()
                .into();
            }),
            "samples[1].data",
        ),
        (
            "OggS then text",
            create(|r| {
                r.samples[0] = sample(
                    "a.ogg",
                    "audio/ogg",
                    b"OggS\x00\x02\x00\x00 and after the capture pattern, prose".to_vec(),
                );
            }),
            "samples[0].data",
        ),
        (
            "WAV labelled audio/mpeg",
            create(|r| r.samples[0].content_type = "audio/mpeg".into()),
            "samples[0].content_type",
        ),
        (
            "image content type",
            create(|r| r.samples[1] = sample("b.png", "image/png", mp3())),
            "samples[1].content_type",
        ),
        (
            "half a second of audio",
            create(|r| r.samples[0].data = wav(500).into()),
            "samples[0].data",
        ),
        (
            "unknown visibility",
            create(|r| r.visibility = 7),
            "visibility",
        ),
        (
            "11 labels",
            create(|r| r.labels = (0..11).map(|i| (format!("k{i}"), "v".into())).collect()),
            "labels",
        ),
        (
            "label key with capitals",
            create(|r| r.labels = [("Key".into(), "v".into())].into()),
            "labels[\"Key\"]",
        ),
        (
            "33-character label key",
            create(|r| r.labels = [("k".repeat(33), "v".into())].into()),
            "labels[\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\"]",
        ),
        (
            "65-character label value",
            create(|r| r.labels = [("accent".into(), "v".repeat(65))].into()),
            "labels[\"accent\"]",
        ),
        (
            "zero-width label value",
            create(|r| r.labels = [("accent".into(), "a\u{200B}b".into())].into()),
            "labels[\"accent\"]",
        ),
        (
            "reserved label key",
            create(|r| r.labels = [("voicehub_id".into(), "x".into())].into()),
            "labels[\"voicehub_id\"]",
        ),
        (
            "language that is not BCP-47",
            create(|r| r.language = "english please".into()),
            "language",
        ),
        (
            "gender of 33 characters",
            create(|r| r.gender = "g".repeat(33)),
            "gender",
        ),
        (
            "request_id with a space",
            create(|r| r.request_id = "take 1".into()),
            "request_id",
        ),
        (
            "65-character request_id",
            create(|r| r.request_id = "r".repeat(65)),
            "request_id",
        ),
    ])
}

/// Malformed AnalyzeSamples requests: its samples are checked as a create's.
fn bad_analyses() -> Vec<Case> {
    let analyze = |samples: Vec<AudioSample>| Call::Analyze(pb::AnalyzeSamplesRequest { samples });
    cases(vec![
        ("analysis of no samples", analyze(vec![]), "samples"),
        (
            "analysis of 26 samples",
            analyze(vec![sample("a.wav", "audio/wav", wav(1_000)); 26]),
            "samples",
        ),
        (
            "analysis of a sample labelled MP3 holding a WAV",
            analyze(vec![sample("a.mp3", "audio/mpeg", wav(1_000))]),
            "samples[0].content_type",
        ),
        (
            "analysis of a PDF",
            analyze(vec![sample(
                "a.wav",
                "audio/wav",
                b"%PDF-1.7 not audio".to_vec(),
            )]),
            "samples[0].data",
        ),
        (
            "analysis of a sample without a filename",
            analyze(vec![sample("", "audio/mpeg", mp3())]),
            "samples[0].filename",
        ),
    ])
}

/// Malformed reads of one voice (`id` is the caller's own).
fn bad_gets_and_deletes(id: &str) -> Vec<Case> {
    cases(vec![
        (
            "GetVoice without an id",
            Call::Get(GetVoiceRequest::default()),
            "voice_id",
        ),
        (
            "GetVoice id not a UUID",
            Call::Get(GetVoiceRequest {
                voice_id: "42".into(),
            }),
            "voice_id",
        ),
        (
            "GetVoice id with a zero-width space",
            Call::Get(GetVoiceRequest {
                voice_id: format!("{id}\u{200B}"),
            }),
            "voice_id",
        ),
        (
            "DeleteVoice without an id",
            Call::Delete(DeleteVoiceRequest::default()),
            "voice_id",
        ),
        (
            "DeleteVoice id not a UUID",
            Call::Delete(DeleteVoiceRequest {
                voice_id: "DROP TABLE voices".into(),
            }),
            "voice_id",
        ),
    ])
}

/// Malformed listings; `others_token` is a page token of another user's
/// listing, `tampered` one altered after signing.
fn bad_lists(others_token: &str, tampered: &str) -> Vec<Case> {
    cases(vec![
        (
            "negative page size",
            list(|r| r.page_size = -1),
            "page_size",
        ),
        ("unknown scope", list(|r| r.scope = 9), "scope"),
        ("unknown status", list(|r| r.status = 42), "status"),
        (
            "listing deleted voices",
            list(|r| r.status = pb::VoiceStatus::Deleted as i32),
            "status",
        ),
        (
            "someone else's page token",
            list(|r| others_token.clone_into(&mut r.page_token)),
            "page_token",
        ),
        (
            "tampered page token",
            list(|r| tampered.clone_into(&mut r.page_token)),
            "page_token",
        ),
        (
            "page token of garbage",
            list(|r| r.page_token = "%%%not-base64%%%".into()),
            "page_token",
        ),
        (
            "page token for another scope",
            list(|r| {
                others_token.clone_into(&mut r.page_token);
                r.scope = pb::VoiceScope::All as i32;
            }),
            "page_token",
        ),
    ])
}

/// Malformed WebhookService calls; `id` is the caller's own endpoint.
#[allow(clippy::too_many_lines)] // a table, one entry per case
fn bad_webhook_calls(id: &str) -> Vec<Case> {
    let endpoint = |url: &str, change: &dyn Fn(&mut pb::CreateWebhookEndpointRequest)| {
        let mut request = pb::CreateWebhookEndpointRequest {
            url: url.into(),
            ..Default::default()
        };
        change(&mut request);
        Call::CreateEndpoint(request)
    };
    let fine = "https://hooks.example.com/";
    let update = |paths: &[&str], change: &dyn Fn(&mut pb::WebhookEndpoint)| {
        let mut endpoint = pb::WebhookEndpoint {
            endpoint_id: id.to_owned(),
            url: fine.into(),
            ..Default::default()
        };
        change(&mut endpoint);
        Call::UpdateEndpoint(pb::UpdateWebhookEndpointRequest {
            endpoint: Some(endpoint),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(ToString::to_string).collect(),
            }),
        })
    };
    cases(vec![
        ("endpoint without a URL", endpoint("", &|_| {}), "url"),
        (
            "endpoint URL that is not one",
            endpoint("hooks", &|_| {}),
            "url",
        ),
        (
            "endpoint over http",
            endpoint("http://hooks.example.com/", &|_| {}),
            "url",
        ),
        (
            "endpoint at loopback",
            endpoint("https://127.0.0.1/", &|_| {}),
            "url",
        ),
        (
            "endpoint URL of 2,100 characters",
            endpoint(&format!("{fine}{}", "a".repeat(2_100)), &|_| {}),
            "url",
        ),
        (
            "endpoint description of 501 characters",
            endpoint(fine, &|r| r.description = "d".repeat(501)),
            "description",
        ),
        (
            "endpoint description with a bidi override",
            endpoint(fine, &|r| r.description = "a\u{202E}b".into()),
            "description",
        ),
        (
            "unknown event type",
            endpoint(fine, &|r| r.event_types = vec!["voice.created".into()]),
            "event_types[0]",
        ),
        (
            "an event type twice",
            endpoint(fine, &|r| {
                r.event_types = vec!["voicehub.voice.failed.v1".into(); 2];
            }),
            "event_types[1]",
        ),
        (
            "UpdateWebhookEndpoint without an endpoint",
            Call::UpdateEndpoint(pb::UpdateWebhookEndpointRequest::default()),
            "endpoint",
        ),
        (
            "UpdateWebhookEndpoint id not a UUID",
            update(&["url"], &|e| e.endpoint_id = "7".into()),
            "endpoint.endpoint_id",
        ),
        (
            "UpdateWebhookEndpoint without a mask",
            update(&[], &|_| {}),
            "update_mask",
        ),
        (
            "UpdateWebhookEndpoint of its secret",
            update(&["secret"], &|_| {}),
            "update_mask",
        ),
        (
            "UpdateWebhookEndpoint to a private address",
            update(&["url"], &|e| e.url = "https://192.168.0.1/".into()),
            "endpoint.url",
        ),
        (
            "UpdateWebhookEndpoint to an unknown event type",
            update(&["event_types"], &|e| e.event_types = vec!["all".into()]),
            "endpoint.event_types[0]",
        ),
        (
            "DeleteWebhookEndpoint without an id",
            Call::DeleteEndpoint(pb::DeleteWebhookEndpointRequest::default()),
            "endpoint_id",
        ),
        (
            "SendTestWebhook id not a UUID",
            Call::SendTest(pb::SendTestWebhookRequest {
                endpoint_id: "test".into(),
            }),
            "endpoint_id",
        ),
        (
            "ListWebhookDeliveries of 101",
            Call::ListAttempts(pb::ListWebhookDeliveriesRequest {
                endpoint_id: id.to_owned(),
                page_size: 101,
            }),
            "page_size",
        ),
        (
            "RotateWebhookSecret id not a UUID",
            Call::RotateSecret(pb::RotateWebhookSecretRequest {
                endpoint_id: "x".into(),
            }),
            "endpoint_id",
        ),
    ])
}

/// Malformed updates and watches of the caller's voice `id`.
fn bad_updates_and_watches(id: &str) -> Vec<Case> {
    cases(vec![
        (
            "UpdateVoice without a voice",
            Call::Update(UpdateVoiceRequest {
                voice: None,
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
            }),
            "voice",
        ),
        (
            "UpdateVoice id not a UUID",
            update("nope", &["name"], |_| {}),
            "voice.voice_id",
        ),
        (
            "UpdateVoice without a mask",
            update(id, &[], |_| {}),
            "update_mask",
        ),
        (
            "UpdateVoice of status",
            update(id, &["status"], |_| {}),
            "update_mask",
        ),
        (
            "UpdateVoice of provider_voice_id",
            update(id, &["provider_voice_id"], |_| {}),
            "update_mask",
        ),
        (
            "UpdateVoice to an empty name",
            update(id, &["name"], |v| v.name.clear()),
            "voice.name",
        ),
        (
            "UpdateVoice to a bidi name",
            update(id, &["name"], |v| v.name = "\u{2067}x\u{2069}".into()),
            "voice.name",
        ),
        (
            "UpdateVoice to UNSPECIFIED visibility",
            update(id, &["visibility"], |v| v.visibility = 0),
            "voice.visibility",
        ),
        (
            "UpdateVoice to an unknown visibility",
            update(id, &["visibility"], |v| v.visibility = 5),
            "voice.visibility",
        ),
        (
            "UpdateVoice with 11 labels",
            update(id, &["labels"], |v| {
                v.labels = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
            }),
            "voice.labels",
        ),
        (
            "101 watched voices",
            watch((0..101).map(|_| Uuid::new_v4().to_string()).collect()),
            "voice_ids",
        ),
        (
            "a watched id that is not a UUID",
            watch(vec![id.to_owned(), "x".into()]),
            "voice_ids[1]",
        ),
        (
            "a voice watched twice",
            watch(vec![id.to_owned(), id.to_owned()]),
            "voice_ids[1]",
        ),
    ])
}

async fn every_malformed_request_is_refused_naming_the_field_and_nothing_is_written(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let user = Uuid::new_v4();
    let mine = app
        .seed(user, Visibility::Private, VoiceStatus::Completed)
        .await
        .id
        .to_string();
    let mut client = Clients::of(&app, user);
    // A page token of someone else's listing, and one tampered with.
    let others_token = {
        let other = Uuid::new_v4();
        for _ in 0..3 {
            app.seed(other, Visibility::Private, VoiceStatus::Completed)
                .await;
        }
        app.client(other)
            .list_user_voices(ListUserVoicesRequest {
                page_size: 1,
                ..ListUserVoicesRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token
    };
    assert!(!others_token.is_empty());
    let mut tampered = others_token.clone();
    tampered.replace_range(..4, "AAAA");
    let endpoint = client
        .webhooks
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: "https://hooks.example.com/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap()
        .endpoint_id;
    let before = snapshot(&app).await;

    let cases: Vec<Case> = [
        bad_creates(),
        bad_gets_and_deletes(&mine),
        bad_lists(&others_token, &tampered),
        bad_updates_and_watches(&mine),
        bad_webhook_calls(&endpoint),
        bad_analyses(),
    ]
    .concat();
    assert!(cases.len() >= 92, "{} cases", cases.len());
    for (case, call, field) in cases {
        let status = call
            .run(&mut client)
            .await
            .unwrap_or_else(|| panic!("{case}: accepted"));
        assert_invalid_field(&status, &field);
        println!("{case}: {}", status.message());
        assert_eq!(
            snapshot(&app).await,
            before,
            "{case}: something was written"
        );
        assert!(
            fake.requests().is_empty(),
            "{case}: the provider was called"
        );
    }
}

/// Signs `claims` as HS256 with `secret`.
fn sign(claims: &serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn reusing_another_users_request_id_makes_a_voice_of_ones_own(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut alices = create_request("Alice's");
    alices.request_id = "shared-take".into();
    let mut bobs = create_request("Bob's");
    bobs.request_id = "shared-take".into();
    let hers = create_voice(&mut app.client(Uuid::new_v4()), alices).await;
    let his = create_voice(&mut app.client(Uuid::new_v4()), bobs).await;
    assert_ne!(his.voice_id, hers.voice_id);
    assert_eq!(his.name, "Bob's");
    assert_eq!(hers.name, "Alice's");
    assert_eq!(fake.calls(Route::Add), 2, "two voices, two clones");
}

/// Tokens that must let no one in, each named for what is wrong with it:
/// they claim `user`, or `other` spelled in a way voicehub does not accept.
fn forged_tokens(user: Uuid, other: Uuid) -> Vec<(&'static str, String)> {
    let now = jsonwebtoken::get_current_timestamp();
    let sub = user.to_string();
    let none_alg = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": sub, "exp": now + 600}))
        )
    };
    vec![
        (
            "expired",
            sign(&json!({"sub": sub, "exp": now - 3600}), JWT_SECRET),
        ),
        (
            "not valid yet",
            sign(
                &json!({"sub": sub, "exp": now + 7200, "nbf": now + 3600}),
                JWT_SECRET,
            ),
        ),
        (
            "another secret",
            sign(
                &json!({"sub": sub, "exp": now + 600}),
                "another-secret-another-secret-another!",
            ),
        ),
        (
            "another algorithm",
            encode(
                &Header::new(Algorithm::HS512),
                &json!({"sub": sub, "exp": now + 600}),
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        ("alg none", none_alg),
        ("no sub", sign(&json!({"exp": now + 600}), JWT_SECRET)),
        (
            "sub not a UUID",
            sign(&json!({"sub": "bob", "exp": now + 600}), JWT_SECRET),
        ),
        (
            "sub of another spelling",
            sign(
                &json!({"sub": other.simple().to_string(), "exp": now + 600}),
                JWT_SECRET,
            ),
        ),
    ]
}

/// One harmless call of each RPC; `private` is a voice id to name.
fn a_call_of_every_rpc(private: &str) -> Vec<Call> {
    vec![
        Call::Create(create_request("Forged")),
        Call::Get(GetVoiceRequest {
            voice_id: private.to_owned(),
        }),
        list(|r| r.scope = pb::VoiceScope::All as i32),
        update(private, &["name"], |_| {}),
        Call::Delete(DeleteVoiceRequest {
            voice_id: private.to_owned(),
        }),
        watch(vec![private.to_owned()]),
        Call::Analyze(pb::AnalyzeSamplesRequest {
            samples: create_request("Forged").samples,
        }),
        Call::CreateEndpoint(pb::CreateWebhookEndpointRequest {
            url: "https://hooks.example.com/".into(),
            ..Default::default()
        }),
        Call::ListEndpoints,
        Call::DeleteEndpoint(pb::DeleteWebhookEndpointRequest {
            endpoint_id: Uuid::new_v4().to_string(),
        }),
        Call::RotateSecret(pb::RotateWebhookSecretRequest {
            endpoint_id: Uuid::new_v4().to_string(),
        }),
        Call::UpdateEndpoint(pb::UpdateWebhookEndpointRequest::default()),
        Call::SendTest(pb::SendTestWebhookRequest {
            endpoint_id: Uuid::new_v4().to_string(),
        }),
        Call::ListAttempts(pb::ListWebhookDeliveriesRequest {
            endpoint_id: Uuid::new_v4().to_string(),
            page_size: 0,
        }),
    ]
}

async fn another_users_voices_are_out_of_reach_whatever_the_field_or_token(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let private = app
        .seed(alice, Visibility::Private, VoiceStatus::Completed)
        .await
        .id
        .to_string();
    let public = app
        .seed(alice, Visibility::Public, VoiceStatus::Completed)
        .await
        .id
        .to_string();
    let before = snapshot(&app).await;
    let mut bob_client = Clients::of(&app, bob);

    // Every field that takes a voice id, with Alice's private voice: not
    // found, exactly as for a voice that does not exist.
    let missing = Uuid::new_v4().to_string();
    for id in [&private, &missing] {
        let calls = [
            Call::Get(GetVoiceRequest {
                voice_id: id.clone(),
            }),
            update(id, &["name"], |_| {}),
            Call::Delete(DeleteVoiceRequest {
                voice_id: id.clone(),
            }),
            watch(vec![id.clone()]),
            watch(vec![public.clone(), id.clone()]),
        ];
        for call in calls {
            let status = call.run(&mut bob_client).await.expect("refused");
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert_eq!(status.message(), "voice not found", "{status:?}");
        }
    }
    // Her public voice may be read and watched, never changed or deleted.
    let status = update(&public, &["name"], |_| {})
        .run(&mut bob_client)
        .await
        .expect("refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = Call::Delete(DeleteVoiceRequest {
        voice_id: public.clone(),
    })
    .run(&mut bob_client)
    .await
    .expect("refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        Call::Get(GetVoiceRequest {
            voice_id: public.clone()
        })
        .run(&mut bob_client)
        .await
        .is_none()
    );
    // Listing: Bob's own scope holds none of hers; ALL holds only the public one.
    let all = bob_client
        .voices
        .list_user_voices(ListUserVoicesRequest {
            scope: pb::VoiceScope::All as i32,
            ..ListUserVoicesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = all.voices.iter().map(|v| v.voice_id.clone()).collect();
    assert_eq!(ids, std::slice::from_ref(&public));
    // Bad tokens on every RPC: UNAUTHENTICATED before anything is read.
    let tokens = forged_tokens(bob, alice);
    let calls = a_call_of_every_rpc(&private);
    let mut refused = 0;
    for (kind, token) in &tokens {
        let mut forged = Clients::with_authorization(&app, &format!("Bearer {token}"));
        for call in calls.clone() {
            let status = call.run(&mut forged).await.expect("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{kind}: {status:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, tokens.len() * calls.len());

    // Alice's voices are as they were, and nothing was written.
    assert_eq!(snapshot(&app).await, before, "nothing changed");
    assert!(fake.requests().is_empty(), "the provider was never called");
}

on_both_backends!(
    every_malformed_request_is_refused_naming_the_field_and_nothing_is_written,
    another_users_voices_are_out_of_reach_whatever_the_field_or_token,
    reusing_another_users_request_id_makes_a_voice_of_ones_own,
);

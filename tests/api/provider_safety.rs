//! Provider safety: voicehub acts at the provider only on what this
//! installation made and decided to discard, believes "gone" only when
//! confirmed, never retries a create blind, and never fails a create that
//! is still running. Each test builds the hostile situation from outside
//! (a second installation on the same account, a restored backup, edited
//! labels, a lying 404, a gateway 504, a queue of creates) and counts rows,
//! provider voices and provider requests.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;
use voicehub::{
    config::ProviderConfig,
    pb,
    status_engine::Swept,
    store::{self, Visibility, VoiceStatus},
};

use crate::{
    fake_elevenlabs::{FakeElevenLabs, FakeVoice, Fault, Report, Route},
    helpers::{
        Backend, Client, TestApp, create_request, create_voice, elevenlabs, get_voice, next,
        replica_of, spawn_app_with, spawn_app_with_fake, voice, wait_for, watch,
    },
    on_both_backends,
};

/// `(provider voice id, voicehub id)` of a voice created through the API
/// and completed by one status-engine step.
async fn completed(app: &TestApp, client: &mut Client, name: &str) -> pb::Voice {
    let created = create_voice(client, name).await;
    app.worker.run_once().await.unwrap();
    let voice = get_voice(client, &created.voice_id).await;
    assert_eq!(voice.status(), pb::VoiceStatus::Completed, "{name}");
    voice
}

/// Labels as voicehub tags a voice of `installation`.
fn tags(voice_id: Uuid, installation: Uuid) -> BTreeMap<String, String> {
    [
        ("voicehub_id".to_owned(), voice_id.to_string()),
        ("voicehub_installation".to_owned(), installation.to_string()),
    ]
    .into()
}

fn fake_voice(labels: BTreeMap<String, String>) -> FakeVoice {
    FakeVoice {
        name: "a voice".into(),
        description: None,
        labels,
        files: 1,
        report: Report::default(),
    }
}

/// Stores a voice of `app` in `status` whose provider voice, tagged by
/// `app`'s installation, is at the fake; returns its provider voice id.
async fn stored(app: &TestApp, fake: &FakeElevenLabs, status: VoiceStatus) -> String {
    let installation = app.store.installation_id().await.unwrap();
    crate::sweep::stored_with_provider_voice(app, fake, status, Some(installation)).await
}

/// A log written into memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Reads the voices `ids` every 50 ms until none is PROCESSING or `within`
/// has passed; returns them as last read (the caller asserts).
async fn until_settled(client: &mut Client, ids: &[String], within: Duration) -> Vec<pb::Voice> {
    let until = Instant::now() + within;
    loop {
        let mut voices = Vec::with_capacity(ids.len());
        for id in ids {
            voices.push(get_voice(client, id).await);
        }
        let settled = voices
            .iter()
            .all(|v| v.status() != pb::VoiceStatus::Processing);
        if settled || Instant::now() >= until {
            return voices;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spared(app: &TestApp, why: &str) -> u64 {
    app.metric(&format!("voicehub_sweep_spared_total{{what=\"{why}\"}}"))
}

async fn two_installations_sharing_one_provider_account_never_delete_each_others_voices(
    backend: Backend,
) {
    let (a, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let provider = fake.provider_config();
    let b = spawn_app_with(backend, |c| c.provider = provider).await;
    let (a_id, b_id) = (
        a.store.installation_id().await.unwrap(),
        b.store.installation_id().await.unwrap(),
    );
    assert_ne!(a_id, b_id, "one database, one installation");
    assert_eq!(
        a.metric(&format!(
            "voicehub_installation_info{{installation=\"{a_id}\"}}"
        )),
        1
    );
    let mut client = a.client(Uuid::new_v4());
    let mut a_voices = Vec::new();
    for name in ["One", "Two", "Three"] {
        a_voices.push(completed(&a, &mut client, name).await);
    }
    for v in &a_voices {
        let labels = fake.voice(&v.provider_voice_id).unwrap().labels;
        assert_eq!(labels["voicehub_installation"], a_id.to_string());
    }
    // B's own FAILED voice, still at the provider.
    let b_failed = stored(&b, &fake, VoiceStatus::Failed).await;

    let swept = b.sweeper.run_once().await.unwrap().unwrap();
    println!("B's sweep: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 4,
            spared: 3,
            deleted: 1,
            ..Swept::default()
        }
    );
    assert_eq!(spared(&b, "other_installation"), 3);
    assert!(
        fake.voice(&b_failed).is_none(),
        "B's own FAILED voice is deleted"
    );
    assert_eq!(fake.calls(Route::Delete), 1);
    let swept = a.sweeper.run_once().await.unwrap().unwrap();
    println!("A's sweep: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 3,
            ..Swept::default()
        }
    );
    for v in &a_voices {
        assert!(fake.voice(&v.provider_voice_id).is_some());
        let stored = get_voice(&mut client, &v.voice_id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
    }
    assert_eq!(
        (
            fake.calls(Route::Add),
            fake.calls(Route::Delete),
            fake.voice_count()
        ),
        (3, 1, 3)
    );
}

async fn a_database_restored_from_an_older_backup_keeps_the_voices_made_after_it(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let before = completed(&app, &mut client, "Before the backup").await;
    let after = [
        completed(&app, &mut client, "After one").await,
        completed(&app, &mut client, "After two").await,
    ];
    // The restore: the rows made after the backup are gone; the
    // installation (made by the first migration) is the same.
    let lost: Vec<Uuid> = after.iter().map(|v| v.voice_id.parse().unwrap()).collect();
    store::entity::voice::Entity::delete_many()
        .filter(store::entity::voice::Column::Id.is_in(lost))
        .exec(&app.db)
        .await
        .unwrap();
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    println!("sweep after the restore: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 3,
            spared: 2,
            ..Swept::default()
        }
    );
    assert_eq!(spared(&app, "no_row"), 2, "reported, not deleted");
    assert_eq!((fake.calls(Route::Delete), fake.voice_count()), (0, 3));
    assert!(fake.voice(&before.provider_voice_id).is_some());
    for v in &after {
        assert!(fake.voice(&v.provider_voice_id).is_some());
    }
    assert_eq!(app.voice_rows().await, 1);
}

async fn a_sweep_over_its_budget_deletes_nothing_and_report_only_mode_deletes_nothing(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |c| c.engine.sweep_max_deletions = 2).await;
    for _ in 0..3 {
        stored(&app, &fake, VoiceStatus::Failed).await;
    }
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    println!("over budget: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 3,
            reported: 3,
            over_budget: true,
            ..Swept::default()
        }
    );
    assert_eq!(app.metric("voicehub_sweep_over_budget_total"), 1);
    assert_eq!((fake.calls(Route::Delete), fake.voice_count()), (0, 3));

    let (app, fake) = spawn_app_with_fake(backend, |c| c.engine.sweep_delete = false).await;
    let mut discarded = Vec::new();
    for _ in 0..3 {
        discarded.push(stored(&app, &fake, VoiceStatus::Deleted).await);
    }
    // This thread's log (the test's runtime, and so the server, run on it).
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    drop(guard);
    let logged = logs.text();
    let would: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("would delete a provider voice"))
        .collect();
    println!("{}", would.join("\n"));
    assert_eq!(would.len(), 3, "{logged}");
    for provider_voice_id in &discarded {
        assert!(
            would.iter().any(|l| l.contains(provider_voice_id.as_str())
                && l.contains("its voicehub voice is FAILED or DELETED")),
            "what and why: {logged}"
        );
    }
    println!("report only: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 3,
            reported: 3,
            ..Swept::default()
        }
    );
    assert_eq!(
        app.metric("voicehub_sweep_deletions_total{what=\"reported\"}"),
        3
    );
    assert_eq!((fake.calls(Route::Delete), fake.voice_count()), (0, 3));
}

async fn a_completed_voice_deleted_at_the_provider_becomes_failed_and_its_watcher_hears(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.engine.sweep_every = Duration::from_millis(50);
    })
    .await;
    let next_interval = || tokio::time::sleep(Duration::from_millis(60));
    let mut client = app.client(Uuid::new_v4());
    let doomed = completed(&app, &mut client, "Doomed").await;
    let kept = completed(&app, &mut client, "Kept").await;
    let status =
        async |client: &mut Client, v: &pb::Voice| get_voice(client, &v.voice_id).await.status();

    // A listing that comes back empty fails nothing: each voice it lacks is
    // looked up alone (the voices completed since the last sweep say there
    // are some to look for), and is there.
    let gets = fake.calls(Route::Get);
    fake.inject(
        Route::Lookup,
        1,
        Fault::status(
            200,
            json!({"voices": [], "has_more": false, "next_page_token": null}),
        ),
    );
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!(swept, Swept::default(), "an empty listing: {swept:?}");
    assert_eq!(fake.calls(Route::Get), gets + 2, "both looked up alone");
    // A listing that fails ends the sweep, and fails nothing.
    next_interval().await;
    fake.inject(Route::Lookup, 4, Fault::server_error());
    assert!(app.sweeper.run_once().await.is_err());
    for v in [&doomed, &kept] {
        assert_eq!(status(&mut client, v).await, pb::VoiceStatus::Completed);
    }

    // Deleted at the provider behind voicehub's back.
    // A watch of all the user's voices (one of a COMPLETED voice alone has
    // ended with its snapshot): no voice is PROCESSING, so no snapshot.
    let mut stream = watch(&mut client, &[]).await;
    fake.forget(&doomed.provider_voice_id);
    let gets = fake.calls(Route::Get);
    next_interval().await;
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    println!("sweep after the deletion: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 1,
            vanished: 1,
            ..Swept::default()
        }
    );
    assert_eq!(fake.calls(Route::Get), gets + 2, "looked up twice, apart");
    let heard = next(&mut stream).await.unwrap().voice.unwrap();
    assert_eq!(heard.status(), pb::VoiceStatus::Failed);
    assert!(
        heard.failure_reason.contains("deleted at the provider"),
        "{}",
        heard.failure_reason
    );
    assert_eq!(status(&mut client, &kept).await, pb::VoiceStatus::Completed);
    assert_eq!(app.metric("voicehub_voices_vanished_total"), 1);

    // It comes back (a provider glitch after all): a voice failed as gone
    // is never deleted by the sweep.
    let labels = tags(
        doomed.voice_id.parse().unwrap(),
        app.store.installation_id().await.unwrap(),
    );
    fake.add_voice(&doomed.provider_voice_id, fake_voice(labels));
    next_interval().await;
    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    assert_eq!((swept.deleted, swept.vanished), (0, 0), "{swept:?}");
    assert_eq!(fake.calls(Route::Delete), 0);
}

async fn a_create_whose_provider_call_times_out_completes_as_soon_as_the_voice_is_there(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, |c| {
        c.run_worker = true;
        c.engine.adopt_after = Duration::from_mins(3);
        c.engine.min_backoff = Duration::from_millis(200);
        c.engine.max_backoff = Duration::from_secs(1);
    })
    .await;
    // The provider makes the voice 1.5 s after the request; the client's
    // timeout is 400 ms.
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_millis(1_500)));
    let mut client = app.client(Uuid::new_v4());
    let started = Instant::now();
    let reserved = create_voice(&mut client, create_request("Slow")).await;
    assert_eq!(reserved.status(), pb::VoiceStatus::Processing);
    assert!(
        reserved.provider_voice_id.is_empty(),
        "the outcome is unknown"
    );
    let [done] = until_settled(
        &mut client,
        std::slice::from_ref(&reserved.voice_id),
        Duration::from_secs(15),
    )
    .await
    .try_into()
    .unwrap();
    assert_ne!(
        done.status(),
        pb::VoiceStatus::Processing,
        "settled within 15 s"
    );
    let took = started.elapsed();
    println!("COMPLETED {took:?} after the create (adopt_after: 3 min)");
    assert_eq!(done.status(), pb::VoiceStatus::Completed);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(
        (fake.calls(Route::Add), fake.voice_count()),
        (1, 1),
        "one add request, one provider voice"
    );
    assert!(fake.voice(&done.provider_voice_id).is_some());
}

async fn copied_or_edited_labels_never_get_a_live_voice_deleted(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let installation = app.store.installation_id().await.unwrap();
    let mut client = app.client(Uuid::new_v4());
    let x = completed(&app, &mut client, "X").await;
    let y = completed(&app, &mut client, "Y").await;
    let w = completed(&app, &mut client, "W").await;
    let z = app
        .insert(voice(
            Uuid::new_v4(),
            Visibility::Private,
            VoiceStatus::Failed,
            chrono::Utc::now(),
        ))
        .await;
    let x_id: Uuid = x.voice_id.parse().unwrap();
    // Someone with the account copies X, labels and all.
    let x_labels = fake.voice(&x.provider_voice_id).unwrap().labels;
    fake.add_voice("copy-of-x", fake_voice(x_labels));
    // And edits Y's tag to X's id, and W's to a FAILED voice's.
    fake.set_labels(&y.provider_voice_id, tags(x_id, installation));
    fake.set_labels(&w.provider_voice_id, tags(z.id, installation));

    let swept = app.sweeper.run_once().await.unwrap().unwrap();
    println!("sweep over edited labels: {swept:?}");
    assert_eq!(
        swept,
        Swept {
            tagged: 4,
            spared: 2,
            deleted: 1,
            ..Swept::default()
        }
    );
    assert_eq!(spared(&app, "held_by_live_voice"), 2);
    assert!(
        fake.voice("copy-of-x").is_none(),
        "the copy is not anyone's"
    );
    for v in [&x, &y, &w] {
        assert!(fake.voice(&v.provider_voice_id).is_some(), "{}", v.name);
        let stored = get_voice(&mut client, &v.voice_id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
    }
    assert_eq!(fake.calls(Route::Delete), 1);
}

async fn one_transient_404_right_after_a_create_does_not_fail_the_voice(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    for fault in [Fault::not_found_404(), Fault::not_found_400()] {
        let voice = create_voice(&mut client, "Flaky").await;
        fake.inject(Route::Get, 1, fault);
        let step = app.worker.run_once().await.unwrap();
        assert_eq!((step.failed, step.rescheduled), (0, 1), "{step:?}");
        tokio::time::sleep(crate::helpers::test_engine_config().confirm_gone_after * 2).await;
        let step = app.worker.run_once().await.unwrap();
        assert_eq!(step.completed, 1, "{step:?}");
        let stored = get_voice(&mut client, &voice.voice_id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
        assert!(fake.voice(&voice.provider_voice_id).is_some());
    }
    assert_eq!(fake.calls(Route::Delete), 0);
}

/// How the test gateway answers a create.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gateway {
    /// Forwards it, waits for ElevenLabs' answer, then answers 504.
    TimesOutAfterForwarding,
    /// Answers 504 at once; forwards it 300 ms later.
    TimesOutBeforeForwarding,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    mode: Gateway,
    creates: Arc<AtomicUsize>,
    http: reqwest::Client,
}

/// A gateway in front of the fake ElevenLabs: passes every request through,
/// but answers the first create with a 504 as `mode` says.
async fn gateway(fake: &FakeElevenLabs, mode: Gateway) -> String {
    let proxy = Proxy {
        upstream: fake.url.clone(),
        mode,
        creates: Arc::default(),
        http: reqwest::Client::new(),
    };
    let app = Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let send = {
        let (proxy, method, headers) = (proxy.clone(), parts.method.clone(), parts.headers.clone());
        let path = path.clone();
        move || send(proxy, method, path, headers, body)
    };
    let first_create =
        parts.uri.path() == "/v1/voices/add" && proxy.creates.fetch_add(1, Ordering::SeqCst) == 0;
    let timeout = (
        StatusCode::GATEWAY_TIMEOUT,
        "<html><h1>504 Gateway Time-out</h1></html>",
    );
    match (first_create, proxy.mode) {
        (true, Gateway::TimesOutAfterForwarding) => {
            send().await;
            timeout.into_response()
        }
        (true, Gateway::TimesOutBeforeForwarding) => {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                send().await;
            });
            timeout.into_response()
        }
        (false, _) => send().await,
    }
}

async fn send(
    proxy: Proxy,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut outgoing = proxy
        .http
        .request(method, format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = answer.bytes().await.unwrap();
    (status, [("content-type", content_type)], body).into_response()
}

async fn a_gateway_504_after_elevenlabs_made_the_voice_never_clones_twice(backend: Backend) {
    for mode in [
        Gateway::TimesOutAfterForwarding,
        Gateway::TimesOutBeforeForwarding,
    ] {
        let fake = FakeElevenLabs::start().await;
        // One slot left in the account: a second clone would be refused.
        fake.set_voice_limit(1);
        let mut provider = fake.provider_config();
        if let ProviderConfig::ElevenLabs(e) = &mut provider {
            e.base_url = gateway(&fake, mode).await.parse().unwrap();
        }
        let app = spawn_app_with(backend, |c| c.provider = provider).await;
        let mut client = app.client(Uuid::new_v4());
        let created = create_voice(&mut client, create_request("Behind a gateway")).await;
        let mut status = created.status();
        for _ in 0..100 {
            if status != pb::VoiceStatus::Processing {
                break;
            }
            app.worker.run_once().await.unwrap();
            status = get_voice(&mut client, &created.voice_id).await.status();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let adds = fake.calls(Route::Add);
        println!(
            "504 {}: {adds} add requests, {} provider voices, {status:?}",
            if mode == Gateway::TimesOutAfterForwarding {
                "after forwarding"
            } else {
                "before forwarding"
            },
            fake.voice_count()
        );
        assert_eq!(status, pb::VoiceStatus::Completed);
        assert_eq!(fake.voice_count(), 1, "one provider voice per create");
        if mode == Gateway::TimesOutAfterForwarding {
            assert_eq!(adds, 1, "found by its tag: not sent again");
        }
        assert_eq!(fake.calls(Route::Delete), 0);
        assert_eq!(app.voice_rows().await, 1);
    }
}

on_both_backends!(
    two_installations_sharing_one_provider_account_never_delete_each_others_voices,
    a_database_restored_from_an_older_backup_keeps_the_voices_made_after_it,
    a_sweep_over_its_budget_deletes_nothing_and_report_only_mode_deletes_nothing,
    a_completed_voice_deleted_at_the_provider_becomes_failed_and_its_watcher_hears,
    a_create_whose_provider_call_times_out_completes_as_soon_as_the_voice_is_there,
    copied_or_edited_labels_never_get_a_live_voice_deleted,
    one_transient_404_right_after_a_create_does_not_fail_the_voice,
    a_gateway_504_after_elevenlabs_made_the_voice_never_clones_twice,
);

#[tokio::test]
async fn creates_queued_behind_one_provider_slot_are_never_failed_by_another_replica() {
    let adopt_after = Duration::from_secs(2);
    let (a, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.engine.adopt_after = adopt_after;
        let e = elevenlabs(c);
        e.max_concurrency = 1;
        // Far above the fake's one second per create, so a loaded machine
        // cannot turn a create into an unknown outcome: what is tested is
        // the wait for the slot, not the call.
        e.timeout = Duration::from_secs(10);
    })
    .await;
    let b = replica_of(&a, &fake, |c| {
        c.run_worker = true;
        c.engine.adopt_after = adopt_after;
        c.engine.min_backoff = Duration::from_millis(100);
        c.engine.max_backoff = Duration::from_millis(500);
        elevenlabs(c).max_concurrency = 1;
    })
    .await;
    // Each create takes the provider a second; one at a time, the fifth
    // waits four seconds for its slot, twice `adopt_after`.
    fake.inject(Route::Add, 5, Fault::Slow(Duration::from_secs(1)));
    let user = Uuid::new_v4();
    let creates = (0..5).map(|i| {
        let mut client = a.client(user);
        async move {
            client
                .create_voice_clone(create_request(&format!("Queued {i}")))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = futures_util::future::join_all(creates).await;
    let mut client = a.client(user);
    let mut ids = Vec::new();
    for voice in answers {
        let voice = voice.expect("every create succeeds");
        assert!(!voice.provider_voice_id.is_empty(), "{voice:?}");
        ids.push(voice.voice_id);
    }
    // The other replica's engine completes them.
    let statuses: Vec<pb::VoiceStatus> = until_settled(&mut client, &ids, Duration::from_secs(10))
        .await
        .iter()
        .map(pb::Voice::status)
        .collect();
    println!(
        "after five queued creates: {statuses:?}, {} add requests, {} deletes",
        fake.calls(Route::Add),
        fake.calls(Route::Delete)
    );
    assert!(
        statuses.iter().all(|s| *s == pb::VoiceStatus::Completed),
        "{statuses:?}"
    );
    assert_eq!(
        (
            fake.calls(Route::Add),
            fake.calls(Route::Delete),
            fake.voice_count()
        ),
        (5, 0, 5)
    );
    assert_eq!(a.voice_rows().await, 5);
    drop(b);
}

#[tokio::test]
async fn the_first_sweep_runs_after_voicehub_sweep_first_after() {
    let (app, fake) = spawn_app_with_fake(Backend::Sqlite, |c| {
        c.run_worker = true;
        c.engine.sweep_first_after = Duration::from_secs(1);
    })
    .await;
    let failed = stored(&app, &fake, VoiceStatus::Failed).await;
    wait_for(Duration::from_secs(10), || fake.voice(&failed).is_none()).await;
    assert!(
        fake.voice(&failed).is_none(),
        "swept a moment after start-up"
    );
    assert_eq!(fake.calls(Route::Delete), 1);
}

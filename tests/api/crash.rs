//! The process killed (SIGKILL) with creates in flight at the provider:
//! after a restart, or on another replica, every voice is COMPLETED or
//! FAILED, and the provider holds no voice that a live row does not.

use std::{collections::BTreeSet, time::Duration};

use sea_orm::Database;
use uuid::Uuid;
use voicehub::store::VoiceStatus;

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Fault, Report, Route},
    helpers::{
        Backend, JWT_SECRET, TestDatabase, create_request, create_voice, redis_url,
        rows_once_settled, serve, wait_for,
    },
};

#[tokio::test]
async fn a_process_killed_with_ten_creates_in_flight_leaves_every_voice_settled_and_no_orphan() {
    let fake = FakeElevenLabs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ELEVENLABS_BASE_URL", fake.url.as_str()),
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_TIMEOUT", "1s"),
        ("ELEVENLABS_RETRY_BUDGET", "1s"),
        ("ELEVENLABS_MAX_CONCURRENCY", "16"),
        ("VOICEHUB_SYNC_ADOPT_AFTER", "3s"),
        ("VOICEHUB_JWT_SECRET", JWT_SECRET),
        ("VOICEHUB_MAX_CONCURRENT_UPLOADS", "16"),
        ("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "16"),
    ];
    let first = serve(dir.path(), &env);
    // Each create reaches the provider, which makes its voice 800 ms later.
    fake.inject(Route::Add, 10, Fault::Slow(Duration::from_millis(800)));
    let client = first.client(Uuid::new_v4());
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = client.clone();
        let request = create_request(&format!("In flight {i}"));
        calls.push(tokio::spawn(async move {
            client.create_voice_clone(request).await
        }));
    }
    wait_for(Duration::from_secs(4), || fake.calls(Route::Add) == 10).await;
    assert_eq!(
        fake.calls(Route::Add),
        10,
        "all ten creates are at the provider"
    );
    drop(first); // SIGKILL, mid-create
    for call in calls {
        assert!(
            call.await.unwrap().is_err(),
            "the process died under the call"
        );
    }

    let _second = serve(dir.path(), &env);
    let db = Database::connect(format!("sqlite://{}/voicehub.db", dir.path().display()))
        .await
        .unwrap();
    let rows = rows_once_settled(&db, Duration::from_secs(15)).await;
    assert_eq!(rows.len(), 10, "every create was reserved before the kill");
    let completed = rows
        .iter()
        .filter(|v| v.status == VoiceStatus::Completed)
        .count();
    assert_eq!(
        completed, 10,
        "the provider made all ten: adopted and completed: {rows:?}"
    );
    let held: BTreeSet<String> = rows
        .iter()
        .filter_map(|v| v.provider_voice_id.clone())
        .collect();
    let at_provider: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    assert_eq!(held, at_provider, "no provider voice without a live row");
    for row in &rows {
        let pid = row.provider_voice_id.as_deref().unwrap();
        assert_eq!(
            fake.voice(pid).unwrap().labels.get("voicehub_id"),
            Some(&row.id.to_string())
        );
    }
}

#[tokio::test]
async fn a_replica_killed_holding_claims_and_creates_leaves_the_other_to_finish_every_voice() {
    let fake = FakeElevenLabs::start().await;
    fake.set_default_report(Report::awaiting_verification());
    let db = TestDatabase::new(Backend::Postgres).await;
    let prefix = format!("vhcrash-{}", Uuid::new_v4().simple());
    let redis = redis_url();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("VOICEHUB_REDIS_PREFIX", prefix.as_str()),
        ("ELEVENLABS_BASE_URL", fake.url.as_str()),
        ("ELEVENLABS_API_KEY", API_KEY),
        ("ELEVENLABS_TIMEOUT", "5s"),
        ("ELEVENLABS_RETRY_BUDGET", "5s"),
        ("ELEVENLABS_MAX_CONCURRENCY", "16"),
        ("VOICEHUB_SYNC_ADOPT_AFTER", "11s"),
        ("VOICEHUB_SYNC_CLAIM_LEASE", "2s"),
        ("VOICEHUB_JWT_SECRET", JWT_SECRET),
        ("VOICEHUB_MAX_CONCURRENT_UPLOADS", "16"),
        ("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "16"),
        ("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = serve(dir_a.path(), &env);
    let mut client = a.client(Uuid::new_v4());

    // Five voices A's status engine is checking (the provider takes 4 s to
    // answer each check), and five creates A has at the provider.
    fake.inject(Route::Lookup, 2, Fault::Slow(Duration::from_secs(4)));
    for i in 0..5 {
        create_voice(&mut client, &format!("Claimed {i}")).await;
    }
    wait_for(Duration::from_secs(6), || fake.calls(Route::Lookup) > 0).await;
    assert!(
        fake.calls(Route::Lookup) > 0,
        "A's check is at the provider"
    );
    fake.inject(Route::Add, 5, Fault::Slow(Duration::from_millis(800)));
    let creates: Vec<_> = (0..5)
        .map(|i| {
            let mut client = client.clone();
            let request = create_request(&format!("In flight {i}"));
            tokio::spawn(async move { client.create_voice_clone(request).await })
        })
        .collect();
    wait_for(Duration::from_secs(6), || fake.calls(Route::Add) == 10).await;
    assert_eq!(
        fake.calls(Route::Add),
        10,
        "the five creates are at the provider"
    );
    drop(a); // SIGKILL: claims held, creates in flight
    for create in creates {
        assert!(create.await.unwrap().is_err(), "A died under the call");
    }

    // The provider finishes every voice (once its slow clones have landed);
    // replica B takes over.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fake.set_default_report(Report::default());
    for id in fake.voice_ids() {
        fake.set_report(&id, Report::default());
    }
    let _b = serve(dir_b.path(), &env);
    let store = db.connect().await;
    let rows = rows_once_settled(&store, Duration::from_secs(30)).await;
    let (completed, failed): (Vec<_>, Vec<_>) = rows
        .iter()
        .filter(|v| v.status != VoiceStatus::Processing)
        .partition(|v| v.status == VoiceStatus::Completed);
    println!(
        "after the kill: {} rows, {} COMPLETED, {} FAILED {:?}",
        rows.len(),
        completed.len(),
        failed.len(),
        failed
            .iter()
            .map(|v| v.failure_reason.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(rows.len(), 10, "every create was reserved before the kill");
    assert_eq!(
        completed.len() + failed.len(),
        10,
        "none stays PROCESSING: {rows:?}"
    );
    for claimed in rows.iter().filter(|v| v.name.starts_with("Claimed")) {
        assert_eq!(
            claimed.status,
            VoiceStatus::Completed,
            "B finished A's claims"
        );
    }
    let held: BTreeSet<String> = rows
        .iter()
        .filter(|v| v.status == VoiceStatus::Completed)
        .filter_map(|v| v.provider_voice_id.clone())
        .collect();
    let at_provider: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    assert_eq!(
        held, at_provider,
        "no provider voice without a COMPLETED row"
    );
}

//! The process killed (SIGKILL) with creates in flight at the provider:
//! after a restart every voice is COMPLETED or FAILED, and the provider
//! holds no voice that a live row does not.

use std::{collections::BTreeSet, time::Duration};

use sea_orm::{Database, EntityTrait};
use tonic::{Request, transport::Endpoint};
use uuid::Uuid;
use voicehub::{
    auth::Authenticator,
    pb::voice_service_client::VoiceServiceClient,
    store::{VoiceStatus, entity::voice},
};

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Fault, Route},
    grpcurl::serve,
    helpers::{JWT_SECRET, auth_config, create_request},
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
    ];
    let first = serve(dir.path(), &env);
    // Each create reaches the provider, which makes its voice 800 ms later.
    fake.inject(Route::Add, 10, Fault::Slow(Duration::from_millis(800)));
    let user = Uuid::new_v4();
    let token = Authenticator::new(&auth_config())
        .mint(user, Duration::from_hours(1))
        .unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", first.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = VoiceServiceClient::new(channel.clone());
        let mut request = Request::new(create_request(&format!("In flight {i}")));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        calls.push(tokio::spawn(async move {
            client.create_voice_clone(request).await
        }));
    }
    for _ in 0..200 {
        if fake.calls(Route::Add) == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows = voice::Entity::find().all(&db).await.unwrap();
        if rows.iter().all(|v| v.status != VoiceStatus::Processing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

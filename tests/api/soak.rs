//! The soak: `voicehub serve` under creates, lists, gets and watches at a
//! steady rate while the provider fails now and then, for
//! `VOICEHUB_SOAK_SECS` (150 s in the test command; set it higher for a
//! longer soak). Nothing may fail but what was injected (and the service
//! absorbs those by retrying), no voice may stay PROCESSING, and the
//! server's memory (RSS) at the end is reported beside its start.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{Database, EntityTrait};
use tonic::{Request, transport::Endpoint};
use uuid::Uuid;
use voicehub::{
    auth::Authenticator,
    pb::{
        DeleteVoiceRequest, GetVoiceRequest, ListUserVoicesRequest, WatchVoiceStatusRequest,
        voice_service_client::VoiceServiceClient,
    },
    store::{VoiceStatus, entity::voice},
};

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Fault, Route},
    helpers::{JWT_SECRET, auth_config, create_request, serve},
};

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn authorized<T>(bearer: &str, body: T) -> Request<T> {
    let mut request = Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
}

#[tokio::test]
async fn a_bounded_soak_with_provider_faults_leaves_no_stuck_voice_and_flat_memory() {
    let seconds: u64 = std::env::var("VOICEHUB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let fake = FakeElevenLabs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[
            ("ELEVENLABS_BASE_URL", fake.url.as_str()),
            ("ELEVENLABS_API_KEY", API_KEY),
            ("ELEVENLABS_TIMEOUT", "1s"),
            ("ELEVENLABS_RETRY_BUDGET", "3s"),
            ("VOICEHUB_SYNC_ADOPT_AFTER", "5s"),
            ("VOICEHUB_JWT_SECRET", JWT_SECRET),
            ("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0"),
            ("VOICEHUB_CREATE_LIMIT_PER_DAY", "0"),
            ("VOICEHUB_MAX_VOICES_PER_USER", "100000"),
        ],
    );
    let pid = server.child.id();
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = Authenticator::new(&auth_config());
    let users: Vec<String> = (0..4)
        .map(|_| {
            format!(
                "Bearer {}",
                auth.mint(Uuid::new_v4(), Duration::from_hours(2)).unwrap()
            )
        })
        .collect();
    // Each user watches all their voices for the whole soak.
    let events = Arc::new(AtomicU64::new(0));
    for bearer in &users {
        let mut client = VoiceServiceClient::new(channel.clone());
        let mut stream = client
            .watch_voice_status(authorized(bearer, WatchVoiceStatusRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                events.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let started = Instant::now();
    let mut rss_start = None;
    let (mut calls, mut errors, mut injected) = (0u64, Vec::new(), 0u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    let mut created = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        if rss_start.is_none() && started.elapsed() > Duration::from_secs(10) {
            rss_start = Some(rss_kib(pid));
        }
        let bearer = &users[usize::try_from(created).unwrap() % users.len()];
        // Now and then the provider fails a clone or a check once; the
        // service retries it.
        if created % 10 == 5 {
            fake.inject(Route::Add, 1, Fault::unavailable());
            fake.inject(Route::Lookup, 1, Fault::server_error());
            injected += 2;
        }
        let mut client = VoiceServiceClient::new(channel.clone());
        let mut request = create_request(&format!("Soak {created}"));
        request.request_id = format!("soak-{created}");
        created += 1;
        calls += 3;
        let voice = match client.create_voice_clone(authorized(bearer, request)).await {
            Ok(voice) => voice.into_inner(),
            Err(status) => {
                errors.push(status);
                continue;
            }
        };
        if let Err(status) = client
            .get_voice(authorized(
                bearer,
                GetVoiceRequest {
                    voice_id: voice.voice_id.clone(),
                },
            ))
            .await
        {
            errors.push(status);
        }
        // Every third voice is deleted again (at the provider too).
        if created.is_multiple_of(3) {
            calls += 1;
            if let Err(status) = client
                .delete_voice(authorized(
                    bearer,
                    DeleteVoiceRequest {
                        voice_id: voice.voice_id,
                    },
                ))
                .await
            {
                errors.push(status);
            }
        }
        if let Err(status) = client
            .list_user_voices(authorized(bearer, ListUserVoicesRequest::default()))
            .await
        {
            errors.push(status);
        }
    }
    let rss_start = rss_start.unwrap_or_else(|| rss_kib(pid));

    // The status engine drains what is left.
    let db = Database::connect(format!("sqlite://{}/voicehub.db", dir.path().display()))
        .await
        .unwrap();
    let mut rows = Vec::new();
    for _ in 0..600 {
        rows = voice::Entity::find().all(&db).await.unwrap();
        if rows.iter().all(|v| v.status != VoiceStatus::Processing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_end = rss_kib(pid);
    let stuck = rows
        .iter()
        .filter(|v| v.status == VoiceStatus::Processing)
        .count();
    let completed = rows
        .iter()
        .filter(|v| v.status == VoiceStatus::Completed)
        .count();
    let deleted = rows
        .iter()
        .filter(|v| v.status == VoiceStatus::Deleted)
        .count();
    println!(
        "soak {seconds} s: {calls} calls, {} errors, {injected} faults injected, {} rows ({completed} COMPLETED, {deleted} DELETED, {stuck} PROCESSING), {} watch events, RSS {rss_start} KiB at 10 s, {rss_end} KiB at the end",
        errors.len(),
        rows.len(),
        events.load(Ordering::Relaxed)
    );
    assert!(
        errors.is_empty(),
        "errors: {:?}",
        errors
            .iter()
            .map(|e| (e.code(), e.message().to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(stuck, 0, "no voice stays PROCESSING");
    assert_eq!(u64::try_from(rows.len()).unwrap(), created);
    let held: BTreeSet<String> = rows
        .iter()
        .filter(|v| v.status != VoiceStatus::Deleted)
        .filter_map(|v| v.provider_voice_id.clone())
        .collect();
    let at_provider: BTreeSet<String> = fake.voice_ids().into_iter().collect();
    assert_eq!(held, at_provider, "no provider voice without a live row");
    // Flat: what the server holds does not grow with the work it has done.
    assert!(
        rss_end <= rss_start + rss_start / 2 + 16 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

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

use sea_orm::Database;
use uuid::Uuid;
use voicehub::{
    pb::{DeleteVoiceRequest, GetVoiceRequest, ListUserVoicesRequest, WatchVoiceStatusRequest},
    store::VoiceStatus,
};

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Fault, Route},
    helpers::{Client, JWT_SECRET, create_request, rows_once_settled, serve},
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

/// One round of a user's traffic on the soak's voice number `n`: create it,
/// read it, delete every third, list; each error is kept. Returns the
/// number of calls it counts.
async fn one_round(client: &mut Client, n: u64, errors: &mut Vec<tonic::Status>) -> u64 {
    let mut request = create_request(&format!("Soak {n}"));
    request.request_id = format!("soak-{n}");
    let voice = match client.create_voice_clone(request).await {
        Ok(voice) => voice.into_inner(),
        Err(status) => {
            errors.push(status);
            return 3;
        }
    };
    let mut calls = 3;
    if let Err(status) = client
        .get_voice(GetVoiceRequest {
            voice_id: voice.voice_id.clone(),
        })
        .await
    {
        errors.push(status);
    }
    // Every third voice is deleted again (at the provider too).
    if (n + 1).is_multiple_of(3) {
        calls += 1;
        if let Err(status) = client
            .delete_voice(DeleteVoiceRequest {
                voice_id: voice.voice_id,
            })
            .await
        {
            errors.push(status);
        }
    }
    if let Err(status) = client
        .list_user_voices(ListUserVoicesRequest::default())
        .await
    {
        errors.push(status);
    }
    calls
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
    let users: Vec<Client> = (0..4).map(|_| server.client(Uuid::new_v4())).collect();
    // Each user watches all their voices for the whole soak.
    let events = Arc::new(AtomicU64::new(0));
    for client in &users {
        let mut stream = client
            .clone()
            .watch_voice_status(WatchVoiceStatusRequest::default())
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
        let mut client = users[usize::try_from(created).unwrap() % users.len()].clone();
        // Now and then the provider fails a clone or a check once; the
        // service retries it.
        if created % 10 == 5 {
            fake.inject(Route::Add, 1, Fault::unavailable());
            fake.inject(Route::Lookup, 1, Fault::server_error());
            injected += 2;
        }
        calls += one_round(&mut client, created, &mut errors).await;
        created += 1;
    }
    let rss_start = rss_start.unwrap_or_else(|| rss_kib(pid));

    // The status engine drains what is left.
    let db = Database::connect(format!("sqlite://{}/voicehub.db", dir.path().display()))
        .await
        .unwrap();
    let rows = rows_once_settled(&db, Duration::from_secs(30)).await;
    let rss_end = rss_kib(pid);
    let count = |status| rows.iter().filter(|v| v.status == status).count();
    let stuck = count(VoiceStatus::Processing);
    let (completed, deleted) = (count(VoiceStatus::Completed), count(VoiceStatus::Deleted));
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

//! Graceful shutdown: health goes NOT_SERVING, watch streams end with
//! UNAVAILABLE, voices the status engine claimed are due again at once for
//! another replica, and the process exits 0 within its grace period.

use std::time::{Duration, Instant};

use fred::prelude::*;
use rustix::process::{Pid, Signal, kill_process};
use tonic::Code;
use uuid::Uuid;
use voicehub::{
    pb::WatchVoiceStatusRequest,
    status_engine::{Claim, DueQueue},
};

use crate::{
    fake_elevenlabs::{Fault, Route},
    helpers::{Backend, JWT_SECRET, create_voice, queue_of, serve, spawn_app_with_fake},
};

#[tokio::test]
async fn voices_a_stopping_replica_claimed_are_due_again_at_once() {
    let (mut app, fake) = spawn_app_with_fake(Backend::Postgres, |c| c.run_worker = true).await;
    // Every check hangs at the provider: the engine holds its claims.
    fake.inject(Route::Lookup, 10, Fault::Slow(Duration::from_secs(20)));
    fake.inject(Route::Get, 10, Fault::Slow(Duration::from_secs(20)));
    let mut client = app.client(Uuid::new_v4());
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create_voice(&mut client, &format!("Held {i}"))
                .await
                .voice_id,
        );
    }
    for _ in 0..500 {
        if fake.calls(Route::Lookup) + fake.calls(Route::Get) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fake.calls(Route::Lookup) + fake.calls(Route::Get) > 0,
        "a check is at the provider"
    );
    let started = Instant::now();
    app.stop().await;
    println!("stopped in {:?} with a check hanging", started.elapsed());

    // Another replica's claim takes all three now, not after the 30 s lease.
    let (redis, queue) = queue_of(&app).await;
    let Claim::Claimed { ids: claimed, .. } =
        queue.claim(10, Duration::from_secs(30)).await.unwrap()
    else {
        panic!("the queue is there")
    };
    let mut claimed: Vec<String> = claimed.iter().map(Uuid::to_string).collect();
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids);
    redis.commands.quit().await.unwrap();
}

#[tokio::test]
async fn sigterm_with_a_thousand_watch_streams_ends_each_with_unavailable_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(
        dir.path(),
        &[
            ("VOICEHUB_JWT_SECRET", JWT_SECRET),
            ("VOICEHUB_SHUTDOWN_GRACE", "10s"),
        ],
    );
    // Ten users with a hundred streams each (the per-user limit), one
    // connection per user.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let client = server.client(Uuid::new_v4());
        let mut opening = Vec::new();
        for _ in 0..100 {
            let mut client = client.clone();
            opening.push(tokio::spawn(async move {
                client
                    .watch_voice_status(WatchVoiceStatusRequest::default())
                    .await
            }));
        }
        for open in opening {
            streams.push(open.await.unwrap().unwrap().into_inner());
        }
    }
    assert_eq!(streams.len(), 1_000);

    let signalled = Instant::now();
    kill_process(Pid::from_child(&server.child), Signal::TERM).unwrap();
    let ends: Vec<_> = streams
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { stream.message().await }))
        .collect();
    let mut unavailable = 0;
    let mut come_back = Vec::new();
    for end in ends {
        let end = tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .expect("each stream ends within the grace period")
            .unwrap();
        match end {
            Err(status) if status.code() == Code::Unavailable => {
                unavailable += 1;
                let retry = tonic_types::StatusExt::get_details_retry_info(&status)
                    .and_then(|info| info.retry_delay)
                    .expect("the stream says when to come back");
                come_back.push(retry);
            }
            other => panic!("a stream ended otherwise: {other:?}"),
        }
    }
    come_back.sort();
    println!(
        "1000 streams ended UNAVAILABLE {:?} after SIGTERM, told to come back in {:?} to {:?}",
        signalled.elapsed(),
        come_back[0],
        come_back[come_back.len() - 1]
    );
    assert_eq!(unavailable, 1_000);
    // Spread over the window, not one instant: the quickest and slowest
    // tenths are seconds apart.
    assert!(
        come_back
            .iter()
            .all(|d| *d < voicehub::error::RECONNECT_SPREAD)
    );
    assert!(come_back[900].saturating_sub(come_back[100]) > voicehub::error::RECONNECT_SPREAD / 2);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    println!("exited {status:?} {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "within the grace"
    );
}

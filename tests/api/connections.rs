//! Connections are bounded: idle ones (bare TCP, the HTTP/2 preface and
//! nothing more) are closed within the idle timeout while connections with
//! calls stay; beyond the replica's limit a connection is closed at once and
//! the rest are served; an aged connection is asked to go away and cut after
//! its grace.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;
use voicehub::connections::ConnectionLimits;

use crate::helpers::{Backend, TestApp, create_voice, next, spawn_app_with, watch};

/// How long until the server closes `socket`; `None` if it stays open for `within`.
async fn closed_after(
    mut socket: TcpStream,
    started: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, socket.read(&mut buf)).await {
            Err(_) => return None,
            // The server's SETTINGS and pings are not an end.
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Some(started.elapsed()),
        }
    }
}

async fn limited(limits: ConnectionLimits) -> TestApp {
    spawn_app_with(Backend::Sqlite, |c| c.connections = limits).await
}

#[tokio::test]
async fn idle_and_preface_only_connections_are_closed_within_the_idle_timeout_while_busy_ones_stay()
{
    let idle = Duration::from_secs(1);
    let app = limited(ConnectionLimits {
        idle,
        ..ConnectionLimits::DEFAULT
    })
    .await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    // A connection with a call in progress: a watch on all the user's voices.
    let mut stream = watch(&mut client, &[]).await;

    let started = Instant::now();
    let mut sockets = Vec::new();
    for i in 0..40 {
        let mut socket = TcpStream::connect(app.addr).await.unwrap();
        if i % 2 == 1 {
            socket
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
        }
        sockets.push(socket);
    }
    let closings: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, started, Duration::from_secs(10))))
        .collect();
    let mut latest = Duration::ZERO;
    for closing in closings {
        let after = closing.await.unwrap().expect("closed within 10 s");
        assert!(
            after >= Duration::from_millis(950),
            "not before the timeout: {after:?}"
        );
        latest = latest.max(after);
    }
    println!("40 idle connections (20 bare, 20 preface only) closed, the last after {latest:?}");
    assert!(
        latest < idle * 4,
        "within the idle timeout, with room for a loaded machine: {latest:?}"
    );

    // The busy connection outlived them all and still carries its stream.
    tokio::time::sleep((idle * 2).saturating_sub(started.elapsed())).await;
    let voice = create_voice(&mut app.client(user), "After the reaping").await;
    let event = next(&mut stream).await.unwrap();
    assert_eq!(event.voice.unwrap().voice_id, voice.voice_id);
    assert_eq!(app.metric("voicehub_connections_open"), 1);
}

#[tokio::test]
async fn a_replica_at_its_connection_limit_closes_new_ones_and_serves_the_rest() {
    let app = limited(ConnectionLimits {
        max: 3,
        ..ConnectionLimits::DEFAULT
    })
    .await;
    let mut health = app.health();
    health.check(HealthCheckRequest::default()).await.unwrap();
    let mut held = vec![
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    let started = Instant::now();
    for _ in 0..2 {
        let beyond = TcpStream::connect(app.addr).await.unwrap();
        let after = closed_after(beyond, started, Duration::from_secs(5))
            .await
            .expect("closed at once");
        assert!(after < Duration::from_secs(2), "{after:?}");
    }
    assert_eq!(app.metric("voicehub_connections_refused_total"), 2);
    // The connections within the limit are served.
    health.check(HealthCheckRequest::default()).await.unwrap();
    // A place given back is a place for the next one.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next_one = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(
        closed_after(next_one, Instant::now(), Duration::from_millis(500)).await,
        None,
        "admitted and kept"
    );
    assert_eq!(app.metric("voicehub_connections_refused_total"), 2);
}

#[tokio::test]
async fn an_aged_connection_is_asked_to_go_away_then_cut_after_its_grace() {
    let app = limited(ConnectionLimits {
        age: Duration::from_secs(1),
        age_grace: Duration::from_secs(1),
        ..ConnectionLimits::DEFAULT
    })
    .await;
    let user = Uuid::new_v4();
    let voice = create_voice(&mut app.client(user), "Aging").await;
    // Before the stream's connection is made: its age counts from then (a
    // connection of its own: the app's shared one carried the create).
    let started = Instant::now();
    let mut client = app.client_on_own_connection(user);
    let mut stream = watch(&mut client, &[]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);

    // Past the age, new calls go to a new connection; the stream stays.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let mut reader = app.client(user);
    let mut served = 0;
    for _ in 0..20 {
        if reader
            .get_voice(voicehub::pb::GetVoiceRequest {
                voice_id: voice.voice_id.clone(),
            })
            .await
            .is_ok()
        {
            served += 1;
        }
    }
    assert!(
        served >= 19,
        "calls after GOAWAY are served: {served} of 20"
    );
    // Past the grace, the stream's connection is cut and its client hears it.
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends within 10 s");
    assert!(ended.is_err(), "cut, not a clean end: {ended:?}");
    let at = started.elapsed();
    assert!(
        at >= Duration::from_millis(1_900),
        "not before age + grace: {at:?}"
    );
    println!("the aged connection's stream was cut after {at:?} (age 1 s + grace 1 s)");
}

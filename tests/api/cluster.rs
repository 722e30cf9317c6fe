//! A Redis Cluster losing a primary while voices are created and watched:
//! its replica takes over, voicehub reconnects, nothing stored is lost,
//! every voice ends terminal and every watcher, on either replica, hears it.
//! The time to recover is printed.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tonic::Code;
use uuid::Uuid;
use voicehub::pb;

use crate::{
    fake_elevenlabs::{Report, Route},
    helpers::{Client, create_request, replica_of, spawn_app_with_fake, watch},
    redis_server::RedisCluster,
};

/// Creates voice `name` as a client that retries UNAVAILABLE with the same
/// `request_id`; the voice and how many attempts it took.
async fn create_retrying(client: &mut Client, name: &str) -> (pb::Voice, u32) {
    let mut request = create_request(name);
    request.request_id = format!("failover-{}", name.replace(' ', "-"));
    for attempt in 1..=60 {
        match client.create_voice_clone(request.clone()).await {
            Ok(voice) => return (voice.into_inner(), attempt),
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("create {name}: {status:?}"),
        }
    }
    panic!("create {name} never answered")
}

/// Reads `stream` until every voice of `ids` was COMPLETED on it.
async fn until_completed(
    stream: &mut tonic::Streaming<pb::VoiceStatusEvent>,
    ids: &BTreeSet<String>,
) {
    let mut completed = BTreeSet::new();
    while !ids.is_subset(&completed) {
        let event = tokio::time::timeout(Duration::from_mins(1), stream.message())
            .await
            .expect("every terminal state reaches the watcher")
            .expect("the stream does not fail")
            .expect("the stream stays open");
        let voice = event.voice.unwrap();
        if voice.status() == pb::VoiceStatus::Completed {
            completed.insert(voice.voice_id);
        }
    }
}

#[tokio::test]
async fn a_primary_failed_over_while_voices_are_created_and_watched_loses_nothing() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let (a, fake) = spawn_app_with_fake(crate::helpers::Backend::Postgres, |c| {
        c.redis_url = Some(url.into());
        c.run_worker = true;
        // Longer than the test waits: a voice whose reschedule the failover
        // cut off must be handed back, not left to its lease.
        c.engine.claim_lease = Duration::from_mins(10);
    })
    .await;
    let b = replica_of(&a, &fake, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let mut client = a.client(user);
    let mut on_a = watch(&mut client, &[]).await;
    let mut on_b = watch(&mut b.client(user), &[]).await;
    let mut ids = BTreeSet::new();
    for i in 0..10 {
        ids.insert(
            create_retrying(&mut client, &format!("before {i}"))
                .await
                .0
                .voice_id,
        );
    }

    // The primary that holds the due-queue dies; more voices are created
    // (on both replicas) while its replica takes over, and the provider
    // finishes every voice meanwhile.
    let (_, prefix) = a.redis.clone().unwrap();
    let queue_key = format!("{prefix}:sync:due");
    let primary = cluster
        .primary_of(&queue_key)
        .expect("a primary serves the queue");
    println!("killing {primary}:\n{}", cluster.nodes());
    let killed = Instant::now();
    cluster.kill(primary);
    // A third replica starts while the primary is down (a replica restarted
    // mid-failover): it must use the cluster once it has healed.
    let c = replica_of(&a, &fake, |_| {}).await;
    println!("replica C started {:?} after the kill", killed.elapsed());
    let mut on_b_client = b.client(user);
    let mut attempts = Vec::new();
    for i in 0..10 {
        let client = if i % 2 == 0 {
            &mut client
        } else {
            &mut on_b_client
        };
        let (voice, tries) = create_retrying(client, &format!("during {i}")).await;
        attempts.push(tries);
        ids.insert(voice.voice_id);
    }
    for provider_voice in fake.voice_ids() {
        fake.set_report(&provider_voice, Report::default());
    }
    fake.set_default_report(Report::default());
    let mut promoted = None;
    for _ in 0..600 {
        if cluster.primary_of(&queue_key).is_some_and(|p| p != primary) {
            promoted = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = promoted.unwrap_or_else(|| {
        panic!(
            "a replica takes over the queue's slots within 30 s:\n{}",
            cluster.nodes()
        )
    });
    cluster.until_ok();

    until_completed(&mut on_a, &ids).await;
    let heard_on_a = killed.elapsed();
    until_completed(&mut on_b, &ids).await;
    let heard_on_b = killed.elapsed();
    println!(
        "primary {primary} killed: its replica promoted after {promoted:?}; creates during it took {attempts:?} attempts; \
         every voice COMPLETED heard on A after {heard_on_a:?}, on B after {heard_on_b:?}"
    );

    // The replica started mid-failover queues, checks and tells its own
    // watcher of the voices created on it.
    let mut client_of_c = c.client(user);
    let mut on_c = watch(&mut client_of_c, &[]).await;
    let mut on_c_ids = BTreeSet::new();
    for i in 0..2 {
        let (voice, _) = create_retrying(&mut client_of_c, &format!("on C {i}")).await;
        on_c_ids.insert(voice.voice_id);
    }
    until_completed(&mut on_c, &on_c_ids).await;
    println!(
        "the 2 voices created on C COMPLETED and heard on C {:?} after the kill",
        killed.elapsed()
    );
    ids.extend(on_c_ids);

    // Storage agrees, and nothing was lost or made twice.
    assert_eq!(a.voice_rows().await, 22);
    for id in &ids {
        let stored = crate::helpers::get_voice(&mut client, id).await;
        assert_eq!(stored.status(), pb::VoiceStatus::Completed);
    }
    assert_eq!(fake.calls(Route::Add), 22);
    assert_eq!(
        fake.voice_ids().len(),
        22,
        "no provider voice without a row"
    );
}

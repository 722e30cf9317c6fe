//! No watcher misses a terminal state for ever: a replica whose unread
//! stream entries were trimmed notices and re-reads storage; a change that
//! no event announces reaches a processing watch within the recheck
//! interval; and the stream is trimmed by age, never by count.

use std::time::Duration;

use fred::prelude::*;
use rustix::process::{Pid, Signal, kill_process};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};
use secrecy::ExposeSecret;
use uuid::Uuid;
use voicehub::{pb::VoiceStatus, store::entity::voice};

use crate::helpers::{
    Backend, JWT_SECRET, TestApp, create_voice, next, redis_of, serve, spawn_app_with, watch,
};

/// Steps `app`'s status engine until it completed `voices` voices.
async fn complete(app: &TestApp, voices: usize) {
    let mut completed = 0;
    for _ in 0..100 {
        completed += app.worker.run_once().await.unwrap().completed;
        if completed >= voices {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{completed} of {voices} voices completed within 10 s");
}

#[tokio::test]
async fn a_replica_paused_while_its_unread_entries_are_trimmed_still_tells_its_watcher() {
    let a = spawn_app_with(Backend::Postgres, |_| {}).await;
    let (redis_url, prefix) = a.redis.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Replica B, a process of its own, rechecking its streams only hourly
    // (a stream's first recheck comes at a random point of the interval, so
    // the default minute could answer first): what tells its watcher in
    // time is the event reader.
    let b = serve(
        dir.path(),
        &[
            ("DATABASE_URL", a.database.url.expose_secret()),
            ("REDIS_URL", redis_url.as_str()),
            ("VOICEHUB_REDIS_PREFIX", prefix.as_str()),
            ("VOICEHUB_JWT_SECRET", JWT_SECRET),
            ("VOICEHUB_SYNC_WORKER", "false"),
            ("VOICEHUB_WATCH_RECHECK_INTERVAL", "1h"),
        ],
    );
    let user = Uuid::new_v4();
    let voice = create_voice(&mut a.client(user), "Watched across a pause").await;
    let mut stream = watch(&mut b.client(user), &[&voice.voice_id]).await;
    let snapshot = next(&mut stream).await.unwrap();
    assert_eq!(snapshot.voice.unwrap().status(), VoiceStatus::Processing);

    // B stops while V completes on A and the stream loses the entry: a
    // first entry answers B's pending read, the next is V's, then XTRIM.
    let pid = Pid::from_raw(i32::try_from(b.child.id()).unwrap()).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let (redis, _) = redis_of(&a).await;
    let stream_key = format!("{prefix}:events");
    let _: String = redis
        .commands
        .xadd(
            &stream_key,
            false,
            None,
            "*",
            ("decoy", "answers B's pending read"),
        )
        .await
        .unwrap();
    complete(&a, 1).await;
    a.until_published().await;
    let trimmed: u64 = redis
        .commands
        .xtrim(&stream_key, ("MAXLEN", "=", 0))
        .await
        .unwrap();
    assert!(
        trimmed >= 2,
        "the decoy and V's entry were trimmed: {trimmed}"
    );
    kill_process(pid, Signal::CONT).unwrap();

    // The reader notices at its next read: at once if it was waiting on
    // one (the decoy answered it), else within its blocking read (5 s).
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "COMPLETED within 10 s of B's resumption, long before its recheck; B's logs: {}",
                b.logs.lock().unwrap().join("\n")
            )
        })
        .unwrap()
        .expect("an event");
    assert_eq!(event.voice.unwrap().status(), VoiceStatus::Completed);
    assert!(!event.snapshot);
    // Log lines are written by a thread of their own, so B's may reach
    // its stderr a moment after the event it caused reached the watcher.
    let said = || {
        b.logs.lock().unwrap().iter().any(|line| {
            line.contains("events were trimmed from the stream before this replica read them")
        })
    };
    crate::helpers::wait_for(Duration::from_secs(5), said).await;
    assert!(said(), "B says why it re-read storage");
}

#[tokio::test]
async fn a_recheck_storage_cannot_answer_leaves_the_stream_open_and_the_next_one_finds_the_change()
{
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_app_with(Backend::Postgres, |c| {
        c.watch_recheck = Duration::from_secs(1);
        c.database.statement_timeout = Duration::from_millis(300);
    })
    .await;
    let user = Uuid::new_v4();
    let voice = create_voice(&mut app.client(user), "Reread in a lock").await;
    app.until_published().await;
    let mut stream = watch(&mut app.client(user), &[&voice.voice_id]).await;
    assert!(next(&mut stream).await.unwrap().snapshot);
    // The test holds the table, and changes the voice without an event:
    // every read of it times out until the commit.
    let txn = app.db.begin().await.unwrap();
    txn.execute_unprepared("LOCK TABLE voices IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let id: Uuid = voice.voice_id.parse().unwrap();
    voice::Entity::update_many()
        .col_expr(voice::Column::Status, Expr::value("completed"))
        .col_expr(
            voice::Column::Revision,
            Expr::col(voice::Column::Revision).add(1),
        )
        .filter(voice::Column::Id.eq(id))
        .exec(&txn)
        .await
        .unwrap();
    crate::helpers::wait_for(Duration::from_secs(10), || {
        app.metric("voicehub_watch_reread_failures_total") >= 1
    })
    .await;
    assert!(
        app.metric("voicehub_watch_reread_failures_total") >= 1,
        "a recheck failed while the table was held"
    );
    txn.commit().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), next(&mut stream))
        .await
        .expect("the next recheck finds it")
        .expect("the stream stayed open");
    assert_eq!(event.voice.unwrap().status(), VoiceStatus::Completed);
    println!(
        "{} re-reads failed while the table was held; the stream stayed open and got COMPLETED",
        app.metric("voicehub_watch_reread_failures_total")
    );
    assert_eq!(app.metric("voicehub_watch_recheck_catches_total"), 1);
    assert!(next(&mut stream).await.is_none(), "then ends: all terminal");
}

#[tokio::test]
async fn a_change_no_event_announces_reaches_a_processing_watch_within_the_recheck_interval() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app_with(backend, |c| c.watch_recheck = Duration::from_secs(1)).await;
        let user = Uuid::new_v4();
        let voice = create_voice(&mut app.client(user), "Changed behind the bus").await;
        app.until_published().await;
        let mut stream = watch(&mut app.client(user), &[&voice.voice_id]).await;
        assert!(next(&mut stream).await.unwrap().snapshot);
        // A change stored without an event (an operator's fix by hand, an
        // event lost on the way): only a reread can find it.
        let id: Uuid = voice.voice_id.parse().unwrap();
        let updated = voice::Entity::update_many()
            .col_expr(voice::Column::Status, Expr::value("completed"))
            .col_expr(
                voice::Column::Revision,
                Expr::col(voice::Column::Revision).add(1),
            )
            .filter(voice::Column::Id.eq(id))
            .exec(&app.db)
            .await
            .unwrap();
        assert_eq!(updated.rows_affected, 1);
        let started = std::time::Instant::now();
        let event = next(&mut stream).await.unwrap();
        assert_eq!(
            event.voice.unwrap().status(),
            VoiceStatus::Completed,
            "{backend:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{backend:?}: within the 1 s interval, with room for a loaded machine"
        );
        assert_eq!(app.metric("voicehub_watch_recheck_catches_total"), 1);
        assert!(
            next(&mut stream).await.is_none(),
            "the stream ends: all terminal"
        );
    }
}

#[tokio::test]
async fn the_event_stream_is_trimmed_by_age_never_by_count() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let (redis, prefix) = redis_of(&app).await;
    let key = format!("{prefix}:events");
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap();
    // 5,000 entries an hour old, then 11,000 recent ones: more than the old
    // count-based cap (10,000) of entries no replica may have read yet.
    let pipeline = redis.commands.pipeline();
    for i in 0..5_000u64 {
        let id = format!("{}-{i}", now_ms - 3_600_000);
        let _: () = pipeline
            .xadd(&key, false, None, id, ("old", "x"))
            .await
            .unwrap();
    }
    for i in 0..11_000u64 {
        let id = format!("{}-{i}", now_ms - 1_000);
        let _: () = pipeline
            .xadd(&key, false, None, id, ("recent", "x"))
            .await
            .unwrap();
    }
    let _: Vec<String> = pipeline.all().await.unwrap();
    let user = Uuid::new_v4();
    create_voice(&mut app.client(user), "Published with a trim").await;
    app.until_published().await;
    let entries: Vec<(String, std::collections::HashMap<String, Value>)> =
        redis.commands.xrange(&key, "-", "+", None).await.unwrap();
    let old = entries
        .iter()
        .filter(|(_, f)| f.contains_key("old"))
        .count();
    let recent = entries
        .iter()
        .filter(|(_, f)| f.contains_key("recent"))
        .count();
    assert_eq!(recent, 11_000, "no recent entry trimmed");
    // Approximate trimming keeps at most one macro node (100 entries) of
    // what it could have removed.
    assert!(old <= 100, "{old} hour-old entries kept");
    assert_eq!(entries.len() - old - recent, 1, "the new voice's event");
}

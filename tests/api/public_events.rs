//! The public event stream (`docs/events.md`): each stored change as a
//! CloudEvents document, at least once and in revision order per voice,
//! also when the process that stored it is killed before publishing, or
//! Redis is away when it is stored.

use std::{collections::BTreeMap, time::Duration};

use fred::prelude::*;
use serde_json::Value;
use uuid::Uuid;
use voicehub::pb::{self, DeleteVoiceRequest, UpdateVoiceRequest};

use crate::{
    fake_elevenlabs::{Fault, Report, Route},
    helpers::{
        Backend, Client, TestApp, create_voice, redis_of, serve_replica_of, spawn_app_with_fake,
        wait_for,
    },
    redis_server::RedisServer,
};

/// Every document on `app`'s public stream, oldest first.
async fn public_documents(app: &TestApp) -> Vec<Value> {
    let (redis, _) = redis_of(app).await;
    let stream = &app.public_stream;
    let entries: Vec<(String, BTreeMap<String, String>)> =
        redis.commands.xrange(stream, "-", "+", None).await.unwrap();
    redis.quit().await;
    entries
        .into_iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "one field per entry: {fields:?}");
            serde_json::from_str(&fields["event"]).expect("the event field is JSON")
        })
        .collect()
}

/// The documents of `voice_id`, as (type, revision).
fn of_voice(documents: &[Value], voice_id: &str) -> Vec<(String, i64)> {
    documents
        .iter()
        .filter(|d| d["subject"] == voice_id)
        .map(|d| {
            (
                d["type"].as_str().unwrap().to_owned(),
                d["data"]["revision"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn rename(client: &mut Client, voice: &pb::Voice, name: &str) -> pb::Voice {
    let mut renamed = voice.clone();
    renamed.name = name.into();
    client
        .update_voice(UpdateVoiceRequest {
            voice: Some(renamed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn delete(client: &mut Client, voice_id: &str) {
    client
        .delete_voice(DeleteVoiceRequest {
            voice_id: voice_id.to_owned(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn each_change_is_one_cloudevent_with_the_contracts_fields_and_nothing_more() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let user = Uuid::new_v4();
    let mut client = app.client(user);
    let voice = create_voice(&mut client, "Announced").await;
    let renamed = rename(&mut client, &voice, "Announced again").await;
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    delete(&mut client, &voice.voice_id).await;
    // A second voice fails at the provider.
    let failing = create_voice(&mut client, "Refused").await;
    fake.set_report(&failing.provider_voice_id, Report::professional("failed"));
    assert_eq!(app.worker.run_once().await.unwrap().failed, 1);
    app.until_published().await;

    let documents = public_documents(&app).await;
    let first = voice.revision;
    assert_eq!(
        of_voice(&documents, &voice.voice_id),
        [
            ("voicehub.voice.created.v1".to_owned(), first),
            ("voicehub.voice.updated.v1".to_owned(), renamed.revision),
            ("voicehub.voice.completed.v1".to_owned(), first + 2),
            ("voicehub.voice.deleted.v1".to_owned(), first + 3),
        ]
    );
    assert_eq!(
        of_voice(&documents, &failing.voice_id),
        [
            ("voicehub.voice.created.v1".to_owned(), failing.revision),
            ("voicehub.voice.failed.v1".to_owned(), failing.revision + 1),
        ]
    );
    for document in &documents {
        println!("{document}");
        let subject = document["subject"].as_str().unwrap();
        let revision = document["data"]["revision"].as_i64().unwrap();
        assert_eq!(document["specversion"], "1.0");
        assert_eq!(document["id"], format!("{subject}:{revision}"));
        assert_eq!(document["source"], "voicehub");
        assert_eq!(document["datacontenttype"], "application/json");
        let time = chrono::DateTime::parse_from_rfc3339(document["time"].as_str().unwrap())
            .expect("RFC 3339");
        let age = chrono::Utc::now().signed_duration_since(time);
        assert!(age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1));
        let data = document["data"].as_object().unwrap();
        assert_eq!(data["voice_id"], subject);
        assert_eq!(data["user_id"], user.to_string());
        assert_eq!(data["visibility"], "VISIBILITY_PRIVATE");
        let failed = document["type"] == "voicehub.voice.failed.v1";
        let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
        fields.sort_unstable();
        let expected: &[&str] = if failed {
            &[
                "failure_reason",
                "revision",
                "status",
                "user_id",
                "visibility",
                "voice_id",
            ]
        } else {
            &["revision", "status", "user_id", "visibility", "voice_id"]
        };
        assert_eq!(
            fields, expected,
            "names, labels and audio stay behind GetVoice"
        );
    }
    let status = |kind: &str| {
        documents
            .iter()
            .find(|d| d["type"] == kind)
            .map(|d| d["data"]["status"].clone())
            .unwrap()
    };
    assert_eq!(
        status("voicehub.voice.created.v1"),
        "VOICE_STATUS_PROCESSING"
    );
    assert_eq!(
        status("voicehub.voice.completed.v1"),
        "VOICE_STATUS_COMPLETED"
    );
    assert_eq!(status("voicehub.voice.deleted.v1"), "VOICE_STATUS_DELETED");
    let failed = documents
        .iter()
        .find(|d| d["type"] == "voicehub.voice.failed.v1")
        .unwrap();
    assert_eq!(failed["data"]["status"], "VOICE_STATUS_FAILED");
    assert!(
        !failed["data"]["failure_reason"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}

/// Makes the public stream refuse appends: its key holds a string.
async fn refuse_public(app: &TestApp) {
    let (redis, _) = redis_of(app).await;
    let _: () = redis.commands.del(&app.public_stream).await.unwrap();
    let _: () = redis
        .commands
        .set(&app.public_stream, "not a stream", None, None, false)
        .await
        .unwrap();
    redis.quit().await;
}

/// Undoes [`refuse_public`].
async fn accept_public(app: &TestApp) {
    let (redis, _) = redis_of(app).await;
    let _: () = redis.commands.del(&app.public_stream).await.unwrap();
    redis.quit().await;
}

/// Waits (up to 15 s) until every one of `voices` is stored COMPLETED.
async fn until_completed(app: &TestApp, voices: &[pb::Voice]) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use voicehub::store::{VoiceStatus, entity::voice};
    let ids: Vec<Uuid> = voices.iter().map(|v| v.voice_id.parse().unwrap()).collect();
    for _ in 0..300 {
        let rows = voice::Entity::find()
            .filter(voice::Column::Id.is_in(ids.clone()))
            .all(&app.db)
            .await
            .unwrap();
        if rows.iter().all(|v| v.status == VoiceStatus::Completed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the voices were not completed within 15 s");
}

/// A create whose provider answer was lost hands its caller a voice whose
/// provider voice is not yet known. Its `created` comes first, before a
/// rename its owner makes at once, and the status engine's adoption of the
/// provider voice later adds no event of its own.
#[tokio::test]
async fn a_voice_handed_over_before_its_provider_voice_is_known_is_created_first() {
    let (app, fake) = spawn_app_with_fake(Backend::Postgres, |c| {
        c.engine.adopt_after = Duration::ZERO;
    })
    .await;
    let mut client = app.client(Uuid::new_v4());
    // Past the provider timeout: the answer is lost, the voice still made.
    fake.inject(Route::Add, 1, Fault::Slow(Duration::from_secs(1)));
    let handed = create_voice(&mut client, "Handed over").await;
    assert!(handed.provider_voice_id.is_empty(), "the answer was lost");
    let renamed = rename(&mut client, &handed, "Renamed before adoption").await;
    wait_for(Duration::from_secs(10), || fake.voice_count() == 1).await;
    assert_eq!(fake.voice_count(), 1, "the provider made the voice");
    let adopted = app.worker.run_once().await.unwrap();
    assert_eq!(adopted.claimed, 1, "{adopted:?}");
    assert_eq!(app.worker.run_once().await.unwrap().completed, 1);
    app.until_published().await;

    let seen = of_voice(&public_documents(&app).await, &handed.voice_id);
    println!("{seen:?}");
    assert_eq!(
        seen,
        [
            ("voicehub.voice.created.v1".to_owned(), handed.revision),
            ("voicehub.voice.updated.v1".to_owned(), renamed.revision),
            (
                "voicehub.voice.completed.v1".to_owned(),
                renamed.revision + 1
            ),
        ]
    );
    assert_eq!(fake.calls(Route::Add), 1, "cloned once");
}

#[tokio::test]
async fn changes_of_a_process_killed_before_publishing_appear_once_each_in_revision_order() {
    let (b, fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    fake.set_default_report(Report::awaiting_verification());
    let user = Uuid::new_v4();
    let voices = [
        create_voice(&mut b.client(user), "Killed 1").await,
        create_voice(&mut b.client(user), "Killed 2").await,
    ];
    b.until_published().await;

    // Process A (`voicehub serve`, the same database, Redis, prefix and
    // public stream, its worker on) renames and settles both voices while
    // the public stream refuses them, and is killed with the changes
    // committed and unpublished.
    refuse_public(&b).await;
    let (a, _dir) = serve_replica_of(&b, &fake, &[]);
    let mut on_a = a.client(user);
    for voice in &voices {
        rename(&mut on_a, voice, "Renamed on A").await;
        fake.set_report(&voice.provider_voice_id, Report::default());
    }
    until_completed(&b, &voices).await;
    drop(a); // SIGKILL
    let left = b.outbox_rows().await;
    println!("left in the outbox by the killed process: {left}");
    assert!(left >= 2, "the renames at least wait in the outbox");

    accept_public(&b).await;
    b.until_published().await;
    let documents = public_documents(&b).await;
    let mut ids: Vec<&str> = documents
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "each change once: {documents:#?}");
    for voice in &voices {
        let seen = of_voice(&documents, &voice.voice_id);
        println!("{}: {seen:?}", voice.name);
        let kinds: Vec<&str> = seen.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["voicehub.voice.updated.v1", "voicehub.voice.completed.v1"],
            "after the stream came back"
        );
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "in revision order"
        );
    }
}

#[tokio::test]
async fn changes_stored_while_redis_is_away_appear_once_it_is_back_in_order_per_voice() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (app, _fake) =
        spawn_app_with_fake(Backend::Postgres, move |c| c.redis_url = Some(url.into())).await;
    let mut client = app.client(Uuid::new_v4());
    let voices = [
        create_voice(&mut client, "Before 1").await,
        create_voice(&mut client, "Before 2").await,
    ];
    app.until_published().await;

    redis.stop();
    // Stored without Redis: renames, a completion, a delete.
    let mut expected = BTreeMap::new();
    for (i, voice) in voices.iter().enumerate() {
        let renamed = rename(&mut client, voice, &format!("During {i}")).await;
        let again = rename(&mut client, &renamed, &format!("During {i} again")).await;
        expected.insert(
            voice.voice_id.clone(),
            vec![renamed.revision, again.revision],
        );
    }
    delete(&mut client, &voices[1].voice_id).await;
    expected
        .get_mut(&voices[1].voice_id)
        .unwrap()
        .push(voices[1].revision + 3);
    assert!(app.outbox_rows().await >= 5, "they wait in the outbox");

    redis.restart();
    app.until_published().await;
    let documents = public_documents(&app).await;
    for voice in &voices {
        let revisions: Vec<i64> = of_voice(&documents, &voice.voice_id)
            .into_iter()
            .map(|(_, revision)| revision)
            .collect();
        println!("{}: {revisions:?}", voice.name);
        assert_eq!(revisions, expected[&voice.voice_id], "in order, each once");
    }
}

#[tokio::test]
async fn a_newer_change_waits_for_an_older_one_another_process_left_behind() {
    use sea_orm::{ActiveModelTrait, EntityTrait, Set};
    use voicehub::{
        events::VoiceEvent,
        store::{Change, entity::voice, entity::voice_event},
    };
    let (app, _fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    let created = create_voice(&mut client, "Raced").await;
    app.until_published().await;

    // Another process stored a rename and died before publishing it: the
    // voice and its event, as its write would have left them.
    let id: Uuid = created.voice_id.parse().unwrap();
    let mut row: voice::ActiveModel = voice::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    row.name = Set("Renamed by the dead".into());
    row.revision = Set(created.revision + 1);
    let stored = row.update(&app.db).await.unwrap();
    voice_event::ActiveModel {
        voice_id: Set(id),
        revision: Set(stored.revision),
        writer: Set(Uuid::new_v4()),
        payload: Set(VoiceEvent::stored(&stored, Change::Updated).encode()),
        created_at: Set(chrono::Utc::now()),
        ..Default::default()
    }
    .insert(&app.db)
    .await
    .unwrap();
    // This replica changes the voice again at once: its own event must not
    // overtake the older one (the stream would drop that one as stale).
    let current = pb::Voice::from(stored);
    let renamed = rename(&mut client, &current, "Renamed by the living").await;
    app.until_published().await;

    let seen = of_voice(&public_documents(&app).await, &created.voice_id);
    println!("{seen:?}");
    assert_eq!(
        seen,
        [
            ("voicehub.voice.created.v1".to_owned(), created.revision),
            ("voicehub.voice.updated.v1".to_owned(), created.revision + 1),
            ("voicehub.voice.updated.v1".to_owned(), renamed.revision),
        ]
    );
}

/// The example consumer (`examples/voice_cache.rs`), built beside the
/// server by the test command.
fn voice_cache(app: &TestApp, consumer: &str, work: &str) -> std::process::Child {
    let example = std::path::Path::new(crate::helpers::BIN)
        .parent()
        .unwrap()
        .join("examples/voice_cache");
    assert!(
        example.exists(),
        "{} is built by the test command (cargo test builds the examples)",
        example.display()
    );
    let (redis_url, _) = app.redis.clone().unwrap();
    std::process::Command::new(example)
        .args(["--redis", &redis_url, "--stream", &app.public_stream])
        .args(["--group", "caches", "--consumer", consumer])
        .args(["--cache", &format!("{}:cache", app.public_stream)])
        .args(["--batch", "10", "--claim-after", "1s", "--work", work])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example consumer")
}

/// The lines a consumer prints, read on a thread of their own.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<Value> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(serde_json::from_str(&line).expect("a JSON line"));
        }
    });
    rx
}

#[tokio::test]
async fn the_example_consumer_group_applies_every_change_in_order_though_one_is_killed() {
    let (app, _fake) = spawn_app_with_fake(Backend::Postgres, |_| {}).await;
    let mut client = app.client(Uuid::new_v4());
    for i in 0..8 {
        let voice = create_voice(&mut client, &format!("Cached {i}")).await;
        let renamed = rename(&mut client, &voice, &format!("Cached {i} again")).await;
        if i % 2 == 0 {
            delete(&mut client, &renamed.voice_id).await;
        }
    }
    assert_eq!(app.worker.run_once().await.unwrap().completed, 4);
    app.until_published().await;
    let documents = public_documents(&app).await;
    assert_eq!(documents.len(), 24);

    // The first consumer takes a batch of ten, slowly, and is killed after
    // applying one: nine entries are left pending in its name.
    let mut first = voice_cache(&app, "first", "300ms");
    let first_lines = lines_of(&mut first);
    let handled = first_lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the first consumer handles an entry");
    first.kill().unwrap();
    first.wait().unwrap();
    let mut seen: Vec<Value> = vec![handled];
    seen.extend(first_lines.try_iter());

    // The second takes them over once idle, and reads the rest.
    let mut second = voice_cache(&app, "second", "0s");
    let second_lines = lines_of(&mut second);
    let wanted: std::collections::BTreeSet<String> = documents
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let mut claimed = 0;
    while let Ok(line) = second_lines.recv_timeout(Duration::from_secs(10)) {
        claimed += usize::from(line["claimed"] == true);
        seen.push(line);
        let got: std::collections::BTreeSet<String> = seen
            .iter()
            .filter_map(|l| l["event"].as_str().map(str::to_owned))
            .collect();
        if got == wanted {
            break;
        }
    }
    second.kill().unwrap();
    second.wait().unwrap();

    let by_first = seen.iter().filter(|l| l["consumer"] == "first").count();
    println!(
        "{} entries, handled {} times: {by_first} by the killed consumer, {} by the second ({claimed} taken over)",
        documents.len(),
        seen.len(),
        seen.len() - by_first
    );
    let got: std::collections::BTreeSet<String> = seen
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(got, wanted, "every change reached the group");
    assert!(claimed >= 9, "the killed consumer's batch was taken over");
    // The cache holds each voice's newest revision, and never moved back:
    // per voice, what each consumer applied only goes up.
    let (redis, _) = redis_of(&app).await;
    let cache: BTreeMap<String, i64> = redis
        .commands
        .hgetall(format!("{}:cache", app.public_stream))
        .await
        .unwrap();
    redis.quit().await;
    let mut newest = BTreeMap::new();
    for document in &documents {
        let revision = document["data"]["revision"].as_i64().unwrap();
        let entry = newest
            .entry(document["subject"].as_str().unwrap().to_owned())
            .or_insert(0);
        *entry = revision.max(*entry);
    }
    assert_eq!(cache, newest);
    for consumer in ["first", "second"] {
        let mut applied: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for line in seen
            .iter()
            .filter(|l| l["consumer"] == consumer && l["applied"] == true)
        {
            applied
                .entry(line["voice"].as_str().unwrap())
                .or_default()
                .push(line["revision"].as_i64().unwrap());
        }
        for revisions in applied.values() {
            assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        }
    }
}

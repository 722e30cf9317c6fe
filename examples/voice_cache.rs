//! A consumer of voicehub's public event stream to copy: it keeps a cache of
//! `voice_id → revision` fresh, as a service that caches voices would.
//!
//! It reads with a consumer group, so several copies share the work and a
//! copy that dies loses nothing:
//! - `XREADGROUP … >` hands each new entry to one consumer of the group;
//! - after applying an entry the consumer acknowledges it (`XACK`);
//! - entries a dead consumer read but never acknowledged stay pending, and
//!   any consumer takes them over once they have been idle long enough
//!   (`XAUTOCLAIM`), so every entry is applied at least once.
//!
//! Applying is idempotent and ordered per voice: the cache (a Redis hash
//! here; a database table in real life) takes a revision only if it is newer
//! than the one it holds, so duplicates and entries taken over late never
//! move a voice back. See `docs/events.md` for the contract.
//!
//! ```text
//! cargo run --example voice_cache -- --redis redis://127.0.0.1:6379 \
//!     --stream voicehub:voice-events --group caches --consumer cache-1 --cache voicehub:cache
//! ```
//!
//! Each entry handled is printed as one JSON line.

use std::time::Duration;

use clap::Parser;
use fred::{prelude::*, types::scripts::Script};

/// Takes a revision only if it is newer than the cached one; 1 if taken.
const APPLY_IF_NEWER: &str = r"
local cached = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cached then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";

#[derive(Parser)]
struct Args {
    /// The Redis voicehub publishes to.
    #[arg(long)]
    redis: String,
    /// The public stream (VOICEHUB_EVENTS_STREAM).
    #[arg(long)]
    stream: String,
    /// The consumer group; created (reading from the oldest entry kept) if missing.
    #[arg(long)]
    group: String,
    /// This consumer's name within the group.
    #[arg(long)]
    consumer: String,
    /// The hash that caches voice_id → revision.
    #[arg(long)]
    cache: String,
    /// Entries read at a time.
    #[arg(long, default_value_t = 10)]
    batch: u64,
    /// How long another consumer's unacknowledged entry waits before this one takes it over.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    claim_after: Duration,
    /// Time spent on each entry (to show work in progress being taken over).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    work: Duration,
}

/// One entry of the stream: its id and its CloudEvents document (`None`:
/// not one this consumer can read; it is acknowledged and skipped).
struct Entry {
    id: String,
    document: Option<serde_json::Value>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let config = Config::from_url(&args.redis)?;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()?;
    client.init().await?;
    create_group(&client, &args).await?;
    let apply = Script::from_lua(APPLY_IF_NEWER);
    loop {
        // First what others left behind, then what is new.
        let (claimed, fresh) = (claim(&client, &args).await?, read(&client, &args).await?);
        let batches = [(true, claimed), (false, fresh)];
        for (was_claimed, entries) in batches {
            for entry in entries {
                handle(&client, &apply, &args, &entry, was_claimed).await?;
            }
        }
    }
}

/// Creates the group at the oldest entry the stream keeps, unless it exists.
async fn create_group(client: &Client, args: &Args) -> Result<(), Error> {
    match client
        .xgroup_create::<(), _, _, _>(&args.stream, &args.group, "0", true)
        .await
    {
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Applies one entry to the cache, then acknowledges it.
async fn handle(
    client: &Client,
    apply: &Script,
    args: &Args,
    entry: &Entry,
    claimed: bool,
) -> Result<(), Error> {
    tokio::time::sleep(args.work).await;
    let document = entry.document.as_ref();
    let voice = document.and_then(|d| d["subject"].as_str());
    let revision = document.and_then(|d| d["data"]["revision"].as_i64());
    let applied: i64 = match (voice, revision) {
        (Some(voice), Some(revision)) => {
            apply
                .evalsha_with_reload(
                    client,
                    vec![args.cache.clone()],
                    vec![voice.to_owned(), revision.to_string()],
                )
                .await?
        }
        _ => 0,
    };
    let _: i64 = client
        .xack(&args.stream, &args.group, entry.id.as_str())
        .await?;
    println!(
        "{}",
        serde_json::json!({
            "consumer": args.consumer,
            "entry": entry.id,
            "event": document.map(|d| d["id"].clone()),
            "voice": voice,
            "revision": revision,
            "applied": applied == 1,
            "claimed": claimed,
        })
    );
    Ok(())
}

/// New entries for this consumer, waiting up to a second for some.
async fn read(client: &Client, args: &Args) -> Result<Vec<Entry>, Error> {
    let reply: Value = client
        .xreadgroup(
            &args.group,
            &args.consumer,
            Some(args.batch),
            Some(1_000),
            false,
            &args.stream,
            ">",
        )
        .await?;
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let streams = reply.into_xread_response::<String, String, String, String>()?;
    Ok(streams.into_values().flatten().map(entry).collect())
}

/// Entries other consumers read but did not acknowledge within
/// `claim_after`, now this consumer's.
async fn claim(client: &Client, args: &Args) -> Result<Vec<Entry>, Error> {
    let idle = u64::try_from(args.claim_after.as_millis()).unwrap_or(u64::MAX);
    // XAUTOCLAIM answers [next start, entries, deleted ids] (Redis 7).
    let reply: Vec<Value> = client
        .xautoclaim(
            &args.stream,
            &args.group,
            &args.consumer,
            idle,
            "0-0",
            Some(args.batch),
            false,
        )
        .await?;
    let Some(entries) = reply.into_iter().nth(1) else {
        return Ok(Vec::new());
    };
    let entries: Vec<(String, Vec<(String, String)>)> = entries.convert()?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| entry((id, fields.into_iter().collect())))
        .collect())
}

/// An entry, with its `event` field read as JSON if it can be.
fn entry((id, fields): (String, std::collections::HashMap<String, String>)) -> Entry {
    let document = fields
        .get("event")
        .and_then(|event| serde_json::from_str(event).ok());
    Entry { id, document }
}

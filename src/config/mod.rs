//! Command line and environment configuration, validated once at start-up.
//!
//! Every setting is a flag with an environment variable behind it (clap
//! `env`), and its clap attribute is its one default. Parsing produces typed
//! settings or a clear error that names the variable; nothing downstream
//! re-validates. Secrets are held in [`SecretString`] so they never reach a
//! log line or a `Debug` print.
//!
//! Direction: this module is the top of the tree. Each component owns the
//! type of its own settings (`store::DatabaseConfig`, `auth::AuthConfig`,
//! `provider::ElevenLabsConfig`, `status_engine::EngineConfig`); this module
//! parses flags into them and builds the provider from them
//! ([`ProviderConfig::build`]). No component imports this module.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::bail;
use clap::{
    ArgAction, Args, CommandFactory, Parser, Subcommand,
    error::{ContextKind, ContextValue},
};
use secrecy::SecretString;
use uuid::Uuid;

mod auth;
mod intake;
mod provider;

pub use auth::{AuthArgs, DEV_SECRET_FILE};
pub use intake::IntakeArgs;
pub use provider::{ProviderArgs, ProviderConfig, ProviderKind};

use crate::{
    audio,
    auth::AuthConfig,
    connections::ConnectionLimits,
    events::PublicEvents,
    status_engine::{self, EngineConfig},
    store::DatabaseConfig,
    telemetry::LogFormat,
    webhooks::WebhookSettings,
};

/// The fewest connections `serve` works with on PostgreSQL: one is held
/// for LISTEN by the event relay, the rest serve calls and the engine.
const MIN_POSTGRES_CONNECTIONS: u32 = 2;

/// The forms of `REDIS_URL` voicehub accepts: one server, or a Redis
/// Cluster (fred's URL forms; the cluster's nodes after `?node=`).
const REDIS_SCHEMES: [&str; 4] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
];

/// The default database: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://voicehub.db?mode=rwc";
#[derive(Debug, Parser)]
#[command(
    name = "voicehub",
    version,
    about = "gRPC service that manages users' cloned voices"
)]
/// The `voicehub` command line.
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "VOICEHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and the environment. A value clap refuses
    /// (malformed, missing) is reported naming the environment variable
    /// behind the flag first, since operators set variables, not flags.
    #[must_use]
    pub fn parse_naming_variables() -> Self {
        Self::try_parse().unwrap_or_else(|e| {
            let variables = variables_of(&e);
            if variables.is_empty() {
                e.exit()
            }
            let rendered = e.render().to_string();
            let message = rendered.strip_prefix("error: ").unwrap_or(&rendered);
            eprint!("error: {}: {message}", variables.join(", "));
            std::process::exit(e.exit_code())
        })
    }
}

/// The environment variables behind the flags a clap error names.
fn variables_of(e: &clap::Error) -> Vec<String> {
    let flags: Vec<&str> = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => vec![flag.as_str()],
        Some(ContextValue::Strings(flags)) => flags.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let cli = Cli::command();
    flags
        .iter()
        .filter_map(|flag| {
            let long = flag.split_whitespace().next()?.strip_prefix("--")?;
            variable_of(&cli, long)
        })
        .collect()
}

/// The environment variable of the flag `--long` in `command` or its subcommands.
fn variable_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(clap::Arg::get_env)
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| variable_of(sub, long))
        })
}

/// This process's executable, for running it again as a child. On Linux,
/// `/proc/self/exe` names the very file this process runs even after an
/// upgrade replaced or removed it on disk, so parent and child always match.
fn own_executable() -> anyhow::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        return Ok("/proc/self/exe".into());
    }
    std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find voicehub's own executable: {e}"))
}

/// The claim lease when neither of its names is set.
const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(10);

/// A setting under its new name, or, for one release, its old name (with a
/// warning, once: `into_config` reads it once), or its default.
fn renamed_setting(
    value: Option<Duration>,
    old: Option<Duration>,
    (name, old_name): (&str, &str),
    default: Duration,
) -> Duration {
    match (value, old) {
        (Some(value), _) => value,
        (None, Some(old)) => {
            tracing::warn!("{old_name} is now {name}; the old name is read until the next release");
            old
        }
        (None, None) => default,
    }
}

/// The push lease when `VOICEHUB_SYNC_PUSH_LEASE` is unset.
const DEFAULT_PUSH_LEASE: Duration = Duration::from_mins(3);
/// `VOICEHUB_SYNC_ADOPT_AFTER`'s default, which its flag's attribute repeats.
const DEFAULT_ADOPT_AFTER: Duration = Duration::from_mins(3);
/// The outbox recheck when `VOICEHUB_OUTBOX_RECHECK_INTERVAL` is unset.
const DEFAULT_OUTBOX_RECHECK: Duration = Duration::from_mins(10);
/// `VOICEHUB_SYNC_RECONCILE_INTERVAL`'s default, which its flag's attribute repeats.
const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_mins(10);

/// A setting split off an older one that did two jobs: its own value if
/// set; else, for one release, the older setting's value if an operator
/// changed it (with a warning naming both); else its own default.
/// The public event stream's settings; `None` when its retention is zero.
fn public_events(
    stream: Option<String>,
    retention: Duration,
    redis_prefix: &str,
) -> Option<PublicEvents> {
    (!retention.is_zero()).then(|| PublicEvents {
        stream: stream.unwrap_or_else(|| format!("{redis_prefix}:voice-events")),
        retention,
    })
}

/// How webhooks may be used.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Lets webhook endpoints be http URLs and private, loopback or
    /// link-local addresses: for development and tests only.
    #[arg(long, env = "VOICEHUB_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Most webhook endpoints one user may have.
    #[arg(
        long,
        env = "VOICEHUB_WEBHOOK_MAX_ENDPOINTS_PER_USER",
        default_value_t = 10
    )]
    pub webhook_max_endpoints_per_user: u32,
    /// How long a rotated-out webhook secret keeps signing beside the new one.
    #[arg(long, env = "VOICEHUB_WEBHOOK_SECRET_OVERLAP", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_secret_overlap: Duration,
    /// How long one webhook attempt may take.
    #[arg(long, env = "VOICEHUB_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// The delay before each attempt of a webhook delivery, comma-separated:
    /// the first, then each retry (up to 10 % jitter is added); used up,
    /// the delivery is given up.
    #[arg(long, env = "VOICEHUB_WEBHOOK_RETRY_SCHEDULE", default_value = "0s,5s,5m,30m,2h,5h,10h,10h", value_parser = retry_schedule)]
    pub webhook_retry_schedule: RetrySchedule,
    /// An endpoint whose attempts have all failed for this long is disabled,
    /// with that reason.
    #[arg(long, env = "VOICEHUB_WEBHOOK_DISABLE_AFTER", default_value = "5days", value_parser = humantime::parse_duration)]
    pub webhook_disable_after: Duration,
}

/// A comma-separated list of durations.
#[derive(Debug, Clone)]
pub struct RetrySchedule(pub Vec<Duration>);

fn retry_schedule(value: &str) -> Result<RetrySchedule, String> {
    let delays = value
        .split(',')
        .map(|d| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() {
        return Err("must list at least one delay".into());
    }
    Ok(RetrySchedule(delays))
}

impl WebhookArgs {
    fn into_settings(self) -> WebhookSettings {
        WebhookSettings {
            allow_private: self.webhook_allow_private,
            max_endpoints_per_user: self.webhook_max_endpoints_per_user,
            secret_overlap: self.webhook_secret_overlap,
            timeout: self.webhook_timeout,
            retry_schedule: self.webhook_retry_schedule.0,
            disable_after: self.webhook_disable_after,
        }
    }
}

fn split_setting(
    value: Option<Duration>,
    (name, default): (&str, Duration),
    (old_name, old_value, old_default): (&str, Duration, Duration),
) -> Duration {
    if let Some(value) = value {
        return value;
    }
    if old_value != old_default {
        tracing::warn!(
            "{old_name} no longer sets what {name} sets; using its value ({}) for {name} until the next release: set {name}",
            humantime::format_duration(old_value)
        );
        return old_value;
    }
    default
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (applies pending migrations first unless disabled).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print a user token signed with the configured secret, for grpcurl and tests.
    Token(TokenArgs),
    /// Check audio samples framed on standard input: run by `serve` as its
    /// own bounded child process, not by hand.
    #[command(name = "check-audio", hide = true)]
    CheckAudio,
}

/// The flags of `voicehub serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (HTTP/2, plaintext).
    #[arg(long, env = "VOICEHUB_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// PEM certificate chain of the gRPC listener; with `tls_key`, the
    /// listener speaks TLS (HTTP/2 over TLS) instead of plaintext.
    #[arg(long, env = "VOICEHUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long, env = "VOICEHUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Address of the Prometheus metrics listener (`GET /metrics`); unset: no listener.
    #[arg(long, env = "VOICEHUB_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "VOICEHUB_MIGRATE_ON_START", default_value_t = true, action = ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Redis for the due-queue and event bus (used by the status engine; unset = in-process).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Longest a shutdown (SIGTERM, SIGINT) waits for calls in progress
    /// before it cuts them and exits.
    #[arg(long, env = "VOICEHUB_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How often storage is pinged for the health service (a protocol-level
    /// ping, not SQL).
    #[arg(long, env = "VOICEHUB_HEALTH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Most live (not deleted) voices one user may have.
    #[arg(long, env = "VOICEHUB_MAX_VOICES_PER_USER", default_value_t = 50)]
    pub max_voices_per_user: u64,
    /// Most unary calls in progress on this replica (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_CONCURRENT_RPCS", default_value_t = Limits::DEFAULT.concurrent_rpcs)]
    pub max_concurrent_rpcs: usize,
    /// Most CreateVoiceClone calls in progress on this replica; each holds
    /// up to 50 MiB of samples (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_CONCURRENT_UPLOADS", default_value_t = Limits::DEFAULT.concurrent_uploads)]
    pub max_concurrent_uploads: usize,
    /// Most unary calls of one user in progress on this replica (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_CONCURRENT_RPCS_PER_USER", default_value_t = Limits::DEFAULT.concurrent_rpcs_per_user)]
    pub max_concurrent_rpcs_per_user: usize,
    /// Most CreateVoiceClone calls of one user in progress on this replica (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", default_value_t = Limits::DEFAULT.concurrent_uploads_per_user)]
    pub max_concurrent_uploads_per_user: usize,
    /// How long after its headers a unary call's request must have arrived
    /// in full; a slower one ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "VOICEHUB_REQUEST_ARRIVAL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_arrival_timeout: Duration,
    /// How long after its headers a CreateVoiceClone request (up to 50 MiB)
    /// must have arrived in full.
    #[arg(long, env = "VOICEHUB_UPLOAD_ARRIVAL_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub upload_arrival_timeout: Duration,
    /// Most open watch streams of one user on this replica (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_WATCHES_PER_USER", default_value_t = Limits::DEFAULT.watches_per_user)]
    pub max_watches_per_user: usize,
    /// Most open watch streams on this replica (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_WATCHES", default_value_t = Limits::DEFAULT.watches)]
    pub max_watches: usize,
    /// Most connections open at once on this replica; one more is closed as
    /// soon as it is accepted (0: no limit).
    #[arg(long, env = "VOICEHUB_MAX_CONNECTIONS", default_value_t = ConnectionLimits::DEFAULT.max)]
    pub max_connections: usize,
    /// How long a connection may go without a call in progress before it is
    /// closed (0: for ever); also bounds connections that never send a call.
    #[arg(long, env = "VOICEHUB_CONNECTION_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub connection_idle_timeout: Duration,
    /// Age at which a connection is asked to go away (GOAWAY; 0: never):
    /// new calls then open a new connection, perhaps to another replica.
    #[arg(long, env = "VOICEHUB_MAX_CONNECTION_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// How long after its age a connection is cut, open calls and streams
    /// included (their clients reconnect).
    #[arg(long, env = "VOICEHUB_MAX_CONNECTION_AGE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,
    /// How often a watch stream with voices still processing re-reads them
    /// from storage, in case an event was lost (each stream at its own
    /// moment within the interval).
    #[arg(long, env = "VOICEHUB_WATCH_RECHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub watch_recheck_interval: Duration,
    /// Most voice creations per user per clock hour, across replicas (0: no limit).
    #[arg(long, env = "VOICEHUB_CREATE_LIMIT_PER_HOUR", default_value_t = Limits::DEFAULT.creates_per_hour)]
    pub create_limit_per_hour: u32,
    /// Most voice creations per user per UTC day, across replicas (0: no limit).
    #[arg(long, env = "VOICEHUB_CREATE_LIMIT_PER_DAY", default_value_t = Limits::DEFAULT.creates_per_day)]
    pub create_limit_per_day: u32,
    /// A voice still PROCESSING this long after creation is FAILED.
    #[arg(long, env = "VOICEHUB_SYNC_MAX_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub sync_max_age: Duration,
    /// Longest a Redis command may take (then the caller gets an error).
    #[arg(long, env = "VOICEHUB_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key and channel voicehub uses.
    #[arg(long, env = "VOICEHUB_REDIS_PREFIX", default_value = "voicehub")]
    pub redis_prefix: String,
    /// Run the status engine's worker in this process (API-only replicas may turn it off).
    #[arg(long, env = "VOICEHUB_SYNC_WORKER", default_value_t = true, action = ArgAction::Set)]
    pub sync_worker: bool,
    /// Most voices one status-engine step claims.
    #[arg(long, env = "VOICEHUB_SYNC_BATCH", default_value_t = 32)]
    pub sync_batch: usize,
    /// How long a claimed voice is reserved for the replica that claimed it
    /// (the claim lease), renewed every third of it while its check runs
    /// [default: 10s].
    #[arg(long, env = "VOICEHUB_SYNC_CLAIM_LEASE", value_parser = humantime::parse_duration)]
    pub sync_claim_lease: Option<Duration>,
    /// The old name of VOICEHUB_SYNC_CLAIM_LEASE, read for one more release
    /// with a warning.
    #[arg(long, env = "VOICEHUB_SYNC_LEASE", value_parser = humantime::parse_duration)]
    pub sync_lease: Option<Duration>,
    /// Longest the status engine's worker sleeps when nothing is due.
    #[arg(long, env = "VOICEHUB_SYNC_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_idle: Duration,
    /// Longest delay between two checks of one voice.
    #[arg(long, env = "VOICEHUB_SYNC_MAX_BACKOFF", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sync_max_backoff: Duration,
    /// How often the due-queue is reconciled with storage regardless.
    #[arg(long, env = "VOICEHUB_SYNC_RECONCILE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub sync_reconcile_interval: Duration,
    /// How often the event outbox is read for events other replicas left
    /// behind, regardless of notifications [default: 10m; until the next
    /// release, a changed VOICEHUB_SYNC_RECONCILE_INTERVAL, with a warning].
    #[arg(long, env = "VOICEHUB_OUTBOX_RECHECK_INTERVAL", value_parser = humantime::parse_duration)]
    pub outbox_recheck_interval: Option<Duration>,
    /// The Redis stream of public events (CloudEvents in JSON, see
    /// docs/events.md) [default: VOICEHUB_REDIS_PREFIX + ":voice-events"].
    /// None without REDIS_URL.
    #[arg(long, env = "VOICEHUB_EVENTS_STREAM")]
    pub events_stream: Option<String>,
    /// Webhooks.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// The CloudEvents `source` of every public event.
    #[arg(long, env = "VOICEHUB_EVENTS_SOURCE", default_value = "voicehub")]
    pub events_source: String,
    /// How long the public event stream keeps entries (trimmed by time,
    /// never by count); 0s: no public stream.
    #[arg(long, env = "VOICEHUB_EVENTS_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub events_retention: Duration,
    /// How long one replica holds a voice's push of an update to the
    /// provider; longer than the provider's longest call [default: 3m;
    /// until the next release, a changed VOICEHUB_SYNC_ADOPT_AFTER, with a
    /// warning].
    #[arg(long, env = "VOICEHUB_SYNC_PUSH_LEASE", value_parser = humantime::parse_duration)]
    pub sync_push_lease: Option<Duration>,
    /// How long after its reservation a voice the provider never accepted is
    /// looked for at the provider by its tag, and failed if not there; must
    /// exceed the provider's longest create (`ELEVENLABS_TIMEOUT` +
    /// `ELEVENLABS_RETRY_BUDGET`).
    #[arg(long, env = "VOICEHUB_SYNC_ADOPT_AFTER", default_value = "3m", value_parser = humantime::parse_duration)]
    pub sync_adopt_after: Duration,
    /// How often the provider is swept for voices voicehub made but no
    /// longer wants (one replica per interval); `0s` turns the sweep off.
    #[arg(long, env = "VOICEHUB_SWEEP_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,
    /// How long after start-up a replica first sweeps.
    #[arg(long, env = "VOICEHUB_SWEEP_FIRST_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    pub sweep_first_after: Duration,
    /// Most provider voices one sweep deletes; a sweep that would delete
    /// more deletes none, logs ERROR and counts it (a mistake costs at most
    /// one budget, once).
    #[arg(long, env = "VOICEHUB_SWEEP_MAX_DELETIONS", default_value_t = 50)]
    pub sweep_max_deletions: usize,
    /// `false`: the sweep deletes nothing and reports what it would delete, and why.
    #[arg(long, env = "VOICEHUB_SWEEP_DELETE", default_value_t = true, action = ArgAction::Set)]
    pub sweep_delete: bool,
    /// How far apart two "not found" answers about one voice must be before
    /// it counts as gone at the provider (a voice still listed never does).
    #[arg(long, env = "VOICEHUB_PROVIDER_CONFIRM_GONE_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub provider_confirm_gone_after: Duration,
    /// Storage.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// User tokens.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The voice provider.
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// What a create must bring and how its samples are judged.
    #[command(flatten)]
    pub intake: IntakeArgs,
}

/// The database flags (`serve` and `migrate`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://FILE?mode=rwc` or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Most database connections this process opens.
    #[arg(long, env = "VOICEHUB_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// Longest wait for a database connection (connecting included); past
    /// it a call fails with UNAVAILABLE.
    #[arg(long, env = "VOICEHUB_DB_ACQUIRE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,
    /// Longest one SQL statement may run on PostgreSQL (`statement_timeout`).
    #[arg(long, env = "VOICEHUB_DB_STATEMENT_TIMEOUT", default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,
    /// Longest one storage call (waiting for a connection, its statements,
    /// the commit) may take on PostgreSQL before it fails with UNAVAILABLE,
    /// timed by voicehub itself: the bound that holds when the server stops
    /// answering mid-statement.
    #[arg(long, env = "VOICEHUB_DB_CALL_TIMEOUT", default_value = "1800ms", value_parser = humantime::parse_duration)]
    pub db_call_timeout: Duration,
}

/// The flags of `voicehub token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user's id (a UUID, not nil); becomes the token's `sub`.
    #[arg(long, value_parser = user_id)]
    pub user: Uuid,
    /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The signing secret, as `serve` has it.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// A user id for `token`: any spelling of a UUID (the token carries its
/// canonical one), but not the nil UUID, which the server refuses as nobody.
fn user_id(value: &str) -> Result<Uuid, String> {
    match Uuid::parse_str(value) {
        Ok(user) if user.is_nil() => Err("the nil UUID is nobody; give a user's UUID".into()),
        Ok(user) => Ok(user),
        Err(e) => Err(e.to_string()),
    }
}

/// A TLS identity as read from its files at start-up.
#[derive(Clone)]
pub struct TlsFiles {
    /// The PEM certificate chain.
    pub cert: Vec<u8>,
    /// The PEM private key.
    pub key: SecretString,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").finish_non_exhaustive()
    }
}

/// The limits of one replica (`0` turns one off); beyond each, a call is
/// RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unary calls in progress.
    pub concurrent_rpcs: usize,
    /// CreateVoiceClone calls in progress.
    pub concurrent_uploads: usize,
    /// Unary calls of one user in progress.
    pub concurrent_rpcs_per_user: usize,
    /// CreateVoiceClone calls of one user in progress.
    pub concurrent_uploads_per_user: usize,
    /// How long after its headers a unary call's request must have arrived.
    pub request_arrival: Duration,
    /// How long after its headers an upload must have arrived.
    pub upload_arrival: Duration,
    /// Open watch streams of one user.
    pub watches_per_user: usize,
    /// Open watch streams.
    pub watches: usize,
    /// Creates per user per clock hour (across replicas with Redis).
    pub creates_per_hour: u32,
    /// Creates per user per UTC day (across replicas with Redis).
    pub creates_per_day: u32,
}

impl Limits {
    /// The defaults, which the flags' defaults are.
    pub const DEFAULT: Limits = Limits {
        concurrent_rpcs: 1000,
        concurrent_uploads: 8,
        concurrent_rpcs_per_user: 100,
        concurrent_uploads_per_user: 2,
        request_arrival: Duration::from_secs(10),
        upload_arrival: Duration::from_mins(5),
        watches_per_user: 100,
        watches: 20_000,
        creates_per_hour: 20,
        creates_per_day: 100,
    };
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gRPC listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// The metrics listen address; `None`: metrics are not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The gRPC listener's certificate and key (PEM); `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Apply pending migrations at start-up.
    pub migrate_on_start: bool,
    /// Redis for the due-queue and events; `None`: in-process, one replica.
    pub redis_url: Option<SecretString>,
    /// How often storage is pinged for the health service.
    pub health_interval: Duration,
    /// Longest a shutdown waits for calls in progress.
    pub shutdown_grace: Duration,
    /// Live voices one user may have.
    pub max_voices_per_user: u64,
    /// What one replica serves at a time, and how fast a user may create.
    pub limits: Limits,
    /// How long a voice may stay PROCESSING.
    pub sync_max_age: Duration,
    /// How often a watch stream re-reads its processing voices.
    pub watch_recheck: Duration,
    /// How often the outbox is read for events left behind, regardless.
    pub outbox_recheck: Duration,
    /// The bounds on the gRPC listener's connections.
    pub connections: ConnectionLimits,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// The public event stream (with Redis only); `None`: none.
    pub public_events: Option<PublicEvents>,
    /// The CloudEvents `source` of the public stream's and webhooks' events.
    pub events_source: String,
    /// How webhooks may be used.
    pub webhooks: WebhookSettings,
    /// Longest a Redis command may take.
    pub redis_timeout: Duration,
    /// Run the status engine's worker loop in this process.
    pub run_worker: bool,
    /// How the status engine paces its work.
    pub engine: EngineConfig,
    /// Storage.
    pub database: DatabaseConfig,
    /// User tokens.
    pub auth: AuthConfig,
    /// The voice provider.
    pub provider: ProviderConfig,
    /// How uploaded samples are parsed: in a bounded child process.
    pub audio_check: audio::CheckerConfig,
    /// A create without a consent is refused.
    pub require_consent: bool,
    /// What the sample quality report judges against.
    pub sample_quality: audio::QualityThresholds,
}

impl ServeArgs {
    /// The listener's certificate and key, read now, when both are set.
    fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            cert: std::fs::read(cert)
                .map_err(|e| anyhow::anyhow!("VOICEHUB_TLS_CERT {}: {e}", cert.display()))?,
            key: SecretString::from(
                std::fs::read_to_string(key)
                    .map_err(|e| anyhow::anyhow!("VOICEHUB_TLS_KEY {}: {e}", key.display()))?,
            ),
        }))
    }

    /// The claim lease, from its name or, for one release, its old one.
    fn claim_lease(&self) -> Duration {
        renamed_setting(
            self.sync_claim_lease,
            self.sync_lease,
            ("VOICEHUB_SYNC_CLAIM_LEASE", "VOICEHUB_SYNC_LEASE"),
            DEFAULT_CLAIM_LEASE,
        )
    }

    /// Settings that parse but cannot work, named by their variables.
    fn check_ranges(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.redis_url
            && !REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme))
        {
            bail!(
                "REDIS_URL must start with redis:// or rediss:// (one server), or redis-cluster:// \
                 or rediss-cluster:// (a Redis Cluster: host:port?node=host:port&node=…)"
            );
        }
        if self.health_interval.is_zero() {
            bail!("VOICEHUB_HEALTH_INTERVAL must be above zero");
        }
        if self.request_arrival_timeout.is_zero() || self.upload_arrival_timeout.is_zero() {
            bail!(
                "VOICEHUB_REQUEST_ARRIVAL_TIMEOUT and VOICEHUB_UPLOAD_ARRIVAL_TIMEOUT must be above zero"
            );
        }
        if self.watch_recheck_interval < Duration::from_secs(1) {
            bail!("VOICEHUB_WATCH_RECHECK_INTERVAL must be at least 1s");
        }
        if self.max_voices_per_user == 0 {
            bail!("VOICEHUB_MAX_VOICES_PER_USER must be at least 1");
        }
        self.database.check_serving()?;
        if self.sync_max_age.is_zero() {
            bail!("VOICEHUB_SYNC_MAX_AGE must be above zero");
        }
        let claim_lease_zero = self
            .sync_claim_lease
            .or(self.sync_lease)
            .is_some_and(|lease| lease.is_zero());
        if self.sync_batch == 0 || claim_lease_zero || self.sync_idle.is_zero() {
            bail!(
                "VOICEHUB_SYNC_BATCH, VOICEHUB_SYNC_CLAIM_LEASE and VOICEHUB_SYNC_IDLE must be above zero"
            );
        }
        if self.redis_timeout.is_zero() {
            bail!("VOICEHUB_REDIS_TIMEOUT must be above zero");
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            bail!("VOICEHUB_REDIS_PREFIX must be a non-empty word");
        }
        // voicehub puts its own hash tags (`{…}`) around names so that keys
        // used together share a Redis Cluster slot; braces in a name would
        // move them.
        for (variable, name) in [
            ("VOICEHUB_REDIS_PREFIX", Some(&self.redis_prefix)),
            ("VOICEHUB_EVENTS_STREAM", self.events_stream.as_ref()),
        ] {
            if name.is_some_and(|n| n.contains(['{', '}'])) {
                bail!(
                    "{variable} must not contain braces: voicehub adds its own hash tags ({{…}}) so that keys used together share a Redis Cluster slot"
                );
            }
        }
        if self
            .events_stream
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            bail!("VOICEHUB_EVENTS_STREAM must be a non-empty word");
        }
        if self.events_source.trim().is_empty() {
            bail!("VOICEHUB_EVENTS_SOURCE must not be empty");
        }
        Ok(())
    }

    /// # Errors
    /// A setting that is malformed or unusable, named by its variable.
    pub fn into_config(self) -> anyhow::Result<Config> {
        self.check_ranges()?;
        let tls = self.tls_files()?;
        let claim_lease = self.claim_lease();
        let provider = self.provider.into_config()?;
        let auth = self.auth.into_config(Path::new("."))?;
        check_provider(&provider, &auth, self.sync_adopt_after)?;
        Ok(Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls,
            migrate_on_start: self.migrate_on_start,
            redis_url: self.redis_url.map(SecretString::from),
            health_interval: self.health_interval,
            shutdown_grace: self.shutdown_grace,
            max_voices_per_user: self.max_voices_per_user,
            limits: Limits {
                concurrent_rpcs: self.max_concurrent_rpcs,
                concurrent_uploads: self.max_concurrent_uploads,
                concurrent_rpcs_per_user: self.max_concurrent_rpcs_per_user,
                concurrent_uploads_per_user: self.max_concurrent_uploads_per_user,
                request_arrival: self.request_arrival_timeout,
                upload_arrival: self.upload_arrival_timeout,
                watches_per_user: self.max_watches_per_user,
                watches: self.max_watches,
                creates_per_hour: self.create_limit_per_hour,
                creates_per_day: self.create_limit_per_day,
            },
            sync_max_age: self.sync_max_age,
            watch_recheck: self.watch_recheck_interval,
            outbox_recheck: split_setting(
                self.outbox_recheck_interval,
                ("VOICEHUB_OUTBOX_RECHECK_INTERVAL", DEFAULT_OUTBOX_RECHECK),
                (
                    "VOICEHUB_SYNC_RECONCILE_INTERVAL",
                    self.sync_reconcile_interval,
                    DEFAULT_RECONCILE_INTERVAL,
                ),
            ),
            connections: ConnectionLimits {
                max: self.max_connections,
                idle: self.connection_idle_timeout,
                age: self.max_connection_age,
                age_grace: self.max_connection_age_grace,
            },
            webhooks: self.webhooks.into_settings(),
            public_events: public_events(
                self.events_stream,
                self.events_retention,
                &self.redis_prefix,
            ),
            events_source: self.events_source,
            redis_prefix: self.redis_prefix,
            redis_timeout: self.redis_timeout,
            run_worker: self.sync_worker,
            engine: EngineConfig {
                batch: self.sync_batch,
                claim_lease,
                idle: self.sync_idle,
                min_backoff: status_engine::MIN_BACKOFF,
                max_backoff: self.sync_max_backoff.max(status_engine::MIN_BACKOFF),
                reconcile_every: self.sync_reconcile_interval,
                adopt_after: self.sync_adopt_after,
                push_lease: split_setting(
                    self.sync_push_lease,
                    ("VOICEHUB_SYNC_PUSH_LEASE", DEFAULT_PUSH_LEASE),
                    (
                        "VOICEHUB_SYNC_ADOPT_AFTER",
                        self.sync_adopt_after,
                        DEFAULT_ADOPT_AFTER,
                    ),
                ),
                sweep_every: self.sweep_interval,
                sweep_first_after: self.sweep_first_after,
                sweep_max_deletions: self.sweep_max_deletions,
                sweep_delete: self.sweep_delete,
                confirm_gone_after: self.provider_confirm_gone_after,
            },
            database: self.database.into_config()?,
            auth,
            provider,
            audio_check: audio::CheckerConfig {
                program: own_executable()?,
                wall: audio::WALL_BOUND,
            },
            require_consent: self.intake.require_consent,
            sample_quality: self.intake.thresholds()?,
        })
    }
}

/// Provider settings that do not fit the rest, named by their variables.
fn check_provider(
    provider: &ProviderConfig,
    auth: &AuthConfig,
    adopt_after: Duration,
) -> anyhow::Result<()> {
    if auth.development && matches!(provider, ProviderConfig::ElevenLabs(_)) {
        bail!(
            "VOICEHUB_JWT_SECRET must be set with the ElevenLabs provider: a generated \
             development secret is only for the simulated provider"
        );
    }
    if let ProviderConfig::ElevenLabs(elevenlabs) = &provider {
        // A create may take its retry budget plus one last attempt; an
        // adoption before then could fail a voice whose create still runs.
        let longest = elevenlabs.timeout + elevenlabs.retry.budget;
        if adopt_after <= longest {
            bail!(
                "VOICEHUB_SYNC_ADOPT_AFTER ({}) must exceed the longest create, ELEVENLABS_TIMEOUT + ELEVENLABS_RETRY_BUDGET ({})",
                humantime::format_duration(adopt_after),
                humantime::format_duration(longest)
            );
        }
    }
    Ok(())
}

impl DatabaseArgs {
    /// Whether `serve` can work with these settings: on PostgreSQL the event
    /// relay holds one connection for LISTEN, and calls need one more.
    ///
    /// # Errors
    /// A pool too small to serve.
    fn check_serving(&self) -> anyhow::Result<()> {
        let url = self.database_url.trim();
        if (url.starts_with("postgres://") || url.starts_with("postgresql://"))
            && self.db_max_connections < MIN_POSTGRES_CONNECTIONS
        {
            bail!(
                "VOICEHUB_DB_MAX_CONNECTIONS must be at least {MIN_POSTGRES_CONNECTIONS} on \
                 PostgreSQL: the event relay holds one connection for LISTEN, and calls need \
                 at least one more"
            );
        }
        Ok(())
    }

    /// # Errors
    /// An unsupported scheme or a zero pool size.
    pub fn into_config(self) -> anyhow::Result<DatabaseConfig> {
        let url = self.database_url.trim();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            bail!("DATABASE_URL must start with sqlite:, postgres:// or postgresql://");
        }
        if self.db_max_connections == 0 {
            bail!("VOICEHUB_DB_MAX_CONNECTIONS must be at least 1");
        }
        if self.db_acquire_timeout.is_zero()
            || self.db_statement_timeout.is_zero()
            || self.db_call_timeout.is_zero()
        {
            bail!(
                "VOICEHUB_DB_ACQUIRE_TIMEOUT, VOICEHUB_DB_STATEMENT_TIMEOUT and VOICEHUB_DB_CALL_TIMEOUT must be above zero"
            );
        }
        Ok(DatabaseConfig {
            url: SecretString::from(url.to_owned()),
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            statement_timeout: self.db_statement_timeout,
            call_timeout: self.db_call_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_setting_takes_its_own_value_then_a_changed_old_one_then_its_default() {
        let (mine, old) = (("NEW", Duration::from_mins(3)), "OLD");
        let minute = Duration::from_mins(1);
        assert_eq!(
            split_setting(
                Some(minute),
                mine,
                (old, Duration::from_mins(5), Duration::from_mins(3))
            ),
            minute
        );
        assert_eq!(
            split_setting(
                None,
                mine,
                (old, Duration::from_mins(5), Duration::from_mins(3))
            ),
            Duration::from_mins(5)
        );
        assert_eq!(
            split_setting(
                None,
                mine,
                (old, Duration::from_mins(3), Duration::from_mins(3))
            ),
            Duration::from_mins(3)
        );
        // The old settings' defaults here are their flags' defaults.
        let Command::Serve(args) = Cli::try_parse_from(["voicehub", "serve"]).unwrap().command
        else {
            panic!("serve");
        };
        assert_eq!(args.sync_adopt_after, DEFAULT_ADOPT_AFTER);
        assert_eq!(args.sync_reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
    }

    #[test]
    fn database_url_scheme_is_checked() {
        let args = DatabaseArgs {
            database_url: "mysql://x".into(),
            db_max_connections: 5,
            db_acquire_timeout: Duration::from_secs(1),
            db_statement_timeout: Duration::from_secs(1),
            db_call_timeout: Duration::from_secs(1),
        };
        let err = args.into_config().unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}

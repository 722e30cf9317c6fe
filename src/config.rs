//! Command line and environment configuration, validated once at start-up.
//!
//! Every setting is a flag with an environment variable behind it (clap
//! `env`). Parsing produces typed settings or a clear error that names the
//! variable; nothing downstream re-validates. Secrets are held in
//! [`SecretString`] so they never reach a log line or a `Debug` print.

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::{
    provider::{ElevenLabsConfig, RetryPolicy},
    sync::SyncConfig,
};

/// The default database: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://voicehub.db?mode=rwc";
/// Where a development installation keeps its generated JWT secret.
pub const DEV_SECRET_FILE: &str = ".voicehub-dev-secret";
/// HS256 secrets shorter than this are guessable; production ones are refused.
const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "voicehub",
    version,
    about = "gRPC service that manages users' cloned voices"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "VOICEHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (applies pending migrations first unless disabled).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print a user token signed with the configured secret, for grpcurl and tests.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (HTTP/2, plaintext).
    #[arg(long, env = "VOICEHUB_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "VOICEHUB_MIGRATE_ON_START", default_value_t = true, action = ArgAction::Set)]
    pub migrate_on_start: bool,
    /// Redis for the due-queue and event bus (used by the sync engine; unset = in-process).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How often storage is pinged for the health service.
    #[arg(long, env = "VOICEHUB_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Most live (not deleted) voices one user may have.
    #[arg(long, env = "VOICEHUB_MAX_VOICES_PER_USER", default_value_t = 50)]
    pub max_voices_per_user: u64,
    /// A voice still PROCESSING this long after creation is FAILED.
    #[arg(long, env = "VOICEHUB_SYNC_MAX_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub sync_max_age: Duration,
    /// Longest a Redis command may take (then the caller gets an error).
    #[arg(long, env = "VOICEHUB_REDIS_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key and channel voicehub uses.
    #[arg(long, env = "VOICEHUB_REDIS_PREFIX", default_value = "voicehub")]
    pub redis_prefix: String,
    /// Run the status sync worker in this process (API-only replicas may turn it off).
    #[arg(long, env = "VOICEHUB_SYNC_WORKER", default_value_t = true, action = ArgAction::Set)]
    pub sync_worker: bool,
    /// Most voices one sync step claims.
    #[arg(long, env = "VOICEHUB_SYNC_BATCH", default_value_t = 32)]
    pub sync_batch: usize,
    /// How long a claimed voice is reserved for the replica that claimed it.
    #[arg(long, env = "VOICEHUB_SYNC_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_lease: Duration,
    /// Longest the sync worker sleeps when nothing is due.
    #[arg(long, env = "VOICEHUB_SYNC_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_idle: Duration,
    /// Longest delay between two checks of one voice.
    #[arg(long, env = "VOICEHUB_SYNC_MAX_BACKOFF", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sync_max_backoff: Duration,
    /// How often the due-queue is reconciled with storage regardless.
    #[arg(long, env = "VOICEHUB_SYNC_RECONCILE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub sync_reconcile_interval: Duration,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Elevenlabs,
    Simulated,
}

#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Voice provider. Unset: `elevenlabs` when ELEVENLABS_API_KEY is set, else `simulated`.
    #[arg(long, env = "VOICEHUB_PROVIDER", value_enum)]
    pub provider: Option<ProviderKind>,
    /// ElevenLabs API key (sent as `xi-api-key`; never logged).
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<String>,
    /// ElevenLabs API base URL.
    #[arg(
        long,
        env = "ELEVENLABS_BASE_URL",
        default_value = "https://api.elevenlabs.io"
    )]
    pub elevenlabs_base_url: String,
    /// Timeout of one ElevenLabs request (sample uploads included).
    #[arg(long, env = "ELEVENLABS_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub elevenlabs_timeout: Duration,
    /// Most ElevenLabs requests in flight at once (ElevenLabs limits concurrency per plan).
    #[arg(long, env = "ELEVENLABS_MAX_CONCURRENCY", default_value_t = 4)]
    pub elevenlabs_max_concurrency: usize,
    /// Retries of a failed ElevenLabs request (429, 5xx, transport errors).
    #[arg(long, env = "ELEVENLABS_MAX_RETRIES", default_value_t = 3)]
    pub elevenlabs_max_retries: u32,
    /// Total time one ElevenLabs call may take, retries included.
    #[arg(long, env = "ELEVENLABS_RETRY_BUDGET", default_value = "90s", value_parser = humantime::parse_duration)]
    pub elevenlabs_retry_budget: Duration,
    /// How long the simulated provider takes to make a clone ready.
    #[arg(long, env = "VOICEHUB_SIMULATED_READY_AFTER", default_value = "3s", value_parser = humantime::parse_duration)]
    pub simulated_ready_after: Duration,
}

/// The voice provider to use, resolved.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    ElevenLabs(ElevenLabsConfig),
    Simulated { ready_after: Duration },
}

impl ProviderArgs {
    /// # Errors
    /// `elevenlabs` chosen without a key, or a malformed base URL.
    pub fn into_config(self) -> anyhow::Result<ProviderConfig> {
        let key = self.elevenlabs_api_key.filter(|k| !k.trim().is_empty());
        let kind = match (self.provider, &key) {
            (Some(kind), _) => kind,
            (None, Some(_)) => ProviderKind::Elevenlabs,
            (None, None) => {
                tracing::warn!("ELEVENLABS_API_KEY is not set: using the simulated voice provider");
                ProviderKind::Simulated
            }
        };
        match kind {
            ProviderKind::Simulated => Ok(ProviderConfig::Simulated {
                ready_after: self.simulated_ready_after,
            }),
            ProviderKind::Elevenlabs => {
                let Some(key) = key else {
                    bail!("VOICEHUB_PROVIDER=elevenlabs needs ELEVENLABS_API_KEY");
                };
                let base_url = reqwest::Url::parse(&self.elevenlabs_base_url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .context("ELEVENLABS_BASE_URL must be an http(s) URL")?;
                if self.elevenlabs_max_concurrency == 0 || self.elevenlabs_timeout.is_zero() {
                    bail!("ELEVENLABS_MAX_CONCURRENCY and ELEVENLABS_TIMEOUT must be above zero");
                }
                Ok(ProviderConfig::ElevenLabs(ElevenLabsConfig {
                    base_url,
                    api_key: SecretString::from(key),
                    timeout: self.elevenlabs_timeout,
                    max_concurrency: self.elevenlabs_max_concurrency,
                    retry: RetryPolicy {
                        max_retries: self.elevenlabs_max_retries,
                        budget: self.elevenlabs_retry_budget,
                        ..RetryPolicy::default()
                    },
                }))
            }
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://FILE?mode=rwc` or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Most database connections this process opens.
    #[arg(long, env = "VOICEHUB_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 secret that signs user tokens (at least 32 bytes). Unset: development
    /// mode with a secret generated once into `.voicehub-dev-secret`.
    #[arg(long, env = "VOICEHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "VOICEHUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "VOICEHUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user's id (a UUID); becomes the token's `sub`.
    #[arg(long)]
    pub user: Uuid,
    /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub migrate_on_start: bool,
    pub redis_url: Option<SecretString>,
    pub health_interval: Duration,
    pub max_voices_per_user: u64,
    pub sync_max_age: Duration,
    pub redis_prefix: String,
    pub redis_timeout: Duration,
    /// Run the sync worker loop in this process.
    pub sync_worker: bool,
    pub sync: SyncConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub provider: ProviderConfig,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub secret: SecretString,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// True when the secret was generated locally rather than configured.
    pub development: bool,
}

impl ServeArgs {
    /// # Errors
    /// A setting that is malformed or unusable, named by its variable.
    pub fn into_config(self) -> anyhow::Result<Config> {
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            bail!("REDIS_URL must start with redis:// or rediss://");
        }
        if self.health_interval.is_zero() {
            bail!("VOICEHUB_HEALTH_INTERVAL must be above zero");
        }
        if self.max_voices_per_user == 0 {
            bail!("VOICEHUB_MAX_VOICES_PER_USER must be at least 1");
        }
        if self.sync_max_age.is_zero() {
            bail!("VOICEHUB_SYNC_MAX_AGE must be above zero");
        }
        if self.sync_batch == 0 || self.sync_lease.is_zero() || self.sync_idle.is_zero() {
            bail!(
                "VOICEHUB_SYNC_BATCH, VOICEHUB_SYNC_LEASE and VOICEHUB_SYNC_IDLE must be above zero"
            );
        }
        if self.redis_timeout.is_zero() {
            bail!("VOICEHUB_REDIS_TIMEOUT must be above zero");
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            bail!("VOICEHUB_REDIS_PREFIX must be a non-empty word");
        }
        Ok(Config {
            listen: self.listen,
            migrate_on_start: self.migrate_on_start,
            redis_url: self.redis_url.map(SecretString::from),
            health_interval: self.health_interval,
            max_voices_per_user: self.max_voices_per_user,
            sync_max_age: self.sync_max_age,
            redis_prefix: self.redis_prefix,
            redis_timeout: self.redis_timeout,
            sync_worker: self.sync_worker,
            sync: SyncConfig {
                batch: self.sync_batch,
                lease: self.sync_lease,
                idle: self.sync_idle,
                max_backoff: self.sync_max_backoff.max(SyncConfig::default().min_backoff),
                reconcile_every: self.sync_reconcile_interval,
                ..SyncConfig::default()
            },
            database: self.database.into_config()?,
            auth: self.auth.into_config(Path::new("."))?,
            provider: self.provider.into_config()?,
        })
    }
}

impl DatabaseArgs {
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
        Ok(DatabaseConfig {
            url: SecretString::from(url.to_owned()),
            max_connections: self.db_max_connections,
        })
    }
}

impl AuthArgs {
    /// Resolves the signing secret: the configured one, or in development the
    /// one generated into `dir`/[`DEV_SECRET_FILE`] on first use.
    ///
    /// # Errors
    /// A configured secret that is too short, or an unreadable secret file.
    pub fn into_config(self, dir: &Path) -> anyhow::Result<AuthConfig> {
        let empty_to_none = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let (secret, development) = match empty_to_none(self.jwt_secret) {
            Some(secret) if secret.len() < MIN_SECRET_LEN => {
                bail!("VOICEHUB_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes long")
            }
            Some(secret) => (SecretString::from(secret), false),
            None => (dev_secret(&dir.join(DEV_SECRET_FILE))?, true),
        };
        Ok(AuthConfig {
            secret,
            issuer: empty_to_none(self.jwt_issuer),
            audience: empty_to_none(self.jwt_audience),
            development,
        })
    }
}

/// Reads the development secret, creating it (mode 0600) on first use, so that
/// `serve` and `token` agree without configuration and no two installations share one.
fn dev_secret(path: &PathBuf) -> anyhow::Result<SecretString> {
    match fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= MIN_SECRET_LEN => {
            return Ok(SecretString::from(s.trim().to_owned()));
        }
        Ok(_) => bail!(
            "{} is too short; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(SecretString::from(secret))
        }
        // Another process (say `token` beside `serve`) won the race: use its secret.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let s =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(SecretString::from(s.trim().to_owned()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

impl DatabaseConfig {
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: Option<&str>) -> AuthArgs {
        AuthArgs {
            jwt_secret: secret.map(str::to_owned),
            jwt_issuer: None,
            jwt_audience: Some(" ".into()),
        }
    }

    #[test]
    fn short_configured_secret_is_refused_with_the_variable_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = auth(Some("short")).into_config(dir.path()).unwrap_err();
        assert!(err.to_string().contains("VOICEHUB_JWT_SECRET"), "{err}");
    }

    #[test]
    fn development_secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = auth(None).into_config(dir.path()).unwrap();
        let second = auth(None).into_config(dir.path()).unwrap();
        assert!(first.development);
        assert_eq!(first.secret.expose_secret(), second.secret.expose_secret());
        assert_eq!(first.secret.expose_secret().len(), 64);
        assert_eq!(first.audience, None, "a blank audience means unset");
        let other = tempfile::tempdir().unwrap();
        let third = auth(None).into_config(other.path()).unwrap();
        assert_ne!(first.secret.expose_secret(), third.secret.expose_secret());
    }

    #[test]
    fn database_url_scheme_is_checked() {
        let args = DatabaseArgs {
            database_url: "mysql://x".into(),
            db_max_connections: 5,
        };
        let err = args.into_config().unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}

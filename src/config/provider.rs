//! Which voice provider to use, and the ElevenLabs client's settings; the
//! settings build the provider ([`ProviderConfig::build`]).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use secrecy::SecretString;

use crate::metrics::Metrics;
use crate::provider::{DynProvider, ElevenLabs, ElevenLabsConfig, RetryPolicy, Simulated};

/// The voice providers voicehub can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// The real ElevenLabs API.
    Elevenlabs,
    /// In-process, no network: for demos and `cargo run` without set-up.
    Simulated,
}

/// The voice provider flags.
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
    /// ElevenLabs with these client settings.
    ElevenLabs(ElevenLabsConfig),
    /// The simulated provider; clones are ready `ready_after` they were made.
    Simulated {
        /// How long a clone takes to become ready.
        ready_after: Duration,
    },
}

impl ProviderConfig {
    /// Builds the provider these settings describe, counting its calls in `metrics`.
    ///
    /// # Errors
    /// The ElevenLabs client cannot be built (a malformed key).
    pub(crate) fn build(
        &self,
        metrics: &Metrics,
        installation: uuid::Uuid,
    ) -> anyhow::Result<DynProvider> {
        Ok(match self {
            ProviderConfig::ElevenLabs(c) => {
                Arc::new(ElevenLabs::new(c.clone(), metrics, installation)?)
            }
            ProviderConfig::Simulated { ready_after } => {
                Arc::new(Simulated::new(*ready_after, installation))
            }
        })
    }
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
                    retry: RetryPolicy::new(
                        self.elevenlabs_max_retries,
                        self.elevenlabs_retry_budget,
                    ),
                }))
            }
        }
    }
}

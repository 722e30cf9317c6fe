//! Redis connections, configured for outages: fred has no reconnect policy
//! and no command timeout unless told, so without this a Redis restart
//! would hang every caller. Here every command times out, and every
//! connection reconnects for ever with exponential backoff, the first one
//! included: fred's default (`fail_fast`) ends a client whose first
//! connection fails for good, so a replica started while Redis (or one
//! primary of a cluster) was away would never use it.
//!
//! Three connections: commands (queue scripts, XADD), a reader for the event
//! stream (a blocking XREAD holds its connection), and a subscriber for
//! wake-ups (re-subscribes after a reconnect).

use std::time::Duration;

use anyhow::Context;
use fred::{
    clients::SubscriberClient,
    interfaces::{ClientInterface, EventInterface},
    prelude::*,
};

use crate::metrics::{ConnectionLabel, Metrics};

/// How long start-up waits for a first connection before going on without.
const FIRST_CONNECT: Duration = Duration::from_secs(5);

/// One replica's Redis connections.
pub struct Redis {
    /// Queue scripts and XADD.
    pub commands: Client,
    /// The event stream's blocking reads.
    pub reader: Client,
    /// Wake-up subscriptions.
    pub subscriber: SubscriberClient,
}

fn builder(
    url: &str,
    command_timeout: Duration,
    connect_timeout: Duration,
) -> anyhow::Result<Builder> {
    let mut config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        // 0 = no limit on attempts: keep trying, 100 ms doubling to 5 s apart.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    Ok(builder)
}

/// Counts and logs every reconnection of `client` from now on.
fn count_reconnects(client: &impl EventInterface, connection: &'static str, metrics: &Metrics) {
    let counter = metrics
        .redis_reconnects
        .get_or_create(&ConnectionLabel { connection })
        .clone();
    client.on_reconnect(move |server| {
        counter.inc();
        tracing::info!(%server, connection, "reconnected to Redis");
        std::future::ready(Ok(()))
    });
}

impl Redis {
    /// Builds and connects the clients. An unreachable Redis is logged, not
    /// fatal: the clients keep reconnecting and the service works without
    /// the status engine meanwhile.
    ///
    /// Reconnections after start-up are counted in `metrics`.
    ///
    /// # Errors
    /// A malformed URL.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        blocking_read: Duration,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let commands = builder(url, timeout, timeout)?.build()?;
        let reader = builder(url, blocking_read + timeout, timeout)?.build()?;
        let subscriber = builder(url, timeout, timeout)?.build_subscriber_client()?;
        for client in [&commands, &reader] {
            client.connect();
        }
        subscriber.connect();
        let first = async {
            commands.wait_for_connect().await?;
            reader.wait_for_connect().await?;
            subscriber.wait_for_connect().await
        };
        match tokio::time::timeout(FIRST_CONNECT, first).await {
            Ok(Ok(())) => tracing::info!("connected to Redis"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis unreachable at start-up; reconnecting in the background");
            }
            Err(_) => {
                tracing::warn!("Redis unreachable at start-up; reconnecting in the background");
            }
        }
        // Subscribed after the first connection, so only later ones count.
        count_reconnects(&commands, "commands", metrics);
        count_reconnects(&reader, "reader", metrics);
        count_reconnects(&subscriber, "subscriber", metrics);
        Ok(Redis {
            commands,
            reader,
            subscriber,
        })
    }

    /// Closes every connection.
    pub async fn quit(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            // The reader may sit in a blocking XREAD that QUIT would queue behind.
            let _ = self.reader.unblock_self(None).await;
            let _ = tokio::join!(
                self.subscriber.quit(),
                self.reader.quit(),
                self.commands.quit()
            );
        })
        .await;
    }
}

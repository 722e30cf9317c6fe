//! Storage of voices in SQL (SQLite or PostgreSQL) through SeaORM.
//!
//! [`Store`] is the only code that talks SQL. Its files split by one rule:
//! `reads.rs` holds every query that only reads a voice, `writes.rs` every
//! statement that changes one, `outbox.rs` the events of those changes,
//! `webhooks.rs` the webhook endpoints, deliveries and attempts;
//! `entity/` holds the tables, `visibility.rs` the one rule of who may see a
//! voice. Guarantees:
//! - every read applies the visibility rule in SQL itself (a caller's own
//!   voices, or public ones; never DELETED), so no handler can forget it;
//! - listing is keyset-paginated on `(created_at, id)` newest first, served
//!   by an index for each scope, never by OFFSET;
//! - every write carries a guard in its WHERE clause (status, revision, no
//!   provider id yet), so a write that lost a race changes nothing and says
//!   so (`None`) instead of overwriting;
//! - every change of a voice writes its event to the outbox in the same
//!   transaction (see `outbox.rs`), so storage and the event bus cannot
//!   disagree for longer than the relay takes;
//! - timestamps are UTC and truncated to microseconds (PostgreSQL's
//!   precision), so what a caller gets back is exactly what is stored;
//! - bounded calls: on PostgreSQL every call (waiting for a connection,
//!   its statements, the commit) ends within `call_timeout`, timed here and
//!   not only by the server: a server that stops answering mid-statement
//!   (its host hangs, the network drops packets) cannot enforce its own
//!   `statement_timeout`. A call cut this way fails as unavailable; its
//!   transaction is rolled back unless the commit had already been sent, in
//!   which case the caller cannot tell, as with any lost connection (every
//!   write is guarded and every create idempotent, so a retry is safe).
//!   SQLite is a local file that cannot hang like this; its calls wait.
//!
//! Database failures are returned as [`DbErr`] and mapped to gRPC codes in
//! `error.rs`; nothing here retries. Every statement is counted in
//! `voicehub_sql_statements_total`.

pub mod entity;
mod outbox;
mod reads;
mod visibility;
mod webhooks;
mod writes;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, SubsecRound, Utc};
use prometheus_client::metrics::{counter::Counter, family::Family};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use secrecy::{ExposeSecret, SecretString};

pub use entity::voice::{Labels, Model as Voice, Visibility, VoiceStatus};
pub use entity::voice_event::Model as StoredEvent;
pub use entity::voice_intake::Model as Intake;
pub use entity::webhook_endpoint::Model as WebhookEndpoint;
pub use outbox::{Change, EventEncoder};
pub(crate) use outbox::{EventNotifications, Notified, Pending};
pub(crate) use reads::{Cursor, ListQuery, Scope};
pub(crate) use visibility::may_see;
pub(crate) use webhooks::{
    Attempted, Due, EndpointCreated, EndpointPatch, NewEndpoint, Next, Owed,
};
pub(crate) use writes::{Reservation, Settlement};

use crate::metrics::{LimitLabel, Metrics, StatementKind, StatementLabels, TransitionLabel};

/// Where the database is and how many connections to open.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://FILE?mode=rwc` or `postgres://USER[:PASS]@HOST:PORT/DB`.
    pub url: SecretString,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// Longest wait for a connection (connecting included): past it, the
    /// call fails as unavailable instead of hanging.
    pub acquire_timeout: Duration,
    /// Longest one statement may run on PostgreSQL (its `statement_timeout`).
    pub statement_timeout: Duration,
    /// Longest one storage call may take on PostgreSQL, timed by voicehub
    /// (see "bounded calls" in this module's documentation).
    pub call_timeout: Duration,
}

/// A database connection apart from the serving pool, for health: a pool
/// saturated by calls (a burst of watch streams opening, slow statements)
/// must not make a database that answers look down, or a load balancer
/// that trusts health would take a healthy replica out when it is busiest.
pub(crate) struct Probe {
    /// The pool, for its connect options.
    db: DatabaseConnection,
    connection: Option<ProbeConnection>,
    /// Marked at each ping that succeeds.
    answered: Arc<Answered>,
}

/// When the database last answered (a statement that succeeded, a health
/// ping): a pool timeout soon after an answer means the pool is saturated
/// (the database answers, every connection is busy), not an outage.
#[derive(Debug)]
struct Answered {
    origin: Instant,
    /// Milliseconds from `origin` to the last answer, plus one; 0: none yet.
    at_millis: AtomicU64,
}

impl Answered {
    fn new() -> Self {
        Answered {
            origin: Instant::now(),
            at_millis: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.at_millis.fetch_max(millis + 1, Ordering::Relaxed);
    }

    /// Whether the last answer came within `window` of now.
    fn within(&self, window: Duration) -> bool {
        match self.at_millis.load(Ordering::Relaxed) {
            0 => false,
            at => {
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1))
                    <= window
            }
        }
    }
}

enum ProbeConnection {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Probe {
    /// One round trip on the probe's own connection (the protocol's ping,
    /// not SQL), connecting first if it has none; an error at once if the
    /// serving pool was closed.
    ///
    /// # Errors
    /// The database cannot be reached; the connection is dropped, and the
    /// next ping connects again.
    pub(crate) async fn ping(&mut self) -> Result<(), DbErr> {
        use sqlx::Connection as _;
        // A closed pool serves nothing, however well the database answers.
        let closed = if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            self.db.get_postgres_connection_pool().is_closed()
        } else {
            self.db.get_sqlite_connection_pool().is_closed()
        };
        if closed {
            self.connection = None;
            return Err(sqlx_error(sqlx::Error::PoolClosed));
        }
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await.map_err(sqlx_error)?,
        };
        let pinged = match &mut connection {
            ProbeConnection::Postgres(c) => c.ping().await,
            ProbeConnection::Sqlite(c) => c.ping().await,
        };
        pinged.map_err(sqlx_error)?;
        self.answered.mark();
        self.connection = Some(connection);
        Ok(())
    }

    /// Forgets the connection (after a ping that did not finish in time,
    /// whose connection is in an unknown state).
    pub(crate) fn reset(&mut self) {
        self.connection = None;
    }

    async fn connect(&self) -> Result<ProbeConnection, sqlx::Error> {
        use sqlx::ConnectOptions as _;
        if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            let options = self.db.get_postgres_connection_pool().connect_options();
            Ok(ProbeConnection::Postgres(options.connect().await?))
        } else {
            let options = self.db.get_sqlite_connection_pool().connect_options();
            Ok(ProbeConnection::Sqlite(options.connect().await?))
        }
    }
}

fn sqlx_error(e: sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))
}

/// How long a SQLite write waits for another writer. SQLite is a local
/// file, never unreachable: a wait here is contention, not an outage.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the database; cheap to clone (a connection pool inside).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    encode_event: EventEncoder,
    /// Names this process's events in the outbox.
    writer: uuid::Uuid,
    /// Voices that moved to a status, counted after their commit.
    transitions: Family<TransitionLabel, Counter>,
    /// The client-side bound of one call; `None` on SQLite.
    call_timeout: Option<Duration>,
    /// The longest wait for a pool connection.
    acquire_timeout: Duration,
    /// How many connections the pool holds at most.
    pool_size: u32,
    /// When the database last answered.
    answered: Arc<Answered>,
    /// Calls shed because every pool connection was busy.
    shed: Counter,
    /// Notified after every commit that wrote events to the outbox: the
    /// relay waits on it, so no writer has to remember to wake it.
    events_committed: Arc<tokio::sync::Notify>,
    /// Notified after each commit of this process that queued webhook
    /// deliveries (the deliverer wakes on it).
    deliveries_queued: Arc<tokio::sync::Notify>,
}

impl Store {
    /// Opens the connection pool (and the SQLite file, creating it when the
    /// URL says `mode=rwc`), counting statements into `metrics`; the events
    /// of changes are written to the outbox as `encode_event` makes them.
    ///
    /// # Errors
    /// The database is unreachable or the URL is malformed.
    pub async fn connect(
        config: &DatabaseConfig,
        metrics: &Metrics,
        encode_event: EventEncoder,
    ) -> Result<Self, DbErr> {
        let statement_millis = config.statement_timeout.as_millis().max(1).to_string();
        let mut options = ConnectOptions::new(config.url.expose_secret().to_owned());
        options
            .max_connections(config.max_connections)
            .connect_timeout(config.acquire_timeout)
            .acquire_timeout(config.acquire_timeout)
            // No ping when a connection is handed out: it is a round trip on
            // every statement's path, and a broken connection shows itself
            // anyway (its statement fails and sqlx drops it; a read then runs
            // again on another connection, see `Store::read`), while health
            // pings on a connection of its own.
            .test_before_acquire(false)
            // Statements are traced by our own spans; sqlx's per-statement INFO lines are noise.
            .sqlx_logging(false)
            .map_sqlx_postgres_opts(move |opts| {
                // Enforced by the server, so a statement stuck behind a lock
                // or a runaway plan ends as an error the caller can retry.
                opts.options([("statement_timeout", statement_millis.as_str())])
            })
            .map_sqlx_sqlite_opts(move |opts| {
                // WAL lets readers proceed during a write; the busy timeout turns
                // writer contention into a short wait instead of SQLITE_BUSY.
                opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
            });
        let mut db = Database::connect(options).await?;
        let call_timeout = (db.get_database_backend() == sea_orm::DbBackend::Postgres)
            .then_some(config.call_timeout);
        let statements = metrics.sql_statements.clone();
        let answered = Arc::new(Answered::new());
        let marks = answered.clone();
        db.set_metric_callback(move |info| {
            count(&statements, &info.statement.sql);
            if !info.failed {
                marks.mark();
            }
            if info.elapsed > Duration::from_secs(1) {
                tracing::warn!(elapsed = ?info.elapsed, sql = %info.statement.sql, "slow SQL statement");
            }
        });
        Ok(Store {
            db,
            encode_event,
            writer: uuid::Uuid::now_v7(),
            transitions: metrics.transitions.clone(),
            shed: metrics
                .limit_refusals
                .get_or_create(&LimitLabel {
                    limit: "storage_pool",
                })
                .clone(),
            call_timeout,
            acquire_timeout: config.acquire_timeout,
            pool_size: config.max_connections,
            answered,
            events_committed: Arc::default(),
            deliveries_queued: Arc::default(),
        })
    }

    /// Applies pending migrations (under a lock on PostgreSQL).
    ///
    /// # Errors
    /// A migration failed; on PostgreSQL nothing of it is kept.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::run(&self.db).await
    }

    /// A connection of its own for health pings, outside the serving pool
    /// (made at the first ping, and again after one fails).
    #[must_use]
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            db: self.db.clone(),
            connection: None,
            answered: self.answered.clone(),
        }
    }

    /// Whether `err` is a wait for a pool connection that timed out while
    /// the database answered: every connection busy, the database fine.
    /// The caller sheds the call (come back shortly) rather than report
    /// storage down, which a wait alone cannot tell from an outage (sqlx
    /// also times out a wait while it cannot connect). Counted as a
    /// refusal at the limit `storage_pool`.
    #[must_use]
    pub(crate) fn saturated(&self, err: &DbErr) -> bool {
        let pool_wait = match err {
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout) => true,
            DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
            | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
            | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => {
                matches!(**e, sqlx::Error::PoolTimedOut)
            }
            _ => false,
        };
        let saturated = pool_wait && self.answered.within(self.acquire_timeout);
        if saturated {
            self.shed.inc();
        }
        saturated
    }

    /// Connections of the pool: (open, idle).
    #[must_use]
    pub(crate) fn pool_usage(&self) -> (u32, usize) {
        if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            let pool = self.db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        } else {
            let pool = self.db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

impl Store {
    /// Runs one storage call within the call bound: past it the call is
    /// dropped (sqlx rolls back an open transaction when its connection is
    /// next used, or closes the connection) and fails as unavailable.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, DbErr>>) -> Result<T, DbErr> {
        let Some(limit) = self.call_timeout else {
            return call.await;
        };
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            let io = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the database did not answer within {limit:?}"),
            );
            Err(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(
                sqlx::Error::Io(io),
            ))))
        })
    }

    /// Runs the read `read` within the call bound, and again while the
    /// pooled connection it got turns out broken (at most once per pool
    /// connection, then on a fresh one). The pool hands out connections
    /// without pinging them (a round trip saved on every statement), so
    /// after PostgreSQL ended its sessions (a restart, a failover, an
    /// administrator) every idle pooled connection fails its first
    /// statement, at once, and sqlx drops it. A read is safe to repeat; a
    /// write is never repeated here (its first attempt may have committed).
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, DbErr>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        self.bounded(async {
            let result = read().await;
            match result {
                Err(e) if broken_connection(&e) => {
                    tracing::debug!(error = %e, "a pooled connection was broken; reading again on another");
                    // On the heap: rare, and the caller's future stays small.
                    Box::pin(self.read_again(&read)).await
                }
                other => other,
            }
        })
        .await
    }

    /// The retries of [`Store::read`].
    async fn read_again<T, F, Fut>(&self, read: &F) -> Result<T, DbErr>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let mut left = self.pool_size;
        loop {
            match read().await {
                Err(e) if broken_connection(&e) && left > 0 => left -= 1,
                other => return other,
            }
        }
    }

    /// Counts a committed move of `voice` to its status.
    fn count_transition(&self, voice: &Voice) {
        let to = match voice.status {
            VoiceStatus::Processing => "processing",
            VoiceStatus::Completed => "completed",
            VoiceStatus::Failed => "failed",
            VoiceStatus::Deleted => "deleted",
        };
        self.transitions
            .get_or_create(&TransitionLabel { to })
            .inc();
    }
}

/// Whether `err` says the connection itself is gone (its session was ended,
/// or the socket closed) rather than the statement failing: a read may be
/// run again on another connection. A timeout is not: it would double the
/// wait.
fn broken_connection(err: &DbErr) -> bool {
    let (DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    match &**e {
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::TimedOut,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        // admin_shutdown, crash_shutdown, and the connection exceptions.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(&*code, "57P01" | "57P02") || code.starts_with("08")),
        _ => false,
    }
}

/// Whether `err` says the database cannot serve now (unreachable, shutting
/// down, overloaded, a statement timed out, SQLite busy) rather than that
/// the request or the code is wrong: the caller may retry, here or on
/// another replica.
#[must_use]
pub fn unavailable(err: &DbErr) -> bool {
    let runtime = match err {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e) => e,
        _ => return false,
    };
    let sea_orm::RuntimeErr::SqlxError(e) = runtime else {
        return false;
    };
    match &**e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            if code.len() == 5 {
                // A PostgreSQL SQLSTATE: connection exceptions (08),
                // insufficient resources (53), operator intervention (57:
                // shutdown, statement timeout).
                ["08", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
            } else {
                // A SQLite result code, maybe extended: BUSY (5) or LOCKED (6).
                code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            }
        }),
        _ => false,
    }
}

/// What a per-owner transaction serialises: one owner's creates of voices,
/// or of webhook endpoints (each its own lock, so neither waits for the other).
#[derive(Debug, Clone, Copy)]
pub(crate) enum OwnerLock {
    Voices = 0,
    Endpoints = 1,
}

impl Store {
    /// A transaction in which one owner's count-then-insert cannot race
    /// another's: on PostgreSQL it holds a per-owner advisory lock until it
    /// ends; on SQLite it takes the write lock up front (BEGIN IMMEDIATE),
    /// since a deferred transaction that reads, then writes, fails with
    /// SQLITE_BUSY under a race.
    pub(crate) async fn begin_for_owner(
        &self,
        owner: uuid::Uuid,
        lock: OwnerLock,
    ) -> Result<sea_orm::DatabaseTransaction, DbErr> {
        use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};
        let txn = self
            .db
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..sea_orm::TransactionOptions::default()
            })
            .await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
                [owner.to_string().into(), (lock as i64).into()],
            ))
            .await?;
        }
        Ok(txn)
    }
}

fn count(statements: &Family<StatementLabels, Counter>, sql: &str) {
    let sql = sql.trim_start();
    let read = sql
        .get(..6)
        .is_some_and(|verb| verb.eq_ignore_ascii_case("select"));
    let kind = if sql.contains(outbox::TABLE) {
        StatementKind::Outbox
    } else if sql.contains("\"webhook_") {
        StatementKind::Webhooks
    } else if read {
        StatementKind::Read
    } else {
        StatementKind::Write
    };
    statements.get_or_create(&StatementLabels { kind }).inc();
}

/// A store over an empty in-memory SQLite database, not migrated, for unit
/// tests of what holds a store without reading it.
#[cfg(test)]
pub(crate) async fn test_store(metrics: &Metrics) -> Store {
    let config = DatabaseConfig {
        url: "sqlite::memory:".to_owned().into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(1),
    };
    let encode: EventEncoder = |_, _| Vec::new();
    Store::connect(&config, metrics, encode).await.unwrap()
}

/// A fully populated voice for unit tests (integration tests have their own
/// in `tests/api/helpers.rs`, as they cannot see this one).
#[cfg(test)]
pub(crate) fn test_voice(owner: uuid::Uuid, visibility: Visibility, status: VoiceStatus) -> Voice {
    let at = now();
    let id = uuid::Uuid::now_v7();
    Voice {
        id,
        owner_user_id: owner,
        provider_voice_id: Some(format!("pv{}", id.simple())),
        name: "Narrator".into(),
        description: "a test voice".into(),
        language: "en".into(),
        gender: String::new(),
        category: "cloned".into(),
        visibility,
        status,
        failure_reason: None,
        preview_url: None,
        labels: Labels([("accent".to_owned(), "british".to_owned())].into()),
        provider_labels: Labels::default(),
        request_id: None,
        revision: 1,
        created_at: at,
        updated_at: at,
        completed_at: None,
        deleted_at: None,
        processing_deadline: None,
        push_pending: false,
        push_lease_until: None,
        provider_missing_since: None,
        consent_recorded: false,
        create_lease_until: None,
    }
}

/// The current time at the precision the database keeps.
#[must_use]
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_never_answered_is_not_busy_and_an_answer_lasts_its_window() {
        let answered = Answered::new();
        assert!(!answered.within(Duration::from_hours(1)), "no answer yet");
        answered.mark();
        assert!(answered.within(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !answered.within(Duration::from_millis(5)),
            "that answer is older"
        );
    }
}

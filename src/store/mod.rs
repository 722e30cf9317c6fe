//! Storage of voices in SQL (SQLite or PostgreSQL) through SeaORM.
//!
//! [`Store`] is the only code that talks SQL. Its guarantees:
//! - every read applies the visibility rule in SQL itself (a caller's own
//!   voices, or public ones; never DELETED), so no handler can forget it;
//! - listing is keyset-paginated on `(created_at, id)` newest first, served
//!   by an index for each scope, never by OFFSET;
//! - timestamps are UTC and truncated to microseconds (PostgreSQL's
//!   precision), so what a caller gets back is exactly what is stored.
//!
//! Database failures are returned as [`DbErr`] and mapped to gRPC codes in
//! `error.rs`; nothing here retries.

mod entity;
pub mod orphan;
mod sync;
mod voices;
mod writes;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};

pub use entity::{Entity as VoiceEntity, Labels, Model as Voice, Visibility, VoiceStatus};
pub use voices::{Cursor, ListQuery, Page, Scope};
pub use writes::{Reservation, VoicePatch};

use crate::config::DatabaseConfig;

/// Handle to the database; cheap to clone (a connection pool inside).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    statements: Arc<Statements>,
}

/// SQL statements this process has run, by kind: the proof that idle work
/// costs no queries, and that a batch is read with one.
#[derive(Debug, Default)]
pub struct Statements {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Statements {
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.reads() + self.writes()
    }
}

impl Store {
    /// Opens the connection pool (and the SQLite file, creating it when the
    /// URL says `mode=rwc`).
    ///
    /// # Errors
    /// The database is unreachable or the URL is malformed.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(config.url().to_owned());
        options
            .max_connections(config.max_connections)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            // Statements are traced by our own spans; sqlx's per-statement INFO lines are noise.
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| {
                // WAL lets readers proceed during a write; the busy timeout turns
                // writer contention into a short wait instead of SQLITE_BUSY.
                opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5))
            });
        let mut db = Database::connect(options).await?;
        let statements = Arc::new(Statements::default());
        let counter = statements.clone();
        db.set_metric_callback(move |info| {
            let sql = info.statement.sql.trim_start();
            let read = sql.get(..6).is_some_and(|verb| verb.eq_ignore_ascii_case("select"));
            let kind = if read { &counter.reads } else { &counter.writes };
            kind.fetch_add(1, Ordering::Relaxed);
            if info.elapsed > Duration::from_secs(1) {
                tracing::warn!(elapsed = ?info.elapsed, sql = %info.statement.sql, "slow SQL statement");
            }
        });
        Ok(Store { db, statements })
    }

    /// Applies pending migrations (under a lock on PostgreSQL).
    ///
    /// # Errors
    /// A migration failed; on PostgreSQL nothing of it is kept.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::run(&self.db).await
    }

    /// One round trip to the database, for health checks.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Statements run so far through this store (and its clones).
    pub fn statements(&self) -> &Statements {
        &self.statements
    }

    /// The underlying connection, for tests and administrative tools.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

/// The current time at the precision the database keeps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

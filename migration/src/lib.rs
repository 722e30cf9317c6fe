//! voicehub's database schema, as SeaORM migrations.
//!
//! The same migrations run on SQLite (the embedded default) and PostgreSQL.
//! [`run`] is the only entry point the service uses: it applies every pending
//! migration inside one transaction that first takes a lock (an advisory lock
//! on PostgreSQL, the write lock on SQLite), so processes starting together
//! apply the schema exactly once and a failed migration leaves no half-built
//! schema behind.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    DatabaseConnection, DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

mod m20261126_000001_create_voices;
mod m20261126_000002_create_provider_orphans;
mod m20261130_000003_add_provider_labels;
mod m20261201_000004_create_voice_events;
mod m20261201_000005_add_provider_push;
mod m20261206_000006_provider_safety;
mod m20261206_000007_create_webhook_endpoints;
mod m20261206_000008_create_webhook_deliveries;
mod m20261206_000009_add_webhook_failing_since;
mod m20261207_000010_create_voice_intakes;

/// Advisory lock key held while migrating ("voicehub" in ASCII, as an i64).
const MIGRATION_LOCK_KEY: i64 = 0x766f_6963_6568_7562;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_voices::Migration),
            Box::new(m20261126_000002_create_provider_orphans::Migration),
            Box::new(m20261130_000003_add_provider_labels::Migration),
            Box::new(m20261201_000004_create_voice_events::Migration),
            Box::new(m20261201_000005_add_provider_push::Migration),
            Box::new(m20261206_000006_provider_safety::Migration),
            Box::new(m20261206_000007_create_webhook_endpoints::Migration),
            Box::new(m20261206_000008_create_webhook_deliveries::Migration),
            Box::new(m20261206_000009_add_webhook_failing_since::Migration),
            Box::new(m20261207_000010_create_voice_intakes::Migration),
        ]
    }
}

/// Applies every pending migration.
///
/// # Errors
/// Returns the database error of the first statement that fails; on
/// PostgreSQL nothing of the run is then kept.
pub async fn run(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = if db.get_database_backend() == DbBackend::Postgres {
        // A transaction-scoped lock: it is released by COMMIT or ROLLBACK, and
        // also if this process dies, so a crashed replica never blocks the rest.
        let txn = db.begin().await?;
        // The serving pool bounds every statement; waiting for another
        // replica's migration, and a migration itself, may take longer.
        txn.execute_unprepared("SET LOCAL statement_timeout = 0")
            .await?;
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
        ))
        .await?;
        txn
    } else {
        // SQLite: one IMMEDIATE transaction holds the file's write lock for the
        // whole run, so concurrent starts serialise and a failure keeps nothing.
        db.begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?
    };
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

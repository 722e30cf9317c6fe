use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use voicehub::{metrics::Metrics, store::Store};

use crate::{
    helpers::{Backend, TestDatabase},
    on_both_backends,
};

/// How many migrations the schema has.
const MIGRATIONS: i64 = 2;

async fn applied_migrations(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

async fn processes_migrating_together_apply_the_schema_once(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Store::connect(&db.config(), &Metrics::new()).await.unwrap());
    }
    let running: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| tokio::spawn(async move { store.migrate().await }))
        .collect();
    for replica in running {
        replica
            .await
            .unwrap()
            .expect("every replica's migration succeeds");
    }
    let connection = db.connect().await;
    assert_eq!(applied_migrations(&connection).await, MIGRATIONS);
    // Running again is a no-op.
    stores[0].migrate().await.unwrap();
    assert_eq!(applied_migrations(&connection).await, MIGRATIONS);
    if backend == Backend::Postgres {
        let row = connection
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM pg_indexes WHERE tablename = 'voices'",
            ))
            .await
            .unwrap()
            .unwrap();
        // The primary key plus the four indexes of the first migration.
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 5);
    }
}

async fn migrating_twice_is_a_no_op(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = Store::connect(&db.config(), &Metrics::new()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(applied_migrations(&db.connect().await).await, MIGRATIONS);
}

on_both_backends!(
    processes_migrating_together_apply_the_schema_once,
    migrating_twice_is_a_no_op
);

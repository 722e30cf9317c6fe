use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement,
    sea_query::{Query, SimpleExpr},
};
use uuid::Uuid;
use voicehub::{
    metrics::Metrics,
    store::{
        Store, Visibility, VoiceStatus,
        entity::voice::{self, Column, Labels},
    },
};

use crate::{
    helpers::{Backend, TestDatabase},
    on_both_backends,
};

/// How many migrations the schema has.
const MIGRATIONS: i64 = 10;

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
        stores.push(store_of(&db).await);
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
        // The primary key, the four indexes of the first migration, the
        // pending-push index of the fifth and the provider voice index of
        // the sixth.
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 7);
    }
}

async fn migrating_twice_is_a_no_op(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = store_of(&db).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(applied_migrations(&db.connect().await).await, MIGRATIONS);
}

async fn voices_stored_before_provider_labels_existed_read_with_none(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let connection = db.connect().await;
    Migrator::up(&connection, Some(2)).await.unwrap();
    let (id, at) = (Uuid::now_v7(), chrono::Utc::now());
    let labels = Labels([("accent".to_owned(), "british".to_owned())].into());
    let values: [SimpleExpr; 13] = [
        id.into(),
        Uuid::new_v4().into(),
        "Older".into(),
        String::new().into(),
        "en".into(),
        String::new().into(),
        "cloned".into(),
        SimpleExpr::from(Visibility::Private),
        SimpleExpr::from(VoiceStatus::Completed),
        sea_orm::Value::from(labels.clone()).into(),
        1_i64.into(),
        at.into(),
        at.into(),
    ];
    let insert = Query::insert()
        .into_table(voice::Entity)
        .columns([
            Column::Id,
            Column::OwnerUserId,
            Column::Name,
            Column::Description,
            Column::Language,
            Column::Gender,
            Column::Category,
            Column::Visibility,
            Column::Status,
            Column::Labels,
            Column::Revision,
            Column::CreatedAt,
            Column::UpdatedAt,
        ])
        .values_panic(values)
        .to_owned();
    connection.execute(&insert).await.unwrap();

    let store = store_of(&db).await;
    store.migrate().await.unwrap();
    let stored = voice::Entity::find_by_id(id)
        .one(&connection)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.labels, labels, "the caller's labels as they were");
    assert_eq!(stored.provider_labels, Labels::default(), "none yet");
}

on_both_backends!(
    processes_migrating_together_apply_the_schema_once,
    migrating_twice_is_a_no_op,
    voices_stored_before_provider_labels_existed_read_with_none
);

/// A server's store on `db`, as `voicehub serve` opens it (not migrated yet).
async fn store_of(db: &TestDatabase) -> Store {
    Store::connect(
        &db.config(),
        &Metrics::new(),
        voicehub::events::encode_stored,
    )
    .await
    .unwrap()
}

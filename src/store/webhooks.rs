//! Webhook endpoints. Every method takes the owner and matches it in SQL, so
//! no caller can reach another user's endpoint: it is "not found", as one
//! that does not exist.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use uuid::Uuid;

use super::{
    Store,
    entity::webhook_endpoint::{ActiveModel, Column, Entity, Model as WebhookEndpoint},
    now,
};

/// A new endpoint, checked.
#[derive(Debug, Clone)]
pub(crate) struct NewEndpoint {
    pub(crate) url: String,
    pub(crate) description: String,
    /// Empty: all.
    pub(crate) event_types: Vec<String>,
    pub(crate) secret: String,
}

/// The fields an update writes; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointPatch {
    pub(crate) url: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) event_types: Option<Vec<String>>,
    pub(crate) enabled: Option<bool>,
}

/// What [`Store::create_endpoint`] did.
#[derive(Debug)]
pub(crate) enum EndpointCreated {
    Created(Box<WebhookEndpoint>),
    /// The owner has `max` endpoints already.
    LimitReached,
}

impl Store {
    /// Stores `new` for `owner` if they have fewer than `max` endpoints. On
    /// PostgreSQL the count and the insert run under a per-owner advisory
    /// lock, so concurrent creates cannot overshoot `max`.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn create_endpoint(
        &self,
        owner: Uuid,
        new: NewEndpoint,
        max: u64,
    ) -> Result<EndpointCreated, DbErr> {
        self.bounded(async {
            let txn = self
                .db
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                })
                .await?;
            if txn.get_database_backend() == DbBackend::Postgres {
                txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
                    [owner.to_string().into()],
                ))
                .await?;
            }
            let held = Entity::find()
                .filter(Column::OwnerUserId.eq(owner))
                .count(&txn)
                .await?;
            if held >= max {
                return Ok(EndpointCreated::LimitReached);
            }
            let at = now();
            let endpoint = ActiveModel {
                id: Set(Uuid::now_v7()),
                owner_user_id: Set(owner),
                url: Set(new.url),
                description: Set(new.description),
                event_types: Set(new.event_types.join(" ")),
                secret: Set(new.secret),
                previous_secret: Set(None),
                previous_secret_until: Set(None),
                enabled: Set(true),
                disabled_reason: Set(String::new()),
                created_at: Set(at),
                updated_at: Set(at),
            }
            .insert(&txn)
            .await?;
            txn.commit().await?;
            Ok(EndpointCreated::Created(Box::new(endpoint)))
        })
        .await
    }

    /// `owner`'s endpoints, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn endpoints(&self, owner: Uuid) -> Result<Vec<WebhookEndpoint>, DbErr> {
        self.bounded(async {
            Entity::find()
                .filter(Column::OwnerUserId.eq(owner))
                .order_by_asc(Column::CreatedAt)
                .order_by_asc(Column::Id)
                .all(&self.db)
                .await
        })
        .await
    }

    /// Writes `patch` to `owner`'s endpoint `id`; enabling it clears the
    /// reason it was disabled. `None` if `owner` has no such endpoint.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn update_endpoint(
        &self,
        owner: Uuid,
        id: Uuid,
        patch: EndpointPatch,
    ) -> Result<Option<WebhookEndpoint>, DbErr> {
        self.bounded(async {
            let mut update = Entity::update_many()
                .col_expr(Column::UpdatedAt, now().into())
                .filter(Column::Id.eq(id))
                .filter(Column::OwnerUserId.eq(owner));
            if let Some(url) = patch.url {
                update = update.col_expr(Column::Url, url.into());
            }
            if let Some(description) = patch.description {
                update = update.col_expr(Column::Description, description.into());
            }
            if let Some(types) = patch.event_types {
                update = update.col_expr(Column::EventTypes, types.join(" ").into());
            }
            if let Some(enabled) = patch.enabled {
                update = update
                    .col_expr(Column::Enabled, enabled.into())
                    .col_expr(Column::DisabledReason, String::new().into());
            }
            let rows = update.exec_with_returning(&self.db).await?;
            Ok(rows.into_iter().next())
        })
        .await
    }

    /// Deletes `owner`'s endpoint `id`; whether there was one.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn delete_endpoint(&self, owner: Uuid, id: Uuid) -> Result<bool, DbErr> {
        self.bounded(async {
            let deleted = Entity::delete_many()
                .filter(Column::Id.eq(id))
                .filter(Column::OwnerUserId.eq(owner))
                .exec(&self.db)
                .await?;
            Ok(deleted.rows_affected > 0)
        })
        .await
    }

    /// Makes `secret` the signing secret of `owner`'s endpoint `id`; the one
    /// it replaces keeps signing until `overlap_until`. `None` if `owner`
    /// has no such endpoint.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn rotate_secret(
        &self,
        owner: Uuid,
        id: Uuid,
        secret: String,
        overlap_until: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>, DbErr> {
        use sea_orm::sea_query::Expr;
        self.bounded(async {
            let rows = Entity::update_many()
                .col_expr(Column::PreviousSecret, Expr::col(Column::Secret))
                .col_expr(Column::PreviousSecretUntil, Some(overlap_until).into())
                .col_expr(Column::Secret, secret.into())
                .col_expr(Column::UpdatedAt, now().into())
                .filter(Column::Id.eq(id))
                .filter(Column::OwnerUserId.eq(owner))
                .exec_with_returning(&self.db)
                .await?;
            Ok(rows.into_iter().next())
        })
        .await
    }
}

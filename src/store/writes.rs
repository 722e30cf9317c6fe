//! Writes to the `voices` table. Each is one statement (or one short
//! transaction) with a guard in its WHERE clause, so a write that lost a race
//! changes nothing and reports it (`None`) instead of overwriting.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, SqlErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{
    Store,
    entity::{Column, Entity, Labels, Model as Voice, Visibility, VoiceStatus},
    now, orphan,
};

/// The outcome of reserving a row for a new voice.
#[derive(Debug)]
pub enum Reservation {
    /// The row is ours; the provider may now be called.
    Reserved(Voice),
    /// The same user's same `request_id` is already taken: this is that voice.
    Existing(Voice),
    /// The user has `max` live voices already.
    LimitReached,
}

/// New values for the fields UpdateVoice may change; `None` leaves one alone.
#[derive(Debug, Clone, Default)]
pub struct VoicePatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl Store {
    /// The voice a user created with `request_id`, in whatever state.
    ///
    /// # Errors
    /// A database failure.
    pub async fn find_by_request_id(
        &self,
        owner: Uuid,
        request_id: &str,
    ) -> Result<Option<Voice>, DbErr> {
        Entity::find()
            .filter(Column::OwnerUserId.eq(owner))
            .filter(Column::RequestId.eq(request_id))
            .one(&self.db)
            .await
    }

    /// The owner's voice `id`, unless it is DELETED.
    ///
    /// # Errors
    /// A database failure.
    pub async fn get_owned(&self, owner: Uuid, id: Uuid) -> Result<Option<Voice>, DbErr> {
        Entity::find_by_id(id)
            .filter(Column::OwnerUserId.eq(owner))
            .filter(Column::Status.ne(VoiceStatus::Deleted))
            .one(&self.db)
            .await
    }

    /// Inserts `voice` (PROCESSING, no provider id yet) if its owner has fewer
    /// than `max` live voices. On PostgreSQL the count and the insert run under
    /// a per-owner advisory lock, so concurrent creates cannot overshoot `max`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn reserve(&self, voice: Voice, max: u64) -> Result<Reservation, DbErr> {
        let (owner, request_id) = (voice.owner_user_id, voice.request_id.clone());
        // SQLite: take the write lock up front (BEGIN IMMEDIATE); a deferred
        // transaction that reads, then writes, fails with SQLITE_BUSY under a race.
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
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                [owner.to_string().into()],
            ))
            .await?;
        }
        let live = Entity::find()
            .filter(Column::OwnerUserId.eq(owner))
            .filter(Column::Status.ne(VoiceStatus::Deleted))
            .count(&txn)
            .await?;
        if live >= max {
            return Ok(Reservation::LimitReached);
        }
        match voice.into_active_model().insert(&txn).await {
            Ok(voice) => {
                txn.commit().await?;
                Ok(Reservation::Reserved(voice))
            }
            // Someone else holds this request_id: a racing duplicate. Report theirs.
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                drop(txn);
                let request_id = request_id.ok_or(e)?;
                self.find_by_request_id(owner, &request_id)
                    .await?
                    .map(Reservation::Existing)
                    .ok_or_else(|| DbErr::RecordNotFound("voice of a duplicate request_id".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Records the provider's id on a reserved voice. `None` if the
    /// reservation is gone or already accepted (deleted meanwhile).
    ///
    /// # Errors
    /// A database failure.
    pub async fn accept(
        &self,
        id: Uuid,
        provider_voice_id: &str,
        category: &str,
    ) -> Result<Option<Voice>, DbErr> {
        let rows = Entity::update_many()
            .col_expr(Column::ProviderVoiceId, Expr::value(provider_voice_id))
            .col_expr(Column::Category, Expr::value(category))
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .col_expr(Column::UpdatedAt, Expr::value(now()))
            .filter(Column::Id.eq(id))
            .filter(Column::ProviderVoiceId.is_null())
            .filter(Column::Status.eq(VoiceStatus::Processing))
            .exec_with_returning(&self.db)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Removes a reservation the provider never accepted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn release(&self, id: Uuid) -> Result<(), DbErr> {
        Entity::delete_many()
            .filter(Column::Id.eq(id))
            .filter(Column::ProviderVoiceId.is_null())
            .exec(&self.db)
            .await
            .map(drop)
    }

    /// Applies `patch` if the voice is still at `revision` and not deleted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn update_fields(
        &self,
        id: Uuid,
        revision: i64,
        patch: &VoicePatch,
    ) -> Result<Option<Voice>, DbErr> {
        let mut update = Entity::update_many()
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .col_expr(Column::UpdatedAt, Expr::value(now()));
        if let Some(name) = &patch.name {
            update = update.col_expr(Column::Name, Expr::value(name.clone()));
        }
        if let Some(description) = &patch.description {
            update = update.col_expr(Column::Description, Expr::value(description.clone()));
        }
        if let Some(visibility) = patch.visibility {
            update = update.col_expr(Column::Visibility, Expr::value(visibility));
        }
        if let Some(labels) = &patch.labels {
            update = update.col_expr(Column::Labels, Expr::value(Labels(labels.clone())));
        }
        let rows = update
            .filter(Column::Id.eq(id))
            .filter(Column::Revision.eq(revision))
            .filter(Column::Status.ne(VoiceStatus::Deleted))
            .exec_with_returning(&self.db)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Marks a voice DELETED (kept for audit). `None` if it already was.
    ///
    /// # Errors
    /// A database failure.
    pub async fn mark_deleted(&self, id: Uuid) -> Result<Option<Voice>, DbErr> {
        let at = now();
        let rows = Entity::update_many()
            .col_expr(Column::Status, Expr::value(VoiceStatus::Deleted))
            .col_expr(Column::DeletedAt, Expr::value(at))
            .col_expr(
                Column::ProcessingDeadline,
                Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
            )
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .col_expr(Column::UpdatedAt, Expr::value(at))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.ne(VoiceStatus::Deleted))
            .exec_with_returning(&self.db)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Remembers a provider voice that exists at the provider but nowhere here.
    ///
    /// # Errors
    /// A database failure.
    pub async fn record_orphan(
        &self,
        provider: &str,
        provider_voice_id: &str,
        voice_id: Option<Uuid>,
        reason: &str,
    ) -> Result<(), DbErr> {
        orphan::Model {
            id: Uuid::now_v7(),
            provider: provider.to_owned(),
            provider_voice_id: provider_voice_id.to_owned(),
            voice_id,
            reason: reason.to_owned(),
            created_at: now(),
        }
        .into_active_model()
        .insert(&self.db)
        .await
        .map(drop)
    }

    /// Every recorded orphan, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn orphans(&self) -> Result<Vec<orphan::Model>, DbErr> {
        use sea_orm::QueryOrder;
        orphan::Entity::find()
            .order_by_asc(orphan::Column::CreatedAt)
            .all(&self.db)
            .await
    }
}

//! The queries of the status engine: batch reads of claimed voices and
//! guarded status transitions. Every transition is written with
//! `WHERE status = 'processing'`, so a repeated or late check of a voice
//! that has already moved on changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{
    Store,
    entity::{Column, Entity, Labels, Model as Voice, VoiceStatus},
    now,
};

impl Store {
    /// The voices with these ids, in one query.
    ///
    /// # Errors
    /// A database failure.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Voice>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Entity::find()
            .filter(Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await
    }

    /// The ids of every PROCESSING voice, to rebuild the due-queue from.
    ///
    /// # Errors
    /// A database failure.
    pub async fn processing_ids(&self) -> Result<Vec<Uuid>, DbErr> {
        Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Status.eq(VoiceStatus::Processing))
            .into_tuple()
            .all(&self.db)
            .await
    }

    /// The owner's PROCESSING voices, oldest first (a watch's snapshot).
    ///
    /// # Errors
    /// A database failure.
    pub async fn processing_of(&self, owner: Uuid) -> Result<Vec<Voice>, DbErr> {
        Entity::find()
            .filter(Column::OwnerUserId.eq(owner))
            .filter(Column::Status.eq(VoiceStatus::Processing))
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Id)
            .all(&self.db)
            .await
    }

    /// The voices among `ids` that `caller` may see (own, or public; never
    /// DELETED), in one query.
    ///
    /// # Errors
    /// A database failure.
    pub async fn get_visible_many(&self, caller: Uuid, ids: &[Uuid]) -> Result<Vec<Voice>, DbErr> {
        Entity::find()
            .filter(Column::Id.is_in(ids.iter().copied()))
            .filter(super::voices::visible_to(caller))
            .all(&self.db)
            .await
    }

    /// PROCESSING → COMPLETED with what the provider reported. `None` if the
    /// voice is no longer PROCESSING.
    ///
    /// # Errors
    /// A database failure.
    pub async fn complete(
        &self,
        id: Uuid,
        preview_url: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<Option<Voice>, DbErr> {
        let at = now();
        let mut update = Entity::update_many()
            .col_expr(Column::Status, Expr::value(VoiceStatus::Completed))
            .col_expr(Column::CompletedAt, Expr::value(at))
            .col_expr(Column::PreviewUrl, Expr::value(preview_url));
        if let Some(labels) = labels {
            update = update.col_expr(Column::Labels, Expr::value(Labels(labels)));
        }
        Self::transition(update, id, at)
            .exec_with_returning(&self.db)
            .await
            .map(first)
    }

    /// PROCESSING → FAILED with a reason for people. `None` if the voice is
    /// no longer PROCESSING.
    ///
    /// # Errors
    /// A database failure.
    pub async fn fail(&self, id: Uuid, reason: &str) -> Result<Option<Voice>, DbErr> {
        let at = now();
        let update = Entity::update_many()
            .col_expr(Column::Status, Expr::value(VoiceStatus::Failed))
            .col_expr(Column::FailureReason, Expr::value(reason));
        Self::transition(update, id, at)
            .exec_with_returning(&self.db)
            .await
            .map(first)
    }

    fn transition(
        update: sea_orm::UpdateMany<Entity>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> sea_orm::UpdateMany<Entity> {
        update
            .col_expr(
                Column::ProcessingDeadline,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .col_expr(Column::UpdatedAt, Expr::value(at))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.eq(VoiceStatus::Processing))
    }
}

fn first(rows: Vec<Voice>) -> Option<Voice> {
    rows.into_iter().next()
}

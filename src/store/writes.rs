//! Every statement that changes a voice. Each is one short transaction: one
//! statement with a guard in its WHERE clause, so a write that lost a race
//! changes nothing and reports it (`None`) instead of overwriting, and the
//! insert of the change's event into the outbox. Status
//! transitions are written only from PROCESSING, so a repeated or late check
//! of a voice that has already moved on changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbBackend, DbErr, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait, UpdateMany,
    sea_query::{CaseStatement, Expr, ExprTrait},
};
use uuid::Uuid;

use super::{
    Change, Intake, OwnerLock, Store,
    entity::{
        provider_orphan,
        voice::{Column, Entity, Labels, Model as Voice, RESERVED_REVISION, VoiceStatus},
    },
    now,
};

/// The outcome of reserving a row for a new voice.
#[derive(Debug)]
pub(crate) enum Reservation {
    /// The row is ours; the provider may now be called.
    Reserved(Voice),
    /// The same user's same `request_id` is already taken: this is that voice.
    Existing(Voice),
    /// The user has `max` live voices already.
    LimitReached,
}

impl Store {
    /// Inserts `voice` (PROCESSING, no provider id yet) if its owner has fewer
    /// than `max` live voices. On PostgreSQL the count and the insert run under
    /// a per-owner advisory lock, so concurrent creates cannot overshoot `max`.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn reserve(
        &self,
        voice: Voice,
        intake: Intake,
        max: u64,
    ) -> Result<Reservation, DbErr> {
        self.bounded(async {
            let (owner, request_id) = (voice.owner_user_id, voice.request_id.clone());
            let txn = self.begin_for_owner(owner, OwnerLock::Voices).await?;
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
                    // With the voice or not at all: the audit trail has no gaps.
                    intake.into_active_model().insert(&txn).await?;
                    txn.commit().await?;
                    self.count_transition(&voice);
                    Ok(Reservation::Reserved(voice))
                }
                // Someone else holds this request_id: a racing duplicate. Report theirs.
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    drop(txn);
                    let request_id = request_id.ok_or(e)?;
                    self.find_by_request_id(owner, &request_id)
                        .await?
                        .map(Reservation::Existing)
                        .ok_or_else(|| {
                            DbErr::RecordNotFound("voice of a duplicate request_id".into())
                        })
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Records the provider's id on a reserved voice (or finds it recorded
    /// already, by the status engine's adoption). `None` if the reservation
    /// is gone, settled or holds another provider voice.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn accept(
        &self,
        id: Uuid,
        provider_voice_id: &str,
        category: &str,
    ) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let update = Entity::update_many()
                .col_expr(Column::ProviderVoiceId, Expr::value(provider_voice_id))
                .col_expr(Column::Category, Expr::value(category))
                .col_expr(
                    Column::CreateLeaseUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(Column::ProviderVoiceId.is_null())
                .filter(Column::Status.eq(VoiceStatus::Processing));
            // Unannounced, accepting is its `created`; announced already
            // (handed to a caller before its provider voice was known),
            // the provider id is bookkeeping: no revision, no event.
            let first = update
                .clone()
                .filter(Column::Revision.eq(RESERVED_REVISION));
            if let Some(accepted) = self.revise(id, now(), first, Change::Created).await? {
                return Ok(Some(accepted));
            }
            let adopted = update
                .filter(Column::Id.eq(id))
                .filter(Column::Revision.gt(RESERVED_REVISION))
                .exec(&self.db)
                .await?;
            if adopted.rows_affected > 0 {
                return Ok(self.get_many(&[id]).await?.into_iter().next());
            }
            // Accepted already with this very provider voice: the status engine
            // adopted it while its create was still running. Same outcome.
            Ok(self.get_many(&[id]).await?.into_iter().find(|v| {
                v.provider_voice_id.as_deref() == Some(provider_voice_id)
                    && v.status != VoiceStatus::Deleted
            }))
        })
        .await
    }

    /// Publishes reserved voice `id`'s `created` before its provider voice
    /// is known, because a caller is being handed it: every later change
    /// then follows its `created`. `None` if it is no longer unannounced
    /// (accepted, updated or settled meanwhile).
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn announce(&self, id: Uuid) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let update = Entity::update_many()
                .filter(Column::ProviderVoiceId.is_null())
                .filter(Column::Status.eq(VoiceStatus::Processing))
                .filter(Column::Revision.eq(RESERVED_REVISION));
            self.revise(id, now(), update, Change::Created).await
        })
        .await
    }

    /// Renews the create lease of reserved voice `id` until `until`, while
    /// its create waits for the provider or runs. Bookkeeping only: no
    /// revision, no event. Whether the voice is still reserved.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn renew_create_lease(
        &self,
        id: Uuid,
        until: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        self.bounded(async {
            let result = Entity::update_many()
                .col_expr(Column::CreateLeaseUntil, Expr::value(until))
                .filter(Column::Id.eq(id))
                .filter(Column::ProviderVoiceId.is_null())
                .filter(Column::Status.eq(VoiceStatus::Processing))
                .exec(&self.db)
                .await?;
            Ok(result.rows_affected > 0)
        })
        .await
    }

    /// Records when the provider first said it does not hold voice `id`
    /// (kept if already recorded) or, with `None`, that it holds it again.
    /// Bookkeeping only: no revision, no event.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn set_missing_since(
        &self,
        id: Uuid,
        since: Option<DateTime<Utc>>,
    ) -> Result<(), DbErr> {
        self.bounded(async {
            let mut update = Entity::update_many()
                .col_expr(Column::ProviderMissingSince, Expr::value(since))
                .filter(Column::Id.eq(id));
            if since.is_some() {
                update = update.filter(Column::ProviderMissingSince.is_null());
            }
            update.exec(&self.db).await.map(drop)
        })
        .await
    }

    /// Moves COMPLETED voice `id`, confirmed gone at the provider, to FAILED
    /// with `reason`, marked as gone (so nothing tries to delete it there).
    /// `None` if it is no longer COMPLETED.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn fail_vanished(
        &self,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let at = now();
            let update = Entity::update_many()
                .col_expr(Column::Status, Expr::value(VoiceStatus::Failed))
                .col_expr(Column::FailureReason, Expr::value(reason))
                .col_expr(Column::ProviderMissingSince, Expr::value(Some(at)))
                .filter(Column::Status.eq(VoiceStatus::Completed));
            let failed = self.revise(id, at, update, Change::Failed).await?;
            if let Some(voice) = &failed {
                self.count_transition(voice);
            }
            Ok(failed)
        })
        .await
    }

    /// Removes a reservation the provider never accepted.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn release(&self, id: Uuid) -> Result<(), DbErr> {
        self.bounded(async {
            Entity::delete_many()
                .filter(Column::Id.eq(id))
                .filter(Column::ProviderVoiceId.is_null())
                .exec(&self.db)
                .await
                .map(drop)
        })
        .await
    }

    /// Writes the caller-editable fields of `voice` (name, description,
    /// visibility, labels) if the stored voice is still at `revision` and not
    /// deleted; `push` marks the voice for a push of them to the provider.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn update_metadata(
        &self,
        voice: &Voice,
        revision: i64,
        push: bool,
    ) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let mut update = Entity::update_many();
            if push {
                update = update.col_expr(Column::PushPending, Expr::value(true));
            }
            let update = update
                .col_expr(Column::Name, Expr::value(voice.name.clone()))
                .col_expr(Column::Description, Expr::value(voice.description.clone()))
                .col_expr(Column::Visibility, Expr::value(voice.visibility))
                .col_expr(Column::Labels, Expr::value(voice.labels.clone()))
                .filter(Column::Revision.eq(revision))
                .filter(Column::Status.ne(VoiceStatus::Deleted));
            self.revise(voice.id, now(), update, Change::Updated).await
        })
        .await
    }

    /// Takes the push of voice `id` for `lease`, if a push is pending, the
    /// voice is at the provider (PROCESSING or COMPLETED with a provider id)
    /// and no other pusher holds it. Returns the voice as stored: the values
    /// to push, of its current revision. Bookkeeping only: no revision, no
    /// event.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn take_push(
        &self,
        id: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let at = now();
            let until = at + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
            let rows = Entity::update_many()
                .col_expr(Column::PushLeaseUntil, Expr::value(until))
                .filter(Column::Id.eq(id))
                .filter(Column::PushPending.eq(true))
                .filter(Column::ProviderVoiceId.is_not_null())
                .filter(Column::Status.is_in([VoiceStatus::Processing, VoiceStatus::Completed]))
                .filter(
                    Column::PushLeaseUntil
                        .is_null()
                        .or(Column::PushLeaseUntil.lte(at)),
                )
                .exec_with_returning(&self.db)
                .await?;
            Ok(rows.into_iter().next())
        })
        .await
    }

    /// Ends the push of voice `id` taken at `revision`, releasing its lease.
    /// `settled`: the provider holds that revision's values (or refused
    /// them for good), so no push is pending any more, unless the voice
    /// changed since. Returns whether a push is still pending.
    ///
    /// # Errors
    /// A database failure (the lease then runs out by itself).
    pub(crate) async fn end_push(
        &self,
        id: Uuid,
        revision: i64,
        settled: bool,
    ) -> Result<bool, DbErr> {
        self.bounded(async {
            let mut update = Entity::update_many().col_expr(
                Column::PushLeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            );
            if settled {
                update = update.col_expr(
                    Column::PushPending,
                    Expr::case(Column::Revision.eq(revision), Expr::value(false))
                        .finally(Expr::col(Column::PushPending))
                        .into(),
                );
            }
            let rows = update
                .filter(Column::Id.eq(id))
                .exec_with_returning(&self.db)
                .await?;
            Ok(rows.first().is_some_and(|v| v.push_pending))
        })
        .await
    }

    /// Marks a voice DELETED (kept for audit). `None` if it already was.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn mark_deleted(&self, id: Uuid) -> Result<Option<Voice>, DbErr> {
        self.bounded(async {
            let at = now();
            let update = Entity::update_many()
                .col_expr(Column::Status, Expr::value(VoiceStatus::Deleted))
                .col_expr(Column::DeletedAt, Expr::value(at))
                .filter(Column::Status.ne(VoiceStatus::Deleted));
            let deleted = self
                .revise(id, at, without_deadline(update), Change::Deleted)
                .await?;
            if let Some(voice) = &deleted {
                self.count_transition(voice);
            }
            Ok(deleted)
        })
        .await
    }

    /// The recorded orphans of `provider`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn orphans(
        &self,
        provider: &str,
        limit: u64,
    ) -> Result<Vec<provider_orphan::Model>, DbErr> {
        self.bounded(async {
            provider_orphan::Entity::find()
                .filter(provider_orphan::Column::Provider.eq(provider))
                .order_by_asc(provider_orphan::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await
        })
        .await
    }

    /// Forgets a recorded orphan: it is gone at the provider.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn forget_orphan(&self, id: Uuid) -> Result<(), DbErr> {
        self.bounded(async {
            provider_orphan::Entity::delete_by_id(id)
                .exec(&self.db)
                .await
                .map(drop)
        })
        .await
    }

    /// Remembers a provider voice that exists at the provider but nowhere here.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn record_orphan(
        &self,
        provider: &str,
        provider_voice_id: &str,
        voice_id: Option<Uuid>,
        reason: &str,
    ) -> Result<(), DbErr> {
        self.bounded(async {
            provider_orphan::Model {
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
        })
        .await
    }

    /// Settles a batch of the status engine's decisions: each voice still
    /// PROCESSING moves to COMPLETED or FAILED as decided. One statement per
    /// target status, whatever the batch size, and one insert of their events,
    /// in one transaction. Returns the rows
    /// that changed; a voice that is no longer PROCESSING is left alone and
    /// missing from the result.
    ///
    /// # Errors
    /// A database failure; nothing is stored then.
    pub(crate) async fn settle_many(
        &self,
        settlements: &[(Uuid, Settlement)],
    ) -> Result<Vec<Voice>, DbErr> {
        self.bounded(async {
            // PostgreSQL binds JSON as jsonb; the column is json, and a CASE
            // needs one type for all its branches.
            let postgres = self.db.get_database_backend() == DbBackend::Postgres;
            let (mut completed, mut failed) = (Vec::new(), Vec::new());
            let (mut preview, mut labels, mut reasons) = (None, None, None);
            for (id, settlement) in settlements {
                match settlement {
                    Settlement::Complete {
                        preview_url,
                        provider_labels: reported,
                    } => {
                        completed.push(*id);
                        preview = Some(when(preview, *id, Expr::value(preview_url.clone())));
                        if let Some(reported) = reported {
                            let value = Expr::value(Labels(reported.clone()));
                            let value = if postgres {
                                value.cast_as("json")
                            } else {
                                value
                            };
                            labels = Some(when(labels, *id, value));
                        }
                    }
                    Settlement::Fail(reason) => {
                        failed.push(*id);
                        reasons = Some(when(reasons, *id, Expr::value(reason.clone())));
                    }
                }
            }
            let at = now();
            let complete = (!completed.is_empty()).then(|| {
                let mut update = Entity::update_many()
                    .col_expr(Column::Status, Expr::value(VoiceStatus::Completed))
                    .col_expr(Column::CompletedAt, Expr::value(at))
                    .col_expr(
                        Column::ProviderMissingSince,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    )
                    .col_expr(Column::PreviewUrl, otherwise(preview, Column::PreviewUrl));
                if labels.is_some() {
                    update = update.col_expr(
                        Column::ProviderLabels,
                        otherwise(labels, Column::ProviderLabels),
                    );
                }
                batch(update, at, completed)
            });
            let fail = (!failed.is_empty()).then(|| {
                let update = Entity::update_many()
                    .col_expr(Column::Status, Expr::value(VoiceStatus::Failed))
                    .col_expr(
                        Column::FailureReason,
                        otherwise(reasons, Column::FailureReason),
                    );
                batch(update, at, failed)
            });
            if complete.is_none() && fail.is_none() {
                return Ok(Vec::new());
            }
            // One transaction: the batch and its events are stored whole or not at all.
            let txn = self.db.begin().await?;
            let mut settled = Vec::with_capacity(settlements.len());
            for update in [complete, fail].into_iter().flatten() {
                settled.extend(update.exec_with_returning(&txn).await?);
            }
            self.record_events(&txn, &settled, Change::settled).await?;
            txn.commit().await?;
            self.announce_events();
            for voice in &settled {
                self.count_transition(voice);
            }
            Ok(settled)
        })
        .await
    }

    /// Writes `update` to voice `id` as one change, with its event (saying
    /// it was `change`): its
    /// revision goes up by one and `updated_at` becomes `at`. `None` when
    /// the update's guards did not match (the race was lost; nothing changed).
    async fn revise(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        update: UpdateMany<Entity>,
        change: Change,
    ) -> Result<Option<Voice>, DbErr> {
        let txn = self.db.begin().await?;
        let rows = revised(update, at)
            .filter(Column::Id.eq(id))
            .exec_with_returning(&txn)
            .await?;
        let Some(voice) = rows.into_iter().next() else {
            return Ok(None);
        };
        self.record_events(&txn, std::slice::from_ref(&voice), |_| change)
            .await?;
        txn.commit().await?;
        self.announce_events();
        Ok(Some(voice))
    }
}

/// The status engine's decision for one voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Ready at the provider: COMPLETED with what it reported.
    Complete {
        /// Where the provider serves a sample of the voice.
        preview_url: Option<String>,
        /// The provider's labels, if it reported any (stored apart from
        /// the caller's own).
        provider_labels: Option<BTreeMap<String, String>>,
    },
    /// FAILED, with a reason for people.
    Fail(String),
}

/// Adds `WHEN id = <id> THEN <then>` to a per-voice CASE.
fn when(case: Option<CaseStatement>, id: Uuid, then: Expr) -> CaseStatement {
    let condition = Column::Id.eq(id);
    match case {
        Some(case) => case.case(condition, then),
        None => Expr::case(condition, then),
    }
}

/// A per-voice CASE whose other rows keep `column` as it is.
fn otherwise(case: Option<CaseStatement>, column: Column) -> Expr {
    case.map_or_else(
        || Expr::col(column),
        |case| case.finally(Expr::col(column)).into(),
    )
}

/// `update` as a status transition of the voices `ids`, revised at `at`.
fn batch(
    update: UpdateMany<Entity>,
    at: DateTime<Utc>,
    ids: impl IntoIterator<Item = Uuid>,
) -> UpdateMany<Entity> {
    revised(settled(update), at).filter(Column::Id.is_in(ids))
}

/// `update` as one change of each row it matches: its revision goes up by
/// one and `updated_at` becomes `at`.
fn revised(update: UpdateMany<Entity>, at: DateTime<Utc>) -> UpdateMany<Entity> {
    update
        .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
        .col_expr(Column::UpdatedAt, Expr::value(at))
}

/// A voice that leaves PROCESSING has no deadline any more.
fn without_deadline(update: UpdateMany<Entity>) -> UpdateMany<Entity> {
    update.col_expr(
        Column::ProcessingDeadline,
        Expr::value(Option::<DateTime<Utc>>::None),
    )
}

/// A status transition: written only from PROCESSING.
fn settled(update: UpdateMany<Entity>) -> UpdateMany<Entity> {
    without_deadline(update).filter(Column::Status.eq(VoiceStatus::Processing))
}

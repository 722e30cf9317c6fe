//! Webhook endpoints, their deliveries and attempts. Every method an API
//! caller reaches takes the owner and matches it in SQL, so no caller can
//! reach another user's endpoint: it is "not found", as one that does not
//! exist. Deliveries are queued with the outbox's delete, in one transaction
//! (see [`Store::forget_events_and_queue`]), and taken by one replica at a
//! time under a lease.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{
    OwnerLock, Store,
    entity::{
        webhook_attempt as attempt,
        webhook_delivery::{self as delivery, Model as WebhookDelivery},
        webhook_endpoint::{ActiveModel, Column, Entity, Model as WebhookEndpoint},
    },
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
            let txn = self.begin_for_owner(owner, OwnerLock::Endpoints).await?;
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
                failing_since: Set(None),
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
                    .col_expr(Column::DisabledReason, String::new().into())
                    .col_expr(Column::FailingSince, Option::<DateTime<Utc>>::None.into());
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

/// An event the relay is about to take out of the outbox, as endpoints
/// receive it.
#[derive(Debug, Clone)]
pub(crate) struct Owed {
    /// The owner of the voice it is about: whose endpoints receive it.
    pub(crate) owner: Uuid,
    /// The CloudEvents `id`.
    pub(crate) event_id: String,
    /// The CloudEvents `type`.
    pub(crate) event_type: String,
    /// The CloudEvents document.
    pub(crate) payload: String,
}

/// A delivery taken for sending, with where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub(crate) delivery: WebhookDelivery,
    pub(crate) endpoint: WebhookEndpoint,
}

/// How an attempt ended, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Attempted {
    /// The endpoint's answer, if one came.
    pub(crate) http_status: Option<u16>,
    /// How long it took.
    pub(crate) latency: std::time::Duration,
    /// Why it failed, when it did.
    pub(crate) error: Option<String>,
    /// What happens next.
    pub(crate) next: Next,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Answered 2xx: done.
    Delivered,
    /// Tried again at this time.
    RetryAt(DateTime<Utc>),
    /// Given up; `disable` also disables the endpoint, with this reason.
    GiveUp { disable: Option<String> },
}

/// A delivery's states.
pub(crate) const PENDING: &str = "pending";
const DELIVERED: &str = "delivered";
const FAILED: &str = "failed";

impl Store {
    /// Takes outbox events `ids` out of the outbox and, in the same
    /// transaction, queues a delivery of each of `owed` to each enabled
    /// endpoint of its owner that asked for its type (once per endpoint
    /// and event, whoever queues it). Whether any delivery was queued.
    ///
    /// # Errors
    /// A database failure: nothing is taken out or queued, and the relay
    /// publishes the events again.
    pub(crate) async fn forget_events_and_queue(
        &self,
        ids: &[i64],
        owed: &[Owed],
    ) -> Result<bool, DbErr> {
        let rows = self.deliveries_owed(owed).await?;
        if rows.is_empty() {
            self.forget_events(ids).await?;
            return Ok(false);
        }
        self.bounded(async {
            let txn = self.db.begin().await?;
            delivery::Entity::insert_many(rows)
                .on_conflict_do_nothing_on([
                    delivery::Column::EndpointId,
                    delivery::Column::EventId,
                ])
                .exec(&txn)
                .await?;
            super::entity::voice_event::Entity::delete_many()
                .filter(super::entity::voice_event::Column::Id.is_in(ids.iter().copied()))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            self.deliveries_queued.notify_one();
            Ok(true)
        })
        .await
    }

    /// The delivery rows `owed` makes: one per event and enabled endpoint
    /// of its owner that asked for its type.
    async fn deliveries_owed(&self, owed: &[Owed]) -> Result<Vec<delivery::ActiveModel>, DbErr> {
        if owed.is_empty() {
            return Ok(Vec::new());
        }
        let mut owners: Vec<Uuid> = owed.iter().map(|o| o.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        let endpoints = self
            .bounded(async {
                Entity::find()
                    .filter(Column::OwnerUserId.is_in(owners))
                    .filter(Column::Enabled.eq(true))
                    .all(&self.db)
                    .await
            })
            .await?;
        let at = now();
        let mut rows = Vec::new();
        for event in owed {
            for endpoint in endpoints.iter().filter(|e| e.owner_user_id == event.owner) {
                let wanted = endpoint.event_types.is_empty()
                    || endpoint
                        .event_types
                        .split_whitespace()
                        .any(|t| t == event.event_type);
                if wanted {
                    rows.push(pending(endpoint.id, event.clone(), at));
                }
            }
        }
        Ok(rows)
    }

    /// Notified when this process queued deliveries.
    pub(crate) fn deliveries_queued(&self) -> &tokio::sync::Notify {
        &self.deliveries_queued
    }

    /// Takes up to `limit` due deliveries for `lease` (no other replica
    /// takes them meanwhile), each with its endpoint. A delivery whose
    /// endpoint is gone or disabled is given up instead.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn take_due_deliveries(
        &self,
        limit: u64,
        lease: std::time::Duration,
    ) -> Result<Vec<Due>, DbErr> {
        use sea_orm::{QuerySelect, sea_query::Expr};
        self.bounded(async {
            let at = now();
            let until = at + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
            let free = delivery::Column::LeaseUntil
                .is_null()
                .or(delivery::Column::LeaseUntil.lt(at));
            let due: Vec<i64> = delivery::Entity::find()
                .select_only()
                .column(delivery::Column::Id)
                .filter(delivery::Column::State.eq(PENDING))
                .filter(delivery::Column::NextAttemptAt.lte(at))
                .filter(free.clone())
                .order_by_asc(delivery::Column::NextAttemptAt)
                .limit(limit)
                .into_tuple()
                .all(&self.db)
                .await?;
            if due.is_empty() {
                return Ok(Vec::new());
            }
            // The lease condition again: a replica that took some meanwhile wins them.
            let taken = delivery::Entity::update_many()
                .col_expr(delivery::Column::LeaseUntil, Expr::value(Some(until)))
                .filter(delivery::Column::Id.is_in(due))
                .filter(free)
                .exec_with_returning(&self.db)
                .await?;
            let ids: Vec<Uuid> = taken.iter().map(|d| d.endpoint_id).collect();
            let endpoints = Entity::find()
                .filter(Column::Id.is_in(ids))
                .all(&self.db)
                .await?;
            let mut out = Vec::with_capacity(taken.len());
            for delivery in taken {
                match endpoints.iter().find(|e| e.id == delivery.endpoint_id) {
                    Some(endpoint) if endpoint.enabled => out.push(Due {
                        delivery,
                        endpoint: endpoint.clone(),
                    }),
                    _ => {
                        delivery::Entity::update_many()
                            .col_expr(delivery::Column::State, Expr::value(FAILED))
                            .col_expr(
                                delivery::Column::LeaseUntil,
                                Expr::value(Option::<DateTime<Utc>>::None),
                            )
                            .filter(delivery::Column::Id.eq(delivery.id))
                            .exec(&self.db)
                            .await?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Stores how an attempt of `due` ended, and what follows, in one
    /// transaction; an endpoint whose attempts have all failed for longer
    /// than `disable_after` is disabled. Why the endpoint was disabled, if
    /// it was.
    ///
    /// # Errors
    /// A database failure: the delivery's lease runs out and it is sent
    /// again.
    pub(crate) async fn record_attempt(
        &self,
        due: &Due,
        attempted: Attempted,
        disable_after: chrono::Duration,
    ) -> Result<Option<String>, DbErr> {
        use sea_orm::sea_query::Expr;
        self.bounded(async {
            let at = now();
            let txn = self.db.begin().await?;
            attempt::ActiveModel {
                delivery_id: Set(due.delivery.id),
                endpoint_id: Set(due.endpoint.id),
                event_id: Set(due.delivery.event_id.clone()),
                event_type: Set(due.delivery.event_type.clone()),
                at: Set(at),
                http_status: Set(attempted.http_status.map(i32::from)),
                latency_ms: Set(i32::try_from(attempted.latency.as_millis()).unwrap_or(i32::MAX)),
                error: Set(attempted.error),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
            let (state, next_at) = match &attempted.next {
                Next::Delivered => (DELIVERED, due.delivery.next_attempt_at),
                Next::RetryAt(when) => (PENDING, *when),
                Next::GiveUp { .. } => (FAILED, due.delivery.next_attempt_at),
            };
            delivery::Entity::update_many()
                .col_expr(delivery::Column::State, Expr::value(state))
                .col_expr(
                    delivery::Column::Attempts,
                    Expr::col(delivery::Column::Attempts).add(1),
                )
                .col_expr(delivery::Column::NextAttemptAt, Expr::value(next_at))
                .col_expr(
                    delivery::Column::LeaseUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(delivery::Column::Id.eq(due.delivery.id))
                .exec(&txn)
                .await?;
            // The endpoint's run of failures: cleared by a 2xx, started by
            // the first failure after one.
            let failing = Entity::update_many()
                .col_expr(
                    Column::FailingSince,
                    if attempted.next == Next::Delivered {
                        Expr::value(Option::<DateTime<Utc>>::None)
                    } else {
                        Expr::col(Column::FailingSince).if_null(at)
                    },
                )
                .filter(Column::Id.eq(due.endpoint.id))
                .exec_with_returning(&txn)
                .await?;
            let failing_since = failing.first().and_then(|e| e.failing_since);
            let reason = match attempted.next {
                Next::GiveUp {
                    disable: Some(reason),
                } => Some(reason),
                _ => failing_since
                    .filter(|since| at - *since > disable_after)
                    .map(|since| {
                        format!(
                            "every attempt failed since {}",
                            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )
                    }),
            };
            if let Some(reason) = &reason {
                Entity::update_many()
                    .col_expr(Column::Enabled, Expr::value(false))
                    .col_expr(Column::DisabledReason, Expr::value(reason.clone()))
                    .col_expr(Column::UpdatedAt, Expr::value(at))
                    .filter(Column::Id.eq(due.endpoint.id))
                    .filter(Column::Enabled.eq(true))
                    .exec(&txn)
                    .await?;
            }
            txn.commit().await?;
            Ok(reason)
        })
        .await
    }

    /// How many deliveries are pending, and when the next is due.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn pending_deliveries(&self) -> Result<(u64, Option<DateTime<Utc>>), DbErr> {
        use sea_orm::QuerySelect;
        self.bounded(async {
            let row = delivery::Entity::find()
                .select_only()
                .column_as(delivery::Column::Id.count(), "pending")
                .column_as(delivery::Column::NextAttemptAt.min(), "next")
                .filter(delivery::Column::State.eq(PENDING))
                .into_tuple::<(i64, Option<DateTime<Utc>>)>()
                .one(&self.db)
                .await?;
            Ok(row.map_or((0, None), |(pending, next)| {
                (u64::try_from(pending).unwrap_or_default(), next)
            }))
        })
        .await
    }
}

impl Store {
    /// Queues `event` for `owner`'s endpoint `id` alone, whatever the
    /// event types it asked for. `None` if `owner` has no such endpoint;
    /// `Some(false)` if it is disabled.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn queue_test_delivery(
        &self,
        owner: Uuid,
        id: Uuid,
        event: Owed,
    ) -> Result<Option<bool>, DbErr> {
        let Some(endpoint) = self.endpoint(owner, id).await? else {
            return Ok(None);
        };
        if !endpoint.enabled {
            return Ok(Some(false));
        }
        self.bounded(async {
            pending(endpoint.id, event, now()).insert(&self.db).await?;
            self.deliveries_queued.notify_one();
            Ok(Some(true))
        })
        .await
    }

    /// The newest `limit` attempts to `owner`'s endpoint `id`, newest
    /// first; `None` if `owner` has no such endpoint.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn attempts(
        &self,
        owner: Uuid,
        id: Uuid,
        limit: u64,
    ) -> Result<Option<Vec<attempt::Model>>, DbErr> {
        use sea_orm::QuerySelect;
        if self.endpoint(owner, id).await?.is_none() {
            return Ok(None);
        }
        self.bounded(async {
            attempt::Entity::find()
                .filter(attempt::Column::EndpointId.eq(id))
                .order_by_desc(attempt::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await
                .map(Some)
        })
        .await
    }

    /// `owner`'s endpoint `id`, if they have one.
    async fn endpoint(&self, owner: Uuid, id: Uuid) -> Result<Option<WebhookEndpoint>, DbErr> {
        self.bounded(async {
            Entity::find_by_id(id)
                .filter(Column::OwnerUserId.eq(owner))
                .one(&self.db)
                .await
        })
        .await
    }
}

/// A delivery of `event` to endpoint `endpoint_id`, queued at `at` and due
/// at once.
fn pending(endpoint_id: Uuid, event: Owed, at: DateTime<Utc>) -> delivery::ActiveModel {
    delivery::ActiveModel {
        endpoint_id: Set(endpoint_id),
        event_id: Set(event.event_id),
        event_type: Set(event.event_type),
        payload: Set(event.payload),
        state: Set(PENDING.into()),
        attempts: Set(0),
        next_attempt_at: Set(at),
        lease_until: Set(None),
        created_at: Set(at),
        ..Default::default()
    }
}

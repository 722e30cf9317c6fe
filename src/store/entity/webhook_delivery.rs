//! The `webhook_deliveries` table: one event owed to one endpoint.

use sea_orm::entity::prelude::*;

/// One event owed to one endpoint, until it is answered 2xx or given up.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    /// In the order deliveries were queued.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The endpoint it is owed to.
    pub endpoint_id: Uuid,
    /// The CloudEvents `id`: the `webhook-id` of every attempt.
    pub event_id: String,
    /// The CloudEvents `type`.
    pub event_type: String,
    /// The body of every attempt: the CloudEvents document.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the next attempt is due.
    pub next_attempt_at: DateTimeUtc,
    /// Until when the replica that took it is sending it.
    pub lease_until: Option<DateTimeUtc>,
    /// When it was queued.
    pub created_at: DateTimeUtc,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

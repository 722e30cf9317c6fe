//! The `webhook_attempts` table: every attempt to deliver, for the
//! endpoint's owner to read.

use sea_orm::entity::prelude::*;

/// One POST to an endpoint, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_attempts")]
pub struct Model {
    /// In the order attempts were made.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The delivery it was an attempt of.
    pub delivery_id: i64,
    /// The endpoint it was sent to.
    pub endpoint_id: Uuid,
    /// The CloudEvents `id` it carried.
    pub event_id: String,
    /// The CloudEvents `type` it carried.
    pub event_type: String,
    /// When it was made.
    pub at: DateTimeUtc,
    /// The endpoint's answer; `None` if none came.
    pub http_status: Option<i32>,
    /// How long it took.
    pub latency_ms: i32,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! The `voice_events` table: the transactional outbox. A row is an event
//! not yet published; the relay deletes it once the bus has it.

use sea_orm::entity::prelude::*;

/// One stored change of one voice, waiting to be published.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "voice_events")]
pub struct Model {
    /// Outbox order: events are published in this order.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The voice that changed.
    pub voice_id: Uuid,
    /// Its revision after the change.
    pub revision: i64,
    /// The process that stored it (a UUIDv7 made when it connected).
    pub writer: Uuid,
    /// The event as the bus carries it (encoded by `events`; opaque here).
    pub payload: Vec<u8>,
    /// When the change was stored.
    pub created_at: DateTimeUtc,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

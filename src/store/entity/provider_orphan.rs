//! The `provider_orphans` table: provider voices we could neither record nor
//! delete again. Written only on that double failure; read by operators.

use sea_orm::entity::prelude::*;

/// One provider voice that no voicehub row holds.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_orphans")]
pub struct Model {
    /// A UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Which provider holds it (`elevenlabs`).
    pub provider: String,
    /// The provider's id of the voice.
    pub provider_voice_id: String,
    /// The voicehub voice it was created for, when one was reserved.
    pub voice_id: Option<Uuid>,
    /// Why it was left behind.
    pub reason: String,
    /// When it was recorded.
    pub created_at: DateTimeUtc,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! The `voices` table as a SeaORM entity, and the value types stored in it.
//!
//! The row never leaves the process as it is: the API and the event stream
//! send the contract's `voicehub.v1.Voice` (see `pb.rs`), so a new column
//! changes no wire format.
//!
//! Enums are stored as short lowercase strings (not database enums) so the
//! same schema works on SQLite and PostgreSQL and a new variant needs no
//! `ALTER TYPE`.

use std::collections::BTreeMap;

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "voices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub owner_user_id: Uuid,
    pub provider_voice_id: Option<String>,
    pub name: String,
    pub description: String,
    pub language: String,
    pub gender: String,
    pub category: String,
    pub visibility: Visibility,
    pub status: VoiceStatus,
    pub failure_reason: Option<String>,
    pub preview_url: Option<String>,
    #[sea_orm(column_type = "Json")]
    pub labels: Labels,
    pub request_id: Option<String>,
    pub revision: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    pub deleted_at: Option<DateTimeUtc>,
    /// A PROCESSING voice still not done by then is FAILED by the sync engine.
    pub processing_deadline: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Caller-defined labels, stored as a JSON object; a sorted map so they are
/// written the same way every time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct Labels(pub BTreeMap<String, String>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum VoiceStatus {
    #[sea_orm(string_value = "processing")]
    Processing,
    #[sea_orm(string_value = "completed")]
    Completed,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "deleted")]
    Deleted,
}

impl VoiceStatus {
    /// A terminal voice never changes status again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, VoiceStatus::Processing)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Visibility {
    #[sea_orm(string_value = "private")]
    Private,
    #[sea_orm(string_value = "public")]
    Public,
}

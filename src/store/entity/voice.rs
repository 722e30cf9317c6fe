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

/// One voice, as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "voices")]
pub struct Model {
    /// A UUIDv7 assigned by voicehub (time-ordered).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The owner's user id.
    pub owner_user_id: Uuid,
    /// The provider's id; `None` while the create is still at the provider.
    pub provider_voice_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Free text; empty when not set.
    pub description: String,
    /// BCP-47 tag; empty when not set.
    pub language: String,
    /// Free-form; empty when not set.
    pub gender: String,
    /// The provider's category (`cloned` for an instant clone).
    pub category: String,
    /// Who may see it.
    pub visibility: Visibility,
    /// Where it is in its life.
    pub status: VoiceStatus,
    /// Why it FAILED, for people.
    pub failure_reason: Option<String>,
    /// The provider's audio preview, once ready.
    pub preview_url: Option<String>,
    /// The caller's labels, exactly as set on create or update.
    #[sea_orm(column_type = "Json")]
    pub labels: Labels,
    /// The labels the provider reports, read when the voice completes;
    /// never sent to the provider and never changed by callers.
    #[sea_orm(column_type = "Json")]
    pub provider_labels: Labels,
    /// The creator's idempotency key (unique per owner).
    pub request_id: Option<String>,
    /// Starts at 1, increases by one on every change.
    pub revision: i64,
    /// When it was created.
    pub created_at: DateTimeUtc,
    /// When it last changed.
    pub updated_at: DateTimeUtc,
    /// When it became COMPLETED.
    pub completed_at: Option<DateTimeUtc>,
    /// When it was DELETED.
    pub deleted_at: Option<DateTimeUtc>,
    /// A PROCESSING voice still not done by then is FAILED by the status engine.
    pub processing_deadline: Option<DateTimeUtc>,
    /// The stored name, description or labels changed since the provider
    /// last got them: the status engine pushes them.
    pub push_pending: bool,
    /// Until when one pusher holds the voice's push (so pushes of two
    /// revisions never cross at the provider); `None` when nobody does.
    pub push_lease_until: Option<DateTimeUtc>,
    /// When the provider first answered that it does not hold the voice;
    /// cleared when it is seen again. On a FAILED voice: it failed as gone
    /// at the provider (confirmed), so there is nothing there to delete.
    pub provider_missing_since: Option<DateTimeUtc>,
    /// Until when the replica running this voice's create holds it (renewed
    /// while the create waits for the provider or runs): before then nobody
    /// else fails the voice. `None` once the provider accepted it.
    pub create_lease_until: Option<DateTimeUtc>,
    /// A consent was recorded with the voice (in `voice_intakes`).
    pub consent_recorded: bool,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The revision of a reserved voice that nothing has published yet: every
/// published change raises it, so a higher one has been announced.
pub(crate) const RESERVED_REVISION: i64 = 1;

impl Model {
    /// A reservation no event has announced yet: its create is still
    /// running, or ended without an answer nobody has been handed. Its first
    /// event must be `created` (or `failed`, should the create never land),
    /// so it is not open to updates.
    #[must_use]
    pub(crate) fn is_unannounced(&self) -> bool {
        self.provider_voice_id.is_none()
            && self.status == VoiceStatus::Processing
            && self.revision == RESERVED_REVISION
    }
}

/// Caller-defined labels, stored as a JSON object; a sorted map so they are
/// written the same way every time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct Labels(pub BTreeMap<String, String>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
/// Where a voice is in its life.
pub enum VoiceStatus {
    /// Being cloned at the provider.
    #[sea_orm(string_value = "processing")]
    Processing,
    /// Ready to use.
    #[sea_orm(string_value = "completed")]
    Completed,
    /// Will never be ready.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Deleted by its owner; kept for audit, never read.
    #[sea_orm(string_value = "deleted")]
    Deleted,
}

impl VoiceStatus {
    /// A terminal voice never changes status again.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        !matches!(self, VoiceStatus::Processing)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
/// Who may see a voice besides its owner.
pub enum Visibility {
    /// Nobody.
    #[sea_orm(string_value = "private")]
    Private,
    /// Everyone.
    #[sea_orm(string_value = "public")]
    Public,
}

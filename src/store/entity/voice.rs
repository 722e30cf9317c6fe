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

/// A voice row decoded by column position instead of by name: the reads
/// that return many rows (listings, GetVoice's shared read, snapshots)
/// spent a quarter of their CPU finding 26 columns by name in each row.
/// The position is the field's place in [`Model`], which is the order
/// `Entity::find()` selects the columns in (and, with `select_also`, the
/// voice's columns come first); the test below holds the two to each other.
pub(crate) struct ByPosition(pub(crate) Model);

impl sea_orm::FromQueryResult for ByPosition {
    fn from_query_result(res: &QueryResult, _: &str) -> Result<Self, DbErr> {
        let mut at = 0..;
        let mut next = || at.next().unwrap_or_default();
        // Fields are evaluated in the order written: the columns' order.
        Ok(ByPosition(Model {
            id: res.try_get_by_index(next())?,
            owner_user_id: res.try_get_by_index(next())?,
            provider_voice_id: res.try_get_by_index(next())?,
            name: res.try_get_by_index(next())?,
            description: res.try_get_by_index(next())?,
            language: res.try_get_by_index(next())?,
            gender: res.try_get_by_index(next())?,
            category: res.try_get_by_index(next())?,
            visibility: res.try_get_by_index(next())?,
            status: res.try_get_by_index(next())?,
            failure_reason: res.try_get_by_index(next())?,
            preview_url: res.try_get_by_index(next())?,
            labels: res.try_get_by_index(next())?,
            provider_labels: res.try_get_by_index(next())?,
            request_id: res.try_get_by_index(next())?,
            revision: res.try_get_by_index(next())?,
            created_at: res.try_get_by_index(next())?,
            updated_at: res.try_get_by_index(next())?,
            completed_at: res.try_get_by_index(next())?,
            deleted_at: res.try_get_by_index(next())?,
            processing_deadline: res.try_get_by_index(next())?,
            push_pending: res.try_get_by_index(next())?,
            push_lease_until: res.try_get_by_index(next())?,
            provider_missing_since: res.try_get_by_index(next())?,
            create_lease_until: res.try_get_by_index(next())?,
            consent_recorded: res.try_get_by_index(next())?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{
        ActiveModelTrait, Database, EntityTrait, IntoActiveModel, Iterable, QuerySelect,
    };

    use super::*;
    use crate::store::test_voice;

    #[tokio::test]
    async fn decoding_by_position_reads_what_decoding_by_name_reads() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        migration::run(&db).await.unwrap();
        let mut stored = test_voice(Uuid::now_v7(), Visibility::Public, VoiceStatus::Failed);
        // Every optional column set, each to a value of its own.
        let at = |s: i64| stored.created_at + chrono::Duration::seconds(s);
        stored.failure_reason = Some("gone".into());
        stored.preview_url = Some("https://example.com/p.mp3".into());
        stored.provider_labels = Labels([("age".to_owned(), "young".to_owned())].into());
        stored.request_id = Some("req-1".into());
        stored.revision = 7;
        stored.gender = "female".into();
        (stored.updated_at, stored.completed_at, stored.deleted_at) =
            (at(1), Some(at(2)), Some(at(3)));
        stored.processing_deadline = Some(at(4));
        stored.push_lease_until = Some(at(5));
        stored.provider_missing_since = Some(at(6));
        stored.create_lease_until = Some(at(7));
        (stored.push_pending, stored.consent_recorded) = (true, true);
        stored
            .clone()
            .into_active_model()
            .insert(&db)
            .await
            .unwrap();

        let by_name = Entity::find().one(&db).await.unwrap().unwrap();
        let by_position = Entity::find()
            .into_model::<ByPosition>()
            .one(&db)
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(by_name, stored);
        assert_eq!(by_position, stored);
        // The select list is the columns in the fields' order.
        assert_eq!(Column::iter().count(), 26);
        let joined = Entity::find()
            .select_also(super::super::voice_intake::Entity)
            .join(
                sea_orm::JoinType::LeftJoin,
                Entity::belongs_to(super::super::voice_intake::Entity)
                    .from(Column::Id)
                    .to(super::super::voice_intake::Column::VoiceId)
                    .into(),
            )
            .into_model::<ByPosition, super::super::voice_intake::Model>()
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(joined.0.0, stored, "the voice's columns come first");
        assert!(joined.1.is_none());
    }
}

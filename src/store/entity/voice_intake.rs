//! The `voice_intakes` table: what was attested and measured when a voice
//! was created. Append-only (the database refuses UPDATE and DELETE) and
//! without a foreign key: the record outlives the voice.

use sea_orm::entity::prelude::*;

/// One voice's intake record.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "voice_intakes")]
pub struct Model {
    /// The voice it belongs to.
    #[sea_orm(primary_key, auto_increment = false)]
    pub voice_id: Uuid,
    /// Who created the voice.
    pub owner_user_id: Uuid,
    /// When it was written: with the voice's reservation.
    pub recorded_at: DateTimeUtc,
    /// The create's idempotency key, if it had one.
    pub request_id: Option<String>,
    /// The address the create came from, as this replica saw it.
    pub caller_address: Option<String>,
    /// The caller's `user-agent`.
    pub user_agent: Option<String>,
    /// The speaker's name, as attested; `None`: no consent was given.
    pub consent_speaker_name: Option<String>,
    /// `speaker_is_caller`, `speaker_permission` or `licensed`.
    pub consent_basis: Option<String>,
    /// The statement confirmed, as text…
    pub consent_statement_text: Option<String>,
    /// …or as the id of one the operator publishes…
    pub consent_statement_id: Option<String>,
    /// …and its version.
    pub consent_statement_version: Option<String>,
    /// The SHA-256 of evidence kept elsewhere, lowercase hexadecimal.
    pub consent_evidence_sha256: Option<String>,
    /// The sample quality report, as JSON.
    pub sample_report: Option<Json>,
}

/// The table has no relations: it outlives the voice.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

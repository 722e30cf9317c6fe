//! `voice_intakes`: what was attested and measured when a voice was created,
//! one row per voice, written in the transaction that reserves the voice.
//!
//! - The consent the user attested (`consent_*`, null when the operator
//!   does not require consent and none was given), who sent it and from
//!   where (`request_id`, `caller_address`, `user_agent`), and when.
//! - `sample_report`: the sample quality report (JSON).
//!
//! An audit trail: append-only, enforced by the database (a trigger refuses
//! every UPDATE and DELETE), and without a foreign key, so it outlives the
//! voice. `voices.consent_recorded` tells every reader of a voice that a
//! consent is on record without reading this table.

use sea_orm_migration::{
    prelude::*,
    schema::{boolean, json_null, string_null, text_null, timestamp_with_time_zone, uuid},
    sea_orm::DbBackend,
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum VoiceIntakes {
    Table,
    VoiceId,
    OwnerUserId,
    RecordedAt,
    RequestId,
    CallerAddress,
    UserAgent,
    ConsentSpeakerName,
    ConsentBasis,
    ConsentStatementText,
    ConsentStatementId,
    ConsentStatementVersion,
    ConsentEvidenceSha256,
    SampleReport,
}

#[derive(DeriveIden)]
enum Voices {
    Table,
    ConsentRecorded,
}

/// Refuses changes to a written row, on PostgreSQL.
const POSTGRES_APPEND_ONLY: [&str; 2] = [
    "CREATE FUNCTION voice_intakes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN RAISE EXCEPTION 'voice_intakes is append-only'; END $$",
    "CREATE TRIGGER voice_intakes_append_only BEFORE UPDATE OR DELETE ON voice_intakes \
     FOR EACH ROW EXECUTE FUNCTION voice_intakes_append_only()",
];

/// Refuses changes to a written row, on SQLite.
const SQLITE_APPEND_ONLY: [&str; 2] = [
    "CREATE TRIGGER voice_intakes_no_update BEFORE UPDATE ON voice_intakes \
     BEGIN SELECT RAISE(ABORT, 'voice_intakes is append-only'); END",
    "CREATE TRIGGER voice_intakes_no_delete BEFORE DELETE ON voice_intakes \
     BEGIN SELECT RAISE(ABORT, 'voice_intakes is append-only'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(VoiceIntakes::Table)
                    .col(uuid(VoiceIntakes::VoiceId).primary_key())
                    .col(uuid(VoiceIntakes::OwnerUserId))
                    .col(timestamp_with_time_zone(VoiceIntakes::RecordedAt))
                    .col(string_null(VoiceIntakes::RequestId))
                    .col(text_null(VoiceIntakes::CallerAddress))
                    .col(text_null(VoiceIntakes::UserAgent))
                    .col(text_null(VoiceIntakes::ConsentSpeakerName))
                    .col(string_null(VoiceIntakes::ConsentBasis))
                    .col(text_null(VoiceIntakes::ConsentStatementText))
                    .col(string_null(VoiceIntakes::ConsentStatementId))
                    .col(string_null(VoiceIntakes::ConsentStatementVersion))
                    .col(string_null(VoiceIntakes::ConsentEvidenceSha256))
                    .col(json_null(VoiceIntakes::SampleReport))
                    .to_owned(),
            )
            .await?;
        let statements = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES_APPEND_ONLY,
            _ => SQLITE_APPEND_ONLY,
        };
        for statement in statements {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .add_column(boolean(Voices::ConsentRecorded).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .drop_column(Voices::ConsentRecorded)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(VoiceIntakes::Table).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION voice_intakes_append_only()")
                .await?;
        }
        Ok(())
    }
}

//! `voice_events`: the transactional outbox. Every stored change of a voice
//! writes its event here in the same transaction as the change; a relay
//! publishes the events to the event bus and then deletes them, so the
//! table holds only what is not yet published. `writer` names the process
//! that stored the event: each process publishes its own at once, and the
//! others' only when they were left behind.
//!
//! On PostgreSQL an insert also sends `NOTIFY voicehub_events` with the
//! writer's id (delivered only when the transaction commits), so the relays
//! of other replicas learn of events whose own replica died before
//! publishing them.

use sea_orm_migration::{
    prelude::*,
    schema::{big_integer, big_pk_auto, blob, timestamp_with_time_zone, uuid},
    sea_orm::DbBackend,
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum VoiceEvents {
    Table,
    Id,
    VoiceId,
    Revision,
    Writer,
    Payload,
    CreatedAt,
}

const NOTIFY_FUNCTION: &str = "CREATE FUNCTION voicehub_notify_voice_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  -- One notification per writer and transaction: PostgreSQL folds repeats.
  PERFORM pg_notify('voicehub_events', NEW.writer::text);
  RETURN NULL;
END
$$";

const NOTIFY_TRIGGER: &str = "CREATE TRIGGER voice_events_notify
AFTER INSERT ON voice_events
FOR EACH ROW EXECUTE FUNCTION voicehub_notify_voice_events()";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(VoiceEvents::Table)
                    // The outbox order: a later change of a voice commits
                    // after an earlier one (it waits for the row), so its id is higher.
                    .col(big_pk_auto(VoiceEvents::Id))
                    .col(uuid(VoiceEvents::VoiceId))
                    .col(big_integer(VoiceEvents::Revision))
                    .col(uuid(VoiceEvents::Writer))
                    .col(blob(VoiceEvents::Payload))
                    .col(timestamp_with_time_zone(VoiceEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            let db = manager.get_connection();
            db.execute_unprepared(NOTIFY_FUNCTION).await?;
            db.execute_unprepared(NOTIFY_TRIGGER).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(VoiceEvents::Table).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION voicehub_notify_voice_events()")
                .await?;
        }
        Ok(())
    }
}

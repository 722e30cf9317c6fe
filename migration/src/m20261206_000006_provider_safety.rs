//! Provider safety: an installation identity, and two columns that let the
//! status engine tell "not found once" from "gone", and a running create
//! from a lost one.
//!
//! - `installation`: one row, made here once, holding this installation's
//!   id (one database, one installation). Every voice voicehub creates at
//!   the provider carries it as a label, so installations sharing one
//!   provider account never act on each other's voices. A database restored
//!   from a backup keeps its id.
//! - `voices.provider_missing_since`: when the provider first said it does
//!   not hold the voice; cleared when it is seen again. On a FAILED voice it
//!   means "failed as gone at the provider", which nothing deletes.
//! - `voices.create_lease_until`: until when the replica running the
//!   voice's create holds it (renewed while the create waits or runs);
//!   nobody fails a reserved voice before then.
//! - an index on `voices.provider_voice_id`, for the sweep.

use sea_orm_migration::{
    prelude::*,
    schema::{pk_uuid, timestamp_with_time_zone, timestamp_with_time_zone_null},
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Installation {
    Table,
    Id,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Voices {
    Table,
    ProviderVoiceId,
    ProviderMissingSince,
    CreateLeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Installation::Table)
                    .col(pk_uuid(Installation::Id))
                    .col(
                        timestamp_with_time_zone(Installation::CreatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        // Made once: migrations run under a lock, exactly once per database.
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(Installation::Table)
                    .columns([Installation::Id])
                    .values_panic([uuid::Uuid::new_v4().into()])
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per ALTER TABLE.
        for column in [Voices::ProviderMissingSince, Voices::CreateLeaseUntil] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Voices::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        // The sweep asks which voices hold a provider voice before it
        // deletes one, and walks the COMPLETED ones in this order.
        manager
            .create_index(
                Index::create()
                    .name("ix_voices_provider_voice_id")
                    .table(Voices::Table)
                    .col(Voices::ProviderVoiceId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("ix_voices_provider_voice_id").to_owned())
            .await?;
        for column in [Voices::CreateLeaseUntil, Voices::ProviderMissingSince] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Voices::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Installation::Table).to_owned())
            .await
    }
}

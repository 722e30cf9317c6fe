//! `provider_orphans`: provider voices that voicehub created but could not
//! record and could not delete again, kept so an operator (or a later sweep)
//! can clean them up at the provider.

use sea_orm_migration::{
    prelude::*,
    schema::{pk_uuid, string_len, text, timestamp_with_time_zone, uuid_null},
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ProviderOrphans {
    Table,
    Id,
    Provider,
    ProviderVoiceId,
    VoiceId,
    Reason,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProviderOrphans::Table)
                    .col(pk_uuid(ProviderOrphans::Id))
                    .col(string_len(ProviderOrphans::Provider, 32))
                    .col(string_len(ProviderOrphans::ProviderVoiceId, 64))
                    .col(uuid_null(ProviderOrphans::VoiceId))
                    .col(text(ProviderOrphans::Reason))
                    .col(timestamp_with_time_zone(ProviderOrphans::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProviderOrphans::Table).to_owned())
            .await
    }
}

//! `voices.provider_labels`: the labels the provider reports for a voice,
//! kept apart from the caller's own `labels`, which completion no longer
//! touches. Existing rows start with none (`{}`).

use sea_orm_migration::{prelude::*, schema::json};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Voices {
    Table,
    ProviderLabels,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .add_column(json(Voices::ProviderLabels).default("{}"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .drop_column(Voices::ProviderLabels)
                    .to_owned(),
            )
            .await
    }
}

//! `voices.push_pending` and `voices.push_lease_until`: UpdateVoice stores a
//! voice's new name, description or labels and marks the voice
//! `push_pending`; the status engine then pushes the stored values to the
//! provider until it holds them. One pusher at a time holds the voice's
//! push lease (`push_lease_until`), so pushes of different revisions never
//! cross at the provider. Existing rows need no push.

use sea_orm_migration::{
    prelude::*,
    schema::{boolean, timestamp_with_time_zone_null},
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Voices {
    Table,
    PushPending,
    PushLeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .add_column(boolean(Voices::PushPending).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Voices::Table)
                    .add_column(timestamp_with_time_zone_null(Voices::PushLeaseUntil))
                    .to_owned(),
            )
            .await?;
        // Reconciliation finds the voices still to push without a scan: few
        // rows are ever pending, so the index holds only those.
        manager
            .create_index(
                Index::create()
                    .name("ix_voices_push_pending")
                    .table(Voices::Table)
                    .col(Voices::PushPending)
                    .and_where(Expr::col(Voices::PushPending).eq(true))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("ix_voices_push_pending").to_owned())
            .await?;
        for column in [Voices::PushLeaseUntil, Voices::PushPending] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Voices::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

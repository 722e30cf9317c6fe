//! The `voices` table: one row per voice, never physically deleted (DELETED
//! rows are kept for audit), with the indexes of every query the service runs.

use sea_orm_migration::{
    prelude::*,
    schema::{
        big_integer, json, pk_uuid, string_len, string_len_null, text, text_null,
        timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
    },
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Voices {
    Table,
    Id,
    OwnerUserId,
    ProviderVoiceId,
    Name,
    Description,
    Language,
    Gender,
    Category,
    Visibility,
    Status,
    FailureReason,
    PreviewUrl,
    Labels,
    RequestId,
    Revision,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
    DeletedAt,
    ProcessingDeadline,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Voices::Table)
                    .col(pk_uuid(Voices::Id))
                    .col(uuid(Voices::OwnerUserId))
                    .col(string_len_null(Voices::ProviderVoiceId, 64))
                    .col(string_len(Voices::Name, 100))
                    .col(text(Voices::Description))
                    .col(string_len(Voices::Language, 35))
                    .col(string_len(Voices::Gender, 32))
                    .col(string_len(Voices::Category, 32))
                    .col(string_len(Voices::Visibility, 16))
                    .col(string_len(Voices::Status, 16))
                    .col(text_null(Voices::FailureReason))
                    .col(text_null(Voices::PreviewUrl))
                    .col(json(Voices::Labels))
                    .col(string_len_null(Voices::RequestId, 64))
                    .col(big_integer(Voices::Revision))
                    .col(timestamp_with_time_zone(Voices::CreatedAt))
                    .col(timestamp_with_time_zone(Voices::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Voices::CompletedAt))
                    .col(timestamp_with_time_zone_null(Voices::DeletedAt))
                    .col(timestamp_with_time_zone_null(Voices::ProcessingDeadline))
                    .to_owned(),
            )
            .await?;

        // Idempotency keys: NULLs are distinct on both backends, so only set keys collide.
        manager
            .create_index(
                Index::create()
                    .name("ux_voices_owner_request_id")
                    .table(Voices::Table)
                    .col(Voices::OwnerUserId)
                    .col(Voices::RequestId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // ListUserVoices, scope OWNED: the owner's voices in keyset order.
        manager
            .create_index(
                Index::create()
                    .name("ix_voices_owner_created")
                    .table(Voices::Table)
                    .col(Voices::OwnerUserId)
                    .col(Voices::CreatedAt)
                    .col(Voices::Id)
                    .to_owned(),
            )
            .await?;
        // ListUserVoices, scope PUBLIC (and the public half of ALL): same order.
        manager
            .create_index(
                Index::create()
                    .name("ix_voices_visibility_created")
                    .table(Voices::Table)
                    .col(Voices::Visibility)
                    .col(Voices::CreatedAt)
                    .col(Voices::Id)
                    .to_owned(),
            )
            .await?;
        // The sync engine: processing voices, oldest deadline first.
        manager
            .create_index(
                Index::create()
                    .name("ix_voices_status_deadline")
                    .table(Voices::Table)
                    .col(Voices::Status)
                    .col(Voices::ProcessingDeadline)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Voices::Table).to_owned())
            .await
    }
}

//! Webhook endpoints: where a user's voice events are POSTed.
//!
//! - `event_types`: the event types sent, space-separated; empty: all.
//! - `secret`: the signing secret (`whsec_…`); `previous_secret` keeps
//!   signing beside it until `previous_secret_until` after a rotation.
//!   Neither is ever returned by the API after it was made, nor logged.
//! - `disabled_reason`: why voicehub disabled an endpoint (410 Gone,
//!   failing too long); empty when enabled or disabled by its owner.
//! - an index on `owner_user_id`: every request names its caller's.

use sea_orm_migration::{
    prelude::*,
    schema::{
        boolean, pk_uuid, string, string_null, text, timestamp_with_time_zone,
        timestamp_with_time_zone_null, uuid,
    },
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    OwnerUserId,
    Url,
    Description,
    EventTypes,
    Secret,
    PreviousSecret,
    PreviousSecretUntil,
    Enabled,
    DisabledReason,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(pk_uuid(WebhookEndpoints::Id))
                    .col(uuid(WebhookEndpoints::OwnerUserId))
                    .col(text(WebhookEndpoints::Url))
                    .col(text(WebhookEndpoints::Description))
                    .col(text(WebhookEndpoints::EventTypes))
                    .col(string(WebhookEndpoints::Secret))
                    .col(string_null(WebhookEndpoints::PreviousSecret))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::PreviousSecretUntil,
                    ))
                    .col(boolean(WebhookEndpoints::Enabled))
                    .col(text(WebhookEndpoints::DisabledReason))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_endpoints_owner")
                    .table(WebhookEndpoints::Table)
                    .col(WebhookEndpoints::OwnerUserId)
                    .col(WebhookEndpoints::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookEndpoints::Table).to_owned())
            .await
    }
}

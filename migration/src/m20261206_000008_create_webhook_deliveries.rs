//! Webhook deliveries: one row per event and endpoint, written by the relay
//! in the transaction that takes the event out of the outbox, so a stored
//! change reaches each endpoint that wanted it at least once, across
//! crashes. The unique (endpoint, event) pair keeps two relays that publish
//! the same event from queueing it twice.
//!
//! - `state`: `pending` until an attempt is answered 2xx (`delivered`) or
//!   the retries are used up (`failed`).
//! - `next_attempt_at`: when it is due; `lease_until`: until when the
//!   replica that took it is sending it (others leave it alone).
//! - `webhook_attempts`: every attempt, for the endpoint's owner to read.

use sea_orm_migration::{
    prelude::*,
    schema::{
        big_integer, big_pk_auto, integer, integer_null, string, text, text_null,
        timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
    },
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    EndpointId,
    EventId,
    EventType,
    Payload,
    State,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    DeliveryId,
    EndpointId,
    EventId,
    EventType,
    At,
    HttpStatus,
    LatencyMs,
    Error,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(big_pk_auto(WebhookDeliveries::Id))
                    .col(uuid(WebhookDeliveries::EndpointId))
                    .col(string(WebhookDeliveries::EventId))
                    .col(string(WebhookDeliveries::EventType))
                    .col(text(WebhookDeliveries::Payload))
                    .col(string(WebhookDeliveries::State))
                    .col(integer(WebhookDeliveries::Attempts))
                    .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(WebhookDeliveries::LeaseUntil))
                    .col(timestamp_with_time_zone(WebhookDeliveries::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_deliveries_once")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::EndpointId)
                    .col(WebhookDeliveries::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_deliveries_due")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::State)
                    .col(WebhookDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .col(big_pk_auto(WebhookAttempts::Id))
                    .col(big_integer(WebhookAttempts::DeliveryId))
                    .col(uuid(WebhookAttempts::EndpointId))
                    .col(string(WebhookAttempts::EventId))
                    .col(string(WebhookAttempts::EventType))
                    .col(timestamp_with_time_zone(WebhookAttempts::At))
                    .col(integer_null(WebhookAttempts::HttpStatus))
                    .col(integer(WebhookAttempts::LatencyMs))
                    .col(text_null(WebhookAttempts::Error))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_attempts_endpoint")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::EndpointId)
                    .col(WebhookAttempts::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookAttempts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WebhookDeliveries::Table).to_owned())
            .await
    }
}

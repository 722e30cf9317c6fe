//! The `webhook_endpoints` table: where a user's voice events are POSTed.
//! Its secrets are never sent to clients after creation, nor logged.

use sea_orm::entity::prelude::*;

/// One endpoint of one user.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoints")]
pub struct Model {
    /// A UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Whose voices' events it receives.
    pub owner_user_id: Uuid,
    /// Where they are POSTed.
    pub url: String,
    /// For people.
    pub description: String,
    /// The event types sent, space-separated; empty: all.
    pub event_types: String,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// The secret before the last rotation, still signing until
    /// `previous_secret_until`.
    pub previous_secret: Option<String>,
    /// Until when `previous_secret` also signs.
    pub previous_secret_until: Option<DateTimeUtc>,
    /// Whether events are sent.
    pub enabled: bool,
    /// Why voicehub disabled it; empty otherwise.
    pub disabled_reason: String,
    /// When its current run of failed attempts began; `None` after a 2xx.
    pub failing_since: Option<DateTimeUtc>,
    /// When it was made.
    pub created_at: DateTimeUtc,
    /// When it last changed.
    pub updated_at: DateTimeUtc,
}

/// Secrets stay out of logs and panics.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("owner_user_id", &self.owner_user_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .finish_non_exhaustive()
    }
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

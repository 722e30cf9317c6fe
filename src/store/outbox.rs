//! The transactional outbox: the event of every stored change is written in
//! the same transaction as the change (`writes.rs` calls [`Store::record_events`]),
//! so a change is never stored without its event, nor an event sent for a
//! change that was not stored. Each such commit notifies
//! [`Store::events_committed`], in process: the relay wakes on it, so no
//! caller of the store has a wake-up to remember. The relay (`events::Relay`) reads what is
//! pending in outbox order, publishes it, and deletes what the bus took.
//!
//! The payload is opaque here: `events` encodes it (it sits above storage,
//! so it hands its encoder to [`Store::connect`]).
//!
//! On PostgreSQL every insert into the outbox notifies `voicehub_events` at
//! commit (a trigger, so no extra round trip), with the writer's id;
//! [`EventNotifications`] listens, so replicas learn of events another
//! replica stored.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, ExprTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, RuntimeErr, Set,
    sea_query::{Alias, Expr, Query},
};

use super::{
    Store, Voice,
    entity::voice_event::{ActiveModel, Column, Entity, Model as StoredEvent},
    now,
};

/// Turns a voice as just stored, and what the change was, into the bytes
/// of its event.
pub type EventEncoder = fn(&Voice, Change) -> Vec<u8>;

/// What a stored change did to a voice, as its event tells others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// The provider accepted the clone: the voice exists, PROCESSING.
    Created,
    /// The owner changed it (UpdateVoice).
    Updated,
    /// Ready: COMPLETED.
    Completed,
    /// FAILED (never made, too old, or gone at the provider).
    Failed,
    /// Deleted by its owner.
    Deleted,
}

impl Change {
    /// The change of a voice the status engine settled: its new status says
    /// which.
    #[must_use]
    pub fn settled(voice: &Voice) -> Self {
        if voice.status == super::VoiceStatus::Completed {
            Change::Completed
        } else {
            Change::Failed
        }
    }
}

/// Which pending events a pass of the relay takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Those this process stored.
    Mine,
    /// Those this process stored, and those any process stored before the
    /// given time (left behind by a process that died or could not publish).
    MineAndStoredBefore(DateTime<Utc>),
}

/// The PostgreSQL channel the outbox trigger notifies; the payload is the
/// writer's id, so a process can tell its own commits from others'.
const CHANNEL: &str = "voicehub_events";

/// The outbox table as statements name it (how its statements are counted apart).
pub(super) const TABLE: &str = "\"voice_events\"";
/// The outbox table's name.
const TABLE_NAME: &str = "voice_events";

impl Store {
    /// Writes the events of `voices` (each as just stored by a change, and
    /// what `change` says that change was) into the outbox, on `txn`: the
    /// transaction of the change itself.
    pub(super) async fn record_events(
        &self,
        txn: &impl ConnectionTrait,
        voices: &[Voice],
        change: impl Fn(&Voice) -> Change,
    ) -> Result<(), DbErr> {
        if voices.is_empty() {
            return Ok(());
        }
        let at = now();
        let rows = voices.iter().map(|voice| ActiveModel {
            voice_id: Set(voice.id),
            revision: Set(voice.revision),
            writer: Set(self.writer),
            payload: Set((self.encode_event)(voice, change(voice))),
            created_at: Set(at),
            ..ActiveModel::default()
        });
        Entity::insert_many(rows).exec(txn).await.map(drop)
    }

    /// Notified after each commit of this process that wrote events.
    pub(crate) fn events_committed(&self) -> &tokio::sync::Notify {
        &self.events_committed
    }

    /// Tells the relay that a commit wrote events; called right after it.
    pub(super) fn announce_events(&self) {
        self.events_committed.notify_one();
    }

    /// The oldest `limit` events of `which` not yet published, in outbox order.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn pending_events(
        &self,
        which: Pending,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, DbErr> {
        self.bounded(async {
            // Whether `table`'s row is among the events `which` names.
            let named = |table: Alias| {
                let mine = Expr::col((table.clone(), Column::Writer)).eq(self.writer);
                match which {
                    Pending::Mine => mine,
                    Pending::MineAndStoredBefore(at) => {
                        mine.or(Expr::col((table, Column::CreatedAt)).lt(at))
                    }
                }
            };
            // Never a voice's event while an older one of it waits for
            // another relay: the bus would carry its revisions out of order.
            // (The other relay publishes first; this one's next pass, woken
            // by its notification or its retry, takes the rest.)
            let older = Alias::new("older");
            let waits_behind_another = Query::select()
                .expr(Expr::val(1))
                .from_as(Entity, older.clone())
                .and_where(
                    Expr::col((older.clone(), Column::VoiceId)).equals((Entity, Column::VoiceId)),
                )
                .and_where(
                    Expr::col((older.clone(), Column::Id)).lt(Expr::col((Entity, Column::Id))),
                )
                .and_where(named(older).not())
                .to_owned();
            Entity::find()
                .filter(named(Alias::new(TABLE_NAME)))
                .filter(Expr::exists(waits_behind_another).not())
                .order_by_asc(Column::Id)
                .limit(limit)
                .all(&self.db)
                .await
        })
        .await
    }

    /// Deletes published events (by id: an event with a lower id may still
    /// commit after a higher one was read, and must not be deleted unseen).
    ///
    /// # Errors
    /// A database failure; the events are then published again later.
    pub(crate) async fn forget_events(&self, ids: &[i64]) -> Result<(), DbErr> {
        self.bounded(async {
            if ids.is_empty() {
                return Ok(());
            }
            Entity::delete_many()
                .filter(Column::Id.is_in(ids.iter().copied()))
                .exec(&self.db)
                .await
                .map(drop)
        })
        .await
    }

    /// How many events wait to be published.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn event_backlog(&self) -> Result<u64, DbErr> {
        self.bounded(async { Entity::find().count(&self.db).await })
            .await
    }

    /// Listens for events stored by any process (PostgreSQL only; `None`
    /// on SQLite). Holds one connection of the pool while it lives.
    ///
    /// # Errors
    /// The database is unreachable.
    pub(crate) async fn event_notifications(&self) -> Result<Option<EventNotifications>, DbErr> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(conn_err)?;
        listener.listen(CHANNEL).await.map_err(conn_err)?;
        Ok(Some(EventNotifications {
            listener,
            writer: self.writer.to_string(),
        }))
    }
}

fn conn_err(e: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e)))
}

/// What [`EventNotifications::next`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notified {
    /// Some process committed events.
    Events,
    /// The connection was lost and is back: notifications sent meanwhile
    /// are lost, so the outbox should be read.
    Reconnected,
}

/// Notifications of events committed by the other processes on the database.
pub(crate) struct EventNotifications {
    listener: sqlx::postgres::PgListener,
    /// This process's writer id: its own commits are not news.
    writer: String,
}

impl EventNotifications {
    /// Waits for the next notification of another process's commit (or a
    /// reconnect).
    ///
    /// # Errors
    /// The database is unreachable (the next call tries to reconnect).
    pub(crate) async fn next(&mut self) -> Result<Notified, DbErr> {
        loop {
            match self.listener.try_recv().await.map_err(conn_err)? {
                Some(heard) if heard.payload() == self.writer => {}
                Some(_) => return Ok(Notified::Events),
                None => return Ok(Notified::Reconnected),
            }
        }
    }
}

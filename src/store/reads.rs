//! Every query that only reads: single voices, listings, and the batches
//! the status engine and watch streams need. Each runs through
//! [`Store::read`]: within the call bound, and once more on a fresh
//! connection if the first turned out broken.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait, SimpleExpr},
};
use uuid::Uuid;

use super::{
    Intake, Store,
    entity::{
        voice::{ByPosition, Column, Entity, Model as Voice, Visibility, VoiceStatus},
        voice_intake,
    },
};

/// Which voices a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The caller's own voices.
    Owned,
    /// Every user's public voices.
    Public,
    /// The caller's own voices plus every other user's public voices.
    All,
}

/// A position in the newest-first order: listing continues strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The creation time of the last voice seen.
    pub(crate) created_at: DateTime<Utc>,
    /// Its id (ties on `created_at` are broken by id).
    pub(crate) id: Uuid,
}

impl From<&Voice> for Cursor {
    fn from(v: &Voice) -> Self {
        Cursor {
            created_at: v.created_at,
            id: v.id,
        }
    }
}

/// One page of a listing to read.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    /// Who is asking.
    pub(crate) caller: Uuid,
    /// Whose voices.
    pub(crate) scope: Scope,
    /// `None`: every status except DELETED.
    pub(crate) status: Option<VoiceStatus>,
    /// Continue after this position; `None`: from the newest.
    pub(crate) after: Option<Cursor>,
    /// Most voices on the page.
    pub(crate) limit: u64,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// The voices, newest first.
    pub(crate) voices: Vec<Voice>,
    /// Set when more voices follow the last one of this page.
    pub(crate) next: Option<Cursor>,
}

impl Store {
    /// The voices of `ids` with their intake records, as stored: DELETED
    /// and private ones included (GetVoice's shared read applies the rule
    /// of who may see what per caller).
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn get_many_with_intake(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Voice, Option<Intake>)>, DbErr> {
        self.read(|| async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let intake = Entity::belongs_to(voice_intake::Entity)
                .from(Column::Id)
                .to(voice_intake::Column::VoiceId);
            let rows = Entity::find()
                .filter(Column::Id.is_in(ids.iter().copied()))
                .select_also(voice_intake::Entity)
                .join(JoinType::LeftJoin, intake.into())
                .into_model::<ByPosition, voice_intake::Model>()
                .all(&self.db)
                .await?;
            Ok(rows.into_iter().map(|(v, i)| (v.0, i)).collect())
        })
        .await
    }

    /// The intake record of voice `id` (its consent and sample report),
    /// whatever became of the voice.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn intake(&self, id: Uuid) -> Result<Option<Intake>, DbErr> {
        self.read(|| async { voice_intake::Entity::find_by_id(id).one(&self.db).await })
            .await
    }

    /// The owner's voice `id`, unless it is DELETED.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn get_owned(&self, owner: Uuid, id: Uuid) -> Result<Option<Voice>, DbErr> {
        self.read(|| async {
            Entity::find_by_id(id)
                .filter(Column::OwnerUserId.eq(owner))
                .filter(Column::Status.ne(VoiceStatus::Deleted))
                .one(&self.db)
                .await
        })
        .await
    }

    /// The voice a user created with `request_id`, in whatever state.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn find_by_request_id(
        &self,
        owner: Uuid,
        request_id: &str,
    ) -> Result<Option<Voice>, DbErr> {
        self.read(|| async {
            Entity::find()
                .filter(Column::OwnerUserId.eq(owner))
                .filter(Column::RequestId.eq(request_id))
                .one(&self.db)
                .await
        })
        .await
    }

    /// The voices with these ids, whoever owns them, in one query (the
    /// status engine's batch read).
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Voice>, DbErr> {
        self.read(|| async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let rows = Entity::find()
                .filter(Column::Id.is_in(ids.iter().copied()))
                .into_model::<ByPosition>()
                .all(&self.db)
                .await?;
            Ok(rows.into_iter().map(|v| v.0).collect())
        })
        .await
    }

    /// The ids of every voice the status engine still has work for, to
    /// rebuild the due-queue from: PROCESSING, or COMPLETED with a push to
    /// the provider pending.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn unfinished_ids(&self) -> Result<Vec<Uuid>, DbErr> {
        self.read(|| async {
            Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(
                    Column::Status
                        .eq(VoiceStatus::Processing)
                        .or(Column::PushPending
                            .eq(true)
                            .and(Column::Status.eq(VoiceStatus::Completed))),
                )
                .into_tuple()
                .all(&self.db)
                .await
        })
        .await
    }

    /// This installation's id: made once, by the first migration run on
    /// this database, and never changed (a restored backup keeps it).
    ///
    /// # Errors
    /// A database failure, or a database not migrated yet.
    pub async fn installation_id(&self) -> Result<Uuid, DbErr> {
        self.read(|| async {
            let row = self
                .db
                .query_one_raw(sea_orm::Statement::from_string(
                    self.db.get_database_backend(),
                    "SELECT id FROM installation",
                ))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("the installation row".into()))?;
            row.try_get::<Uuid>("", "id")
        })
        .await
    }

    /// Every voice, in any status, that holds one of `provider_voice_ids`.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn holders(&self, provider_voice_ids: &[&str]) -> Result<Vec<Voice>, DbErr> {
        self.read(|| async {
            if provider_voice_ids.is_empty() {
                return Ok(Vec::new());
            }
            Entity::find()
                .filter(Column::ProviderVoiceId.is_in(provider_voice_ids.iter().copied()))
                .all(&self.db)
                .await
        })
        .await
    }

    /// Up to `limit` COMPLETED voices' (id, provider voice id), in provider
    /// voice id order after `after`: the sweep walks them all this way.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn completed_page(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(Uuid, String)>, DbErr> {
        self.read(|| async {
            let mut query = Entity::find()
                .select_only()
                .column(Column::Id)
                .column(Column::ProviderVoiceId)
                .filter(Column::Status.eq(VoiceStatus::Completed))
                .filter(Column::ProviderVoiceId.is_not_null());
            if let Some(after) = after {
                query = query.filter(Column::ProviderVoiceId.gt(after));
            }
            query
                .order_by_asc(Column::ProviderVoiceId)
                .limit(limit)
                .into_tuple()
                .all(&self.db)
                .await
        })
        .await
    }

    /// The PROCESSING voices of each of `owners`, oldest first, in one
    /// query (the snapshots of watch streams opening together).
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn processing_of_many(&self, owners: &[Uuid]) -> Result<Vec<Voice>, DbErr> {
        self.read(|| async {
            if owners.is_empty() {
                return Ok(Vec::new());
            }
            Entity::find()
                .filter(Column::OwnerUserId.is_in(owners.iter().copied()))
                .filter(Column::Status.eq(VoiceStatus::Processing))
                .order_by_asc(Column::CreatedAt)
                .order_by_asc(Column::Id)
                .into_model::<ByPosition>()
                .all(&self.db)
                .await
                .map(|rows| rows.into_iter().map(|v| v.0).collect())
        })
        .await
    }

    /// One page of a listing, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<Page, DbErr> {
        self.read(|| async {
            // One row more than asked tells whether another page follows.
            let fetch = query.limit + 1;
            let mut voices = match query.scope {
                Scope::Owned => {
                    self.list_where(query, Column::OwnerUserId.eq(query.caller), fetch)
                        .await?
                }
                Scope::Public => self.list_where(query, public(), fetch).await?,
                // Two index-ordered reads merged here, rather than one `owner = ? OR
                // public` that the database would have to sort in full for every page.
                Scope::All => {
                    let own = self.list_where(query, Column::OwnerUserId.eq(query.caller), fetch);
                    let others = self.list_where(
                        query,
                        public().and(Column::OwnerUserId.ne(query.caller)),
                        fetch,
                    );
                    let (own, others) = tokio::try_join!(own, others)?;
                    merge_newest_first(own, others)
                }
            };
            let more = voices.len() as u64 > query.limit;
            voices.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
            let next = if more {
                voices.last().map(Cursor::from)
            } else {
                None
            };
            Ok(Page { voices, next })
        })
        .await
    }

    async fn list_where(
        &self,
        query: &ListQuery,
        scope: SimpleExpr,
        fetch: u64,
    ) -> Result<Vec<Voice>, DbErr> {
        let status = match query.status {
            Some(status) => Column::Status.eq(status),
            None => Column::Status.ne(VoiceStatus::Deleted),
        };
        let mut select = Entity::find().filter(scope).filter(status);
        if let Some(after) = query.after {
            // A row-value comparison, so both backends walk the (…, created_at, id) index.
            select = select.filter(
                Expr::tuple([Expr::col(Column::CreatedAt), Expr::col(Column::Id)]).lt(Expr::tuple(
                    [Expr::value(after.created_at), Expr::value(after.id)],
                )),
            );
        }
        let rows = select
            .order_by_desc(Column::CreatedAt)
            .order_by_desc(Column::Id)
            .limit(fetch)
            .into_model::<ByPosition>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|v| v.0).collect())
    }
}

fn public() -> SimpleExpr {
    Column::Visibility.eq(Visibility::Public)
}

/// Merges two newest-first lists into one newest-first list.
fn merge_newest_first(a: Vec<Voice>, b: Vec<Voice>) -> Vec<Voice> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => (x.created_at, x.id) > (y.created_at, y.id),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

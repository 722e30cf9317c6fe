//! The one rule of who may see a voice: its owner, and everyone while it is
//! public. [`may_see`] states it for a voice in hand (watch streams check
//! each event with it); [`audience`] is the same rule as a SQL condition
//! (every read filters with it). The test below holds the two to each other.
//!
//! DELETED is a separate matter: reads never return a DELETED voice
//! ([`visible_to`]), but a watcher who could see a voice is told that it was
//! deleted.

use sea_orm::{ColumnTrait, Condition};
use uuid::Uuid;

use super::entity::voice::{Column, Visibility, VoiceStatus};

/// Whether `caller` may see a voice of `owner` with `visibility`.
#[must_use]
pub(crate) fn may_see(caller: Uuid, owner: Uuid, visibility: Visibility) -> bool {
    owner == caller || visibility == Visibility::Public
}

/// [`may_see`] in SQL.
pub(super) fn audience(caller: Uuid) -> Condition {
    Condition::any()
        .add(Column::OwnerUserId.eq(caller))
        .add(Column::Visibility.eq(Visibility::Public))
}

/// What single-voice reads return: a voice the caller may see, never a DELETED one.
pub(super) fn visible_to(caller: Uuid) -> Condition {
    Condition::all()
        .add(Column::Status.ne(VoiceStatus::Deleted))
        .add(audience(caller))
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, Database, EntityTrait, IntoActiveModel, QueryFilter};

    use super::*;
    use crate::store::{entity::voice::Entity, test_voice};

    #[tokio::test]
    async fn the_sql_condition_and_the_in_memory_rule_agree() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        migration::run(&db).await.unwrap();
        let (caller, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut voices = Vec::new();
        for owner in [caller, other] {
            for visibility in [Visibility::Private, Visibility::Public] {
                let v = test_voice(owner, visibility, VoiceStatus::Completed);
                v.clone().into_active_model().insert(&db).await.unwrap();
                voices.push(v);
            }
        }
        let mut by_sql: Vec<Uuid> = Entity::find()
            .filter(audience(caller))
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        let mut in_memory: Vec<Uuid> = voices
            .iter()
            .filter(|v| may_see(caller, v.owner_user_id, v.visibility))
            .map(|v| v.id)
            .collect();
        by_sql.sort();
        in_memory.sort();
        assert_eq!(by_sql, in_memory);
        assert_eq!(
            in_memory.len(),
            3,
            "own private, own public, other's public"
        );
    }
}

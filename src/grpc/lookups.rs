//! GetVoice's reads, shared: calls in flight together are answered by one
//! query for all their voices ([`super::batcher`]), so at 64 calls in
//! flight the replica sends a few statements, not 64, each with its
//! round trips and its connection's release.
//!
//! No read waits for others: a lone call starts its batch at once, and
//! calls that arrive while [`RUNNING`] batches run are taken by the next
//! one as soon as a batch ends (no lingering). The query reads the voices
//! with their intake records as stored; the rule of who may see what is
//! applied per caller afterwards, as the single-voice read applies it in
//! SQL: a voice the caller may see ([`may_see`]), never a DELETED one, and
//! its intake record (consent, sample report) only for its owner.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sea_orm::DbErr;
use uuid::Uuid;

use super::batcher::{Batcher, Counters, Pace, Reads};
use crate::{
    metrics::{LimitLabel, Metrics},
    store::{Intake, Store, Voice, VoiceStatus, may_see},
};

/// Batches that run at once: two, so one decodes and answers while the
/// next waits for the database, and one slow statement does not hold up
/// every GetVoice.
const RUNNING: usize = 2;

/// The most voices one batch reads: a query of a few hundred ids costs a
/// fraction of a millisecond more than one of a single id.
const BATCH_KEYS: usize = 256;

/// The most calls waiting for a batch; past it calls are shed.
const QUEUED_KEYS: usize = 20_000;

/// One GetVoice: who asks, for which voice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup {
    pub(crate) caller: Uuid,
    pub(crate) id: Uuid,
}

/// A voice as its caller may see it, with its intake record for its owner.
pub(crate) type Found = Option<(Voice, Option<Intake>)>;

/// The shared reads of one replica's GetVoice calls.
pub(crate) type Lookups = Batcher<VoiceLookups>;

/// GetVoice's reads, as [`Lookups`] batches them.
pub(crate) struct VoiceLookups;

/// The replica's [`Lookups`], counted in `metrics`.
pub(crate) fn lookups(store: Store, metrics: &Metrics) -> Arc<Lookups> {
    Batcher::new(
        VoiceLookups,
        store,
        Pace {
            running: RUNNING,
            linger: Duration::ZERO,
            batch_keys: BATCH_KEYS,
            queued_keys: QUEUED_KEYS,
        },
        Counters {
            batches: metrics.lookup_batches.clone(),
            reads: metrics.lookup_reads.clone(),
            refused: metrics
                .limit_refusals
                .get_or_create(&LimitLabel {
                    limit: "get_voice_lookups",
                })
                .clone(),
            busy: "too many GetVoice calls are waiting on this replica",
        },
    )
}

impl Reads for VoiceLookups {
    type Read = Lookup;
    type Answer = Found;

    fn keys(_: &Lookup) -> usize {
        1
    }

    async fn answer(&self, store: &Store, batch: &[&Lookup]) -> Vec<Result<Found, DbErr>> {
        let mut ids: Vec<Uuid> = batch.iter().map(|l| l.id).collect();
        ids.sort_unstable();
        ids.dedup();
        match store.get_many_with_intake(&ids).await {
            Ok(found) => {
                let by_id: HashMap<Uuid, (Voice, Option<Intake>)> =
                    found.into_iter().map(|(v, i)| (v.id, (v, i))).collect();
                batch
                    .iter()
                    .map(|lookup| Ok(as_seen_by(lookup.caller, by_id.get(&lookup.id))))
                    .collect()
            }
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// `stored` as `caller` may see it: the single-voice read's rule.
fn as_seen_by(caller: Uuid, stored: Option<&(Voice, Option<Intake>)>) -> Found {
    let (voice, intake) = stored?;
    if voice.status == VoiceStatus::Deleted
        || !may_see(caller, voice.owner_user_id, voice.visibility)
    {
        return None;
    }
    let intake = intake
        .as_ref()
        .filter(|i| i.owner_user_id == caller)
        .cloned();
    Some((voice.clone(), intake))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Visibility, test_voice};

    fn intake_of(voice: &Voice) -> Intake {
        Intake {
            voice_id: voice.id,
            owner_user_id: voice.owner_user_id,
            recorded_at: voice.created_at,
            request_id: None,
            caller_address: None,
            user_agent: None,
            consent_speaker_name: Some("Ada".into()),
            consent_basis: None,
            consent_statement_text: None,
            consent_statement_id: None,
            consent_statement_version: None,
            consent_evidence_sha256: None,
            sample_report: None,
        }
    }

    #[test]
    fn each_caller_sees_what_the_single_voice_read_would_show() {
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        let private = test_voice(owner, Visibility::Private, VoiceStatus::Completed);
        let public = test_voice(owner, Visibility::Public, VoiceStatus::Processing);
        let deleted = test_voice(owner, Visibility::Public, VoiceStatus::Deleted);
        let stored = |v: &Voice| (v.clone(), Some(intake_of(v)));

        // The owner: every voice but a DELETED one, with its intake record.
        let seen = as_seen_by(owner, Some(&stored(&private))).unwrap();
        assert_eq!(seen.0.id, private.id);
        assert!(seen.1.is_some());
        assert!(as_seen_by(owner, Some(&stored(&deleted))).is_none());
        // Anyone else: public voices only, never the owner's intake record.
        assert!(as_seen_by(other, Some(&stored(&private))).is_none());
        let seen = as_seen_by(other, Some(&stored(&public))).unwrap();
        assert_eq!(seen.0.id, public.id);
        assert!(seen.1.is_none(), "the intake record is the owner's");
        assert!(as_seen_by(other, Some(&stored(&deleted))).is_none());
        assert!(as_seen_by(owner, None).is_none());
    }
}

//! Settling: a step's decisions stored in one transaction with their events
//! (the commit wakes the relay), the queue told what is done and what is due
//! again, and the provider voices of voices that FAILED deleted
//! (compensation). Reconciliation rebuilds the queue from storage at
//! start-up, after data loss, and every reconcile interval.

use super::{Checked, EngineError, Step, Worker};
use crate::error::chain;
use crate::status_engine::COMPLETED_MARK;
use crate::status_engine::delete_many_at_provider;
use crate::store::VoiceStatus;
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use uuid::Uuid;

impl Worker {
    /// The second half of a step: stores the decisions of
    /// [`Worker::check_due`] (one statement per target status), publishes
    /// their events (one pipeline), and hands the claimed voices back to the
    /// queue: rescheduled if still processing, finished otherwise.
    pub(super) async fn settle(&self, checked: Checked) -> Result<Step, EngineError> {
        let Checked {
            mut step,
            mut done,
            settle,
            mut again,
            mut push_again,
        } = checked;
        if step.claimed == 0 {
            return Ok(step);
        }
        match self.store.settle_many(&settle).await {
            Ok(settled) => {
                for voice in &settled {
                    tracing::info!(voice_id = %voice.id, status = ?voice.status, reason = ?voice.failure_reason, "voice status settled");
                    match voice.status {
                        VoiceStatus::Completed => step.completed += 1,
                        _ => step.failed += 1,
                    }
                }
                if step.completed > 0 {
                    self.mark_completed().await;
                }
                // A FAILED voice must not keep a voice slot at the provider.
                let failed: Vec<(Uuid, &str)> = settled
                    .iter()
                    // Failed as gone: nothing there to delete.
                    .filter(|v| {
                        v.status == VoiceStatus::Failed && v.provider_missing_since.is_none()
                    })
                    .filter_map(|v| Some((v.id, v.provider_voice_id.as_deref()?)))
                    .collect();
                delete_many_at_provider(
                    &self.provider,
                    &self.store,
                    &self.coordination,
                    &failed,
                    "the voice FAILED",
                )
                .await;
                // Those not settled are no longer PROCESSING: another check
                // or a delete got there first. Either way, done.
                done.extend(settle.iter().map(|(id, _)| *id));
            }
            Err(e) => {
                tracing::warn!(voices = settle.len(), error = %chain(&e), "could not store status changes; will retry");
                let delay = self.after_failure();
                again.extend(settle.iter().map(|(id, _)| (*id, delay)));
            }
        }
        // A voice whose push is still pending stays on the queue, whatever
        // its check decided.
        for (id, delay) in &mut again {
            if let Some(push) = push_again.remove(id) {
                *delay = (*delay).min(push);
            }
        }
        done.retain(|id| !push_again.contains_key(id));
        again.extend(push_again);
        for (_, delay) in &again {
            step.next_due = Some(step.next_due.map_or(*delay, |d| d.min(*delay)));
        }
        step.rescheduled = again.len();
        let ordered = self.claims.lock().await;
        {
            let mut held = self.held.lock();
            for id in done.iter().chain(again.iter().map(|(id, _)| id)) {
                held.remove(id);
            }
        }
        // One round trip for the whole batch. A failed one is tried again
        // by the next step (the leases running out cover a process that
        // stops meanwhile).
        if let Err(e) = self.queue.reschedule(&again).await {
            tracing::debug!(voices = again.len(), error = %e, "reschedule failed; the next step tries again");
            self.unscheduled.lock().extend(again);
        }
        drop(ordered);
        self.queue.finish(&done).await?;
        Ok(step)
    }

    /// Tells the sweep this installation has COMPLETED voices to watch for
    /// deletion at the provider: once per process, or after data loss.
    pub(super) async fn mark_completed(&self) {
        if self.completed_marked.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.coordination.mark(COMPLETED_MARK).await {
            self.completed_marked.store(false, Ordering::Relaxed);
            tracing::debug!(error = %e, "could not mark COMPLETED voices for the sweep; the next completion tries again");
        }
    }

    pub(super) fn reconcile_due(&self) -> bool {
        if self.queue.take_reconnected() {
            tracing::info!(
                "the due-queue's Redis reconnected: reconciling it with storage (entries a failover lost come back)"
            );
            self.reconcile_needed.store(true, Ordering::Relaxed);
        }
        let mut next = self.next_reconcile.lock();
        let now = Instant::now();
        if self.reconcile_needed.load(Ordering::Relaxed) || now >= *next {
            *next = now + self.config.reconcile_every;
            return true;
        }
        false
    }

    /// Puts every PROCESSING voice on the queue (keeping existing entries'
    /// due times) and sets the marker.
    pub(super) async fn reconcile(&self) -> Result<(), EngineError> {
        // Cleared first: a failure below sets it again via the error path.
        self.reconcile_needed.store(false, Ordering::Relaxed);
        let result = async {
            let ids = self.store.unfinished_ids().await?;
            self.queue.restore(&ids).await?;
            tracing::info!(voices = ids.len(), "due-queue reconciled with storage");
            Ok(())
        }
        .await;
        if result.is_err() {
            self.reconcile_needed.store(true, Ordering::Relaxed);
        }
        result
    }
}

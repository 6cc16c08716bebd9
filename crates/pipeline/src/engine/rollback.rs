//! After a rollback: release what the bad revision held, redrive what it dead-lettered once
//! none of its tasks runs, keep the rollback's report current.

use super::*;

impl Engine {
    /// For recent rollbacks: note when the canary is off the bad revision, release what its
    /// tasks held, redrive what it dead-lettered, and keep the report's numbers current.
    pub(super) fn follow_rollbacks(&self) -> Result<(), PipelineError> {
        let now = self.now_ms() as i64;
        let rollbacks = self.store.lock().unwrap().rollbacks(None)?;
        // Dead letters older than the DLQ's retention are gone: follow rollbacks that long.
        let window = self.spec.queue.dlq_retention.as_millis() as i64;
        for mut rb in rollbacks.into_iter().filter(|r| now - r.at_ms < window) {
            let canary = self.runtime.service("canary");
            let bad_tasks = canary
                .as_ref()
                .map(|s| s.tasks.iter().filter(|t| t.revision == rb.revision).count())
                .unwrap_or(0);
            let mut changed = false;
            if rb.canary_back_ms.is_none() && bad_tasks == 0 {
                rb.canary_back_ms = Some(now - rb.at_ms);
                changed = true;
                let store = self.store.lock().unwrap();
                store.event(
                    Some(rb.execution_id),
                    "canary-back",
                    ACTOR_ENGINE,
                    &format!("no canary task runs {} any more ({} ms after the rollback)", rb.revision, now - rb.at_ms),
                )?;
            }
            let stage_start = self
                .store
                .lock()
                .unwrap()
                .stages(rb.execution_id)?
                .iter()
                .find_map(|s| match parse_kind(s) {
                    StageKind::Deploy { service, .. } if service == "canary" => s.started_ms,
                    _ => None,
                })
                .unwrap_or(rb.at_ms) as u64;
            let telemetry = self.telemetry.consumers(stage_start)?;
            // The canary's tasks of that revision only: a retried release of the same commit
            // may run on the primary now, and its messages are not this rollback's.
            let is_bad = |key: &str| TaskIdentity::parse(key).is_some_and(|id| id.revision == rb.revision && id.service == "canary");
            let bad_keys: Vec<String> = telemetry.iter().filter(|c| is_bad(&c.access_key_id)).map(|c| c.access_key_id.clone()).collect();
            // What the bad revision still holds goes back to the queue now, not after the
            // visibility timeout — once its tasks are gone: a task still finishing a message
            // would otherwise process it while another consumer receives it again. A message
            // a task held when it ended was not processed by it: a failed attempt.
            // Whoever releases them (this, or the release of stopped tasks' messages that may
            // come first), the queue counts them per consumer: the report takes its count.
            let mut released_now = 0;
            if bad_tasks == 0 && !bad_keys.is_empty() {
                released_now = self.queue.release_in_flight(&bad_keys)? as i64;
            }
            let released_before: i64 =
                telemetry.iter().filter(|c| bad_keys.contains(&c.access_key_id)).map(|c| c.released as i64).sum();
            let released = (rb.released + released_now).max(released_before + released_now);
            if released != rb.released {
                rb.released = released;
                changed = true;
            }
            // The bad revision's dead letters go back once its tasks are gone too: redriven
            // while one still runs, a message could be received and failed by it again.
            let ids: Vec<String> = if bad_tasks > 0 {
                Vec::new()
            } else {
                self.queue
                    .dead_letters()?
                    .into_iter()
                    .filter(|d| d.last_receiver.as_deref().is_some_and(is_bad))
                    .map(|d| d.message_id)
                    .collect()
            };
            if !ids.is_empty() {
                let moved = self.queue.redrive(&ids)? as i64;
                rb.redriven += moved;
                changed = true;
                self.store.lock().unwrap().event(
                    Some(rb.execution_id),
                    "redrive",
                    ACTOR_ENGINE,
                    &format!("redrove {moved} message(s) {} dead-lettered back to the queue", rb.revision),
                )?;
            }
            // A failure counts once, whatever happened to the message next: handed back,
            // expired, or still held when the tasks were gone (released by coalmine).
            // Dead-lettering and redriving follow a failure; they are not more of them.
            let (mut received, mut returned, mut expired, mut dead) = (0i64, 0i64, 0i64, 0i64);
            for c in telemetry.iter().filter(|c| bad_keys.contains(&c.access_key_id)) {
                received += c.received as i64;
                returned += c.returned as i64;
                expired += c.expired as i64;
                dead += c.dead_lettered as i64;
            }
            // Counts only grow: the queue forgets a consumer's telemetry half an hour after its
            // last activity, while a rollback is followed for the DLQ's retention.
            let (received, returned, expired, dead) =
                (received.max(rb.received), returned.max(rb.returned), expired.max(rb.expired), dead.max(rb.dead_lettered));
            let failed = returned + expired + rb.released;
            if (received, failed, returned, expired, dead) != (rb.received, rb.failed, rb.returned, rb.expired, rb.dead_lettered) {
                (rb.received, rb.failed, rb.returned, rb.expired, rb.dead_lettered) = (received, failed, returned, expired, dead);
                changed = true;
            }
            // Every message the bad revision dead-lettered is either redriven or still waiting
            // in the DLQ to be; anything else is lost.
            let waiting = self
                .queue
                .dead_letters()?
                .into_iter()
                .filter(|d| d.last_receiver.as_deref().is_some_and(is_bad))
                .count() as i64;
            let lost = (rb.dead_lettered - rb.redriven - waiting).max(0);
            if lost != rb.lost {
                rb.lost = lost;
                changed = true;
            }
            if changed {
                self.store.lock().unwrap().update_rollback(&rb)?;
            }
        }
        Ok(())
    }
}

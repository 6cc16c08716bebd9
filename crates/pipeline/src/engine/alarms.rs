//! The alarms: what the canary and the primary did since the canary was deployed, judged.

use super::*;

impl Engine {
    /// Evaluate the alarms for the execution whose canary is under watch: from the canary
    /// deploy until the primary deploy completes.
    pub(super) fn watch_alarms(&self) -> Result<(), PipelineError> {
        if !self.due(|ls| &mut ls.last_alarm_ms, 500) {
            return Ok(());
        }
        let now = self.now_ms();
        let store = self.store.lock().unwrap();
        let Some(exec) = store.executions_in(status::IN_PROGRESS)?.into_iter().next() else { return Ok(()) };
        if exec.bootstrap {
            return Ok(());
        }
        let stages = store.stages(exec.id)?;
        let Some(primary_rev) = store.kv_get("primary_revision")? else { return Ok(()) };
        drop(store);
        let canary_stage = stages
            .iter()
            .find(|s| matches!(parse_kind(s), StageKind::Deploy { ref service, .. } if service == "canary"));
        let Some(since) = canary_stage.and_then(|s| s.started_ms) else { return Ok(()) };
        let primary_done = stages.iter().any(|s| parse_kind(s).is_primary_deploy() && s.status == status::SUCCEEDED);
        if primary_done {
            return Ok(());
        }
        let obs = self.observe(&exec.revision, &primary_rev, since as u64)?;
        let verdicts = coalmine_analysis::evaluate(&self.spec.alarms, &obs);
        let rows: Vec<VerdictRow> = verdicts
            .iter()
            .map(|v| VerdictRow {
                execution_id: exec.id,
                at_ms: now as i64,
                outcome: v.outcome.as_str().to_string(),
                alarm: v.alarm.clone(),
                reason: v.reason.clone(),
                numbers: serde_json::to_value(&v.numbers).unwrap_or_default(),
            })
            .collect();
        self.store.lock().unwrap().record_verdicts(&rows)?;
        if let Some(failed) = verdicts.iter().find(|v| v.outcome == Outcome::Fail) {
            let reason = format!("alarm {}: {}", failed.alarm, failed.reason);
            let stage = stages.iter().find(|s| s.status == status::IN_PROGRESS).cloned();
            if let Some(stage) = stage {
                self.fail_stage(&exec, &stage, &reason)?;
            }
            self.roll_back(&exec, &reason, &format!("alarm:{}", failed.alarm))?;
        }
        Ok(())
    }

    /// Gather the numbers the analysis judges.
    pub(crate) fn observe(&self, canary_rev: &str, primary_rev: &str, since_ms: u64) -> Result<Observation, PipelineError> {
        let now = self.now_ms();
        let telemetry = self.telemetry.consumers(since_ms)?;
        let mut canary = RevisionSample { revision: canary_rev.into(), ..Default::default() };
        let mut primary = RevisionSample { revision: primary_rev.into(), ..Default::default() };
        let mut keys: HashMap<String, bool> = HashMap::new();
        let mut last_success = [None::<u64>, None];
        for c in &telemetry {
            let Some(id) = TaskIdentity::parse(&c.access_key_id) else { continue };
            let is_canary = if id.service == "canary" && id.revision == canary_rev {
                true
            } else if id.service == "primary" && id.revision == primary_rev {
                false
            } else {
                continue;
            };
            keys.insert(c.access_key_id.clone(), is_canary);
            let sample = if is_canary { &mut canary } else { &mut primary };
            sample.received += c.received;
            sample.succeeded += c.deleted;
            // A failed attempt is a return or an expiry; dead-lettering is what follows one, not
            // another failure. Messages held too long count too (the analysis censors them).
            sample.failed += c.returned + c.expired;
            sample.dead_lettered += c.dead_lettered;
            sample.failures_since_last_success += c.failures_since_success;
            sample.latencies_ms.merge(&c.warm_latencies_ms);
            let ls = &mut last_success[is_canary as usize];
            *ls = (*ls).max(c.last_success_ms);
        }
        primary.last_success_ago_ms = last_success[0].map(|t| now.saturating_sub(t));
        canary.last_success_ago_ms = last_success[1].map(|t| now.saturating_sub(t));
        for m in self.telemetry.in_flight()? {
            if let Some(is_canary) = keys.get(&m.access_key_id) {
                let sample = if *is_canary { &mut canary } else { &mut primary };
                sample.held_ms.push(now.saturating_sub(m.received_at_ms));
            }
        }
        if let Some(st) = self.runtime.service("canary") {
            canary.task_exits = st.exits_by_revision.get(canary_rev).copied().unwrap_or(0);
        }
        // The guidance's DLQ alarm, made canary-aware: it counts the DLQ messages a task of the
        // canary's revision received last (the guidance counts the whole DLQ, so the primary's
        // noise trips it), as a maximum over its period since this canary deploy began.
        let canary_dead = self
            .queue
            .dead_letters()?
            .iter()
            .filter(|d| {
                d.last_receiver
                    .as_deref()
                    .and_then(TaskIdentity::parse)
                    .is_some_and(|id| id.service == "canary" && id.revision == canary_rev)
            })
            .count() as u64;
        let period_ms = self
            .spec
            .alarms
            .iter()
            .find_map(|a| match a {
                coalmine_analysis::AlarmSpec::DlqDepth { period, .. } => Some(period.as_millis() as u64),
                _ => None,
            })
            .unwrap_or(300_000);
        let dlq_depth_max = {
            let mut ls = self.loop_state.lock().unwrap();
            ls.dlq_samples.push((now, canary_dead));
            ls.dlq_samples.retain(|(t, _)| *t + period_ms >= now && *t >= since_ms);
            ls.dlq_samples.iter().map(|(_, d)| *d).max().unwrap_or(0)
        };
        Ok(Observation { now_ms: now, window_ms: now.saturating_sub(since_ms), canary, primary, dlq_depth_max })
    }
}

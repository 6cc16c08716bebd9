//! The services as the store wants them, applied to the runtime.

use super::*;

impl Engine {
    pub(crate) fn spec_tasks(&self, service: &str) -> u32 {
        match service {
            "primary" => self.spec.services.primary.tasks,
            _ => self.spec.services.canary.tasks,
        }
    }

    /// Make the runtime's services match the desired state in the store.
    pub(super) fn reconcile_services(&self) -> Result<(), PipelineError> {
        let store = self.store.lock().unwrap();
        // Rollbacks still under way: revision -> whether an alarm decided it.
        let rollback_revs: HashMap<String, bool> = store
            .rollbacks(None)?
            .into_iter()
            .filter(|r| r.canary_back_ms.is_none())
            .map(|r| (r.revision, r.actor.starts_with("alarm:")))
            .collect();
        for name in ["primary", "canary"] {
            let Some((revision, tasks)) = store.service(name)? else { continue };
            let current = self.runtime.spec(name);
            let same = current
                .as_ref()
                .is_some_and(|c| c.revision.name == revision && c.desired == tasks);
            if same {
                continue;
            }
            // A circuit breaker may have put the service back by itself: accept that as the
            // new desired state rather than fight it.
            if let (Some(c), Some(st)) = (&current, self.runtime.service(name)) {
                let breaker_undid = st
                    .deployments
                    .iter()
                    .rev()
                    .find(|d| d.revision == revision)
                    .is_some_and(|d| d.state == DeploymentState::Failed && d.rolled_back_to.is_some());
                if breaker_undid && c.revision.name != revision {
                    store.set_service(name, &c.revision.name, c.desired)?;
                    store.event(
                        None,
                        "circuit-breaker",
                        ACTOR_ENGINE,
                        &format!("{name} went back to {} by itself after {revision} failed to start", c.revision.name),
                    )?;
                    continue;
                }
            }
            let mut spec = self.service_spec(&store, name, &revision, tasks);
            // Rolling back a canary: stop the bad tasks at once instead of waiting for the
            // replacements to become healthy.
            // When an alarm decided it, the bad tasks get only the short rollback grace.
            let rolling_back = current.as_ref().and_then(|c| rollback_revs.get(&c.revision.name));
            if name == "canary" && rolling_back.is_some() {
                spec.minimum_healthy_percent = 0;
                if rolling_back == Some(&true) {
                    spec.stop_timeout = spec.stop_timeout.min(self.spec.run.rollback_stop_timeout);
                }
            }
            self.runtime.apply(spec)?;
        }
        Ok(())
    }

    pub(super) fn service_spec(&self, store: &Store, name: &str, revision: &str, tasks: u32) -> ServiceSpec {
        // The [run] settings of the revision's own commit, when it carried a coalmine.toml.
        let own = store
            .kv_get(&format!("run:{revision}"))
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<coalmine_spec::RunSpec>(&j).ok());
        let run = own.as_ref().unwrap_or(&self.spec.run);
        // What its build made; a revision built before builds said so: its folder, read now.
        let artifact = store
            .kv_get(&format!("artifact:{revision}"))
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<Artifact>(&j).ok())
            .unwrap_or_else(|| {
                let dir = self.paths.artifacts(revision);
                Artifact::read(&dir).unwrap_or_else(|_| Artifact::folder(dir))
            });
        ServiceSpec {
            name: name.into(),
            revision: RevisionSpec {
                name: revision.into(),
                artifact,
                command: run.command.clone(),
                env: run.env.clone(),
            },
            desired: tasks,
            minimum_healthy_percent: run.minimum_healthy_percent,
            maximum_percent: run.maximum_percent,
            healthy_after: run.healthy_after,
            health_command: run.health_command.clone(),
            stop_timeout: run.stop_timeout,
            circuit_breaker_threshold: None,
            queue: self.queue_env.clone(),
        }
    }
}

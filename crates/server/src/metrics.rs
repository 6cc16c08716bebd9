//! `/metrics` in the Prometheus text exposition format (version 0.0.4). No token: counts
//! only, like most exporters; the server listens on 127.0.0.1 unless `--bind` says otherwise.

use std::fmt::Write;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::sampler::LATENCY_BUCKETS_S;
use crate::AppState;

pub fn router(shared: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(shared)
}

/// Escape a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

async fn metrics(axum::extract::State(s): axum::extract::State<AppState>) -> impl IntoResponse {
    let shared = s.clone();
    let body = tokio::task::spawn_blocking(move || render(&shared)).await.unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// The whole exposition.
pub fn render(s: &crate::Shared) -> String {
    let engine = &s.engine;
    let mut out = String::new();
    let app = esc(&engine.spec().app);

    match engine.summary() {
        Ok(sum) => {
            family(&mut out, "coalmine_executions", "gauge", "Executions of the pipeline by status.");
            for st in coalmine_pipeline::store::status::EXECUTION_ALL {
                let n = sum.executions_by_status.get(st).copied().unwrap_or(0);
                let _ = writeln!(out, "coalmine_executions{{app=\"{app}\",status=\"{st}\"}} {n}");
            }
            family(&mut out, "coalmine_rollbacks_total", "counter", "Rollbacks of the canary, automatic or asked for.");
            let _ = writeln!(out, "coalmine_rollbacks_total{{app=\"{app}\"}} {}", sum.rollbacks);
            family(&mut out, "coalmine_verdicts", "gauge", "Executions whose latest verdict of an alarm had this outcome.");
            for ((alarm, outcome), n) in &sum.verdicts {
                let _ = writeln!(out, "coalmine_verdicts{{app=\"{app}\",alarm=\"{}\",outcome=\"{}\"}} {n}", esc(alarm), esc(outcome));
            }
        }
        Err(e) => {
            let _ = writeln!(out, "# pipeline state unavailable: {}", e.to_string().replace('\n', " "));
        }
    }

    // The current execution's verdicts, with their outcome as a value.
    if let Ok(st) = engine.status() {
        if let Some(ex) = &st.execution {
            family(&mut out, "coalmine_current_execution", "gauge", "The execution in progress (or the newest): its number, by revision and status.");
            let _ = writeln!(
                out,
                "coalmine_current_execution{{app=\"{app}\",revision=\"{}\",status=\"{}\"}} {}",
                esc(&ex.execution.revision),
                esc(ex.execution.status.as_str()),
                ex.execution.id
            );
        }
        family(&mut out, "coalmine_service_tasks", "gauge", "Tasks of a service by revision and state.");
        let mut restarts = Vec::new();
        let mut desired = Vec::new();
        for sv in &st.services {
            let Some(status) = &sv.status else { continue };
            let mut by: std::collections::BTreeMap<(String, String), u64> = Default::default();
            for t in &status.tasks {
                let state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                *by.entry((t.revision.clone(), state)).or_default() += 1;
            }
            for ((rev, state), n) in by {
                let _ = writeln!(out, "coalmine_service_tasks{{service=\"{}\",revision=\"{}\",state=\"{}\"}} {n}", esc(&sv.name), esc(&rev), esc(&state));
            }
            restarts.push((sv.name.clone(), status.tasks.iter().map(|t| t.restarts as u64).sum::<u64>(), status.exits_by_revision.clone()));
            desired.push((sv.name.clone(), status.revision.clone(), status.desired, status.running, status.steady));
        }
        family(&mut out, "coalmine_service_desired_tasks", "gauge", "Tasks a service should run.");
        for (name, rev, d, _, _) in &desired {
            let _ = writeln!(out, "coalmine_service_desired_tasks{{service=\"{}\",revision=\"{}\"}} {d}", esc(name), esc(rev));
        }
        family(&mut out, "coalmine_service_running_tasks", "gauge", "Healthy tasks of a service.");
        for (name, rev, _, r, _) in &desired {
            let _ = writeln!(out, "coalmine_service_running_tasks{{service=\"{}\",revision=\"{}\"}} {r}", esc(name), esc(rev));
        }
        family(&mut out, "coalmine_service_steady", "gauge", "1 when the service's newest deployment completed with every task running.");
        for (name, _, _, _, steady) in &desired {
            let _ = writeln!(out, "coalmine_service_steady{{service=\"{}\"}} {}", esc(name), *steady as u8);
        }
        family(&mut out, "coalmine_task_restarts", "gauge", "Restarts of the current tasks of a service, summed.");
        for (name, n, _) in &restarts {
            let _ = writeln!(out, "coalmine_task_restarts{{service=\"{}\"}} {n}", esc(name));
        }
        family(&mut out, "coalmine_task_exits_total", "counter", "Task exits not asked for, per service and revision.");
        for (name, _, exits) in &restarts {
            for (rev, n) in exits {
                let _ = writeln!(out, "coalmine_task_exits_total{{service=\"{}\",revision=\"{}\"}} {n}", esc(name), esc(rev));
            }
        }
        if let Some(q) = &st.queue {
            let qn = esc(&engine.spec().queue.name);
            let dn = esc(&engine.spec().queue.dlq);
            family(&mut out, "coalmine_queue_messages", "gauge", "Messages in the app's queue and its DLQ by state.");
            for (queue, state, n) in [
                (&qn, "visible", q.visible),
                (&qn, "in_flight", q.in_flight),
                (&qn, "delayed", q.delayed),
                (&dn, "visible", q.dlq_visible),
                (&dn, "in_flight", q.dlq_in_flight),
            ] {
                let _ = writeln!(out, "coalmine_queue_messages{{queue=\"{queue}\",state=\"{state}\"}} {n}");
            }
            family(&mut out, "coalmine_queue_oldest_message_age_seconds", "gauge", "Age of the oldest message in the app's queue.");
            if !q.lacks.iter().any(|l| l.starts_with("oldest_age_ms")) {
                let _ = writeln!(out, "coalmine_queue_oldest_message_age_seconds{{queue=\"{qn}\"}} {}", q.oldest_age_ms as f64 / 1000.0);
            }
        }
    }

    // Per revision, from the queue's telemetry, since this server started.
    let totals = s.series.lock().unwrap().totals.clone();
    for (name, help, get) in [
        ("coalmine_messages_received_total", "Messages received by the tasks of a service and revision.", (|t: &crate::sampler::Totals| t.received) as fn(&crate::sampler::Totals) -> u64),
        ("coalmine_messages_processed_total", "Messages processed successfully (deleted) by a service and revision.", |t| t.processed),
        ("coalmine_messages_failed_total", "Messages returned to the queue or let expire by a service and revision.", |t| t.failed),
        ("coalmine_messages_dead_lettered_total", "Messages moved to the DLQ after their last receive by a service and revision.", |t| t.dead_lettered),
    ] {
        family(&mut out, name, "counter", help);
        for ((service, revision), t) in &totals {
            let _ = writeln!(out, "{name}{{service=\"{}\",revision=\"{}\"}} {}", esc(service), esc(revision), get(t));
        }
    }
    family(&mut out, "coalmine_processing_seconds", "histogram", "Receive-to-delete time of processed messages.");
    for ((service, revision), t) in &totals {
        let labels = format!("service=\"{}\",revision=\"{}\"", esc(service), esc(revision));
        let mut cum = 0;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            cum += t.buckets[i];
            let _ = writeln!(out, "coalmine_processing_seconds_bucket{{{labels},le=\"{le}\"}} {cum}");
        }
        cum += t.buckets[LATENCY_BUCKETS_S.len()];
        let _ = writeln!(out, "coalmine_processing_seconds_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "coalmine_processing_seconds_sum{{{labels}}} {}", t.latency_sum_s);
        let _ = writeln!(out, "coalmine_processing_seconds_count{{{labels}}} {cum}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! Prometheus metrics of the broker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Metrics {
    /// action -> outcome -> count (looked up by `&str`: no allocation per request)
    requests: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
}

impl Metrics {
    pub(crate) fn count(&self, action: &str, outcome: &'static str) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get_mut(action).and_then(|o| o.get_mut(outcome)) {
            *c += 1;
        } else {
            // only SQS's own actions get a series: made-up names would grow the map without end
            let action = if action == "unknown" || crate::protocol::query::action_names().any(|a| a == action) { action } else { "invalid" };
            *m.entry(action.to_string()).or_default().entry(outcome).or_insert(0) += 1;
        }
    }

    pub(crate) fn render(&self, depth: &[(String, usize, usize, usize)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP coalmine_queue_requests_total SQS requests by action and outcome (ok or the error code).\n");
        out.push_str("# TYPE coalmine_queue_requests_total counter\n");
        for (a, outcomes) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (o, c) in outcomes {
                let _ = writeln!(out, "coalmine_queue_requests_total{{action=\"{a}\",outcome=\"{o}\"}} {c}");
            }
        }
        out.push_str("# HELP coalmine_queue_messages Messages by queue and state.\n");
        out.push_str("# TYPE coalmine_queue_messages gauge\n");
        for (q, visible, inflight, delayed) in depth {
            for (state, n) in [("visible", visible), ("in_flight", inflight), ("delayed", delayed)] {
                let _ = writeln!(out, "coalmine_queue_messages{{queue=\"{q}\",state=\"{state}\"}} {n}");
            }
        }
        out
    }
}

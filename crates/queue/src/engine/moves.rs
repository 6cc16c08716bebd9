//! Message move tasks (StartMessageMoveTask and the tasks' steps).

use super::*;

impl Broker {
    pub(super) fn start_move_task(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let src_arn = req_str(req, "SourceArn")?;
        let rate = int_range(req, "MaxNumberOfMessagesPerSecond", 1, 500)?.map(|r| r as u64);
        let mut st = self.lock();
        let src = name_from_arn(src_arn)
            .filter(|n| st.queues.contains_key(*n))
            .ok_or_else(|| SqsError::resource_not_found(format!("The resource {src_arn} does not exist.")))?
            .to_string();
        if !st.queues.values().any(|q| q.redrive.as_ref().is_some_and(|r| r.0 == src)) {
            return Err(SqsError::invalid_parameter(format!(
                "Source queue {src} must be configured as a dead-letter queue of some queue."
            )));
        }
        let dest = match s(req, "DestinationArn") {
            Some(d) => Some(
                name_from_arn(d)
                    .filter(|n| st.queues.contains_key(*n))
                    .ok_or_else(|| SqsError::resource_not_found(format!("The resource {d} does not exist.")))?
                    .to_string(),
            ),
            None => None,
        };
        if st.tasks.iter().any(|t| t.source == src && t.status == "RUNNING") {
            return Err(SqsError::invalid_parameter(format!("There is already a running message move task for {src}.")));
        }
        let to_move = st.queues[&src].msgs.len() as u64;
        let handle = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{src}", rand::random::<u64>()));
        st.tasks.push(MoveTask { handle: handle.clone(), source: src, dest, rate, status: "RUNNING", moved: 0, to_move, started_ms: ctx.now_ms });
        // ListMessageMoveTasks shows at most the 10 most recent tasks of a source: older
        // finished ones are forgotten rather than kept without end
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut keep: Vec<bool> = st
            .tasks
            .iter()
            .rev()
            .map(|t| {
                let n = seen.entry(t.source.clone()).or_insert(0);
                *n += 1;
                t.status == "RUNNING" || *n <= 10
            })
            .collect();
        keep.reverse();
        let mut i = 0;
        st.tasks.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        Ok(json!({"TaskHandle": handle}))
    }

    /// Advance running move tasks; returns whether any still runs.
    pub(super) fn step_move_tasks(&self, budget_per_task: u64) -> bool {
        let mut st = self.lock();
        let now = now_ms();
        let mut ops = Vec::new();
        let mut running = false;
        let n_tasks = st.tasks.len();
        for i in 0..n_tasks {
            if st.tasks[i].status != "RUNNING" {
                continue;
            }
            let t = st.tasks[i].clone();
            let limit = t.rate.map(|r| r.min(budget_per_task)).unwrap_or(u64::MAX).min(t.to_move - t.moved);
            let State { queues, telemetry, .. } = &mut *st;
            let Some(q) = queues.get_mut(&t.source) else {
                st.tasks[i].status = "FAILED";
                continue;
            };
            q.promote(now, telemetry);
            let seqs: Vec<u64> = q.ready.iter().copied().take(limit as usize).collect();
            let mut moved = 0;
            for seq in seqs {
                let q = queues.get_mut(&t.source).expect("present");
                let Some(src_name) = t.dest.clone().or_else(|| q.msgs[&seq].extra.as_ref().and_then(|e| e.dl_source.clone())) else {
                    continue;
                };
                if !queues.contains_key(&src_name) {
                    continue;
                }
                let q = queues.get_mut(&t.source).expect("present");
                let mut m = q.take(seq).expect("present");
                m.recv_count = 0;
                m.visible_at = now;
                m.nonce = 0;
                let d = queues.get_mut(&src_name).expect("present");
                ops.push(Op::Put(Box::new(m.row(seq, d.name.clone()))));
                d.insert(seq, m, now);
                d.notify.notify_one();
                moved += 1;
            }
            let task = &mut st.tasks[i];
            task.moved += moved;
            if task.moved >= task.to_move || moved == 0 {
                task.status = "COMPLETED";
            } else {
                running = true;
            }
        }
        self.inner.store.submit(ops);
        running
    }

    pub(super) fn spawn_move_tasks(&self) {
        let b = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !b.step_move_tasks(u64::MAX) {
                    break;
                }
            }
        });
    }
}

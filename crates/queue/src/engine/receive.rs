//! ReceiveMessage: one pass over a queue, and the long poll around it.

use super::*;

impl Broker {
    pub(super) fn receive_once(&self, st: &mut State, name: &str, p: &RecvParams, ctx: &mut Ctx) -> Result<Vec<Received>, SqsError> {
        let now = ctx.now_ms;
        let kid = ctx.key_id();
        let key = kid.get().unwrap_or_else(|| ctx.access_key.clone());
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let redrive = q.redrive.clone().filter(|(dlq, _)| dlq != name && queues.contains_key(dlq));
        let q = queues.get_mut(name).expect("queue present");
        let vis = p.visibility.unwrap_or(q.visibility_s);
        let mut ops = Vec::new();
        let mut out = Vec::new();
        let mut to_dlq: Vec<(u64, Msg)> = Vec::new();
        // candidates in order
        let candidates: Vec<u64> = if q.fifo {
            let locked: HashSet<Arc<str>> = q.group_inflight.keys().cloned().collect();
            q.ready
                .iter()
                .copied()
                .filter(|seq| q.msgs.get(seq).and_then(|m| m.group()).is_none_or(|g| !locked.contains(g)))
                .collect()
        } else {
            q.ready.iter().copied().take(p.max + 64).collect()
        };
        // A retried FIFO receive (same ReceiveRequestAttemptId within 5 minutes) gets the same
        // messages and receipt handles, as long as they are still in flight with them.
        if let (true, Some(attempt)) = (q.fifo, &p.attempt) {
            q.attempts.retain(|_, (exp, _)| *exp > now);
            if let Some((_, got)) = q.attempts.get(attempt) {
                let same = got.iter().all(|(seq, nonce)| q.msgs.get(seq).is_some_and(|m| m.nonce == *nonce));
                if same {
                    return Ok(got.iter().map(|(seq, _)| render_message(&q.msgs[seq], *seq, p, self.region(), self.account(), true)).collect());
                }
            }
        }
        if q.inflight >= self.inner.cfg.max_in_flight && !q.ready.is_empty() {
            return Err(SqsError::over_limit(q.inflight));
        }
        let mut received: Vec<(u64, u32)> = Vec::new();
        for seq in candidates {
            if q.inflight >= self.inner.cfg.max_in_flight {
                break;
            }
            if out.len() >= p.max {
                break;
            }
            let Some(m) = q.msgs.get(&seq) else {
                q.ready.remove(&seq);
                continue;
            };
            if m.sent_ms + q.retention_ms <= now {
                q.take(seq);
                ops.push(Op::Del(seq));
                continue;
            }
            if let Some((_, max)) = &redrive {
                if m.recv_count >= *max {
                    let m = q.take(seq).expect("present");
                    to_dlq.push((seq, m));
                    continue;
                }
            }
            q.ready.remove(&seq);
            let m = q.msgs.get_mut(&seq).expect("present");
            m.recv_count += 1;
            if m.first_recv == 0 {
                m.set_first_recv_ms(now);
            }
            m.nonce = loop {
                let n: u32 = rand::random();
                if n != 0 {
                    break n;
                }
            };
            m.receiver = kid.clone();
            m.received_at = now;
            m.visible_at = now + vis * 1000;
            let m = &q.msgs[&seq];
            q.pending.insert((m.visible_at, seq));
            q.inflight += 1;
            if let Some(g) = m.group() {
                *q.group_inflight.entry(g.clone()).or_insert(0) += 1;
            }
            ops.push(m.state_op(seq));
            received.push((seq, m.nonce));
            out.push(render_message(m, seq, p, self.region(), self.account(), q.fifo));
        }
        if !received.is_empty() {
            telemetry.record(name, &key, now, Event::Received { n: received.len() as u64 });
        }
        if let (true, Some(attempt), false) = (q.fifo, &p.attempt, received.is_empty()) {
            // (an attempt that received nothing is not remembered: its retry may receive)
            q.attempts.insert(attempt.clone(), (now + 300_000, received));
        }
        if let Some((dlq_name, _)) = redrive {
            for (seq, mut m) in to_dlq {
                if let Some(r) = m.receiver.get() {
                    telemetry.record(name, &r, now, Event::DeadLettered);
                }
                let e = m.extra.get_or_insert_with(|| {
                    Box::new(Extra { attrs: None, sys_attrs: None, group: None, dedup_id: None, seqnum: 0, dl_source: None, dl_moved_at: 0 })
                });
                e.dl_source = Some(name.to_string());
                e.dl_moved_at = now;
                m.nonce = 0;
                m.visible_at = now;
                let dlq = queues.get_mut(&dlq_name).expect("dlq present");
                ops.push(Op::Put(Box::new(m.row(seq, dlq.name.clone()))));
                tracing::debug!(queue = %name, dlq = %dlq_name, "message moved to the dead-letter queue");
                dlq.insert(seq, m, now);
                dlq.notify.notify_one();
            }
        }
        if ops.iter().all(|op| matches!(op, Op::State { .. })) {
            // Who holds the messages until when is committed with the next group, without
            // waiting for it: were it lost (the process killed within the millisecond, or the
            // disk failing that commit), the messages are merely delivered again, as after a
            // visibility timeout — at least once, as SQS promises. Moves to a dead-letter
            // queue are waited for like any other change.
            self.inner.store.submit(ops);
        } else {
            self.submit(ctx, ops);
        }
        Ok(out)
    }

    /// ReceiveMessage with long polling: answers as soon as a message is available or the
    /// wait time is over.
    pub(crate) async fn receive(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let p = parse_receive(req)?;
        let name = self.queue_of(req)?;
        self.receive_with(&p, &name, ctx).await.map(|r| to_value(&r))
    }

    pub(super) async fn receive_with(&self, p: &RecvParams, name: &str, ctx: &mut Ctx) -> Result<ReceiveOut, SqsError> {
        let start = std::time::Instant::now();
        let (notify, default_wait) = {
            let mut st = self.lock();
            let q = st.queue(name)?;
            (q.notify.clone(), q.wait_s)
        };
        let wait = p.wait.unwrap_or(default_wait);
        let deadline = start + std::time::Duration::from_secs(wait);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ctx.now_ms = now_ms();
            let (msgs, next_wake) = {
                let mut st = self.lock();
                let msgs = self.receive_once(&mut st, name, p, ctx)?;
                if !msgs.is_empty() {
                    Self::wake_one(&st, name);
                }
                let nw = st.queues.get(name).and_then(|q| q.next_wake());
                (msgs, nw)
            };
            let now_i = std::time::Instant::now();
            if !msgs.is_empty() || now_i >= deadline {
                return Ok(ReceiveOut { messages: msgs });
            }
            let mut until = deadline;
            if let Some(t) = next_wake {
                let wake = now_i + std::time::Duration::from_millis(t.saturating_sub(ctx.now_ms) + 1);
                until = until.min(wake);
            }
            let waiting = WaitingGuard::new(&self.inner.polls_waiting);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            drop(waiting);
        }
    }
}

//! DeleteMessage(Batch) and ChangeMessageVisibility: what a consumer does with what it holds.

use super::*;

impl Broker {
    pub(super) fn delete_single(&self, name: &str, h: &str, ctx: &mut Ctx) -> Result<(), SqsError> {
        let mut st = self.lock();
        let mut ops = Vec::new();
        let r = Self::delete_one(&mut st, name, h, ctx, &mut ops);
        self.submit(ctx, ops);
        r
    }

    pub(super) fn delete_batch<'a>(&self, name: &str, entries: Vec<(&'a str, Result<&str, SqsError>)>, ctx: &mut Ctx) -> Result<BatchOut<Done<'a>>, SqsError> {
        let mut st = self.lock();
        st.queue(name)?;
        let (mut ok, mut bad, mut ops) = (Vec::with_capacity(entries.len()), Vec::new(), Vec::with_capacity(entries.len()));
        for (id, h) in entries {
            match h.and_then(|h| Self::delete_one(&mut st, name, h, ctx, &mut ops)) {
                Ok(()) => ok.push(Done { id }),
                Err(e) => bad.push(Failed::new(id, &e)),
            }
        }
        self.submit(ctx, ops);
        Ok(BatchOut { successful: ok, failed: bad })
    }

    /// Wake one long poll of queue `name` when it has visible messages; a receiver that
    /// leaves messages behind wakes the next one.
    pub(super) fn visibility_single(&self, name: &str, h: &str, t: i64, ctx: &mut Ctx) -> Result<(), SqsError> {
        let mut st = self.lock();
        let mut ops = Vec::new();
        let r = Self::change_visibility(&mut st, name, h, t, ctx, &mut ops);
        self.submit(ctx, ops);
        r
    }

    /// ChangeMessageVisibilityBatch: each entry on its own; what failed is listed, not raised.
    pub(super) fn visibility_batch(&self, name: &str, entries: &[Value], ctx: &mut Ctx) -> Result<Value, SqsError> {
        let mut st = self.lock();
        st.queue(name)?;
        let (mut ok, mut bad, mut ops) = (Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            let id = s(e, "Id").unwrap_or("");
            let r = req_str(e, "ReceiptHandle").and_then(|h| {
                let t = int(e, "VisibilityTimeout")?.ok_or_else(|| SqsError::missing_parameter("VisibilityTimeout"))?;
                Self::change_visibility(&mut st, name, h, t, ctx, &mut ops)
            });
            match r {
                Ok(()) => ok.push(json!({"Id": id})),
                Err(e) => bad.push(failed(id, &e)),
            }
        }
        self.submit(ctx, ops);
        Ok(json!({"Successful": ok, "Failed": bad}))
    }

    pub(super) fn wake_one(st: &State, name: &str) {
        if let Some(q) = st.queues.get(name) {
            if !q.ready.is_empty() {
                q.notify.notify_one();
            }
        }
    }

    pub(super) fn delete_one(st: &mut State, name: &str, h: &str, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<(), SqsError> {
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        let (seq, nonce) = parse_receipt(h)?;
        q.promote(ctx.now_ms, telemetry);
        let Some(m) = q.msgs.get(&seq) else { return Ok(()) };
        if m.nonce != nonce {
            // Not the current receipt. Its visibility ran out and nobody received the message
            // since: SQS deletes it all the same (a standard queue), or says the handle has
            // expired (FIFO). Received again since: the old handle deletes nothing.
            if m.nonce == 0 && m.last_nonce == nonce {
                if q.fifo {
                    return Err(SqsError::receipt_handle_expired());
                }
            } else {
                return Ok(());
            }
        }
        let m = q.take(seq).expect("message present");
        if let Some(r) = m.receiver.get() {
            let latency_us = ctx.now_ms.saturating_sub(m.received_at) * 1000;
            telemetry.record(name, &r, ctx.now_ms, Event::Deleted { latency_us });
        }
        ops.push(Op::Del(seq));
        Ok(())
    }

    pub(super) fn change_visibility(st: &mut State, name: &str, h: &str, t: i64, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<(), SqsError> {
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        if !(0..=43_200).contains(&t) {
            return Err(SqsError::invalid_parameter(format!(
                "Value {t} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200, if provided."
            )));
        }
        let (seq, nonce) = parse_receipt(h)?;
        let now = ctx.now_ms;
        q.promote(now, telemetry);
        let Some(m) = q.msgs.get_mut(&seq) else { return Err(bad_receipt_visibility(h)) };
        if m.nonce == 0 {
            if m.last_nonce != nonce || m.last_nonce == 0 {
                return Err(SqsError::message_not_inflight());
            }
            // The latest receipt, whose visibility ran out with nobody receiving the message
            // since. SQS answers 200 (FIFO: the handle has expired); the SQS API reference does
            // not say what happens to the message: here a timeout above 0 hands it back to the
            // holder of the handle, as if its visibility had not run out.
            if q.fifo {
                return Err(SqsError::receipt_handle_expired());
            }
            if t > 0 {
                if now + t as u64 * 1000 > m.received_at + MAX_VISIBILITY_MS {
                    return Err(visibility_beyond_limit(t));
                }
                let mut m = q.take(seq).expect("message present");
                m.nonce = m.last_nonce;
                m.visible_at = now + t as u64 * 1000;
                q.insert(seq, m, now);
                ops.push(q.msgs[&seq].state_op(seq));
            }
            return Ok(());
        }
        if m.nonce != nonce {
            return Err(bad_receipt_visibility(h));
        }
        if t == 0 {
            let receiver = m.receiver.get();
            q.make_visible(seq, now);
            if let Some(r) = receiver {
                telemetry.record(name, &r, now, Event::Returned);
            }
            q.notify.notify_one();
        } else {
            if now + t as u64 * 1000 > m.received_at + MAX_VISIBILITY_MS {
                return Err(visibility_beyond_limit(t));
            }
            q.pending.remove(&(m.visible_at, seq));
            m.visible_at = now + t as u64 * 1000;
            q.pending.insert((m.visible_at, seq));
        }
        ops.push(q.msgs[&seq].state_op(seq));
        Ok(())
    }
}

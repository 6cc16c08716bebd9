//! SendMessage and SendMessageBatch.

use super::*;

impl Broker {
    /// Validate and enqueue one message. `req` is a SendMessage request or batch entry.
    pub(super) fn send_one(&self, st: &mut State, name: &str, a: SendArgs<'_>, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<Sent<'static>, SqsError> {
        let body = a.body?;
        check_body(body)?;
        let attrs = a.attrs?.filter(|m| !m.is_empty()).cloned();
        let sys_attrs = a.sys_attrs.filter(|m| !m.is_empty()).cloned();
        let attr_size = attrs.as_ref().map(|a| check_message_attributes(a, false)).transpose()?.unwrap_or(0);
        if let Some(sa) = &sys_attrs {
            check_message_attributes(sa, true)?;
        }
        let delay = a.delay?;
        let group = a.group;
        let dedup = a.dedup;
        let sender = ctx.key_id();
        let State { queues, next_seq, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        let size = body.len() + attr_size;
        if size > q.max_size {
            return Err(SqsError::invalid_parameter(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
                q.max_size
            )));
        }
        let now = ctx.now_ms;
        let md5 = crate::digest::md5(body.as_bytes());
        let md5_body = crate::digest::hex16(&md5);
        let md5_attrs = attrs.as_ref().and_then(md5_of_attributes);
        let md5_sys = sys_attrs.as_ref().and_then(md5_of_attributes);
        let mut extra = None;
        let delay_s;
        if q.fifo {
            if delay.is_some_and(|d| d > 0) {
                return Err(SqsError::invalid_parameter(
                    "Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type (FIFO queues support only a queue-level delay).",
                ));
            }
            let g = group.ok_or_else(|| SqsError::missing_parameter("MessageGroupId"))?;
            let id_ok = |v: &str| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic());
            if !id_ok(g) {
                return Err(SqsError::invalid_parameter(format!("Value {g} for parameter MessageGroupId is invalid: use 1 to 128 printable ASCII characters.")));
            }
            let d = match dedup {
                Some(d) if id_ok(d) => d.to_string(),
                Some(d) => {
                    return Err(SqsError::invalid_parameter(format!(
                        "Value {d} for parameter MessageDeduplicationId is invalid: use 1 to 128 printable ASCII characters."
                    )))
                }
                None if q.content_dedup() => {
                    crate::digest::hex(&sha256(body.as_bytes()))
                }
                None => {
                    return Err(SqsError::invalid_parameter(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ))
                }
            };
            q.forget_old_dedup(now);
            let key = if q.dedup_by_group() { format!("{g}\u{0}{d}") } else { d.clone() };
            if let Some((_, id, seqnum)) = q.dedup.get(&key) {
                return Ok(Sent {
                    id: None,
                    message_id: crate::digest::message_id(*id),
                    md5_body,
                    md5_attrs,
                    md5_sys,
                    sequence_number: Some(format!("{seqnum:020}")),
                });
            }
            q.next_seqnum += 1;
            let seqnum = q.next_seqnum;
            extra = Some(Box::new(Extra {
                attrs: attrs.clone(),
                sys_attrs: sys_attrs.clone(),
                group: Some(Arc::from(g)),
                dedup_id: Some(d.clone()),
                seqnum,
                dl_source: None,
                dl_moved_at: 0,
            }));
            delay_s = q.delay_s;
        } else {
            if dedup.is_some() {
                return Err(SqsError::invalid_parameter(
                    "Value for parameter MessageDeduplicationId is invalid. Reason: The request includes a parameter that is not valid for this queue type.",
                ));
            }
            // A MessageGroupId on a standard queue (fair queues) is kept and returned.
            if let Some(g) = group {
                if g.is_empty() || g.len() > 128 || !g.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SqsError::invalid_parameter(format!(
                        "Value {g} for parameter MessageGroupId is invalid: use 1 to 128 printable ASCII characters."
                    )));
                }
            }
            if attrs.is_some() || sys_attrs.is_some() || group.is_some() {
                extra = Some(Box::new(Extra {
                    attrs: attrs.clone(),
                    sys_attrs: sys_attrs.clone(),
                    group: group.map(Arc::from),
                    dedup_id: None,
                    seqnum: 0,
                    dl_source: None,
                    dl_moved_at: 0,
                }));
            }
            delay_s = delay.map(|d| d as u64).unwrap_or(q.delay_s);
        }
        let id = *uuid::Builder::from_random_bytes(rand::random()).into_uuid().as_bytes();
        let seq = *next_seq;
        *next_seq += 1;
        let m = Msg {
            id,
            body: Box::from(body),
            extra,
            sent_ms: now,
            visible_at: now + delay_s * 1000,
            md5,
            first_recv: 0,
            recv_count: 0,
            nonce: 0,
            last_nonce: 0,
            sender,
            receiver: KeyId::NONE,
            received_at: 0,
        };
        // a sequence number never used before: a new row
        ops.push(Op::Insert(Box::new(m.row(seq, q.name.clone()))));
        let mut out = Sent { id: None, message_id: crate::digest::message_id(m.id), md5_body, md5_attrs, md5_sys, sequence_number: None };
        if let Some(e) = m.extra.as_ref().filter(|_| q.fifo) {
            out.sequence_number = Some(format!("{:020}", e.seqnum));
            let key = if q.dedup_by_group() {
                format!("{}\u{0}{}", e.group.as_deref().unwrap_or(""), e.dedup_id.as_deref().unwrap_or(""))
            } else {
                e.dedup_id.clone().unwrap_or_default()
            };
            q.dedup.insert(key.clone(), (now + 300_000, id, e.seqnum));
            q.dedup_order.push_back((now + 300_000, key));
        }
        q.insert(seq, m, now);
        Ok(out)
    }

    pub(super) fn send_single(&self, name: &str, a: SendArgs<'_>, ctx: &mut Ctx) -> Result<Sent<'static>, SqsError> {
        let mut st = self.lock();
        let mut ops = Vec::with_capacity(1);
        let r = self.send_one(&mut st, name, a, ctx, &mut ops);
        self.submit(ctx, ops);
        Self::wake_one(&st, name);
        r
    }

    pub(super) fn send_batch(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let entries = batch_entries(req)?;
        let entries = entries.iter().map(|e| (s(e, "Id").unwrap_or(""), SendArgs::from_value(e))).collect();
        self.send_entries(&name, entries, ctx).map(|r| to_value(&r))
    }

    pub(super) fn send_entries<'a>(&self, name: &str, entries: Vec<(&'a str, SendArgs<'_>)>, ctx: &mut Ctx) -> Result<BatchOut<Sent<'a>>, SqsError> {
        let total: usize = entries.iter().map(|(_, a)| a.size()).sum();
        if total > MAX_MESSAGE_BYTES {
            return Err(SqsError::batch_too_long(total, MAX_MESSAGE_BYTES));
        }
        let mut st = self.lock();
        let q = st.queue(name)?;
        if q.fifo {
            // SQS fails the whole request, not the entry (not documented; the SDK models' errors).
            let content_dedup = q.content_dedup();
            for (_, e) in &entries {
                if e.group.is_none() {
                    return Err(SqsError::missing_parameter("MessageGroupId"));
                }
                if e.dedup.is_none() && !content_dedup {
                    return Err(SqsError::invalid_parameter(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ));
                }
            }
        }
        let (mut ok, mut bad, mut ops) = (Vec::with_capacity(entries.len()), Vec::new(), Vec::with_capacity(entries.len()));
        for (id, e) in entries {
            match self.send_one(&mut st, name, e, ctx, &mut ops) {
                Ok(mut v) => {
                    v.id = Some(id);
                    ok.push(v)
                }
                Err(err) => bad.push(Failed::new(id, &err)),
            }
        }
        self.submit(ctx, ops);
        Self::wake_one(&st, name);
        Ok(BatchOut { successful: ok, failed: bad })
    }
}

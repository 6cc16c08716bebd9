//! The Rust admin API the rest of coalmine uses: telemetry, dead letters, redrive, release;
//! and the broker's background work (store recovery, ticks).

use super::*;

impl Broker {
    pub(super) fn admin_ctx(&self) -> Ctx {
        let host = self.inner.public_host.lock().unwrap().clone();
        Ctx::new("coalmine", &host)
    }

    /// Create queue `name` with `attributes`, or set them on the existing queue. Returns its URL.
    pub fn ensure_queue(&self, name: &str, attributes: &BTreeMap<String, String>) -> Result<String, SqsError> {
        let mut ctx = self.admin_ctx();
        let mut attrs = attributes.clone();
        if name.ends_with(".fifo") {
            attrs.entry("FifoQueue".into()).or_insert_with(|| "true".into());
        }
        let v = self.create_or_match(name, &attrs, BTreeMap::new(), &mut ctx, true)?;
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(v["QueueUrl"].as_str().unwrap_or_default().to_string())
    }

    /// Names of all queues, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().queues.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let oldest = q.msgs.keys().min().and_then(|s| q.msgs.get(s)).map(|m| now.saturating_sub(m.sent_ms)).unwrap_or(0);
        Ok(QueueStats { visible: q.ready.len() as u64, in_flight: q.inflight as u64, delayed: q.delayed() as u64, oldest_age_ms: oldest })
    }

    /// Per access key id, per-second buckets since `since_ms` (unix ms).
    pub fn telemetry(&self, queue: &str, since_ms: u64) -> Result<Vec<ConsumerTelemetry>, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        Ok(telemetry.query(queue, since_ms))
    }

    pub fn in_flight(&self, queue: &str) -> Result<Vec<InFlightMessage>, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        Ok(q
            .pending
            .iter()
            .filter_map(|(_, seq)| q.msgs.get(seq))
            .filter(|m| m.nonce != 0)
            .map(|m| InFlightMessage {
                message_id: m.id_string(),
                access_key_id: m.receiver.name(),
                received_at_ms: m.received_at,
                receive_count: m.recv_count,
            })
            .collect())
    }

    /// Messages in the dead-letter queue `dlq` that another queue moved there, oldest first.
    pub fn dead_letters(&self, dlq: &str) -> Result<Vec<DeadLetter>, SqsError> {
        let mut st = self.lock();
        let q = st.queue(dlq)?;
        let mut seqs: Vec<&u64> = q.msgs.keys().collect();
        seqs.sort();
        Ok(seqs
            .into_iter()
            .filter_map(|s| {
                let m = &q.msgs[s];
                let e = m.extra.as_deref()?;
                Some(DeadLetter {
                    message_id: m.id_string(),
                    source_queue: e.dl_source.clone()?,
                    last_receiver: m.receiver.get().map(|r| r.to_string()),
                    moved_at_ms: e.dl_moved_at,
                    receive_count: m.recv_count,
                    body: m.body.to_string(),
                })
            })
            .collect())
    }

    /// Move the given dead letters back to their source queues, visible now, with their
    /// receive count reset. In-flight ones (received from the DLQ) are skipped. Returns how
    /// many moved.
    pub fn redrive(&self, dlq: &str, message_ids: &[String]) -> Result<usize, SqsError> {
        let wanted: HashSet<[u8; 16]> = message_ids.iter().filter_map(|id| uuid::Uuid::parse_str(id).ok()).map(|u| *u.as_bytes()).collect();
        let now = now_ms();
        let mut ctx = self.admin_ctx();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(dlq).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let picks: Vec<(u64, String)> = q
            .msgs
            .iter()
            .filter(|(_, m)| wanted.contains(&m.id) && m.nonce == 0)
            .filter_map(|(s, m)| Some((*s, m.extra.as_ref()?.dl_source.clone()?)))
            .collect();
        let mut ops = Vec::new();
        for (seq, src) in &picks {
            if !queues.contains_key(src) {
                continue;
            }
            let mut m = queues.get_mut(dlq).expect("present").take(*seq).expect("present");
            m.recv_count = 0;
            m.visible_at = now;
            m.nonce = 0;
            if let Some(e) = m.extra.as_mut() {
                e.dl_source = None;
                e.dl_moved_at = 0;
            }
            ops.push(Op::Put(Box::new(m.row(*seq, Arc::from(src.as_str())))));
            let d = queues.get_mut(src).expect("present");
            d.insert(*seq, m, now);
            d.notify.notify_one();
        }
        let n = ops.len();
        self.submit(&mut ctx, ops);
        drop(st);
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(n)
    }

    /// Make the in-flight messages received by these access key ids visible now, undoing
    /// their receive (counted as released, not returned). Returns how many.
    pub fn release_in_flight(&self, queue: &str, access_key_ids: &[String]) -> Result<usize, SqsError> {
        let now = now_ms();
        let mut ctx = self.admin_ctx();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let seqs: Vec<(u64, Arc<str>)> = q
            .pending
            .iter()
            .filter_map(|(_, s)| {
                let m = q.msgs.get(s)?;
                let r = m.receiver.get()?;
                (m.nonce != 0 && access_key_ids.iter().any(|k| k.as_str() == &*r)).then(|| (*s, r.clone()))
            })
            .collect();
        let mut ops = Vec::new();
        for (seq, r) in &seqs {
            q.make_visible(*seq, now);
            // The holder's receive is undone: the message was taken from a consumer, it did
            // not fail one more time, and must not reach the DLQ on its next receive for it.
            if let Some(m) = q.msgs.get_mut(seq) {
                m.recv_count = m.recv_count.saturating_sub(1);
            }
            telemetry.record(queue, r, now, Event::Released);
            ops.push(q.msgs[seq].state_op(*seq));
            q.notify.notify_one();
        }
        self.submit(&mut ctx, ops);
        drop(st);
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(seqs.len())
    }

    /// After a failed write, make the in-memory state what the store holds again (dropping
    /// every change that was refused), and accept changes again. Does nothing while the store
    /// is well; when the store still cannot be read, tries again at the next tick.
    pub(crate) fn recover_store(&self) {
        if !self.inner.store.is_broken() {
            return;
        }
        let mut st = self.lock();
        let path = self.inner.cfg.data_dir.join("queue.db");
        let loaded = match self.inner.store.reload() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "queue store still failing; trying again shortly");
                return;
            }
        };
        match build_queues(loaded.queues, loaded.messages, &path) {
            Ok((mut queues, next_seq)) => {
                for (name, q) in queues.iter_mut() {
                    if let Some(old) = st.queues.get(name) {
                        // long polls in progress wait on these
                        q.notify = old.notify.clone();
                    }
                }
                let refused: usize = st.queues.values().map(|q| q.msgs.len()).sum::<usize>().abs_diff(queues.values().map(|q| q.msgs.len()).sum());
                st.queues = queues;
                st.next_seq = st.next_seq.max(next_seq);
                self.inner.store.settled(|done, refused| st.telemetry.settle(done, refused));
                st.telemetry.mark_all_dirty();
                tracing::warn!(message_count_change = refused, "queue state reloaded from the store after a failed write; refused changes are gone");
            }
            Err(e) => tracing::error!(error = %e, "queue store reopened but its data could not be read"),
        }
    }

    /// Make the store's next `n` commits fail as a full disk would: the changes are refused
    /// (answered with a server error) and the broker recovers by itself. For tests.
    #[doc(hidden)]
    pub fn fail_next_store_commits(&self, n: u32) {
        self.inner.store.fail_next_commits(n);
    }

    /// Periodic upkeep: visibility expiry, retention, telemetry persistence.
    pub(crate) fn tick(&self) {
        self.recover_store();
        let now = now_ms();
        let mut st = self.lock();
        self.inner.store.settled(|done, refused| st.telemetry.settle(done, refused));
        let State { queues, telemetry, .. } = &mut *st;
        let mut ops = Vec::new();
        for q in queues.values_mut() {
            q.promote(now, telemetry);
            while let Some(&seq) = q.ready.first() {
                let expired = q.msgs.get(&seq).is_some_and(|m| m.sent_ms + q.retention_ms <= now);
                if !expired {
                    break;
                }
                q.take(seq);
                ops.push(Op::Del(seq));
            }
            q.forget_old_dedup(now);
        }
        self.inner.store.submit(ops);
    }

    pub(crate) fn flush_telemetry(&self) {
        let mut st = self.lock();
        st.telemetry.forget_stale(now_ms() / 1000);
        let rows = st.telemetry.take_dirty();
        if !rows.is_empty() {
            let cutoff = now_ms() / 1000 - crate::telemetry::KEEP_SECONDS;
            self.inner.store.submit(vec![Op::Telemetry(rows), Op::TrimTelemetry(cutoff)]);
        }
    }

    /// Start the background upkeep on the current tokio runtime (called by `serve`/`router`).
    pub(crate) fn start_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let b = Broker { inner };
                b.tick();
                n += 1;
                if n.is_multiple_of(4) {
                    b.flush_telemetry();
                }
            }
        });
    }

    /// Counts of messages per queue and state (for metrics).
    pub(crate) fn depth_snapshot(&self) -> Vec<(String, usize, usize, usize)> {
        let st = self.lock();
        let mut v: Vec<_> = st.queues.values().map(|q| (q.name.to_string(), q.ready.len(), q.inflight, q.delayed())).collect();
        v.sort();
        v
    }
}

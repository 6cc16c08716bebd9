//! Queue actions: create, list, attributes, permissions; finding a request's queue.

use super::*;

impl Broker {
    /// AddPermission / RemovePermission: a statement per label in the queue's `Policy`.
    pub(super) fn permission(&self, action: &str, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let label = req_str(req, "Label")?;
        if label.is_empty() || label.len() > 80 || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(SqsError::invalid_parameter(format!(
                "Value {label} for parameter Label is invalid. Reason: use up to 80 letters, digits, hyphens and underscores."
            )));
        }
        let add = action == "AddPermission";
        let (accounts, actions) = (str_list(req, "AWSAccountIds"), str_list(req, "Actions"));
        if add {
            if accounts.is_empty() {
                return Err(SqsError::missing_parameter("AWSAccountIds"));
            }
            if actions.is_empty() {
                return Err(SqsError::missing_parameter("Actions"));
            }
            const ALLOWED: &[&str] = &[
                "*", "SendMessage", "ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes",
                "GetQueueUrl", "ListDeadLetterSourceQueues", "PurgeQueue", "ListQueueTags",
            ];
            if let Some(bad) = actions.iter().find(|a| !ALLOWED.contains(&a.as_str())) {
                return Err(SqsError::invalid_parameter(format!(
                    "Value {bad} for parameter ActionName is invalid. Reason: Please refer to the appropriate WSDL for a list of valid actions."
                )));
            }
        }
        let mut st = self.lock();
        let q = st.queue(&name)?;
        let queue_arn = self.arn(&name);
        let mut policy: Value = q
            .attrs
            .get("Policy")
            .filter(|p| !p.is_empty())
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_else(|| json!({"Version": "2012-10-17", "Id": format!("{queue_arn}/SQSDefaultPolicy"), "Statement": []}));
        if !policy["Statement"].is_array() {
            policy["Statement"] = json!([]);
        }
        let statements = policy["Statement"].as_array_mut().expect("an array");
        let at = statements.iter().position(|st| st["Sid"].as_str() == Some(label));
        if add {
            if at.is_some() {
                return Err(SqsError::invalid_parameter(format!("Value {label} for parameter Label is invalid. Reason: Already exists.")));
            }
            let principals: Vec<String> = accounts.iter().map(|a| format!("arn:aws:iam::{a}:root")).collect();
            statements.push(json!({
                "Sid": label,
                "Effect": "Allow",
                "Principal": {"AWS": if principals.len() == 1 { json!(principals[0]) } else { json!(principals) }},
                "Action": actions.iter().map(|a| format!("SQS:{a}")).collect::<Vec<_>>(),
                "Resource": queue_arn,
            }));
        } else {
            let Some(i) = at else {
                return Err(SqsError::invalid_parameter(format!("Value {label} for parameter Label is invalid. Reason: can't find label.")));
            };
            statements.remove(i);
        }
        if statements.is_empty() {
            q.attrs.remove("Policy");
        } else {
            q.attrs.insert("Policy".into(), policy.to_string());
        }
        q.modified_s = ctx.now_ms / 1000;
        let row = queue_row(q);
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(json!({}))
    }

    pub(super) fn queue_of(&self, req: &Value) -> Result<String, SqsError> {
        self.queue_of_url(Some(req_str(req, "QueueUrl")?))
    }

    pub(super) fn queue_of_url(&self, url: Option<&str>) -> Result<String, SqsError> {
        let url = url.ok_or_else(|| SqsError::missing_parameter("QueueUrl"))?;
        let name = queue_name_from_url(url);
        if name.is_empty() {
            return Err(SqsError::queue_does_not_exist());
        }
        // `.../<account>/<name>`: another account's queue is not ours to touch
        let mut parts = url.trim_end_matches('/').rsplit('/');
        parts.next();
        if let Some(account) = parts.next().filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())) {
            if account != self.account() {
                return Err(SqsError::access_denied(url));
            }
        }
        Ok(name.to_string())
    }

    pub(super) fn paged(&self, names: Vec<&str>, max: Option<i64>, token: Option<&str>, host: &str, field: &str) -> Value {
        let start = token
            .and_then(|t| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let mut it: Vec<&str> = names.into_iter().filter(|n| start.as_ref().is_none_or(|s| *n > s.as_str())).collect();
        let limit = max.map(|m| m as usize).unwrap_or(1000);
        let more = it.len() > limit;
        it.truncate(limit);
        let mut out = Map::new();
        if !it.is_empty() {
            out.insert(field.into(), json!(it.iter().map(|n| self.url(host, n)).collect::<Vec<_>>()));
        }
        if more && max.is_some() {
            let last = it.last().copied().unwrap_or("");
            out.insert("NextToken".into(), json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)));
        }
        Value::Object(out)
    }

    pub(super) fn list_queues(&self, req: &Value, ctx: &Ctx) -> Result<Value, SqsError> {
        let prefix = s(req, "QueueNamePrefix").unwrap_or("");
        let max = int_range(req, "MaxResults", 1, 1000)?;
        let st = self.lock();
        let mut names: Vec<&str> = st.queues.keys().filter(|n| n.starts_with(prefix)).map(String::as_str).collect();
        names.sort();
        Ok(self.paged(names, max, s(req, "NextToken"), &ctx.host, "QueueUrls"))
    }

    /// Check attributes that need the other queues (the dead-letter target).
    pub(super) fn check_redrive(st: &State, source: &str, fifo: bool, attrs: &BTreeMap<String, String>, source_arn: &str) -> Result<(), SqsError> {
        let Some(p) = attrs.get("RedrivePolicy").filter(|p| !p.is_empty()) else { return Ok(()) };
        let v: Value = serde_json::from_str(p).unwrap_or_default();
        let target = v.get("deadLetterTargetArn").and_then(Value::as_str).unwrap_or("");
        let dlq_name = name_from_arn(target).unwrap_or("");
        let dlq = st.queues.get(dlq_name).ok_or_else(|| {
            SqsError::invalid_parameter(format!(
                "Value {p} for parameter RedrivePolicy is invalid. Reason: Dead letter target does not exist; create the queue {dlq_name} first."
            ))
        })?;
        if dlq.fifo != fifo {
            return Err(SqsError::invalid_parameter(format!(
                "Value {p} for parameter RedrivePolicy is invalid. Reason: Dead-letter queue must be the same type of queue as the source."
            )));
        }
        if let Some(allow) = dlq.attr("RedriveAllowPolicy").and_then(|a| serde_json::from_str::<Value>(a).ok()) {
            let perm = allow.get("redrivePermission").and_then(Value::as_str).unwrap_or("allowAll");
            let src_arn = source_arn.to_string();
            let allowed = match perm {
                "denyAll" => false,
                "byQueue" => allow
                    .get("sourceQueueArns")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(src_arn.as_str()))),
                _ => true,
            };
            if !allowed {
                return Err(SqsError::invalid_parameter(format!(
                    "Value {p} for parameter RedrivePolicy is invalid. Reason: Queue {dlq_name} does not allow {source} to use it as a dead-letter queue (RedriveAllowPolicy)."
                )));
            }
        }
        Ok(())
    }

    pub(super) fn normalize_attrs(name: &str, fifo: bool, attrs: &BTreeMap<String, String>, creating: bool) -> Result<BTreeMap<String, String>, SqsError> {
        let mut out = BTreeMap::new();
        for (k, v) in attrs {
            if k == "FifoQueue" && v.eq_ignore_ascii_case("true") && !name.ends_with(".fifo") {
                return Err(SqsError::invalid_parameter(format!(
                    "The name of a FIFO queue must end with .fifo; {name} does not."
                )));
            }
            out.insert(k.clone(), validate_attr(k, v, fifo, creating)?);
        }
        Ok(out)
    }

    pub(super) fn create_queue(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = req_str(req, "QueueName")?;
        let attrs = str_map(req, "Attributes")?;
        let tags = str_map(req, "tags").and_then(|t| if t.is_empty() { str_map(req, "Tags") } else { Ok(t) })?;
        self.create_or_match(name, &attrs, tags, ctx, false)
    }

    pub(super) fn create_or_match(&self, name: &str, attrs: &BTreeMap<String, String>, tags: BTreeMap<String, String>, ctx: &mut Ctx, update: bool) -> Result<Value, SqsError> {
        if !valid_queue_name(name) {
            return Err(SqsError::invalid_parameter(format!(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length; got queue name \"{name}\"."
            )));
        }
        let wants_fifo = attrs.get("FifoQueue").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if name.ends_with(".fifo") && !wants_fifo {
            return Err(SqsError::invalid_parameter(format!(
                "The queue name {name} ends with .fifo: set the attribute FifoQueue to true to create a FIFO queue, or choose a name without .fifo."
            )));
        }
        let fifo = name.ends_with(".fifo");
        let mut norm = Self::normalize_attrs(name, fifo, attrs, true)?;
        norm.remove("FifoQueue");
        let url = self.url(&ctx.host, name);
        let mut st = self.lock();
        Self::check_redrive(&st, name, fifo, &norm, &self.arn(name))?;
        if let Some(q) = st.queues.get_mut(name) {
            let differs = norm.iter().any(|(k, v)| q.attr(k).unwrap_or("") != v);
            if differs {
                if !update {
                    return Err(SqsError::queue_already_exists(name));
                }
                q.attrs.extend(norm);
                q.modified_s = ctx.now_ms / 1000;
                q.reparse();
                let row = queue_row(q);
                self.submit(ctx, vec![Op::Queue(row)]);
            }
            return Ok(json!({"QueueUrl": url}));
        }
        if !update && st.deleted.get(name).is_some_and(|at| at + 60_000 > ctx.now_ms) {
            return Err(SqsError::queue_deleted_recently(name));
        }
        check_tags(&tags)?;
        let q = Queue::new(name, norm, tags, ctx.now_ms / 1000);
        let row = queue_row(&q);
        st.queues.insert(name.to_string(), q);
        tracing::info!(queue = %name, fifo, "queue created");
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(json!({"QueueUrl": url}))
    }

    pub(super) fn set_attributes(&self, name: &str, attrs: &BTreeMap<String, String>, ctx: &mut Ctx) -> Result<(), SqsError> {
        let mut st = self.lock();
        let fifo = st.queue(name)?.fifo;
        let norm = Self::normalize_attrs(name, fifo, attrs, false)?;
        Self::check_redrive(&st, name, fifo, &norm, &self.arn(name))?;
        let q = st.queue(name)?;
        q.attrs.extend(norm);
        q.modified_s = ctx.now_ms / 1000;
        q.reparse();
        let row = queue_row(q);
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(())
    }

    pub(super) fn get_queue_attributes(&self, req: &Value, ctx: &Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let names = str_list(req, "AttributeNames");
        for n in &names {
            if n != "All" && !SETTABLE.contains(&n.as_str()) && !READ_ONLY.contains(&n.as_str()) {
                return Err(SqsError::invalid_attribute_name(n));
            }
        }
        let all = names.iter().any(|n| n == "All");
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(&name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(ctx.now_ms, telemetry);
        let mut out = Map::new();
        let mut put = |k: &str, v: String| {
            if all || names.iter().any(|n| n == k) {
                out.insert(k.to_string(), Value::String(v));
            }
        };
        put("QueueArn", self.arn(&q.name));
        put("ApproximateNumberOfMessages", q.ready.len().to_string());
        put("ApproximateNumberOfMessagesNotVisible", q.inflight.to_string());
        put("ApproximateNumberOfMessagesDelayed", q.delayed().to_string());
        put("CreatedTimestamp", q.created_s.to_string());
        put("LastModifiedTimestamp", q.modified_s.to_string());
        for k in ["VisibilityTimeout", "MaximumMessageSize", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds", "SqsManagedSseEnabled"] {
            put(k, q.attr(k).unwrap_or("").to_string());
        }
        for k in ["Policy", "RedrivePolicy", "RedriveAllowPolicy", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"] {
            if let Some(v) = q.attrs.get(k).filter(|v| !v.is_empty()) {
                put(k, v.clone());
            }
        }
        if q.fifo {
            put("FifoQueue", "true".into());
            put("ContentBasedDeduplication", q.attr("ContentBasedDeduplication").unwrap_or("false").to_string());
            put("DeduplicationScope", q.attr("DeduplicationScope").unwrap_or("queue").to_string());
            put("FifoThroughputLimit", q.attr("FifoThroughputLimit").unwrap_or("perQueue").to_string());
        }
        Ok(if out.is_empty() { json!({}) } else { json!({"Attributes": out}) })
    }
}

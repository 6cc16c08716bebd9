//! The queue proxy: a sidecar between one task of a queue consumer and SQS.
//!
//! The task's `AWS_ENDPOINT_URL_SQS` points at the proxy. Each request is forwarded to the
//! upstream SQS (any endpoint: AWS, moto, LocalStack, coalmine's own queue), re-signed with the
//! proxy's credentials from the standard AWS chain; the answer goes back as the upstream sent it.
//! On the way the proxy sees what the task received, deleted, handed back or held, and reports
//! it once a second to a telemetry queue. When it stops, it makes the messages its task still
//! holds visible again.
//!
//! Parts: `sqs` reads the two wire protocols, `observe` keeps the counts and receipts held,
//! `forward` re-signs and forwards, `identity` tells which task this is, `telemetry` is the report.

pub mod collect;
pub mod error;
pub mod forward;
pub mod identity;
pub mod observe;
pub mod sqs;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, QueueAttributeName};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tokio::sync::watch;

pub use error::ProxyError;
pub use identity::{Given, Identity};
pub use telemetry::Report;

use forward::{ForwardError, Upstream, BODY_LIMIT};
use observe::Observer;
use sqs::{Action, Protocol};
use telemetry::Kind;

/// How the proxy is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Port on 127.0.0.1; 0 lets the system choose.
    pub port: u16,
    /// The upstream SQS endpoint; the region's AWS endpoint when `None`.
    pub upstream: Option<String>,
    /// Region for signing (and for the AWS endpoint); the standard chain's when `None`.
    pub region: Option<String>,
    /// Identity given on the command line or in the environment.
    pub given: Given,
    /// `ECS_CONTAINER_METADATA_URI_V4`.
    pub metadata_uri: Option<String>,
    /// The app's name: the telemetry queue is `<app>-coalmine-telemetry`.
    pub app: Option<String>,
    /// The telemetry queue's name or URL, instead of the one named after the app.
    pub telemetry_queue: Option<String>,
    pub report_every: Duration,
    /// The censoring limit: a message held longer counts in `over_limit`.
    pub hold_limit: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            port: 0,
            upstream: None,
            region: None,
            given: Given::default(),
            metadata_uri: None,
            app: None,
            telemetry_queue: None,
            report_every: Duration::from_secs(1),
            hold_limit: Duration::from_secs(60),
        }
    }
}

/// The runtime a proxy runs on: one thread. A sidecar shares its task's CPU with the app; one
/// thread forwards tens of thousands of messages a second and spares the cross-thread wake-ups
/// (latency) of a pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// How long a stopping proxy waits for the requests still in flight once its app is gone:
/// SQS's longest long poll (20 s) and a second.
pub const LATE_RECEIVE_GRACE: Duration = Duration::from_secs(21);

/// The telemetry queue's name as `up` and `synth` create it.
pub fn telemetry_queue_name(app: &str) -> String {
    format!("{app}-coalmine-telemetry")
}

/// What the proxy did when it stopped.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// The final report (also sent to the telemetry queue, if it could be).
    pub report: Report,
    /// Held messages made visible again.
    pub handed_back: u64,
    /// Held messages the upstream refused to make visible (they come back when their
    /// visibility timeout lapses).
    pub hand_back_failed: u64,
    /// The final report reached the telemetry queue.
    pub final_sent: bool,
}

struct Shared {
    upstream: Upstream,
    sqs: aws_sdk_sqs::Client,
    observer: Mutex<Observer>,
    identity: Identity,
    app: Option<String>,
    telemetry_queue: String,
    telemetry_url: tokio::sync::Mutex<Option<String>>,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    seq: AtomicU64,
    lost: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    proxy_id: String,
    started_ms: u64,
    hold_limit: Duration,
}

/// A proxy bound to its port, not yet serving.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    report_every: Duration,
}

/// A serving proxy.
pub struct Running {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    stop_ticker: watch::Sender<bool>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The regional AWS endpoint of SQS.
pub fn aws_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://sqs.{region}.amazonaws.com.cn")
    } else {
        format!("https://sqs.{region}.amazonaws.com")
    }
}

impl Proxy {
    /// Resolve credentials, region and identity, and bind the port.
    pub async fn bind(config: Config) -> Result<Proxy, ProxyError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &config.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None if config.upstream.is_some() => "us-east-1".to_string(),
            None => return Err(ProxyError::Config("no region: set --region or AWS_REGION (the upstream is the region's SQS endpoint)".into())),
        };
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| ProxyError::Credentials("the standard chain offers no provider".into()))?;
        let endpoint = config.upstream.clone().unwrap_or_else(|| aws_endpoint(&region));
        let upstream = Upstream::new(&endpoint, &region, provider)?;
        let sqs_conf = aws_sdk_sqs::config::Builder::from(&sdk)
            .region(aws_config::Region::new(region.clone()))
            .endpoint_url(upstream.endpoint())
            .build();
        let sqs = aws_sdk_sqs::Client::from_conf(sqs_conf);
        let telemetry_queue = match (&config.telemetry_queue, &config.app) {
            (Some(q), _) => q.clone(),
            (None, Some(app)) => telemetry_queue_name(app),
            (None, None) => {
                return Err(ProxyError::Config(
                    "no telemetry queue: name the app (--app or COALMINE_APP; the queue is <app>-coalmine-telemetry) or the queue (--telemetry-queue)".into(),
                ))
            }
        };
        let identity = identity::resolve(config.given.clone(), config.metadata_uri.as_deref()).await?;
        let addr = format!("127.0.0.1:{}", config.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| ProxyError::Bind { addr: addr.clone(), source })?;
        let now = SystemTime::now();
        let proxy_id = format!("{}-{}-{:x}", identity.task, std::process::id(), unix_ms(now));
        tracing::info!(upstream = %upstream.endpoint(), %region, service = %identity.service, revision = %identity.revision, task = %identity.task, identity_source = identity.source, telemetry_queue = %telemetry_queue, "queue proxy ready");
        Ok(Proxy {
            shared: Arc::new(Shared {
                upstream,
                sqs,
                observer: Mutex::new(Observer::default()),
                identity,
                app: config.app.clone(),
                telemetry_queue,
                telemetry_url: tokio::sync::Mutex::new(None),
                in_flight: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                seq: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                failing: std::sync::atomic::AtomicBool::new(false),
                proxy_id,
                started_ms: unix_ms(now),
                hold_limit: config.hold_limit,
            }),
            listener,
            report_every: config.report_every,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// Serve, and report every `report_every`.
    pub fn start(self) -> Running {
        let addr = self.local_addr();
        let app = axum::Router::new().fallback(handle).with_state(self.shared.clone());
        // Small requests and answers: no Nagle delay on the app's connections.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the proxy stopped serving: {e}");
            }
        });
        let (stop_ticker, mut stopped) = watch::channel(false);
        let shared = self.shared.clone();
        let every = self.report_every;
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stopped.changed() => break,
                }
                let report = shared.make_report(Kind::Tick);
                shared.send_report(report, every.max(Duration::from_secs(2))).await;
            }
        });
        Running { shared: self.shared, addr, server, ticker, stop_ticker }
    }
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests being forwarded now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Wait until no request is being forwarded, for at most `grace`. True when idle.
    pub async fn drain(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.shared.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    /// The report as it would be sent now (without taking failed ids).
    pub fn snapshot(&self) -> Report {
        self.shared.report(Kind::Tick, Vec::new(), self.shared.seq.load(Ordering::SeqCst))
    }

    /// Stop: end the reports, make the held messages visible again, send the final report,
    /// stop serving.
    pub async fn stop(mut self) -> Stopped {
        let _ = self.stop_ticker.send(true);
        let _ = (&mut self.ticker).await;
        let (mut handed_back, mut hand_back_failed) = self.shared.hand_back().await;
        // A receive still on its way (the app's long poll) delivers after that: wait for it a
        // little, and hand back what it brought too.
        if !self.drain(Duration::from_secs(1)).await {
            tracing::debug!(in_flight = self.in_flight(), "requests still in flight after the hand-back");
        }
        let (late, late_failed) = self.shared.hand_back().await;
        (handed_back, hand_back_failed) = (handed_back + late, hand_back_failed + late_failed);
        let report = self.shared.make_report(Kind::Final);
        let mut final_sent = false;
        for _ in 0..3 {
            if self.shared.send_report(report.clone(), Duration::from_secs(3)).await {
                final_sent = true;
                break;
            }
        }
        self.server.abort();
        Stopped { report, handed_back, hand_back_failed, final_sent }
    }
}

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    fn observer(&self) -> MutexGuard<'_, Observer> {
        self.observer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, kind: Kind, failed: Vec<observe::Failed>, seq: u64) -> Report {
        let now = Instant::now();
        let o = self.observer();
        let c = &o.counts;
        Report {
            v: telemetry::VERSION,
            kind,
            app: self.app.clone(),
            service: self.identity.service.clone(),
            revision: self.identity.revision.clone(),
            task: self.identity.task.clone(),
            identity_source: self.identity.source.to_string(),
            proxy: self.proxy_id.clone(),
            seq,
            time_ms: unix_ms(SystemTime::now()),
            started_ms: self.started_ms,
            received: c.received,
            redelivered: c.redelivered,
            deleted: c.deleted,
            deleted_unknown: c.deleted_unknown,
            returned: c.returned,
            extended: c.extended,
            expired: c.expired,
            over_limit: c.over_limit,
            refused: c.refused,
            requests: c.requests,
            upstream_errors: c.upstream_errors,
            unreachable: c.unreachable,
            handed_back: c.handed_back,
            held: o.held.len() as u64,
            oldest_held_ms: o.oldest_held(now).as_millis() as u64,
            held_ages_ms: o.held_ages(now, telemetry::HELD_AGES),
            held_ids: o.held_ids(telemetry::HELD_IDS),
            hold_limit_ms: self.hold_limit.as_millis() as u64,
            processing_ms: (&o.processing).into(),
            failed: failed.into_iter().map(Into::into).collect(),
            failed_dropped: o.failed_dropped,
            telemetry_lost: self.lost.load(Ordering::SeqCst),
        }
    }

    /// Sweep, take the failed ids due, and number the report.
    fn make_report(&self, kind: Kind) -> Report {
        let failed = {
            let mut o = self.observer();
            o.sweep(Instant::now(), self.hold_limit);
            o.take_failed(telemetry::FAILED_PER_REPORT)
        };
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.report(kind, failed, seq)
    }

    async fn telemetry_url(&self) -> Result<String, String> {
        let mut cached = self.telemetry_url.lock().await;
        if let Some(u) = cached.as_ref() {
            return Ok(u.clone());
        }
        let url = if self.telemetry_queue.starts_with("http://") || self.telemetry_queue.starts_with("https://") {
            self.telemetry_queue.clone()
        } else {
            let out = self
                .sqs
                .get_queue_url()
                .queue_name(&self.telemetry_queue)
                .send()
                .await
                .map_err(|e| format!("looking up the telemetry queue {}: {}", self.telemetry_queue, aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
            out.queue_url().unwrap_or_default().to_string()
        };
        *cached = Some(url.clone());
        Ok(url)
    }

    /// Send one report; on failure count it lost and keep its failed ids for the next one.
    /// Never blocks forwarding.
    async fn send_report(&self, report: Report, timeout: Duration) -> bool {
        let body = match serde_json::to_string(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode the telemetry report: {e}");
                return false;
            }
        };
        let attempt = async {
            let url = self.telemetry_url().await?;
            self.sqs
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| format!("sending to the telemetry queue {}: {}", self.telemetry_queue, aws_sdk_sqs::error::DisplayErrorContext(&e)))
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(format!("sending to the telemetry queue {} took longer than {timeout:?}", self.telemetry_queue)),
        };
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::SeqCst) {
                    tracing::info!(lost = self.lost.load(Ordering::SeqCst), "telemetry reaches its queue again");
                }
                true
            }
            Err(message) => {
                let lost = self.lost.fetch_add(1, Ordering::SeqCst) + 1;
                if !self.failing.swap(true, Ordering::SeqCst) {
                    tracing::warn!(lost, "telemetry report lost (forwarding goes on): {message}");
                } else {
                    tracing::debug!(lost, "telemetry report lost: {message}");
                }
                // Another lookup next time: the queue may have been created since.
                *self.telemetry_url.lock().await = None;
                self.observer().restore_failed(report.failed.into_iter().map(|f| observe::Failed {
                    id: f.id,
                    how: match f.how.as_str() {
                        "expired" => observe::FailKind::Expired,
                        "released" => observe::FailKind::Released,
                        _ => observe::FailKind::Returned,
                    },
                }).collect());
                false
            }
        }
    }

    /// Make every message the task still holds visible again. Returns (handed back, refused).
    async fn hand_back(&self) -> (u64, u64) {
        let now = Instant::now();
        let held: Vec<(String, observe::Held)> = self.observer().held.drain().filter(|(_, h)| h.deadline.is_none_or(|d| d > now)).collect();
        let mut by_queue: HashMap<Arc<str>, Vec<(String, String)>> = HashMap::new();
        for (receipt, h) in held {
            by_queue.entry(h.queue_url).or_default().push((receipt, h.message_id));
        }
        let (mut ok, mut refused) = (0u64, 0u64);
        for (queue_url, receipts) in by_queue {
            for chunk in receipts.chunks(10) {
                let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (r, _))| ChangeMessageVisibilityBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).visibility_timeout(0).build().ok())
                    .collect();
                match self.sqs.change_message_visibility_batch().queue_url(&*queue_url).set_entries(Some(entries)).send().await {
                    Ok(out) => {
                        ok += out.successful().len() as u64;
                        let mut o = self.observer();
                        for s in out.successful() {
                            if let Some((_, id)) = s.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                                o.released(id.clone());
                            }
                        }
                        drop(o);
                        for f in out.failed() {
                            tracing::warn!(queue = %queue_url, code = f.code(), "the upstream refused to hand a held message back: {}", f.message().unwrap_or_default());
                        }
                        refused += out.failed().len() as u64;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %queue_url, "handing back {} held messages failed: {}", chunk.len(), aws_sdk_sqs::error::DisplayErrorContext(&e));
                        refused += chunk.len() as u64;
                    }
                }
            }
        }
        self.observer().counts.handed_back += ok;
        if ok + refused > 0 {
            tracing::info!(handed_back = ok, refused, "held messages made visible again");
        }
        (ok, refused)
    }

    fn look_up_visibility(self: &Arc<Self>, queue_url: String) {
        let shared = self.clone();
        tokio::spawn(async move {
            let result = shared.sqs.get_queue_attributes().queue_url(&queue_url).attribute_names(QueueAttributeName::VisibilityTimeout).send().await;
            let timeout = result
                .as_ref()
                .ok()
                .and_then(|out| out.attributes())
                .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
                .and_then(|v| v.parse::<u64>().ok());
            let mut o = shared.observer();
            match timeout {
                Some(s) => o.set_visibility(&queue_url, Duration::from_secs(s)),
                None => {
                    if let Err(e) = result {
                        tracing::warn!(queue = %queue_url, "cannot read the queue's visibility timeout (expiries are not seen until it is known): {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
                    }
                    o.lookups.remove(&queue_url);
                }
            }
        });
    }
}

/// An error the proxy itself answers with, in the request's protocol, with SQS's codes.
fn error_response(protocol: Protocol, status: StatusCode, code: &str, message: &str) -> Response {
    let (content_type, body) = match protocol {
        Protocol::Json => ("application/x-amz-json-1.0", serde_json::json!({"__type": format!("com.amazonaws.sqs#{code}"), "message": message}).to_string()),
        Protocol::Query => {
            let esc = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let fault = if status.is_server_error() { "Receiver" } else { "Sender" };
            (
                "text/xml",
                format!(
                    "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><Error><Type>{fault}</Type><Code>{code}</Code><Message>{esc}</Message><Detail/></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                ),
            )
        }
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if protocol == Protocol::Json {
        let fault = if status.is_server_error() { "Receiver" } else { "Sender" };
        if let Ok(v) = HeaderValue::from_str(&format!("{code};{fault}")) {
            r.headers_mut().insert("x-amzn-query-error", v);
        }
    }
    r
}

async fn handle(State(s): State<Arc<Shared>>, req: axum::extract::Request) -> Response {
    // On a task of its own: when the app goes away mid-request (a stopping task killed during a
    // long poll), the upstream's answer is still observed — what it delivered is held, and
    // handed back at stop — instead of being dropped with the app's connection.
    match tokio::spawn(forward_and_observe(s, req)).await {
        Ok(r) => r,
        Err(e) => error_response(Protocol::Query, StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", &format!("coalmine proxy: {e}")),
    }
}

async fn forward_and_observe(s: Arc<Shared>, req: axum::extract::Request) -> Response {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(s.clone());
    let (parts, body) = req.into_parts();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    let protocol = if target.is_some() { Protocol::Json } else { Protocol::Query };
    let body: Bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                protocol,
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("the request body is larger than the proxy's limit of {BODY_LIMIT} bytes"),
            )
        }
    };
    let parsed = sqs::parse_request(target, parts.uri.query(), &body);
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let result = s.upstream.forward(&parts.method, path, &parts.headers, body).await;
    match result {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let lookup = match &parsed {
                Some(p) if p.action != Action::Other => s.observer().record(p, ok, resp.body(), Instant::now()),
                _ => {
                    let mut o = s.observer();
                    o.counts.requests += 1;
                    if !ok {
                        o.counts.upstream_errors += 1;
                    }
                    None
                }
            };
            if let Some(q) = lookup {
                s.look_up_visibility(q);
            }
            resp.map(Body::from)
        }
        Err(e) => {
            {
                let mut o = s.observer();
                o.counts.requests += 1;
                o.counts.unreachable += 1;
            }
            let (status, code) = match &e {
                ForwardError::Unreachable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
                ForwardError::Proxy(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
            };
            tracing::warn!("forwarding failed: {e}");
            error_response(protocol, status, code, &format!("coalmine proxy: {e}"))
        }
    }
}

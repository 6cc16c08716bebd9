//! HTTP: one endpoint for every action; the protocol is told by the request.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use crate::engine::{Broker, Ctx};
use crate::error::SqsError;
use crate::protocol::query;

/// What one client may hold of the server, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time for a request's headers to arrive; an idle keep-alive connection is closed after
    /// it too.
    pub header_timeout: std::time::Duration,
    /// Time for a request's body to arrive once its headers have.
    pub body_timeout: std::time::Duration,
    /// Longest request line plus headers (hyper answers 431 beyond it).
    pub max_header_bytes: usize,
    /// Largest request body: 413 `RequestEntityTooLarge`, at once when `Content-Length` says
    /// so. The default fits a 1 MiB batch of messages form-encoded (every byte as `%XX`).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Longest access key id AWS issues (IAM's `AccessKeyId`: 16 to 128 characters).
pub const MAX_ACCESS_KEY_ID: usize = 128;

pub const METRICS_PATH: &str = "/_coalmine/metrics";

static REQ_COUNTER: AtomicU64 = AtomicU64::new(1);

fn request_id() -> String {
    let n = REQ_COUNTER.fetch_add(1, Ordering::Relaxed);
    let p = std::process::id();
    format!("{:08x}-{:04x}-4000-8000-{:012x}", p, (n >> 48) as u16, n & 0xffff_ffff_ffff)
}

/// The access key id of a SigV4-signed request: `Credential=AKID/...` in the Authorization
/// header, or the `X-Amz-Credential` query parameter of a presigned one. Not checked: see
/// [`check_access_key_id`].
pub fn access_key_id(headers: &HeaderMap, params: Option<&[(String, String)]>) -> Option<String> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(i) = auth.find("Credential=") {
            let rest = &auth[i + "Credential=".len()..];
            let akid = rest.split('/').next().unwrap_or("").trim();
            if !akid.is_empty() {
                return Some(akid.to_string());
            }
        }
    }
    params?.iter().find(|(k, _)| k == "X-Amz-Credential").and_then(|(_, v)| v.split('/').next().map(String::from)).filter(|s| !s.is_empty())
}

/// Refuse an access key id longer than AWS's longest, or with characters no access key id
/// has (letters, digits, `.`, `_` and `-` are accepted; coalmine's own ids contain dots).
pub fn check_access_key_id(akid: &str) -> Result<(), SqsError> {
    let ok_chars = akid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if akid.len() > MAX_ACCESS_KEY_ID || !ok_chars {
        let shown: String = akid.chars().take(40).collect();
        return Err(SqsError {
            code: "InvalidClientTokenId",
            query_code: "InvalidClientTokenId",
            status: 403,
            sender_fault: true,
            message: format!(
                "The security token included in the request is invalid: the access key id \"{shown}{}\" ({} characters) must be at most {MAX_ACCESS_KEY_ID} letters, digits, '.', '_' or '-'.",
                if shown.len() < akid.len() { "..." } else { "" },
                akid.chars().count()
            ),
        });
    }
    Ok(())
}

/// Decode `application/x-www-form-urlencoded` pairs, refusing text that is not UTF-8 once
/// percent-decoded (SQS refuses it; a lossy decoding would change the message).
fn parse_form(input: &[u8], out: &mut Vec<(String, String)>) -> Result<(), SqsError> {
    fn decode(part: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => v.push(b' '),
                b'%' if i + 2 < part.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(part[i + 1]), hex(part[i + 2])) {
                        (Some(h), Some(l)) => {
                            v.push((h * 16 + l) as u8);
                            i += 3;
                            continue;
                        }
                        _ => v.push(b'%'),
                    }
                }
                c => v.push(c),
            }
            i += 1;
        }
        v
    }
    for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let key = String::from_utf8(decode(k))
            .map_err(|_| SqsError::malformed("A parameter name is not valid UTF-8 once percent-decoded; encode text as UTF-8."))?;
        let value = String::from_utf8(decode(v)).map_err(|_| {
            let shown: String = key.chars().take(60).collect();
            if key.ends_with("MessageBody") {
                SqsError::invalid_message_contents(format!(
                    "The parameter {shown} is not valid UTF-8 once percent-decoded; SQS messages are Unicode text: encode the body as UTF-8 (base64 for binary data)."
                ))
            } else {
                SqsError::invalid_parameter(format!("The parameter {shown} is not valid UTF-8 once percent-decoded; encode text as UTF-8."))
            }
        })?;
        out.push((key, value));
    }
    Ok(())
}

/// Whether the request carries a SigV4 signature: an `Authorization: AWS4-HMAC-SHA256 ...`
/// header, or the `X-Amz-Credential` and `X-Amz-Signature` query parameters of a presigned URL.
/// Whether the signature is right is checked only with `--verify-signatures`.
fn signed(headers: &HeaderMap, query: Option<&str>) -> bool {
    if headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|a| a.trim_start().starts_with("AWS4-HMAC-SHA256 ")) {
        return true;
    }
    let q = query.unwrap_or("");
    let has = |name: &str| q.split('&').any(|p| p.split('=').next() == Some(name));
    has("X-Amz-Credential") && has("X-Amz-Signature")
}

/// Refuse what a web page makes a browser send: a request with an `Origin` that is not in
/// `BrokerConfig::allowed_origins`, or one a browser marks as coming from another site
/// (`Sec-Fetch-Site`, which browsers send and SDKs do not).
fn browser_check(b: &Broker, headers: &HeaderMap) -> Result<(), SqsError> {
    let allowed = &b.config().allowed_origins;
    let denied = |message: String| SqsError { code: "AccessDenied", query_code: "AccessDenied", status: 403, sender_fault: true, message };
    if let Some(origin) = headers.get("origin") {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|o| o == origin || o == "*") {
            let shown: String = origin.chars().take(100).collect();
            return Err(denied(format!(
                "Requests from the web origin {shown} are refused; to let a page there use the queue, start it with --allow-origin {shown}."
            )));
        }
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" && !allowed.iter().any(|o| o == "*") {
            return Err(denied(format!(
                "A browser sent this request from another site (Sec-Fetch-Site: {site}); web pages may not use the queue unless it runs with --allow-origin."
            )));
        }
    }
    Ok(())
}

pub(crate) fn router(broker: Broker) -> Router {
    Router::new().route(METRICS_PATH, get(metrics)).fallback(entry).with_state(broker)
}

async fn metrics(State(b): State<Broker>) -> Response {
    let mut body = b.inner.metrics.render(&b.depth_snapshot());
    body.push_str("# HELP coalmine_queue_long_polls_waiting ReceiveMessage calls waiting for a message.\n# TYPE coalmine_queue_long_polls_waiting gauge\n");
    body.push_str(&format!("coalmine_queue_long_polls_waiting {}\n", b.inner.polls_waiting.load(std::sync::atomic::Ordering::Relaxed)));
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

enum Proto {
    Json,
    Query,
}

fn json_error(err: &SqsError, rid: &str) -> Response {
    let ty = if err.code == "UnknownOperationException" {
        "com.amazon.coral.service#UnknownOperationException".to_string()
    } else {
        format!("com.amazonaws.sqs#{}", err.code)
    };
    let body = serde_json::json!({"__type": ty, "message": err.message}).to_string();
    let mut r = (StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST), body).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/x-amz-json-1.0"));
    if let Ok(v) = HeaderValue::from_str(&format!("{};{}", err.query_code, if err.sender_fault { "Sender" } else { "Receiver" })) {
        h.insert("x-amzn-query-error", v);
    }
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

fn xml_error(err: &SqsError, rid: &str) -> Response {
    let mut r = (StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST), query::render_error(err, rid)).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(rid) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

fn error_response(proto: &Proto, err: &SqsError, rid: &str) -> Response {
    match proto {
        Proto::Json => json_error(err, rid),
        Proto::Query => xml_error(err, rid),
    }
}

async fn entry(State(b): State<Broker>, req: axum::extract::Request) -> Response {
    // the request's parts taken as they are (extracting the headers would copy them)
    let (axum::http::request::Parts { method, uri, headers, .. }, body) = req.into_parts();
    let rid = request_id();
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_string);
    let proto = if target.is_some() { Proto::Json } else { Proto::Query };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| b.queue_url("x").trim_start_matches("http://").split('/').next().unwrap_or("").to_string());
    if let Err(e) = browser_check(&b, &headers) {
        tracing::warn!(code = e.code, "client error: {}", e.message);
        b.inner.metrics.count("unknown", e.code);
        return error_response(&proto, &e, &rid);
    }
    if !signed(&headers, uri.query()) {
        let e = SqsError {
            code: "MissingAuthenticationToken",
            query_code: "MissingAuthenticationToken",
            status: 403,
            sender_fault: true,
            message: "The request must contain a valid (registered) AWS access key ID: sign it with AWS Signature Version 4 (any SDK or the AWS CLI does, with any credentials unless the queue runs with --verify-signatures).".into(),
        };
        tracing::warn!(code = e.code, "client error: {}", e.message);
        b.inner.metrics.count("unknown", e.code);
        return error_response(&proto, &e, &rid);
    }
    let limits = &b.config().limits;
    let declared = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        // Answer before the body arrives, and close the connection rather than read it.
        let e = SqsError::request_too_large(limits.max_body_bytes);
        tracing::warn!(code = e.code, declared, "client error: {}", e.message);
        b.inner.metrics.count("unknown", e.code);
        let mut r = error_response(&proto, &e, &rid);
        r.headers_mut().insert("connection", HeaderValue::from_static("close"));
        return r;
    }
    let bytes = match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limits.max_body_bytes)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let e = SqsError::request_too_large(limits.max_body_bytes);
            tracing::warn!(code = e.code, "client error: {}", e.message);
            b.inner.metrics.count("unknown", e.code);
            let mut r = error_response(&proto, &e, &rid);
            r.headers_mut().insert("connection", HeaderValue::from_static("close"));
            return r;
        }
        Err(_) => {
            let e = SqsError::client(
                "RequestTimeout",
                format!("The request body did not arrive within {} s; send it at once after the headers.", limits.body_timeout.as_secs()),
            );
            tracing::warn!(code = e.code, "client error: {}", e.message);
            b.inner.metrics.count("unknown", e.code);
            let mut r = error_response(&proto, &e, &rid);
            r.headers_mut().insert("connection", HeaderValue::from_static("close"));
            return r;
        }
    };
    // the busiest actions' JSON requests, read typed (see protocol::json)
    let mut fast = None;
    let (action, req, params) = match &proto {
        Proto::Json => {
            let t = target.unwrap_or_default();
            let action = match t.strip_prefix("AmazonSQS.") {
                Some(a) => a.to_string(),
                None => {
                    let e = SqsError::client_legacy(
                        "UnknownOperationException",
                        "InvalidAction",
                        format!("The X-Amz-Target header \"{t}\" is not AmazonSQS.<Action>."),
                    );
                    tracing::warn!(code = e.code, "client error: {}", e.message);
                    b.inner.metrics.count("unknown", e.code);
                    return json_error(&e, &rid);
                }
            };
            fast = crate::protocol::json::parse(&action, &bytes);
            let req: Value = if fast.is_some() {
                Value::Null
            } else if bytes.is_empty() {
                Value::Object(Default::default())
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        let e = SqsError::client_legacy(
                            "SerializationException",
                            "InvalidParameterValue",
                            "The request body is not a JSON object; send AWS JSON 1.0 (application/x-amz-json-1.0).",
                        );
                        tracing::warn!(action = %action, code = e.code, "client error: {}", e.message);
                        b.inner.metrics.count(&action, e.code);
                        return json_error(&e, &rid);
                    }
                }
            };
            (action, req, None)
        }
        Proto::Query => {
            let mut params: Vec<(String, String)> = Vec::new();
            let parsed = uri
                .query()
                .map(|q| parse_form(q.as_bytes(), &mut params))
                .unwrap_or(Ok(()))
                .and_then(|_| if method == Method::POST { parse_form(&bytes, &mut params) } else { Ok(()) });
            if let Err(e) = parsed {
                let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.clone()).unwrap_or_default();
                tracing::warn!(action = %action, code = e.code, "client error: {}", e.message);
                b.inner.metrics.count(&action, e.code);
                return xml_error(&e, &rid);
            }
            let (action, mut req) = match query::parse_request(&params) {
                Ok(x) => x,
                Err(e) => {
                    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.clone()).unwrap_or_default();
                    tracing::warn!(action = %action, code = e.code, "client error: {}", e.message);
                    b.inner.metrics.count(&action, e.code);
                    return xml_error(&e, &rid);
                }
            };
            let path = uri.path().trim_matches('/');
            if path.split('/').count() == 2 && req.get("QueueUrl").is_none() {
                if let Value::Object(m) = &mut req {
                    m.insert("QueueUrl".into(), Value::String(format!("http://{host}/{path}")));
                }
            }
            (action, req, Some(params))
        }
    };
    let akid = match &b.config().credentials {
        Some(creds) => match crate::sigv4::verify(creds, &method, &uri, &headers, &bytes) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(action = %action, code = e.code, "client error: {}", e.message);
                b.inner.metrics.count(&action, e.code);
                return error_response(&proto, &e, &rid);
            }
        },
        None => match access_key_id(&headers, params.as_deref()) {
            Some(k) => k,
            None => {
                let e = SqsError {
                    code: "IncompleteSignature",
                    query_code: "IncompleteSignature",
                    status: 403,
                    sender_fault: true,
                    message: "The request signature names no access key id (Credential=ACCESS_KEY_ID/DATE/REGION/sqs/aws4_request).".into(),
                };
                b.inner.metrics.count(&action, e.code);
                return error_response(&proto, &e, &rid);
            }
        },
    };
    if let Err(e) = check_access_key_id(&akid) {
        tracing::warn!(action = %action, code = e.code, "client error: {}", e.message);
        b.inner.metrics.count(&action, e.code);
        return error_response(&proto, &e, &rid);
    }
    let mut ctx = Ctx::new(&akid, &host);
    // (only JSON requests are read typed, so a query request's answer is always a Value)
    let result = match fast {
        Some(f) => b.dispatch_json(f, &mut ctx).await.map(Err),
        None => b.dispatch(&action, &req, &mut ctx).await.map(Ok),
    };
    match result {
        Ok(answer) => {
            b.inner.metrics.count(&action, "ok");
            match (proto, answer) {
                (Proto::Json, answer) => {
                    let buf = answer.map(|v| {
                        let mut buf = Vec::with_capacity(1024);
                        let _ = serde_json::to_writer(&mut buf, &v);
                        buf
                    });
                    let buf = buf.unwrap_or_else(|body| body);
                    let mut r = (StatusCode::OK, buf).into_response();
                    r.headers_mut().insert("content-type", HeaderValue::from_static("application/x-amz-json-1.0"));
                    if let Ok(h) = HeaderValue::from_str(&rid) {
                        r.headers_mut().insert("x-amzn-requestid", h);
                    }
                    r
                }
                (Proto::Query, answer) => {
                    let v = answer.unwrap_or_default();
                    let mut r = (StatusCode::OK, query::render_response(&action, &v, &rid)).into_response();
                    r.headers_mut().insert("content-type", HeaderValue::from_static("text/xml"));
                    if let Ok(h) = HeaderValue::from_str(&rid) {
                        r.headers_mut().insert("x-amzn-requestid", h);
                    }
                    r
                }
            }
        }
        Err(e) => {
            b.inner.metrics.count(&action, e.code);
            if e.sender_fault {
                tracing::warn!(action = %action, access_key_id = %akid, code = e.code, "client error: {}", e.message);
            } else {
                tracing::error!(action = %action, code = e.code, "server error: {}", e.message);
            }
            error_response(&proto, &e, &rid)
        }
    }
}

//! HTTP: one endpoint for every action; the protocol is told by the request.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use crate::engine::{Broker, Ctx};
use crate::error::SqsError;
use crate::protocol::query;

/// Largest request body accepted (a 256 KiB batch in JSON, escaped, fits).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

pub const METRICS_PATH: &str = "/_coalmine/metrics";

static REQ_COUNTER: AtomicU64 = AtomicU64::new(1);

fn request_id() -> String {
    let n = REQ_COUNTER.fetch_add(1, Ordering::Relaxed);
    let p = std::process::id();
    format!("{:08x}-{:04x}-4000-8000-{:012x}", p, (n >> 48) as u16, n & 0xffff_ffff_ffff)
}

/// The access key id of a SigV4-signed request: `Credential=AKID/...` in the Authorization
/// header, or the `X-Amz-Credential` query parameter of a presigned one.
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

async fn entry(State(b): State<Broker>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let rid = request_id();
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_string);
    let proto = if target.is_some() { Proto::Json } else { Proto::Query };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| b.queue_url("x").trim_start_matches("http://").split('/').next().unwrap_or("").to_string());
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            let e = SqsError::request_too_large(BODY_LIMIT);
            tracing::warn!(code = e.code, "client error: {}", e.message);
            b.inner.metrics.count("unknown", e.code);
            return error_response(&proto, &e, &rid);
        }
    };
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
            let req: Value = if bytes.is_empty() {
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
            if let Some(q) = uri.query() {
                params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
            }
            if method == Method::POST {
                params.extend(form_urlencoded::parse(&bytes).into_owned());
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
        None => access_key_id(&headers, params.as_deref()).unwrap_or_else(|| "anonymous".into()),
    };
    let mut ctx = Ctx::new(&akid, &host);
    let result = b.dispatch(&action, &req, &mut ctx).await;
    match result {
        Ok(v) => {
            b.inner.metrics.count(&action, "ok");
            match proto {
                Proto::Json => {
                    let mut buf = Vec::with_capacity(1024);
                    let _ = serde_json::to_writer(&mut buf, &v);
                    let mut r = (StatusCode::OK, buf).into_response();
                    r.headers_mut().insert("content-type", HeaderValue::from_static("application/x-amz-json-1.0"));
                    if let Ok(h) = HeaderValue::from_str(&rid) {
                        r.headers_mut().insert("x-amzn-requestid", h);
                    }
                    r
                }
                Proto::Query => {
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

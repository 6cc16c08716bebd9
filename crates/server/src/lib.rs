//! The control plane: the HTTP API under `/api/v1` (guarded by a bearer token), the
//! dashboard at `/`, and Prometheus metrics at `/metrics`. It owns no durable state: it asks
//! the pipeline. The only thing it keeps is a ring buffer of per-second samples (queue depth,
//! per-revision telemetry) for the live charts, filled by a sampler thread.
//!
//! Authentication: every `/api/v1` request needs `Authorization: Bearer <token>` with the
//! token from `.coalmine/token`. The dashboard page and its static assets are public (they
//! hold no data); the page's script calls the API with the token, which it reads from the
//! address's fragment (`http://127.0.0.1:7070/#token=...`, never sent to the server) and keeps
//! in `sessionStorage`, or asks for it. `/metrics` needs no token on a loopback address, like
//! most exporters; on any other address ([`Exposure::public`]) it needs the token too.
//!
//! Every request's `Host` must be an IP address, `localhost` or a name given with
//! `--allow-host`: a web page from another site that re-points its DNS name at 127.0.0.1 (DNS
//! rebinding) is refused before it reaches the dashboard or the API.

mod api;
mod dashboard;
mod follow;
mod metrics;
mod sampler;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use coalmine_pipeline::Engine;

pub use sampler::{RevisionSample, Sample};

/// What the handlers share.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub token: Arc<str>,
    pub(crate) series: Mutex<sampler::Series>,
    /// The latest snapshot (status + newest sample) as JSON, for the event stream.
    pub(crate) snapshot: tokio::sync::watch::Sender<Arc<str>>,
}

/// The handlers' state.
pub type AppState = Arc<Shared>;

/// Everything the control plane serves: the API (with its OpenAPI document at
/// `/api/v1/openapi.json`), the live event stream, the dashboard and `/metrics`.
///
/// Starts a sampler thread that lives as long as the returned router (or a clone of it).
pub fn router(engine: Arc<Engine>, token: String) -> Router {
    router_with(engine, token, Exposure::default())
}

/// How the control plane is reached.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// It listens on a non-loopback address: `/metrics` needs the token too.
    pub public: bool,
    /// Host names it answers to besides IP addresses and `localhost` (`--allow-host`).
    pub allowed_hosts: Vec<String>,
}

/// [`router`] for a given [`Exposure`].
pub fn router_with(engine: Arc<Engine>, token: String, exposure: Exposure) -> Router {
    let (snapshot, _) = tokio::sync::watch::channel::<Arc<str>>(Arc::from("null"));
    let token: Arc<str> = token.into();
    let shared = Arc::new(Shared {
        engine,
        token: token.clone(),
        series: Mutex::new(sampler::Series::new(sampler::KEEP_SAMPLES)),
        snapshot,
    });
    sampler::spawn(Arc::downgrade(&shared));
    let (api, _openapi) = api::router(shared.clone());
    guard(api.merge(dashboard::router()), metrics::router(shared), token, exposure)
}

/// The protections in front of everything: the token on `/metrics` when public, the `Host`
/// check on every route.
fn guard(app: Router, metrics: Router, token: Arc<str>, exposure: Exposure) -> Router {
    let metrics = if exposure.public { metrics.layer(middleware::from_fn_with_state(token, bearer_only)) } else { metrics };
    app.merge(metrics).layer(middleware::from_fn_with_state(Arc::new(exposure.allowed_hosts), check_host))
}

async fn bearer_only(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "coalmine listens on a non-loopback address, so /metrics needs `Authorization: Bearer <token>` with the token from .coalmine/token (Prometheus: `authorization: { credentials_file: .coalmine/token }`)"})),
        )
            .into_response();
    }
    next.run(req).await
}

async fn check_host(State(allowed): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if host_allowed(host, &allowed) {
        return next.run(req).await;
    }
    let shown: String = host.chars().take(100).collect();
    tracing::warn!(host = %shown, path = %req.uri().path(), "request for another host name refused (403)");
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({"error": format!(
            "Host `{shown}` is not a name coalmine answers to (a guard against DNS rebinding): open it by IP address or `localhost`, or start `coalmine up --allow-host NAME` to allow that name"
        )})),
    )
        .into_response()
}

/// Whether a `Host` header names this server safely: an IP address, `localhost` (or a
/// `*.localhost` name), or one of `allowed`; with or without a port.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        }
    };
    if name.is_empty() {
        return false;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// What `coalmine up` prints before it serves on `bind`: `None` on a loopback address, else a
/// warning that names the risk.
pub fn bind_warning(bind: IpAddr) -> Option<String> {
    if bind.is_loopback() {
        return None;
    }
    Some(format!(
        "warning: the API and dashboard listen on {bind}, reachable from other machines. Anyone who reaches it with the token can approve, reject and roll back releases and read task logs, and the token crosses the network unencrypted (plain HTTP). Prefer the default 127.0.0.1 with an SSH tunnel (`ssh -L 7070:127.0.0.1:7070 host`), or put a TLS proxy in front. /metrics needs the token on this address."
    ))
}

/// The OpenAPI document of the API, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

/// The dashboard's address with the token in its fragment (`<base>/#token=<token>`): what
/// `coalmine up` should print. Browsers never send the fragment to the server; the page moves
/// the token into `sessionStorage` and removes it from the address bar.
pub fn dashboard_url(base: &str, token: &str) -> String {
    let enc: String = token
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("{}/#token={enc}", base.trim_end_matches('/'))
}

/// Compare two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_url_carries_the_token_in_the_fragment() {
        assert_eq!(dashboard_url("http://127.0.0.1:7070/", "ab12"), "http://127.0.0.1:7070/#token=ab12");
        assert_eq!(dashboard_url("http://h:1", "a b&c"), "http://h:1/#token=a%20b%26c");
    }

    #[test]
    fn host_check_accepts_addresses_and_localhost_only() {
        let extra = vec!["ci.internal".to_string()];
        for ok in ["127.0.0.1:7070", "127.0.0.1", "[::1]:7070", "10.1.2.3:80", "localhost:7070", "LOCALHOST", "app.localhost:1", "ci.internal:7070", "CI.internal."] {
            assert!(host_allowed(ok, &extra), "{ok}");
        }
        for bad in ["", "evil.example:7070", "evil.example", "127.0.0.1.evil.example", "[::1", "[evil]:1", "localhost.evil.example", ":7070"] {
            assert!(!host_allowed(bad, &extra), "{bad}");
        }
    }

    #[test]
    fn binding_beyond_loopback_warns_and_names_the_risk() {
        assert!(bind_warning("127.0.0.1".parse().unwrap()).is_none());
        assert!(bind_warning("::1".parse().unwrap()).is_none());
        let w = bind_warning("0.0.0.0".parse().unwrap()).unwrap();
        assert!(w.contains("0.0.0.0") && w.contains("other machines") && w.contains("unencrypted") && w.contains("/metrics"), "{w}");
    }

    /// The guard in front of the real routes: served on 127.0.0.1, asked with other hosts.
    #[test]
    fn guard_checks_the_host_everywhere_and_the_token_on_public_metrics() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let serve = |public: bool| async move {
                let app = Router::new().route("/", axum::routing::get(|| async { "page" }));
                let metrics = Router::new().route("/metrics", axum::routing::get(|| async { "counts" }));
                let router = guard(app, metrics, Arc::from("s3cret"), Exposure { public, allowed_hosts: vec![] });
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
                format!("http://{addr}")
            };
            let http = reqwest::Client::new();
            let get = |url: String, host: Option<&'static str>, token: Option<&'static str>| {
                let mut r = http.get(url);
                if let Some(h) = host {
                    r = r.header("host", h);
                }
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                async move { r.send().await.unwrap() }
            };
            let local = serve(false).await;
            assert_eq!(get(format!("{local}/"), None, None).await.status(), 200);
            assert_eq!(get(format!("{local}/metrics"), None, None).await.status(), 200, "loopback: no token");
            let r = get(format!("{local}/"), Some("rebound.example:7070"), None).await;
            assert_eq!(r.status(), 403);
            assert!(r.text().await.unwrap().contains("DNS rebinding"));
            assert_eq!(get(format!("{local}/metrics"), Some("rebound.example"), None).await.status(), 403);
            assert_eq!(get(format!("{local}/"), Some("localhost:7070"), None).await.status(), 200);

            let public = serve(true).await;
            let r = get(format!("{public}/metrics"), None, None).await;
            assert_eq!(r.status(), 401);
            assert!(r.text().await.unwrap().contains(".coalmine/token"));
            assert_eq!(get(format!("{public}/metrics"), None, Some("wrong")).await.status(), 401);
            let r = get(format!("{public}/metrics"), None, Some("s3cret")).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "counts");
            assert_eq!(get(format!("{public}/"), None, None).await.status(), 200, "the page itself holds no data");
        });
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}

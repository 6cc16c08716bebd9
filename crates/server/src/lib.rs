//! The control plane: the HTTP API under `/api/v1` (guarded by a bearer token), the
//! dashboard at `/`, and Prometheus metrics at `/metrics`. It owns no durable state: it asks
//! the pipeline. The only thing it keeps is a ring buffer of per-second samples (queue depth,
//! per-revision telemetry) for the live charts, filled by a sampler thread.
//!
//! Authentication: every `/api/v1` request needs `Authorization: Bearer <token>` with the
//! token from `.coalmine/token`. The dashboard page and its static assets are public (they
//! hold no data); the page's script calls the API with the token, which it reads from the
//! address's fragment (`http://127.0.0.1:7070/#token=...`, never sent to the server) and keeps
//! in `sessionStorage`, or asks for it. `/metrics` needs no token, like most exporters: it
//! exposes counts only, and the server binds to 127.0.0.1 unless told otherwise.

mod api;
mod dashboard;
mod follow;
mod metrics;
mod sampler;

use std::sync::{Arc, Mutex};

use axum::Router;
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
    let (snapshot, _) = tokio::sync::watch::channel::<Arc<str>>(Arc::from("null"));
    let shared = Arc::new(Shared {
        engine,
        token: token.into(),
        series: Mutex::new(sampler::Series::new(sampler::KEEP_SAMPLES)),
        snapshot,
    });
    sampler::spawn(Arc::downgrade(&shared));
    let (api, _openapi) = api::router(shared.clone());
    api.merge(dashboard::router()).merge(metrics::router(shared))
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
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}

//! Forwarding: each request goes to the upstream SQS as it came, re-signed (SigV4) with the
//! proxy's own credentials from the standard AWS chain; the answer comes back as the upstream
//! gave it.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ProxyError;

/// Largest request or response body handled (SQS's limit is 256 KiB of message; JSON escaping
/// of a full batch stays well below this).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Headers never forwarded: hop-by-hop ones, and those the new signature replaces.
const DROPPED: &[&str] = &[
    "host",
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// Headers the new signature covers besides `host` and `x-amz-date`.
const SIGNED: &[&str] = &["content-type", "x-amz-target", "x-amzn-query-mode"];

/// Credentials from a provider, kept until five minutes before they expire.
pub struct CredentialsCache {
    provider: SharedCredentialsProvider,
    current: RwLock<Option<Credentials>>,
    refresh: tokio::sync::Mutex<()>,
}

impl CredentialsCache {
    pub fn new(provider: SharedCredentialsProvider) -> CredentialsCache {
        CredentialsCache { provider, current: RwLock::new(None), refresh: tokio::sync::Mutex::new(()) }
    }

    fn fresh(&self) -> Option<Credentials> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let c = guard.as_ref()?;
        match c.expiry() {
            Some(e) if e <= SystemTime::now() + Duration::from_secs(300) => None,
            _ => Some(c.clone()),
        }
    }

    pub async fn get(&self) -> Result<Credentials, ProxyError> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one_refresh = self.refresh.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| ProxyError::Credentials(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

/// Why a request did not reach the upstream or got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("the upstream SQS at {upstream} did not answer: {message}")]
    Unreachable { upstream: String, message: String },
}

/// The upstream SQS endpoint and how to reach it.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://authority` without a trailing slash.
    origin: String,
    /// The authority (`host[:port]`), the Host header and what the signature covers.
    authority: HeaderValue,
    region: String,
    creds: CredentialsCache,
}

impl Upstream {
    pub fn new(endpoint: &str, region: &str, provider: SharedCredentialsProvider) -> Result<Upstream, ProxyError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| ProxyError::Config(format!("--upstream {endpoint:?} is not a URL ({e}); write it as http://host:port or https://host")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ProxyError::Config(format!("--upstream {endpoint:?} needs a scheme and a host, e.g. https://sqs.us-east-1.amazonaws.com")));
        };
        if scheme != "http" && scheme != "https" {
            return Err(ProxyError::Config(format!("--upstream {endpoint:?}: the scheme must be http or https")));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(ProxyError::Config(format!("--upstream {endpoint:?}: give the endpoint without a path (an SQS endpoint serves at /)")));
        }
        let tls = rustls_config(scheme == "https")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Upstream {
            client,
            origin: format!("{scheme}://{authority}"),
            authority: HeaderValue::from_str(authority.as_str()).map_err(|e| ProxyError::Config(e.to_string()))?,
            region: region.to_string(),
            creds: CredentialsCache::new(provider),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.origin
    }

    /// Forward one request; the answer's status, headers and body as the upstream sent them.
    pub async fn forward(&self, method: &Method, path_and_query: &str, headers: &HeaderMap, body: Bytes) -> Result<Response<Bytes>, ForwardError> {
        let url = format!("{}{}", self.origin, path_and_query);
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| ProxyError::Config(format!("the request path {path_and_query:?}: {e}")))?;
        let mut out = Request::builder().method(method.clone()).uri(uri).body(Full::new(body.clone())).map_err(|e| ProxyError::Config(e.to_string()))?;
        let h = out.headers_mut();
        for (name, value) in headers {
            if !DROPPED.contains(&name.as_str()) {
                h.append(name.clone(), value.clone());
            }
        }
        h.insert(http::header::HOST, self.authority.clone());
        let creds = self.creds.get().await?;
        let identity = creds.into();
        let mut settings = SigningSettings::default();
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sqs")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| ProxyError::Signing(e.to_string()))?
            .into();
        let signed: Vec<(&str, &str)> = std::iter::once(("host", self.authority.to_str().unwrap_or_default()))
            .chain(SIGNED.iter().filter_map(|n| h.get(*n).and_then(|v| v.to_str().ok()).map(|v| (*n, v))))
            .collect();
        let signable = SignableRequest::new(method.as_str(), &url, signed.into_iter(), SignableBody::Bytes(&body))
            .map_err(|e| ProxyError::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| ProxyError::Signing(e.to_string()))?.into_parts();
        for (name, value) in instructions.headers() {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                out.headers_mut().insert(n, v);
            }
        }
        let unreachable = |message: String| ForwardError::Unreachable { upstream: self.origin.clone(), message };
        let resp = self.client.request(out).await.map_err(|e| unreachable(error_chain(&e)))?;
        let (mut parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, BODY_LIMIT).collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        for name in ["connection", "keep-alive", "transfer-encoding", "trailer", "upgrade", "proxy-connection"] {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, body))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// TLS for `https` upstreams: the system's root certificates. An `http` upstream needs none.
fn rustls_config(https: bool) -> Result<rustls::ClientConfig, ProxyError> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Config(format!("TLS set-up: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(ProxyError::Config(
                "no trusted root certificates on this system for the https upstream; install them (Debian: apt-get install ca-certificates)".into(),
            ));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

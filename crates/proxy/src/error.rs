//! The proxy's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Which task this is could not be told.
    #[error("cannot tell which task this proxy serves: {0}")]
    Identity(String),
    /// A setting is wrong (named in the message, with the fix).
    #[error("{0}")]
    Config(String),
    /// No credentials in the standard chain.
    #[error("no AWS credentials for the upstream: {0}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where container or instance credentials exist")]
    Credentials(String),
    /// Signing a forwarded request failed.
    #[error("signing the request for the upstream: {0}")]
    Signing(String),
    #[error("binding {addr}: {source}; is something else listening there? choose another --port")]
    Bind { addr: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

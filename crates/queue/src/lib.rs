//! The embedded SQS-compatible queue.
//!
//! [`Broker`] holds the queues (in memory, logged durably to SQLite `queue.db`), serves the
//! SQS wire protocols over HTTP ([`Broker::router`], [`Broker::serve`]), and gives the rest
//! of coalmine per-consumer telemetry and dead-letter administration.

pub mod digest;
mod engine;
pub mod error;
mod http;
mod metrics;
mod model;
pub mod protocol;
mod sigv4;
mod store;
pub mod telemetry;

pub use engine::{queue_name_from_url, Broker, BrokerConfig, Ctx, DeadLetter, Durability, InFlightMessage, QueueStats};
pub use error::{QueueError, SqsError};
pub use http::{access_key_id, METRICS_PATH};
pub use model::{arn, ACCOUNT};
pub use sigv4::{load_credentials, Credentials};
pub use telemetry::{ConsumerTelemetry, LatencyHistogram, TelemetryBucket};

impl Broker {
    /// The HTTP router serving every SQS action and the metrics; mount it in another server
    /// or use [`Broker::serve`]. Starts the broker's background upkeep (needs a tokio runtime).
    pub fn router(&self) -> axum::Router {
        self.ensure_background();
        http::router(self.clone())
    }

    /// Serve on `listener` until the future ends (never, unless the listener fails).
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            self.set_public_host(addr.to_string());
        }
        axum::serve(no_delay(listener), self.router()).await
    }

    /// Serve until `shutdown` completes.
    pub async fn serve_with_shutdown<F>(&self, listener: tokio::net::TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(addr) = listener.local_addr() {
            self.set_public_host(addr.to_string());
        }
        axum::serve(no_delay(listener), self.router()).with_graceful_shutdown(shutdown).await
    }

    fn ensure_background(&self) {
        if !self.inner.background.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.start_background();
        }
    }
}

/// Answers go out as soon as they are written (no Nagle delay behind an unacknowledged one).
fn no_delay(listener: tokio::net::TcpListener) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a queue connection");
        }
    })
}

//! The embedded SQS-compatible queue.
//!
//! [`Broker`] holds the queues (in memory, logged durably: an operation log folded into SQLite
//! `queue.db`), serves the SQS wire protocols over HTTP ([`Broker::router`],
//! [`Broker::serve`]), and gives the rest of coalmine per-consumer telemetry and dead-letter
//! administration.

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
pub use http::{access_key_id, Limits, METRICS_PATH};
pub use model::{arn, arn_of, interned_access_keys, ACCOUNT, MAX_IN_FLIGHT, MAX_MESSAGE_BYTES};
pub use sigv4::{load_credentials, Credentials};
pub use telemetry::{ConsumerTelemetry, LatencyHistogram, TelemetryBucket};

impl Broker {
    /// The HTTP router serving every SQS action and the metrics; mount it in another server
    /// or use [`Broker::serve`]. Starts the broker's background upkeep (needs a tokio runtime).
    ///
    /// Mounted elsewhere, the connection limits and header timeouts of [`Limits`] are that
    /// server's business; the body size and body read timeout still apply.
    pub fn router(&self) -> axum::Router {
        self.ensure_background();
        http::router(self.clone())
    }

    /// Serve on `listener` until the future ends (never, unless the listener fails).
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending()).await
    }

    /// Serve until `shutdown` completes, then wait (at most a second) for answers in progress.
    ///
    /// Connections are bounded ([`Limits::max_connections`]: when all are taken, new ones wait
    /// in the listen backlog), request headers must arrive within [`Limits::header_timeout`]
    /// (an idle keep-alive connection is closed after it too) and be at most
    /// [`Limits::max_header_bytes`] long. The fd soft limit is raised to the hard limit first.
    pub async fn serve_with_shutdown<F>(&self, listener: tokio::net::TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(addr) = listener.local_addr() {
            self.set_public_host(addr.to_string());
        }
        raise_fd_limit();
        let limits = self.config().limits.clone();
        let app = self.router();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = &mut shutdown => break,
            };
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors or a connection reset before accept: keep
                        // serving the connections there are, and try again shortly.
                        tracing::warn!(error = %e, "queue: accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on a queue connection");
            }
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_header_size(limits.max_header_bytes)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "queue connection ended with an error");
                }
                drop(permit);
            });
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), graceful.shutdown()).await;
        Ok(())
    }

    fn ensure_background(&self) {
        if !self.inner.background.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.start_background();
        }
    }
}

/// Raise this process's open-file soft limit to its hard limit, so that the connection limit,
/// not the file descriptors, decides how many clients the queue holds. Returns the soft limit
/// now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                tracing::debug!(from = lim.rlim_cur, to = lim.rlim_max, "raised the open-file soft limit");
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

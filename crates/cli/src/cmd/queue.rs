//! `coalmine queue ...`: the embedded SQS-compatible queue.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use coalmine_queue::{Broker, BrokerConfig, Durability};

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Serve the SQS-compatible queue (default 127.0.0.1:9324, data in ./.coalmine).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the line `listening on ...` tells which).
    #[arg(long, default_value_t = 9324)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Folder of the queue's data (`queue.db` and its operation log, `queue.oplog.*`).
    #[arg(long, default_value = ".coalmine")]
    pub data_dir: PathBuf,
    /// `commit`: answer a change only once it is on disk; `none`: answer at once.
    #[arg(long, default_value = "commit", value_parser = ["commit", "none"])]
    pub durability: String,
    /// Region used in queue ARNs.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Check every request's SigV4 signature against this credentials file (AWS CLI format,
    /// or one `ACCESS_KEY_ID SECRET` per line); unsigned or badly signed requests get 403.
    #[arg(long, value_name = "CREDENTIALS_FILE")]
    pub verify_signatures: Option<PathBuf>,
    /// Connections served at once; more wait in the listen backlog until one closes. The
    /// open-file soft limit is raised to the hard limit at start.
    #[arg(long, default_value_t = 4096, value_name = "N", env = "COALMINE_QUEUE_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Worker threads serving requests. The queue's state sits behind one lock and its store
    /// commits on a thread of its own, so one worker is enough for the store's pace on most
    /// machines and spares the cross-thread wake-ups of a pool (about 13 % less CPU per message
    /// than two in the benchmark); more help only when request parsing and signature checks
    /// dominate on many cores.
    #[arg(long, default_value_t = 1, value_name = "N", env = "COALMINE_QUEUE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Seconds a client has to send a request's headers (idle keep-alive connections are
    /// closed after it too) and, separately, its body; slower clients are disconnected.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub read_timeout: u64,
    /// The 12-digit account id in queue URLs and ARNs; requests naming another account's
    /// queue are refused with AccessDenied.
    #[arg(long, default_value = coalmine_queue::ACCOUNT, value_name = "ID", env = "COALMINE_QUEUE_ACCOUNT_ID")]
    pub account_id: String,
    /// Let web pages of this origin (e.g. `http://localhost:3000`) call the queue from a
    /// browser; repeat for more. Without it, requests a browser makes for another site are
    /// refused (403), so that no web page can drive the queue. Requests must be SigV4-signed
    /// (any SDK or the AWS CLI signs them) or get 403 MissingAuthenticationToken.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
}

pub fn run(cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::Serve(a) => serve(a),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let durability: Durability = a.durability.parse().map_err(anyhow::Error::msg)?;
    let mut cfg = BrokerConfig::new(&a.data_dir);
    cfg.durability = durability;
    cfg.region = a.region.clone();
    if a.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    cfg.limits.max_connections = a.max_connections;
    if a.account_id.len() != 12 || !a.account_id.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("--account-id must be 12 digits (like 000000000000), not `{}`", a.account_id);
    }
    cfg.account_id = a.account_id.clone();
    cfg.allowed_origins = a.allow_origins.clone();
    cfg.limits.header_timeout = std::time::Duration::from_secs(a.read_timeout);
    cfg.limits.body_timeout = std::time::Duration::from_secs(a.read_timeout);
    if let Some(path) = &a.verify_signatures {
        let creds = coalmine_queue::load_credentials(path).with_context(|| format!("reading the credentials in {}", path.display()))?;
        tracing::info!(keys = creds.len(), "checking request signatures");
        cfg.credentials = Some(creds);
    }
    let broker = Broker::open(cfg).with_context(|| format!("opening the queue data in {}", a.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads.into()).enable_all().build().context("starting the async runtime")?;
    let result = rt.block_on(async {
        let addr = format!("{}:{}", a.bind, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}; is another queue already listening there? choose another --port"))?;
        let local = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{local}")?;
            out.flush()?;
        }
        tracing::info!(address = %local, data_dir = %a.data_dir.display(), "queue serving");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        tokio::select! {
            r = broker.serve(listener) => r.context("serving the queue")?,
            _ = shutdown => tracing::info!("queue stopping"),
        }
        anyhow::Ok(())
    });
    broker.close();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map(|_| ExitCode::SUCCESS)
}

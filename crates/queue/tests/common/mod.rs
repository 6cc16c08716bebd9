#![allow(dead_code)]

use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use coalmine_queue::{Broker, BrokerConfig, Durability};

pub struct Server {
    pub url: String,
    pub broker: Broker,
    pub dir: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stop serving, flush and close the store; returns the data folder.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.task.abort();
        self.broker.close();
        self.dir.take().unwrap()
    }

    pub async fn long_polls_waiting(&self) -> u64 {
        let m = reqwest::get(format!("{}/_coalmine/metrics", self.url)).await.unwrap().text().await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("coalmine_queue_long_polls_waiting "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, Durability::Commit).await
}

pub async fn start_in(dir: tempfile::TempDir, durability: Durability) -> Server {
    start_with(dir, |c| c.durability = durability).await
}

pub async fn start_with(dir: tempfile::TempDir, f: impl FnOnce(&mut BrokerConfig)) -> Server {
    let mut cfg = BrokerConfig::new(dir.path());
    f(&mut cfg);
    let broker = Broker::open(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    broker.set_public_host(listener.local_addr().unwrap().to_string());
    let b = broker.clone();
    let task = tokio::spawn(async move {
        b.serve(listener).await.unwrap();
    });
    Server { url, broker, dir: Some(dir), task }
}

/// An Authorization header shaped as SigV4 (the broker checks the signature itself only with
/// `--verify-signatures`), for raw HTTP requests.
pub const AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDRAWHTTPCLIENT/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature=00";

pub fn client(url: &str, access_key_id: &str) -> aws_sdk_sqs::Client {
    client_with_secret(url, access_key_id, "secret")
}

pub fn client_with_secret(url: &str, access_key_id: &str, secret: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key_id, secret, None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// The error code the SDK saw.
pub fn code<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    e.code().unwrap_or("<no code>").to_string()
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! `coalmine queue serve` as a child process, and an official SDK client for it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

/// A running `coalmine queue serve`; killed when dropped.
pub struct Serve {
    pub child: Child,
    pub url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `coalmine queue serve` on a free port with its data in `dir` and these extra flags;
/// returns once it prints the address it listens on.
pub fn serve(dir: &Path, args: &[&str]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .args(["queue", "serve", "--port", "0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("COALMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start coalmine queue serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read the listening line");
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    Serve { child, url }
}

/// The official Rust SDK's SQS client for `url`, signing as `access_key_id`.
pub fn client(url: &str, access_key_id: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key_id, "secret", None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

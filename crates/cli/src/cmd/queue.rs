//! `coalmine queue ...`: the embedded SQS-compatible queue.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Serve the SQS-compatible queue (default 127.0.0.1:9324, data in ./.coalmine).
    Serve,
}

pub fn run(_cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("queue serve is not built yet")
}

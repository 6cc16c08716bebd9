//! `coalmine send`: send messages to the app's queue.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SendArgs {}

pub fn run(_args: SendArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("send is not built yet")
}
